"""eniway-cloudsim as a process: --help, CLI options, and state that survives a restart
(clean stop and kill -9)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from eniway_cloudsim.testing import start_subprocess
from eniway_operator.cloud.base import InvalidParameter, QuotaExceeded
from eniway_operator.testing import with_provider

ZONE = "cn-hangzhou-i"


def test_help_documents_the_options() -> None:
    out = subprocess.run([sys.executable, "-m", "eniway_cloudsim.main", "--help"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    for opt in ("--listen", "--state", "--region", "--network", "--attach-delay",
                "--detach-delay", "--eni-quota", "--throttle", "--fault", "--seed",
                "--access-key", "--admin-token-file", "/instances/<id>/<token>/latest",
                "Authorization: Bearer"):
        assert opt in out, opt


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_state_survives_a_restart(tmp_path: Path, how: signal.Signals) -> None:
    state = str(tmp_path / "region.db")
    args = ["--state", state, "--attach-delay", "1.0", "--eni-quota", "5"]
    first = with_provider(start_subprocess(args))
    try:
        topo = first.admin.bootstrap({ZONE: ["10.1.0.0/24"]})
        vsw = topo.vswitch_ids(ZONE)[0]
        inst = first.admin.create_instance("ecs.g6.xlarge", vsw, [topo.security_group_id])
        p = first.provider()
        eni = p.create_eni(vsw, [topo.security_group_id], {"k": "v"}, secondary_ip_count=3,
                           client_token="create-1")
        p.attach_eni(eni.eni_id, inst["instance_id"])  # Attaching for 1 s
        assert p.describe_enis([eni.eni_id])[0].status == "Attaching"
        first.admin.stop(inst["instance_id"])
        assert first.proc is not None
        first.proc.send_signal(how)
        first.proc.wait(timeout=10)
    finally:
        first.close()

    second = with_provider(start_subprocess(args))
    try:
        p = second.provider()
        got = p.describe_enis([eni.eni_id])[0]
        assert got.private_ips == eni.private_ips and got.tags == {"k": "v"}
        assert got.instance_id == inst["instance_id"]
        deadline = time.monotonic() + 10
        while p.describe_enis([eni.eni_id])[0].status != "InUse":  # the attach completes
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert p.describe_instance(inst["instance_id"]).status == "Stopped"
        # the client token is remembered across the restart
        again = p.create_eni(vsw, [topo.security_group_id], {"k": "v"}, secondary_ip_count=3,
                             client_token="create-1")
        assert again.eni_id == eni.eni_id
        with pytest.raises(InvalidParameter):
            p.create_eni(vsw, [topo.security_group_id], {}, client_token="create-1")
        # addresses in use stay in use: new ones never collide
        new = p.create_eni(vsw, [topo.security_group_id], {})
        assert new.primary_ip not in {inst["primary_ip"], got.primary_ip, *got.private_ips}
        # the quota from the command line and the used count persist
        for _ in range(3):
            p.create_eni(vsw, [topo.security_group_id], {})
        with pytest.raises(QuotaExceeded):
            p.create_eni(vsw, [topo.security_group_id], {})
    finally:
        second.close()


def test_cli_throttle_and_fault_options(cloudsim_factory: Any) -> None:
    h = cloudsim_factory.subprocess(["--throttle", "DescribeVSwitches=0.01/1",
                                     "--fault", "DescribeInstances=1.0:InternalError:500",
                                     "--seed", "3"])
    from alibabacloud_ecs20140526 import models as ecs
    from alibabacloud_tea_openapi.exceptions import ClientException, ServerException

    c = h.client()
    c.describe_vswitches(ecs.DescribeVSwitchesRequest(region_id=h.region))
    with pytest.raises(ClientException) as ei:
        c.describe_vswitches(ecs.DescribeVSwitchesRequest(region_id=h.region))
    assert ei.value.code == "Throttling"
    with pytest.raises(ServerException) as si:
        c.describe_instances(ecs.DescribeInstancesRequest(region_id=h.region))
    assert si.value.code == "InternalError"
    assert h.admin.call_counts()["total"] == 3


def test_settings_at_start_win_over_the_saved_ones(tmp_path: Path, cloudsim_factory: Any
                                                   ) -> None:
    state = str(tmp_path / "s.db")
    first = cloudsim_factory(state=state, eni_quota=1)
    topo = first.admin.bootstrap({ZONE: ["10.4.0.0/24"]})
    vsw = topo.vswitch_ids(ZONE)[0]
    first.provider().create_eni(vsw, [topo.security_group_id], {})
    with pytest.raises(QuotaExceeded):
        first.provider().create_eni(vsw, [topo.security_group_id], {})
    first.close()
    second = cloudsim_factory(state=state, eni_quota=2)
    second.provider().create_eni(vsw, [topo.security_group_id], {})
    assert second.admin.state()["settings"]["eni_quota"] == 2
    assert len(second.provider().describe_enis()) == 2


def test_state_in_a_missing_folder_is_created(tmp_path: Path, cloudsim_factory: Any) -> None:
    state = tmp_path / "var" / "lib" / "eniway" / "cloudsim.db"
    h = cloudsim_factory.subprocess(["--state", str(state)])
    h.admin.bootstrap({ZONE: ["10.5.0.0/24"]})
    assert state.is_file()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eniway_cloudsim.main", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args,says", [
    (["--throttle", "bogus"], "--throttle"),
    (["--throttle", "*=0/5"], "--throttle"),
    (["--listen", "127.0.0.1:70000"], "65535"),
    (["--listen", "127.0.0.1:http"], "65535"),
    (["--fault", "AssignPrivateIpAddresses=lots"], "--fault"),
    (["--fault", "X=2.0"], "--fault"),
    (["--access-key", "no-colon"], "--access-key"),
    (["--admin-token-file", "/nonexistent/token"], "--admin-token-file"),
])
def test_bad_options_are_usage_errors(args: list[str], says: str) -> None:
    out = run_cli(*args)
    assert out.returncode == 2, out
    assert "usage: eniway-cloudsim" in out.stderr and says in out.stderr
    assert "Traceback" not in out.stderr


def test_a_state_folder_that_cannot_be_made_is_a_usage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    out = run_cli("--state", str(blocker / "sub" / "cloudsim.db"))
    assert out.returncode == 2 and "--state" in out.stderr and "cannot create" in out.stderr
    assert "Traceback" not in out.stderr
    out = run_cli("--state", str(tmp_path))
    assert out.returncode == 2 and "is a directory" in out.stderr


def test_a_port_in_use_is_a_usage_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        out = run_cli("--listen", f"127.0.0.1:{s.getsockname()[1]}")
    assert out.returncode == 2 and "--listen" in out.stderr and "Traceback" not in out.stderr
