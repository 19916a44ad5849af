"""Version skew between the operator and a node's agent (docs/install.md, "Version skew").

Policy: the same major version, and the agent at most one minor version older than the
operator, never newer. Upgrades go operator first, then the agent DaemonSet, so each
step stays inside it. Pure: the reconciler compares the version it runs with the one
the agent reports in ``ENIPool status.agent.version``.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version

POLICY = ("same major version, agent at most one minor version older than the operator, "
          "never newer")
_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")


def operator_version() -> str:
    try:
        return version("eniway")
    except PackageNotFoundError:
        return "unknown"


def parse(text: str) -> tuple[int, int] | None:
    """(major, minor) of ``1.2.3``, ``v1.2``, ``1.2.3rc1``...; None if it is not one."""
    m = _VERSION.match(text.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def skew_problem(operator: str, agent: str) -> str:
    """What is wrong with running ``agent`` beside ``operator`` ("" when within policy, or
    when the agent has not reported a version yet)."""
    if not agent:
        return ""
    op, ag = parse(operator), parse(agent)
    if op is None:
        return ""  # an operator without a release version (a source checkout): no policy
    if ag is None:
        return f"agent reports version {agent!r}, not a release version; operator {operator}"
    if ag[0] != op[0]:
        return (f"agent {agent} and operator {operator} differ in major version "
                f"(policy: {POLICY})")
    if ag[1] > op[1]:
        return (f"agent {agent} is newer than operator {operator}: upgrade the operator first "
                f"(policy: {POLICY})")
    if op[1] - ag[1] > 1:
        return (f"agent {agent} is {op[1] - ag[1]} minor versions behind operator {operator}: "
                f"upgrade the agent DaemonSet (policy: {POLICY})")
    return ""
