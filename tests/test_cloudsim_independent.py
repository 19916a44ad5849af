"""The emulator is the oracle the operator's tests trust, so it shares nothing with the
operator: no import, its own instance-type table and its own throttling code. The two
tables are both taken from Alibaba's published figures; comparing them catches a row
that is wrong on one side."""

from __future__ import annotations

import ast
import dataclasses
import io
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import eniway_cloudsim
from eniway_cloudsim.catalog import DATA_FILE, InstanceType, catalog, parse
from eniway_operator.cloud.limits import DATA_FILE as OPERATOR_DATA_FILE
from eniway_operator.cloud.limits import InstanceTypeRow, bundled_table

PACKAGE = Path(eniway_cloudsim.__file__).resolve().parent
FIELDS = ("family", "vcpu", "memory_gib", "eni_quantity", "eni_private_ip_quantity",
          "eni_ipv6_quantity", "eni_total_quantity", "hot_swap")


def differences(emulator: Mapping[str, InstanceType], operator: Mapping[str, InstanceTypeRow]
                ) -> list[str]:
    out = [f"{t}: only in the emulator" for t in sorted(emulator.keys() - operator.keys())]
    out += [f"{t}: only in the operator" for t in sorted(operator.keys() - emulator.keys())]
    for t in sorted(emulator.keys() & operator.keys()):
        for f in FIELDS:
            mine, theirs = getattr(emulator[t], f), getattr(operator[t], f)
            if mine != theirs:
                out.append(f"{t}.{f}: emulator {mine!r}, operator {theirs!r}")
    return out


def test_the_two_tables_agree_row_by_row() -> None:
    emulator, operator = catalog(), bundled_table()
    assert DATA_FILE.resolve() != OPERATOR_DATA_FILE.resolve()  # two files, two parsers
    assert len(emulator) >= 140
    assert differences(emulator, operator) == []
    # spot checks against the published figures (Alibaba's instance family pages)
    assert (emulator["ecs.g6.large"].eni_quantity,
            emulator["ecs.g6.large"].eni_private_ip_quantity) == (2, 6)
    assert (emulator["ecs.g7.4xlarge"].eni_quantity,
            emulator["ecs.g7.4xlarge"].eni_private_ip_quantity) == (8, 30)
    assert emulator["ecs.t6-c1m1.large"].hot_swap is False


def test_a_wrong_row_on_one_side_is_caught() -> None:
    text = DATA_FILE.read_text(encoding="utf-8").replace(
        "ecs.g6.large\tecs.g6\t2\t8\t2\t6\t", "ecs.g6.large\tecs.g6\t2\t8\t2\t7\t", 1)
    wrong = parse(io.StringIO(text))
    assert wrong["ecs.g6.large"].eni_private_ip_quantity == 7
    assert differences(wrong, bundled_table()) == [
        "ecs.g6.large.eni_private_ip_quantity: emulator 7, operator 6"]
    lost = dict(catalog())
    del lost["ecs.g7.large"]
    assert differences(lost, bundled_table()) == ["ecs.g7.large: only in the operator"]
    assert set(FIELDS) <= {f.name for f in dataclasses.fields(InstanceType)}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and node.value.startswith("eniway_operator"):
            names.add(node.value)  # importlib.import_module("eniway_operator...")
    return names


def test_the_emulator_imports_nothing_of_the_operator() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) >= 10
    bad = {str(f.relative_to(PACKAGE)): sorted(n for n in _imports(f)
                                               if n.split(".")[0] == "eniway_operator")
           for f in files}
    assert {f: n for f, n in bad.items() if n} == {}


def test_a_running_emulator_loads_no_operator_module() -> None:
    """Every module imported and a region served, in a fresh interpreter: nothing of
    eniway_operator ends up in sys.modules."""
    code = """
import pkgutil, importlib, sys
import eniway_cloudsim
for m in pkgutil.walk_packages(eniway_cloudsim.__path__, "eniway_cloudsim."):
    importlib.import_module(m.name)
from eniway_cloudsim.testing import start_in_process
from alibabacloud_ecs20140526 import models as ecs
h = start_in_process()
try:
    topo = h.admin.bootstrap()
    h.admin.create_instance("ecs.g6.large", topo.vswitch_ids("cn-hangzhou-i")[0],
                            [topo.security_group_id])
    h.sim.gate.set_throttle({})
    body = h.client().describe_instance_types(ecs.DescribeInstanceTypesRequest(
        instance_types=["ecs.g6.large"])).body
    assert body.instance_types.instance_type[0].eni_quantity == 2
finally:
    h.close()
leaked = sorted(m for m in sys.modules if m.split(".")[0] == "eniway_operator")
print(leaked)
assert not leaked, leaked
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_throttle_is_the_emulators_own(cloudsim: Any) -> None:
    from eniway_cloudsim.faults import Bucket, Rate

    t = [0.0]
    b = Bucket(Rate(per_second=2, burst=2), clock=lambda: t[0])
    assert [b.admit() for _ in range(3)] == [True, True, False]
    t[0] += 0.5  # one token back
    assert [b.admit(), b.admit()] == [True, False]
    cloudsim.admin.set_throttle("DescribeVSwitches", 1, burst=1)
    from alibabacloud_ecs20140526 import models as ecs
    from alibabacloud_tea_openapi.exceptions import ClientException

    client = cloudsim.client()
    req = ecs.DescribeVSwitchesRequest(region_id=cloudsim.region)
    client.describe_vswitches(req)
    try:
        client.describe_vswitches(req)
        raised: Any = None
    except ClientException as e:
        raised = e
    assert raised is not None and raised.code == "Throttling"
