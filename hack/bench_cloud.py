#!/usr/bin/env python3
"""SDK call latency against eniway-cloudsim: median and p99 per ECS API, measured with
the official SDK (alibabacloud_ecs20140526) as the client. The emulator runs in its own
process by default (``--in-process`` to share this one). Prints figures; asserts nothing.

    python3 hack/bench_cloud.py [-n 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "operator"))

from alibabacloud_ecs20140526 import models as ecs

from eniway_cloudsim.testing import start_in_process, start_subprocess

ZONE = "cn-hangzhou-i"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200, help="rounds (each round calls every API)")
    ap.add_argument("--in-process", action="store_true")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()

    if args.in_process:
        h = start_in_process(attach_delay=0, detach_delay=0)
    else:
        h = start_subprocess(["--attach-delay", "0", "--detach-delay", "0",
                              "--eni-quota", "100000"])
    try:
        topo = h.admin.bootstrap({ZONE: ["10.0.0.0/16"]})
        vsw = topo.vswitch_ids(ZONE)[0]
        inst = h.admin.create_instance("ecs.g7.16xlarge", vsw, [topo.security_group_id])
        iid, region, sg = inst["instance_id"], h.region, topo.security_group_id
        c = h.client()
        lat: dict[str, list[float]] = defaultdict(list)

        def timed(api: str, fn: Callable[[Any], Any], request: Any) -> Any:
            t = time.perf_counter()
            out = fn(request)
            lat[api].append((time.perf_counter() - t) * 1000)
            return out

        for _ in range(args.n):
            eni = timed("CreateNetworkInterface", c.create_network_interface,
                        ecs.CreateNetworkInterfaceRequest(region_id=region, v_switch_id=vsw,
                                                          security_group_ids=[sg])).body
            eid = eni.network_interface_id
            timed("AttachNetworkInterface", c.attach_network_interface,
                  ecs.AttachNetworkInterfaceRequest(region_id=region, network_interface_id=eid,
                                                    instance_id=iid))
            ips = timed("AssignPrivateIpAddresses", c.assign_private_ip_addresses,
                        ecs.AssignPrivateIpAddressesRequest(
                            region_id=region, network_interface_id=eid,
                            secondary_private_ip_address_count=10)).body
            got = ips.assigned_private_ip_addresses_set.private_ip_set.private_ip_address
            timed("DescribeNetworkInterfaces", c.describe_network_interfaces,
                  ecs.DescribeNetworkInterfacesRequest(region_id=region, instance_id=iid))
            timed("DescribeInstances", c.describe_instances,
                  ecs.DescribeInstancesRequest(region_id=region, instance_ids=json.dumps([iid])))
            timed("DescribeVSwitches", c.describe_vswitches,
                  ecs.DescribeVSwitchesRequest(region_id=region, v_switch_id=vsw))
            timed("DescribeInstanceTypes", c.describe_instance_types,
                  ecs.DescribeInstanceTypesRequest(instance_types=["ecs.g7.16xlarge"]))
            timed("ModifyNetworkInterfaceAttribute", c.modify_network_interface_attribute,
                  ecs.ModifyNetworkInterfaceAttributeRequest(
                      region_id=region, network_interface_id=eid, description="bench"))
            timed("UnassignPrivateIpAddresses", c.unassign_private_ip_addresses,
                  ecs.UnassignPrivateIpAddressesRequest(
                      region_id=region, network_interface_id=eid, private_ip_address=got))
            timed("DetachNetworkInterface", c.detach_network_interface,
                  ecs.DetachNetworkInterfaceRequest(region_id=region, network_interface_id=eid,
                                                    instance_id=iid))
            timed("DeleteNetworkInterface", c.delete_network_interface,
                  ecs.DeleteNetworkInterfaceRequest(region_id=region, network_interface_id=eid))
        rows = {api: {"n": len(xs), "median_ms": round(statistics.median(xs), 3),
                      "p99_ms": round(pct(xs, 99), 3)} for api, xs in lat.items()}
        calls = h.admin.call_counts()
        if args.json:
            print(json.dumps({"apis": rows, "server_calls": calls["total"]}, indent=2))
        else:
            mode = "in-process" if args.in_process else "subprocess"
            print(f"eniway-cloudsim SDK latency ({mode}, {args.n} rounds)")
            print(f"{'API':36} {'n':>6} {'median ms':>10} {'p99 ms':>9}")
            for api, r in rows.items():
                print(f"{api:36} {r['n']:>6} {r['median_ms']:>10.3f} {r['p99_ms']:>9.3f}")
            print(f"server counted {calls['total']} calls")
    finally:
        h.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
