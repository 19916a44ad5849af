#!/usr/bin/env python3
"""Watch benchmark: what one node's agent receives from the API server in a cluster of N
nodes, when the ENIs of the other nodes change.

Real parts: a local control plane, N Node objects, one secondary ENI resource per other
node written as the operator writes them (labelled with the node), and one real
eniway-agent for an emulated node (real netns). The agent is restarted once the other
nodes exist (its list), then every other node's ENI changes once, then one of its own
(so, once the agent has seen its own change, everything before it on the same watch has
been delivered). Figures come from the agent's own counter
``eniway_kube_watch_objects_total``.

    python3 hack/bench_watch.py [--nodes 200]      (root; make deps first)

Prints figures; passes or fails nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "hack"), str(REPO / "tests"), str(REPO)]

from node_harness import (  # noqa: E402
    OtherNodes,
    make_node_env,
    teardown_node_env,
    wait_for,
    watch_counts,
)

from cni_plugin import contract  # noqa: E402
from localcluster import LocalCluster  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=200, help="nodes in the cluster (>= 2)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_watch.py needs root (network namespaces)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="eniway-bench-"))
    cluster = LocalCluster().start()
    try:
        env = make_node_env(cluster, workdir)
        others = OtherNodes(cluster, args.nodes - 1)
        try:
            others.create()
            env.agent.stop()
            env.agent.start()  # lists with the other nodes present
            start = watch_counts(env.agent)
            others.touch()
            own = env.net.enis[1].id
            code, _ = cluster.request(
                "PATCH", f"/apis/{contract.API_VERSION}/{contract.PLURAL_ENI}/{own}/status",
                {"status": {"ipCount": 999}}, content_type="application/merge-patch+json")
            assert code == 200, code
            end = wait_for(lambda: (c := watch_counts(env.agent))["watch/own"]
                           > start["watch/own"] and c, 60, "the agent sees its own change")
        finally:
            others.delete()
            teardown_node_env(env)
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    other_events = int(end["watch/other"] - start["watch/other"])
    own_events = int(end["watch/own"] - start["watch/own"])
    result = {"nodes": args.nodes, "other_node_eni_changes": args.nodes - 1,
              "listed_enis_own": int(start["list/own"]),
              "listed_enis_other": int(start["list/other"]),
              "events_about_other_nodes": other_events, "events_about_own_node": own_events}
    print(json.dumps(result, indent=2))
    print(f"\none agent among {args.nodes} nodes: {other_events} ENI events about other nodes "
          f"for {args.nodes - 1} changes there (goal 0), {own_events} about its own; "
          f"its list held {int(start['list/other'])} ENIs of other nodes and "
          f"{int(start['list/own'])} of its own")
    return 0


if __name__ == "__main__":
    sys.exit(main())
