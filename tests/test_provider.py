"""The aliyun provider against eniway-cloudsim through the official SDK: retries by error
type, throttling, fault injection, lost responses made safe by client tokens, credentials
(static, env, RAM role from the metadata service) and instance-type limits."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from alibabacloud_ecs20140526 import models as ecs
from alibabacloud_tea_openapi.exceptions import ClientException, ServerException
from conftest import PROVIDER_ZONE as ZONE

from eniway_cloudsim.admin import Topology
from eniway_operator.cloud.aliyun import AliyunProvider
from eniway_operator.cloud.backoff import NO_RETRY, Backoff, RetryPolicy
from eniway_operator.cloud.base import (
    InvalidParameter,
    ServerError,
    Throttled,
    Unauthorized,
)
from eniway_operator.cloud.credentials import RamRoleCredentials, StaticCredentials, resolve
from eniway_operator.cloud.ratelimit import Rate
from eniway_operator.testing import FAST_RETRY as FAST


def calls(cloudsim: Any, api: str) -> int:
    return int(cloudsim.admin.call_counts()["calls"].get(api, 0))


def new_eni(provider: AliyunProvider, topo: Topology, **kw: Any) -> Any:
    return provider.create_eni(topo.vswitch_ids(ZONE)[0], [topo.security_group_id], {}, **kw)


def wait_in_use(provider: AliyunProvider, eni_id: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while provider.describe_enis([eni_id])[0].status != "InUse":
        assert time.monotonic() < deadline, "ENI never InUse"
        time.sleep(0.02)


def test_server_errors_are_retried(cloudsim: Any, topo: Topology, provider: AliyunProvider
                                   ) -> None:
    cloudsim.admin.add_fault("DescribeVSwitches", count=2, code="InternalError", status=500)
    vsw = provider.describe_vswitches(topo.vswitch_ids(ZONE))
    assert vsw[0].vswitch_id == topo.vswitch_ids(ZONE)[0]
    assert calls(cloudsim, "DescribeVSwitches") == 3
    assert provider.stats()["retries"]["DescribeVSwitches"] == 2
    assert cloudsim.admin.call_counts()["errors"]["DescribeVSwitches"] == {"InternalError": 2}


def test_non_retryable_errors_are_not_retried(cloudsim: Any, topo: Topology,
                                              provider: AliyunProvider) -> None:
    cloudsim.admin.add_fault("CreateNetworkInterface", count=1, code="InvalidParameter",
                             status=400, message="nope")
    with pytest.raises(InvalidParameter):
        new_eni(provider, topo)
    assert calls(cloudsim, "CreateNetworkInterface") == 1
    with pytest.raises(InvalidParameter):
        provider.assign_ips("eni-x", 0)
    assert "AssignPrivateIpAddresses" not in cloudsim.admin.call_counts()["calls"]


def test_throttling_by_the_cloud_is_retried_with_backoff(cloudsim: Any, topo: Topology,
                                                         provider: AliyunProvider) -> None:
    eni = new_eni(provider, topo)
    cloudsim.admin.set_throttle("AssignPrivateIpAddresses", per_second=2, burst=1)
    for _ in range(4):  # back to back: each waits ~0.5 s for its token, through retries
        assert len(provider.assign_ips(eni.eni_id, 1)) == 1
    counts = cloudsim.admin.call_counts()
    throttled = counts["errors"].get("AssignPrivateIpAddresses", {}).get("Throttling", 0)
    assert throttled >= 1
    assert counts["calls"]["AssignPrivateIpAddresses"] == 4 + throttled
    assert provider.stats()["retries"]["AssignPrivateIpAddresses"] == throttled
    assert len(provider.describe_enis([eni.eni_id])[0].private_ips) == 4


def test_throttling_gives_up_after_the_attempts(cloudsim: Any, provider: AliyunProvider) -> None:
    cloudsim.admin.add_fault("DescribeNetworkInterfaces", count=100, code="Throttling",
                             status=400, message="Request was denied due to request throttling.")
    with pytest.raises(Throttled):
        provider.describe_enis()
    assert calls(cloudsim, "DescribeNetworkInterfaces") == FAST.throttled.max_attempts


def test_the_emulator_throttles_per_api(cloudsim: Any) -> None:
    cloudsim.admin.set_throttle("DescribeVSwitches", per_second=0.01, burst=2)
    client = cloudsim.client()
    req = ecs.DescribeVSwitchesRequest(region_id=cloudsim.region)
    client.describe_vswitches(req)
    client.describe_vswitches(req)
    with pytest.raises(ClientException) as ei:
        client.describe_vswitches(req)
    assert ei.value.code == "Throttling" and ei.value.status_code == 400
    client.describe_network_interfaces(  # another API has its own bucket
        ecs.DescribeNetworkInterfacesRequest(region_id=cloudsim.region))
    cloudsim.admin.set_throttle("DescribeVSwitches", None)
    client.describe_vswitches(req)


def test_lost_create_response_does_not_create_twice(cloudsim: Any, topo: Topology,
                                                    provider: AliyunProvider) -> None:
    cloudsim.admin.add_fault("CreateNetworkInterface", count=1, phase="after")
    eni = provider.create_eni(topo.vswitch_ids(ZONE)[0], [topo.security_group_id],
                              {"t": "lost"}, secondary_ip_count=2)
    found = provider.describe_enis(tags={"t": "lost"})
    assert [e.eni_id for e in found] == [eni.eni_id]
    assert len(found[0].private_ips) == 2
    assert calls(cloudsim, "CreateNetworkInterface") == 2


def test_lost_assign_response_does_not_assign_twice(cloudsim: Any, topo: Topology,
                                                    provider: AliyunProvider) -> None:
    eni = new_eni(provider, topo)
    cloudsim.admin.add_fault("AssignPrivateIpAddresses", count=1, phase="after")
    ips = provider.assign_ips(eni.eni_id, 4)
    assert sorted(provider.describe_enis([eni.eni_id])[0].private_ips) == sorted(ips)
    assert len(ips) == 4


def test_lost_responses_of_attach_detach_unassign_delete(cloudsim: Any, topo: Topology,
                                                         provider: AliyunProvider) -> None:
    inst = cloudsim.admin.create_instance("ecs.g6.xlarge", topo.vswitch_ids(ZONE)[0],
                                          [topo.security_group_id])
    eni = new_eni(provider, topo, secondary_ip_count=3)
    for api in ("AttachNetworkInterface", "DetachNetworkInterface",
                "UnassignPrivateIpAddresses", "DeleteNetworkInterface"):
        cloudsim.admin.add_fault(api, count=1, phase="after")
    provider.attach_eni(eni.eni_id, inst["instance_id"])
    wait_in_use(provider, eni.eni_id)
    provider.unassign_ips(eni.eni_id, list(eni.private_ips))
    assert provider.describe_enis([eni.eni_id])[0].private_ips == ()
    provider.detach_eni(eni.eni_id, inst["instance_id"])
    deadline = time.monotonic() + 10
    while provider.describe_enis([eni.eni_id])[0].status != "Available":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    provider.delete_eni(eni.eni_id)
    assert provider.describe_enis([eni.eni_id]) == []
    counts = cloudsim.admin.call_counts()["calls"]
    for api in ("AttachNetworkInterface", "DetachNetworkInterface",
                "UnassignPrivateIpAddresses", "DeleteNetworkInterface"):
        assert counts[api] == 2, api


def test_fault_error_rate_is_deterministic_with_a_seed(cloudsim: Any) -> None:
    client = cloudsim.client()
    req = ecs.DescribeVSwitchesRequest(region_id=cloudsim.region)

    def pattern() -> list[bool]:
        out = []
        for _ in range(30):
            try:
                client.describe_vswitches(req)
                out.append(True)
            except ServerException as e:
                assert e.code == "ServiceUnavailable" and e.status_code == 503
                out.append(False)
        return out

    spec = {"DescribeVSwitches": {"error_rate": 0.5, "code": "ServiceUnavailable",
                                  "status": 503}}
    cloudsim.admin.set_faults(spec, seed=7)
    first = pattern()
    cloudsim.admin.set_faults(spec, seed=7)
    assert pattern() == first
    assert 3 < first.count(False) < 27
    cloudsim.admin.clear_faults()
    assert all(pattern())


def test_latency_fault_meets_the_read_timeout(cloudsim: Any) -> None:
    cloudsim.admin.add_fault("DescribeInstances", latency_ms=1500)
    p = cloudsim.provider(retry=RetryPolicy(server=Backoff(0.01, 0.01, 2)), read_timeout=0.2)
    with pytest.raises(ServerError) as ei:
        p.describe_instance("i-any")
    assert ei.value.code == "ConnectionError"
    assert p.stats()["retries"]["DescribeInstances"] == 1


def test_unreachable_cloud_is_a_server_error() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    p = AliyunProvider("cn-hangzhou", endpoint=f"127.0.0.1:{port}", protocol="http",
                       credentials=StaticCredentials("a", "b"), retry=NO_RETRY)
    with pytest.raises(ServerError):
        p.describe_enis()
    # limits still answer, from the bundled table
    lim = p.instance_limits("ecs.g6.large")
    assert (lim.max_enis, lim.ips_per_eni, lim.source) == (2, 6, "table")


def test_limits_from_the_api_cached_and_overridden(cloudsim: Any) -> None:
    p = cloudsim.provider(limits_override={"ecs.g6.large": {"enis": 5, "ipsPerENI": 7}})
    assert p.instance_limits("ecs.g6.large").source == "override"
    first = p.instance_limits("ecs.g7.large")
    assert first.source == "api" and first.hot_swap
    p.instance_limits("ecs.g7.large")
    assert calls(cloudsim, "DescribeInstanceTypes") == 1  # cached
    assert p.instance_limits("ecs.t6-c1m1.large").hot_swap is False


def test_client_side_rate_limit_is_per_api(cloudsim: Any, topo: Topology) -> None:
    p = cloudsim.provider(rates={"DescribeVSwitches": Rate(per_minute=6, burst=2)},
                          limiter_timeout=0.05)
    vsw = topo.vswitch_ids(ZONE)
    p.describe_vswitches(vsw)
    p.describe_vswitches(vsw)
    with pytest.raises(Throttled) as ei:  # the bucket is empty for 10 s; we wait 0.05 s
        p.describe_vswitches(vsw)
    assert ei.value.code == "Throttling.Local"
    assert calls(cloudsim, "DescribeVSwitches") == 2  # the third never left the process
    p.describe_enis()  # other APIs are unaffected


def test_ram_role_credentials_from_metadata(cloudsim: Any, topo: Topology) -> None:
    inst = cloudsim.admin.create_instance("ecs.g6.large", topo.vswitch_ids(ZONE)[0],
                                          [topo.security_group_id], ram_role="EniwayRole")
    creds = RamRoleCredentials(inst["metadata_url"])
    p = cloudsim.provider(credentials=creds)
    assert p.describe_instance(inst["instance_id"]).instance_id == inst["instance_id"]
    m = creds.get_credential()
    assert m.access_key_id.startswith("STS.") and m.security_token and creds.role == "EniwayRole"
    forged = StaticCredentials(m.access_key_id, m.access_key_secret, "forged-token")
    with pytest.raises(Unauthorized) as ei:
        cloudsim.provider(credentials=forged, retry=NO_RETRY).describe_enis()
    assert ei.value.code == "InvalidSecurityToken.MismatchWithAccessKey"


def test_env_credentials(cloudsim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", cloudsim.access_key_id)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", cloudsim.access_key_secret)
    p = cloudsim.provider(credentials=resolve())
    assert p.describe_enis() == []
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "wrong")
    with pytest.raises(Unauthorized):
        cloudsim.provider(credentials=resolve(), retry=NO_RETRY).describe_enis()


def test_missing_ram_role_is_unauthorized(cloudsim: Any, topo: Topology) -> None:
    inst = cloudsim.admin.create_instance("ecs.g6.large", topo.vswitch_ids(ZONE)[0],
                                          [topo.security_group_id])  # no RAM role
    p = cloudsim.provider(credentials=RamRoleCredentials(inst["metadata_url"]))
    with pytest.raises(Unauthorized) as ei:
        p.describe_enis()
    assert ei.value.code == "InvalidCredentials"
    assert "DescribeNetworkInterfaces" not in cloudsim.admin.call_counts()["calls"]


def test_concurrent_assigns_never_hand_out_an_ip_twice(cloudsim: Any, topo: Topology) -> None:
    import concurrent.futures

    p = cloudsim.provider(rates={"AssignPrivateIpAddresses": Rate(60000, 100)})
    enis = [new_eni(p, topo) for _ in range(8)]

    def fill(eni_id: str) -> list[str]:
        return [ip for _ in range(5) for ip in p.assign_ips(eni_id, 2)]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(fill, [e.eni_id for e in enis]))
    flat = [ip for r in results for ip in r] + [e.primary_ip for e in enis]
    assert len(flat) == len(set(flat)) == 8 * 11
    described = {ip for e in p.describe_enis([e.eni_id for e in enis]) for ip in e.private_ips}
    assert described == {ip for r in results for ip in r}


class Fence:
    """Refuses once ``open`` is cleared, counting the checks (leadership, as main wires it)."""

    def __init__(self) -> None:
        self.open = True
        self.checks = 0

    def __call__(self, api: str) -> None:
        self.checks += 1
        if not self.open:
            raise RuntimeError(f"fenced: {api}")


def test_fence_is_asked_before_every_retry(cloudsim: Any, topo: Topology) -> None:
    """A retry after a back-off asks again: once the fence closes during the back-off,
    the emulator (counting by AccessKey) sees no further attempt."""
    fence = Fence()

    def sleep(seconds: float) -> None:  # the back-off: leadership goes meanwhile
        fence.open = False
        time.sleep(min(seconds, 0.01))

    cloudsim.admin.add_access_key("fenced", "fenced-secret")
    p = cloudsim.provider(credentials=StaticCredentials("fenced", "fenced-secret"),
                          retry=FAST, sleep=sleep, fence=fence)
    cloudsim.admin.set_throttle("CreateNetworkInterface", 0.001, burst=1)
    new_eni(cloudsim.provider(), topo)  # takes the one token: the next create is throttled
    with pytest.raises(RuntimeError, match="fenced: CreateNetworkInterface"):
        new_eni(p, topo)
    by = cloudsim.admin.call_counts()["callers"]
    assert by["fenced"] == {"CreateNetworkInterface": 1}  # the first attempt only


def test_no_sleep_outlasts_max_sleep_without_a_fence_check(cloudsim: Any, topo: Topology
                                                           ) -> None:
    """Waits in the rate limiter and in back-offs are cut into steps of at most
    ``max_sleep``, each followed by a check: a long wait cannot span a lost lease."""
    slept: list[float] = []
    fence = Fence()

    def sleep(seconds: float) -> None:
        slept.append(seconds)

    p = cloudsim.provider(rates={"DescribeVSwitches": Rate(per_minute=6, burst=1)},
                          retry=RetryPolicy(throttled=Backoff(30.0, 60.0, 2)), sleep=sleep,
                          fence=fence, max_sleep=0.5)
    p.describe_vswitches(topo.vswitch_ids(ZONE))
    checks = fence.checks
    fence.open = False
    with pytest.raises(RuntimeError, match="fenced"):
        p.describe_vswitches(topo.vswitch_ids(ZONE))  # the next token is 10 s away
    assert slept and max(slept) <= 0.5
    assert fence.checks == checks + 1  # the first step's check refused
    assert calls(cloudsim, "DescribeVSwitches") == 1
