"""``eniway-operator max-pods TYPE...``: how many pods eniway can give an IP on a node of
each instance type, for kubelet's ``--max-pods`` (docs/install.md, "Sizing").

From the bundled table of the ``--cloud`` by default (no cloud call); with
``--from-cloud`` from the region's DescribeInstanceTypes, with the operator's cloud flags.
The figure is what the operator publishes per node (``ENIPool status.limits.maxPods``,
annotation ``network.eniway.io/max-pods``), ``InstanceLimits.max_pods``. On ECS:
secondary ENIs x secondary IPs per ENI (pods on the host network, the agent,
kube-proxy..., take no eniway IP and come on top).
On EC2 (``--cloud aws``), EKS's figure: ENIs x (IPs per ENI - 1) + 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from eniway_operator.cloud import aws
from eniway_operator.cloud.base import CloudError, InstanceLimits
from eniway_operator.cloud.limits import bundled_table

EXIT_UNKNOWN = 2


def table_limits(instance_type: str, cloud: str = "aliyun") -> InstanceLimits | None:
    """From the cloud's bundled table, with its rules (EC2's formula with aws)."""
    if cloud == "aws":
        row = bundled_table(aws.DATA_FILE).get(instance_type)
        return aws.ec2_limits(row.limits()) if row is not None else None
    row = bundled_table().get(instance_type)
    return row.limits() if row is not None else None


def render(rows: Sequence[tuple[str, InstanceLimits | None]]) -> str:
    out = [f"{'TYPE':<22} {'ENIS':>4} {'IPS/ENI':>7} {'MAXPODS':>7}  SOURCE"]
    for name, lim in rows:
        if lim is None:
            out.append(f"{name:<22} {'-':>4} {'-':>7} {'-':>7}  unknown instance type")
        else:
            out.append(f"{name:<22} {lim.max_enis:>4} {lim.ips_per_eni:>7} {lim.max_pods:>7}  "
                       f"{lim.source}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    from eniway_operator import main as operator_main

    p = operator_main.build_parser()
    p.prog = "eniway-operator max-pods"
    p.description = __doc__
    p.add_argument("instance_types", nargs="+", metavar="TYPE",
                   help="e.g. ecs.g6.large, or m5.large with --cloud aws")
    p.add_argument("--from-cloud", action="store_true",
                   help="ask the region's DescribeInstanceTypes instead of the bundled table")
    p.add_argument("--quiet", "-q", action="store_true",
                   help="print only the figure (one type): --max-pods=$(... -q)")
    argv = list(sys.argv[1:] if argv is None else argv)
    # Without the cloud the cluster id is not needed: the plain parser.
    args = operator_main.parse_args(argv, p) if "--from-cloud" in argv else p.parse_args(argv)
    rows: list[tuple[str, InstanceLimits | None]] = []
    if args.from_cloud:
        try:
            found = operator_main.make_provider(args).fetch_instance_types(args.instance_types)
        except CloudError as e:
            print(f"eniway-operator max-pods: {e}", file=sys.stderr)
            return 1
        rows = [(t, found.get(t)) for t in args.instance_types]
    else:
        rows = [(t, table_limits(t, args.cloud)) for t in args.instance_types]
    if args.quiet:
        if len(rows) != 1 or rows[0][1] is None:
            print(f"eniway-operator max-pods: unknown instance type {rows[0][0]}"
                  if rows[0][1] is None else "--quiet takes one instance type", file=sys.stderr)
            return EXIT_UNKNOWN
        lim = rows[0][1]
        print(lim.max_pods)
        return 0
    print(render(rows))
    return EXIT_UNKNOWN if any(lim is None for _, lim in rows) else 0
