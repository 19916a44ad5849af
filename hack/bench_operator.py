#!/usr/bin/env python3
"""Operator benchmark: cloud calls per 100 pods of churn, time to warm N nodes against
the time the cloud's default rate limits alone would need (ECS's, or EC2's with
``--cloud aws``), and the API server requests the
operator makes per reconcile round in both phases, and the operator's own CPU time and
peak RSS apart from the harness's.

Real parts: a local control plane (hack/localcluster.py), eniway-cloudsim throttled at ECS's
default per-API rates (the figures Terway uses, docs/configuration.md), the operator as a child
process talking to it through the official SDK, and the agent double for the nodes.

    python3 hack/bench_operator.py [--nodes 200] [--pods 100] [--attach-delay 1.0]
                                   [--attach-spread 3.0] [--cloud aliyun|aws]

With ``--cloud aws`` the emulator's EC2 dialect is throttled with EC2's documented buckets
and the operator talks to it through boto3; node types default to EC2's.

Prints figures; passes or fails nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "hack"))
sys.path.insert(0, str(REPO / "operator"))

import yaml  # noqa: E402
from kubernetes import client, watch  # noqa: E402

from cni_plugin import contract  # noqa: E402
from eniway_cloudsim.testing import start_in_process  # noqa: E402
from eniway_operator import kube as kube_mod  # noqa: E402
from eniway_operator.cloud.aws import EC2_RATES  # noqa: E402
from eniway_operator.cloud.base import InstanceLimits  # noqa: E402
from eniway_operator.cloud.ratelimit import DEFAULT_RATES  # noqa: E402
from eniway_operator.testing import (  # noqa: E402
    AgentDouble,
    OperatorProcess,
    delete_pods,
    make_node,
    make_pods,
    wait_for,
)
from localcluster import LocalCluster  # noqa: E402

ZONES = {"aliyun": "cn-hangzhou-i", "aws": "us-east-1a"}
TYPES = {"aliyun": ("ecs.g6.xlarge", "ecs.g6.4xlarge"), "aws": ("m5.xlarge", "m5.4xlarge")}
ZONE = ZONES["aliyun"]
RATES = DEFAULT_RATES
MUTATING = ("CreateNetworkInterface", "AttachNetworkInterface", "AssignPrivateIpAddresses",
            "UnassignPrivateIpAddresses", "DetachNetworkInterface", "DeleteNetworkInterface")
IP_CALLS = ("CreateNetworkInterface", "AssignPrivateIpAddresses", "UnassignPrivateIpAddresses")


def rate_bound(calls: dict[str, int]) -> float:
    """Seconds the per-API token buckets alone need for these calls (APIs in parallel,
    each starting with a full bucket)."""
    worst = 0.0
    for api, n in calls.items():
        rate = RATES.get(api)
        if rate is None or n <= rate.burst:
            continue
        worst = max(worst, (n - rate.burst) / rate.per_second)
    return worst


def round_requests(op: OperatorProcess) -> dict[str, float]:
    """The operator's reconcile rounds so far and its API server requests (counted by a
    wrapper on its client, ``eniway_kube_requests_total``; the lease's apart), in all and
    the reads of Nodes, ENIPools and ENIs."""
    m = op.metrics()
    rounds = sum(v for k, v in m.items() if k.startswith("eniway_reconcile_seconds_count"))
    reqs = {k: v for k, v in m.items() if k.startswith("eniway_kube_requests_total{")
            and 'resource="leases"' not in k}
    reads = sum(v for k, v in reqs.items()
                if ('verb="get"' in k or 'verb="list"' in k)
                and any(f'resource="{r}"' in k for r in ("nodes", "enipools", "enis")))
    out = {"rounds": rounds, "requests": sum(reqs.values()), "reads": reads}
    for k, v in reqs.items():  # by verb and resource: 'verb resource'
        labels = dict(p.split("=", 1) for p in k[k.index("{") + 1:-1].split(","))
        key = f'{labels.get("verb", "").strip(chr(34))} {labels.get("resource", "").strip(chr(34))}'
        out[key] = out.get(key, 0.0) + v
    return out


def proc_usage(pid: int) -> tuple[float, float]:
    """A process's CPU seconds (user + system) and peak RSS in MB, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    hwm = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    return cpu, hwm


