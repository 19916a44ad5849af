"""eniway-operator's command line reaches the provider: every cloud setting documented
in docs/configuration.md (credentials with STS tokens, a rotated Secret, the RAM role,
rate limits, instance-type overrides and their cache, timeouts), checked by real calls
to eniway-cloudsim through the official SDK; bad values are usage errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from eniway_cloudsim.admin import Topology
from eniway_operator import main as operator_main
from eniway_operator.cloud.backoff import NO_RETRY
from eniway_operator.cloud.base import ServerError, Unauthorized
from eniway_operator.cloud.credentials import CredentialsError, RamRoleCredentials
from eniway_operator.cloud.ratelimit import Rate

ZONE = "cn-hangzhou-i"
ENV = ("ALIBABA_CLOUD_ACCESS_KEY_ID", "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
       "ALIBABA_CLOUD_SECURITY_TOKEN", "ENIWAY_CLOUD_CREDENTIALS_DIR", "ENIWAY_METADATA_URL",
       "ENIWAY_CLOUD_RATE_LIMITS", "ENIWAY_CLOUD_LIMITS_OVERRIDE", "ENIWAY_CLOUD_ENDPOINT",
       "ENIWAY_CLOUD_PROVIDER", "ENIWAY_CLOUD_REGION", "ENIWAY_CLUSTER_ID")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def topo(cloudsim: Any) -> Topology:
    return cloudsim.admin.bootstrap({ZONE: ["10.0.0.0/24"]})


@pytest.fixture
def keys(cloudsim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The emulator's AccessKey in the environment, as a plain install passes it."""
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", cloudsim.access_key_id)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", cloudsim.access_key_secret)


def provider(cloudsim: Any, *flags: str) -> Any:
    args = operator_main.parse_args(["--cluster-id", "c1", "--cloud", "cloudsim",
                                     "--cloud-endpoint", cloudsim.endpoint, *flags])
    p = operator_main.make_provider(args)
    p.retry = NO_RETRY
    return p


def calls(cloudsim: Any, api: str) -> int:
    return int(cloudsim.admin.call_counts()["calls"].get(api, 0))


def sts_keys(cloudsim: Any, topo: Topology) -> tuple[str, Any]:
    inst = cloudsim.admin.create_instance("ecs.g6.large", topo.vswitch_ids(ZONE)[0],
                                          [topo.security_group_id], ram_role="EniwayRole")
    return inst["metadata_url"], RamRoleCredentials(inst["metadata_url"]).get_credential()


def test_help_shows_every_default() -> None:
    out = subprocess.run([sys.executable, "-m", "eniway_operator.main", "--help"],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "COLUMNS": "200"}).stdout
    options = out.split("options:", 1)[1]
    for flag, default in (("--resync", "300.0"), ("--gc-interval", "60.0"),
                          ("--gc-grace", "300.0"), ("--workers", "32"), ("--debounce", "0.3"),
                          ("--metrics-port", "9464"), ("--namespace", "kube-system"),
                          ("--read-timeout", "10.0"), ("--connect-timeout", "5.0"),
                          ("--limits-ttl", "3600.0"), ("--lease-duration", "15.0"),
                          ("--region", "cn-hangzhou"), ("--cloud", "aliyun")):
        entry = re.search(rf"^  {flag}\b.*?(?=^  -)", options, re.M | re.S)
        assert entry, flag
        assert f"(default: {default})" in " ".join(entry.group().split()), entry.group()
    assert "--config-dir" not in out  # never read by anything


def test_sts_token_from_the_environment_is_sent(cloudsim: Any, topo: Topology,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    _, m = sts_keys(cloudsim, topo)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", m.access_key_id)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", m.access_key_secret)
    with pytest.raises(Unauthorized) as ei:  # STS keys without their token are refused
        provider(cloudsim).describe_enis()
    assert ei.value.code.startswith("InvalidSecurityToken")
    monkeypatch.setenv("ALIBABA_CLOUD_SECURITY_TOKEN", m.security_token)
    assert [e.type for e in provider(cloudsim).describe_enis()] == ["Primary"]


def test_ram_role_from_the_metadata_url(cloudsim: Any, topo: Topology) -> None:
    url, _ = sts_keys(cloudsim, topo)
    p = provider(cloudsim, "--metadata-url", url)
    assert [e.type for e in p.describe_enis()] == ["Primary"]
    assert p.credentials.get_credential().access_key_id.startswith("STS.")


def _kubelet_secret(directory: Path, version: str, files: dict[str, str]) -> None:
    """Write a Secret volume as kubelet does: files in a timestamped folder, reached through
    the ``..data`` symlink, swapped atomically on update."""
    stamped = directory / f"..{version}"
    stamped.mkdir()
    for name, value in files.items():
        (stamped / name).write_text(value)
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    tmp = directory / "..data_tmp"
    tmp.symlink_to(stamped.name)
    tmp.rename(directory / "..data")


