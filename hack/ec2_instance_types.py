"""Regenerate operator/eniway_cloudsim/data/ec2_instance_types.tsv, the EC2 instance
types eniway-cloudsim's EC2 dialect knows, from the DescribeInstanceTypes answers moto
ships (moto/ec2/resources/instance_types.json.gz in the moto wheel, recorded from
EC2's DescribeInstanceTypes API).

    pip download --no-deps moto==5.1.0 -d /tmp/moto
    python hack/ec2_instance_types.py /tmp/moto/moto-5.1.0-py3-none-any.whl

Every type moto lists is kept; the columns are the ones the emulator enforces or
answers (network figures per network card, vCPU, memory, hypervisor)."""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

MEMBER = "moto/ec2/resources/instance_types.json.gz"
OUT = Path(__file__).resolve().parent.parent / "operator" / "eniway_cloudsim" / "data" / \
    "ec2_instance_types.tsv"
COLUMNS = ("instance_type", "vcpu", "memory_mib", "hypervisor", "architectures",
           "current_generation", "maximum_network_interfaces", "network_card_interfaces",
           "ipv4_addresses_per_interface", "ipv6_addresses_per_interface")


def rows(types: dict[str, Any]) -> list[list[str]]:
    out = []
    for name in sorted(types):
        t = types[name]
        net = t["NetworkInfo"]
        cards = sorted(net.get("NetworkCards") or [], key=lambda c: c["NetworkCardIndex"])
        per_card = [str(c["MaximumNetworkInterfaces"]) for c in cards] or \
            [str(net["MaximumNetworkInterfaces"])]
        out.append([name, str(t["VCpuInfo"]["DefaultVCpus"]), str(t["MemoryInfo"]["SizeInMiB"]),
                    t.get("Hypervisor", ""),
                    ",".join(t["ProcessorInfo"]["SupportedArchitectures"]),
                    "yes" if t.get("CurrentGeneration") else "no",
                    str(net["MaximumNetworkInterfaces"]), ",".join(per_card),
                    str(net["Ipv4AddressesPerInterface"]),
                    str(net.get("Ipv6AddressesPerInterface", 0))])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("wheel", help="the moto wheel (pip download --no-deps moto==5.1.0)")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    with zipfile.ZipFile(args.wheel) as z, z.open(MEMBER) as f:
        types = json.loads(gzip.decompress(f.read()))
    source = f"# source: {Path(args.wheel).name}:{MEMBER} (EC2 DescribeInstanceTypes)\n"
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(source)
        f.write("\t".join(COLUMNS) + "\n")
        for r in rows(types):
            f.write("\t".join(r) + "\n")
    print(f"{args.out}: {len(types)} instance types", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
