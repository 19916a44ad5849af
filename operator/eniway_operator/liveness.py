"""Whether a node's agent is alive, from its heartbeat in ``ENIPool status.agent``.

The heartbeat is a timestamp the agent writes on its own clock; the operator only asks
whether the value *moved*, timing on its own clock, so clock skew between machines
cannot make a dead agent look alive. Pure: the reconciler passes how long the value it
sees has stood still (for an agent that never reported, how long this operator has known
the pool)."""

from __future__ import annotations


def agent_problem(heartbeat: str, still_for: float, timeout: float, ready: bool = True
                  ) -> str:
    """What is wrong with the node's agent ("" when it is alive and ready)."""
    if still_for >= timeout:
        if not heartbeat:
            return (f"no eniway-agent has reported on this node for {still_for:.0f} s "
                    f"(timeout {timeout:g} s): is its DaemonSet pod running here?")
        return (f"the eniway-agent heartbeat ({heartbeat}) has not moved for "
                f"{still_for:.0f} s (timeout {timeout:g} s): pods on this node cannot get "
                f"IPs and no IP is released until it is back")
    if heartbeat and not ready:
        return "the eniway-agent reports it is not ready (still syncing its store)"
    return ""
