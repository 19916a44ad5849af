"""hack/kind-e2e.sh cannot run here (no Docker engine). What can be checked is: the script
parses, its emulator bootstrap (run inside the cloudsim container there) works against the
real emulator started with the same flags and yields provider ids the operator maps to
instances, and its chart values pass the chart's schema."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

from chart_rbac import REPO, render

from eniway_operator.reconcile import instance_of

SCRIPT = REPO / "hack" / "kind-e2e.sh"


def _text() -> str:
    return SCRIPT.read_text()


def test_script_parses_and_says_it_is_not_run_in_ci() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    assert "NOT run in CI" in _text()
    assert SCRIPT.stat().st_mode & 0o111


def test_bootstrap_against_the_real_emulator(cloudsim_factory: Any, tmp_path: Any) -> None:
    text = _text()
    bootstrap = re.search(r"<<'PY'\n(.*?)\nPY\n", text, re.S)
    assert bootstrap
    run = re.search(r"eniway-cloudsim --listen \S+ --region \S+ \\\n\s+(.*?) >/dev/null", text)
    assert run
    flags = run.group(1).replace("/tmp/cloudsim.db", str(tmp_path / "cloudsim.db")).split()
    sim = cloudsim_factory.subprocess(flags)
    types = ["ecs.g6.large", "ecs.c6.xlarge", "ecs.r6.xlarge"]
    assert f"TYPES=(${{TYPES:-{' '.join(types)}}})" in text
    # the container holds the admin token in its environment, docker exec passes it on
    assert '-e ENIWAY_CLOUDSIM_ADMIN_TOKEN="$SIM_ADMIN_TOKEN"' in text
    out = subprocess.run([sys.executable, "-", sim.endpoint.rsplit(":", 1)[1],
                          "cn-hangzhou-i", *types], input=bootstrap.group(1),
                         capture_output=True, text=True, timeout=60, check=True,
                         env={**os.environ, "ENIWAY_CLOUDSIM_ADMIN_TOKEN": sim.admin_token})
    provider_ids = out.stdout.split()
    assert len(provider_ids) == 3
    for pid, itype in zip(provider_ids, types, strict=True):
        assert pid.startswith("cn-hangzhou.")
        instance = instance_of({"spec": {"providerID": pid}})
        assert sim.admin.instance(instance)["instance_type"] == itype


def test_script_helm_values_pass_the_schema() -> None:
    block = re.search(r"helm install eniway charts/eniway(.*?)\n\n", _text(), re.S)
    assert block
    sets = re.findall(r"--set (\S+)", block.group(1))
    sample = {"$REGION": "cn-hangzhou", "${SIM_IP}": "172.18.0.2", "${SIM_PORT}": "8765",
              "$CLUSTER": "eniway-e2e"}
    args: list[str] = []
    for item in sets:
        for var, value in sample.items():
            item = item.replace(var, value)
        assert "$" not in item, item
        args += ["--set", item.replace('"', "")]
    docs = render(extra=tuple(args))
    assert not [d for d in docs if d["metadata"]["name"].endswith("-cloudsim")]
    cm = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert cm["cloud-endpoint"] == "http://172.18.0.2:8765"
    assert cm["cloud-provider"] == "cloudsim" and cm["cluster-id"] == "eniway-e2e"