def harness_cpu() -> float:
    """CPU seconds of this process: the emulator, the agent double and the harness."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class WarmWatch:
    """When each ENIPool of the given nodes first shows ``free`` >= want, from a watch
    (one event per status change, not a list of every pool per poll)."""

    def __init__(self, api: client.ApiClient, names: set[str], want: int) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.names, self.want = names, want
        self.warm: dict[str, float] = {}
        self.done = threading.Event()
        self._stop = threading.Event()
        got = cast(dict[str, Any], self.custom.list_cluster_custom_object(
            contract.GROUP, contract.VERSION, contract.PLURAL_ENIPOOL))
        self._rv = got["metadata"]["resourceVersion"]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._watch()
        except Exception:
            if not self._stop.is_set():  # after stop() the cluster may go at any moment
                raise

    def _watch(self) -> None:
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for ev in w.stream(self.custom.list_cluster_custom_object, contract.GROUP,
                                   contract.VERSION, contract.PLURAL_ENIPOOL,
                                   resource_version=self._rv, timeout_seconds=60):
                    self._rv = ev["object"]["metadata"]["resourceVersion"]
                    self._see(ev["object"])
                    if self._stop.is_set():
                        break
            except client.ApiException as e:
                if e.status != 410:
                    raise
                got = cast(dict[str, Any], self.custom.list_cluster_custom_object(
                    contract.GROUP, contract.VERSION, contract.PLURAL_ENIPOOL))
                self._rv = got["metadata"]["resourceVersion"]
                for obj in got["items"]:  # what the expired watch missed
                    self._see(obj)
            finally:
                w.stop()

    def _see(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        counts = (obj.get("status") or {}).get("counts") or {}
        if name in self.names and name not in self.warm and counts.get("free", 0) >= self.want:
            self.warm[name] = time.monotonic()
            if len(self.warm) == len(self.names):
                self.done.set()

    def stop(self) -> None:
        self._stop.set()


def per_round(before: dict[str, float], after: dict[str, float],
              nodes: int = 0) -> dict[str, Any]:
    """Requests per round; with ``nodes``, also per node, by verb and resource."""
    rounds = max(1.0, after["rounds"] - before["rounds"])
    out: dict[str, Any] = {
        "rounds": after["rounds"] - before["rounds"],
        "requests_per_round": round((after["requests"] - before["requests"]) / rounds, 2),
        "node_pool_eni_reads_per_round": round((after["reads"] - before["reads"]) / rounds, 2)}
    if nodes:
        out["rounds_per_node"] = round(out["rounds"] / nodes, 2)
        out["requests_per_node"] = round((after["requests"] - before["requests"]) / nodes, 2)
        out["per_node_by_request"] = {
            k: round((v - before.get(k, 0.0)) / nodes, 2) for k, v in sorted(after.items())
            if " " in k and v - before.get(k, 0.0) > 0}
    return out


def provider_limits(sim: Any, aws: bool, instance_type: str) -> InstanceLimits:
    """The type's limits and the cloud's rules, as the operator's provider states them."""
    if not aws:
        from eniway_operator.testing import with_provider
        return cast(InstanceLimits, with_provider(sim).provider().instance_limits(
            instance_type))
    import boto3

    from eniway_operator.cloud.aws import AwsProvider
    return AwsProvider(sim.aws_region, endpoint=sim.url, session=boto3.session.Session(
        aws_access_key_id=sim.access_key_id, aws_secret_access_key=sim.access_key_secret)
    ).instance_limits(instance_type)