def test_rotated_secret_is_used_without_a_restart(cloudsim: Any, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cloudsim.admin.add_access_key("rotated", "rotated-secret")
    _kubelet_secret(tmp_path, "v1", {"access-key-id": cloudsim.access_key_id,
                                     "access-key-secret": cloudsim.access_key_secret})
    monkeypatch.setenv("ENIWAY_CLOUD_CREDENTIALS_DIR", str(tmp_path))  # as the chart sets it
    p = provider(cloudsim)
    assert p.describe_enis() == []
    _kubelet_secret(tmp_path, "v2", {"access-key-id": "rotated",
                                     "access-key-secret": "wrong"})
    with pytest.raises(Unauthorized):
        p.describe_enis()
    _kubelet_secret(tmp_path, "v3", {"access-key-id": "rotated",
                                     "access-key-secret": "rotated-secret"})
    assert p.describe_enis() == []
    assert p.credentials.get_credential().access_key_id == "rotated"


def test_credentials_dir_without_a_key_is_an_error(tmp_path: Path) -> None:
    args = operator_main.parse_args(["--cluster-id", "c1", "--credentials-dir", str(tmp_path)])
    with pytest.raises(CredentialsError, match="no access key"):
        operator_main.make_provider(args)


def test_rate_limit_override(cloudsim: Any, topo: Topology, keys: None) -> None:
    p = provider(cloudsim, "--rate-limits", '{"DescribeVSwitches": {"perMinute": 6, '
                 '"burst": 2}, "DescribeInstances": "2/s"}')
    assert p.limiter.bucket("DescribeVSwitches").rate == Rate(6, 2)
    assert p.limiter.bucket("DescribeInstances").rate == Rate(120, 10)
    vsw = topo.vswitch_ids(ZONE)
    p.describe_vswitches(vsw)
    p.describe_vswitches(vsw)
    assert not p.limiter.bucket("DescribeVSwitches").try_take()  # 2 taken, 1 per 10 s
    assert calls(cloudsim, "DescribeVSwitches") == 2


def test_limits_override_and_cache_ttl(cloudsim: Any, keys: None,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENIWAY_CLOUD_LIMITS_OVERRIDE",
                       '{"ecs.g6.large": {"enis": 5, "ipsPerENI": 7, "hotSwap": false}}')
    p = provider(cloudsim, "--limits-ttl", "3600")
    lim = p.instance_limits("ecs.g6.large")
    assert (lim.max_enis, lim.ips_per_eni, lim.hot_swap, lim.source) == (5, 7, False, "override")
    assert calls(cloudsim, "DescribeInstanceTypes") == 0
    p.instance_limits("ecs.g7.large")
    p.instance_limits("ecs.g7.large")
    assert calls(cloudsim, "DescribeInstanceTypes") == 1  # cached for the TTL
    short = provider(cloudsim, "--limits-ttl", "0.05")
    short.instance_limits("ecs.g7.large")
    time.sleep(0.06)  # the TTL itself is what is under test
    short.instance_limits("ecs.g7.large")
    assert calls(cloudsim, "DescribeInstanceTypes") == 3


def test_read_and_connect_timeouts(cloudsim: Any, keys: None) -> None:
    p = provider(cloudsim, "--read-timeout", "0.3", "--connect-timeout", "2")
    assert (p._runtime.read_timeout, p._runtime.connect_timeout) == (300, 2000)
    cloudsim.admin.add_fault("DescribeInstances", latency_ms=2000)
    t0 = time.monotonic()
    with pytest.raises(ServerError) as ei:
        p.describe_instance("i-any")
    assert ei.value.code == "ConnectionError" and time.monotonic() - t0 < 1.5


@pytest.mark.parametrize(("flags", "needle"), [
    (["--rate-limits", '{"AssignPrivateIpAddresses": "5/fortnight"}'], "AssignPrivateIp"),
    (["--rate-limits", '{"A": {"perMinute": 0}}'], "rate for A"),
    (["--rate-limits", '{"A": {"perMinit": 5}}'], "perMinit"),
    (["--rate-limits", "[1, 2]"], "JSON object"),
    (["--rate-limits", "{nope"], "--rate-limits"),
    (["--limits-override", '{"ecs.g6.large": {"enis": 0, "ipsPerENI": 6}}'], "ecs.g6.large"),
    (["--limits-override", '{"ecs.g6.large": 3}'], "ecs.g6.large"),
    (["--read-timeout", "0"], "--read-timeout"),
    (["--limits-ttl", "-1"], "--limits-ttl"),
])
def test_bad_cloud_settings_are_usage_errors(flags: list[str], needle: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        operator_main.parse_args(["--cluster-id", "c1", *flags])
    assert ei.value.code == 2
    assert needle in capsys.readouterr().err