def necessary_calls(limits: InstanceLimits, nodes: int, warm: int) -> dict[str, int]:
    """The calls warming ``nodes`` nodes to ``warm`` free IPs cannot do without: where the
    primary ENI serves pods (EC2) one assign per node while it has room; else one create
    (with its IPs, up to the cloud's ips_at_create) and one attach per ENI needed; and
    the instance describes (100 ids a call)."""
    out = {"DescribeInstances": math.ceil(nodes / 100)}
    if limits.pods_on_primary_eni and warm <= limits.ips_per_eni - 1:
        out["AssignPrivateIpAddresses"] = nodes * math.ceil(warm / limits.ips_per_call)
        return out
    cap = min(limits.ips_per_eni - 1, limits.ips_at_create)
    enis = math.ceil(warm / cap) if warm else 0
    out["CreateNetworkInterface"] = out["AttachNetworkInterface"] = nodes * enis
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--warm", type=int, default=5, help="min_pool_size while warming")
    ap.add_argument("--cloud", choices=sorted(ZONES), default="aliyun",
                    help="the emulator's API and the operator's provider")
    ap.add_argument("--instance-type", default="",
                    help="type of the warmed nodes (default ecs.g6.xlarge, on aws m5.xlarge)")
    ap.add_argument("--attach-delay", type=float, default=1.0,
                    help="seconds the emulator takes at least to attach an ENI")
    ap.add_argument("--attach-spread", type=float, default=3.0,
                    help="each attach takes up to this many times --attach-delay")
    ap.add_argument("--workers", type=int, default=32)
    args = ap.parse_args()
    global ZONE, RATES
    ZONE = ZONES[args.cloud]
    RATES = EC2_RATES if args.cloud == "aws" else DEFAULT_RATES
    aws = args.cloud == "aws"
    args.instance_type = args.instance_type or TYPES[args.cloud][0]
    churn_type = TYPES[args.cloud][1]

    tmp = Path(tempfile.mkdtemp(prefix="eniway-bench-"))
    cluster = LocalCluster().start()
    sim = start_in_process(attach_delay=args.attach_delay, detach_delay=args.attach_delay,
                           eni_quota=10 * args.nodes + 100)
    op: OperatorProcess | None = None
    agent: AgentDouble | None = None
    results: dict[str, Any] = {}
    try:
        sim.admin.set_settings(delay_spread=args.attach_spread)
        if aws:  # the cloud's own documented buckets, as the provider's client side has
            sim.admin.throttle_preset("ec2")
            topo = sim.admin.bootstrap({ZONE: ["10.0.0.0/17", "10.0.128.0/17"]},
                                       vpc_cidr="10.0.0.0/16", cloud="aws")
        else:
            for api_name, rate in DEFAULT_RATES.items():
                sim.admin.set_throttle(api_name, rate.per_second, burst=rate.burst)
            topo = sim.admin.bootstrap({ZONE: ["10.0.0.0/16", "10.1.0.0/16"]})
        api = kube_mod.load_config(str(cluster.kubeconfig))
        core = client.CoreV1Api(api)
        ns = "eniway-bench"
        core.create_namespace({"metadata": {"name": ns}})  # type: ignore[arg-type]
        wait_for(lambda: core.list_namespaced_service_account(ns).items, 60, "service account")

        def config(**pool: Any) -> None:
            cfg = {"security_group_ids": [topo.security_group_id],
                   "vswitches": {ZONE: topo.vswitch_ids(ZONE)}, "ip_cooldown": 0, **pool}
            body = {"metadata": {"name": "eniway-config"},
                    "data": {"config.yaml": yaml.safe_dump(cfg)}}
            try:
                core.create_namespaced_config_map(ns, body)  # type: ignore[arg-type]
            except client.ApiException:
                core.replace_namespaced_config_map("eniway-config", ns,
                                                   body)  # type: ignore[arg-type]

        def counts() -> dict[str, int]:
            return {k: int(v) for k, v in sim.admin.call_counts()["calls"].items()}

        def node_counts(name: str) -> dict[str, int]:
            try:
                pool = cast(dict[str, Any], client.CustomObjectsApi(api)
                            .get_cluster_custom_object(contract.GROUP, contract.VERSION,
                                                       contract.PLURAL_ENIPOOL, name))
            except client.ApiException:
                return {}
            return cast(dict[str, int], (pool.get("status") or {}).get("counts") or {})

        # --- churn ---------------------------------------------------------------------
        config(min_pool_size=0, max_pool_size=5)
        inst = sim.admin.create_instance(churn_type, topo.vswitch_ids(ZONE)[0],
                                         [topo.security_group_id])
        make_node(api, "churn", inst["provider_id"], churn_type, ZONE)
        agent = AgentDouble(api, ["churn"], interval=0.1).start()
        op = OperatorProcess(cluster.kubeconfig, "bench", sim.endpoint,
                             sim.aws_region if aws else sim.region, ns,
                             "eniway-config", (sim.access_key_id, sim.access_key_secret),
                             tmp / "operator.log", cloud="aws" if aws else "cloudsim", extra=(
                                 f"--workers={args.workers}",
                                 # one operator only: a starved machine must not end the run
                                 "--lease-duration=120"))
        op.start()
        wait_for(lambda: node_counts("churn").get("total") == 0, 120, "churn node ready")
        sim.admin.reset_call_counts()
        kube_churn = round_requests(op)
        t0 = time.monotonic()
        pods = make_pods(api, "churn", args.pods, namespace=ns)
        wait_for(lambda: len(agent.held("churn")) == args.pods, 600, "pods served")
        t_up = time.monotonic() - t0
        # what scaling up costs includes settling: what the surge left over goes back
        wait_for(lambda: node_counts("churn").get("free", 99) <= 5
                 and not node_counts("churn").get("releasing")
                 and not node_counts("churn").get("pending"), 600, "pool settled after scale-up")
        up = counts()
        sim.admin.reset_call_counts()
        delete_pods(api, pods, ns)
        wait_for(lambda: len(agent.held("churn")) == 0, 300, "pods gone")
        wait_for(lambda: node_counts("churn").get("free", 99) <= 5
                 and not node_counts("churn").get("releasing"), 600, "pool shrunk")
        # ...and the ENIs released whole are gone (detached, then deleted)
        wait_for(lambda: not [e for e in sim.admin.state()["enis"]
                              if e["status"] not in ("InUse", "in-use")], 600,
                 "released ENIs deleted")
        down = counts()
        kube_churn_per_round = per_round(kube_churn, round_requests(op))
        per = 100.0 / args.pods
        results["churn"] = {
            "pods": args.pods, "scale_up_s": round(t_up, 2),
            "up_calls": up, "down_calls": down,
            "ip_calls_per_100_pods_up": round(sum(up.get(a, 0) for a in IP_CALLS) * per, 1),
            "ip_calls_per_100_pods_down": round(
                sum(down.get(a, 0) for a in IP_CALLS) * per, 1),
            "mutating_calls_per_100_pods_churn": round(
                sum(up.get(a, 0) + down.get(a, 0) for a in MUTATING) * per, 1),
            "all_calls_per_100_pods_churn": round(
                (sum(up.values()) + sum(down.values())) * per, 1),
            "peer_one_ip_per_call": 200,
            "apiserver": kube_churn_per_round,
        }

        # --- warm N nodes --------------------------------------------------------------
        config(min_pool_size=args.warm, max_pool_size=max(5, args.warm))
        agent.stop()
        instances = []
        for i in range(args.nodes):
            instances.append(sim.admin.create_instance(
                args.instance_type, topo.vswitch_ids(ZONE)[i % 2], [topo.security_group_id]))
        time.sleep(6)  # the operator has read the new config (its cache lasts 5 s)
        names = [f"warm-{i:04d}" for i in range(args.nodes)]
        warm_watch = WarmWatch(api, set(names), args.warm)
        sim.admin.reset_call_counts()
        kube_warm = round_requests(op)
        assert op.proc is not None
        op_cpu0, _ = proc_usage(op.proc.pid)
        h_cpu0, load0 = harness_cpu(), load()
        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as ex:  # the nodes appear together, as in a scale-out
            list(ex.map(lambda a: make_node(api, a[0], a[1]["provider_id"], args.instance_type,
                                            ZONE), zip(names, instances, strict=True)))
        t_nodes = time.monotonic() - t0
        wait_for(warm_watch.done.is_set, 3600, f"{args.nodes} nodes warm", interval=0.5)
        warm_watch.stop()
        t_warm = max(warm_watch.warm.values()) - t0
        op_cpu, op_rss = proc_usage(op.proc.pid)
        h_cpu, wall = harness_cpu() - h_cpu0, time.monotonic() - t0
        calls = counts()
        kube_warm_per_round = per_round(kube_warm, round_requests(op), args.nodes)
        necessary = necessary_calls(provider_limits(sim, aws, args.instance_type),
                                    args.nodes, args.warm)
        bound_needed = rate_bound(necessary)
        bound_made = rate_bound(calls)
        results["warm"] = {
            "cloud": args.cloud, "nodes": args.nodes, "instance_type": args.instance_type,
            "min_pool_size": args.warm, "necessary_calls": necessary,
            "attach_delay_s": [args.attach_delay, args.attach_delay * args.attach_spread],
            "node_objects_created_s": round(t_nodes, 2),
            "time_to_warm_s": round(t_warm, 2), "calls": calls,
            "rate_limit_bound_for_necessary_calls_s": round(bound_needed, 2),
            "rate_limit_bound_for_calls_made_s": round(bound_made, 2),
            "ratio_vs_necessary": round(t_warm / bound_needed, 2) if bound_needed else None,
            "ratio_vs_calls_made": round(t_warm / bound_made, 2) if bound_made else None,
            "apiserver": kube_warm_per_round,
            "operator_cpu_s": round(op_cpu - op_cpu0, 1),
            "operator_peak_rss_mb": round(op_rss, 1),
            "harness_cpu_s": round(h_cpu, 1), "wall_s": round(wall, 1),
            "load_before": load0, "load_after": load(),
        }
        print(json.dumps(results, indent=2))
        c = results["churn"]
        w = results["warm"]
        print(f"\nchurn of {args.pods} pods: {c['ip_calls_per_100_pods_up']} IP calls per 100 "
              f"pods up, {c['ip_calls_per_100_pods_down']} down (one IP per call: 100 each); "
              f"{c['mutating_calls_per_100_pods_churn']} mutating calls, "
              f"{c['all_calls_per_100_pods_churn']} calls with describes per 100 pods up+down")
        print(f"warm {args.nodes} nodes: {w['time_to_warm_s']} s; "
              f"{'EC2' if aws else 'ECS'} default rate limits "
              f"alone need {w['rate_limit_bound_for_necessary_calls_s']} s for the necessary "
              f"calls (ratio {w['ratio_vs_necessary']}), "
              f"{w['rate_limit_bound_for_calls_made_s']} s for the calls made "
              f"(ratio {w['ratio_vs_calls_made']})")
        print(f"warm {args.nodes} nodes: operator CPU {w['operator_cpu_s']} s, peak RSS "
              f"{w['operator_peak_rss_mb']} MB; harness (emulator, agent double, watch) CPU "
              f"{w['harness_cpu_s']} s in {w['wall_s']} s; load {w['load_before']} -> "
              f"{w['load_after']}")
        for phase in ("churn", "warm"):
            k = results[phase]["apiserver"]
            print(f"apiserver requests per round ({phase}): {k['requests_per_round']}, of "
                  f"which {k['node_pool_eni_reads_per_round']} reads of the node, its pool "
                  f"and its ENIs ({int(k['rounds'])} rounds)")
        k = w["apiserver"]
        print(f"warm {args.nodes} nodes: {k['rounds_per_node']} rounds and "
              f"{k['requests_per_node']} apiserver requests per node: "
              + ", ".join(f"{n} {r}" for r, n in k["per_node_by_request"].items()))
        return 0
    finally:
        if agent is not None:
            agent.stop()
        if op is not None:
            op.stop()
        sim.close()
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
