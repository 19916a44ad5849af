"""The aws provider against eniway-cloudsim's EC2 dialect through boto3: the instance
type's limits as typed errors, attach delays, EC2's throttling and server errors retried
by the provider's own loop (botocore retries nothing), a lost CreateNetworkInterface
answer made safe by its ClientToken, fencing between attempts, credentials, paging, and
the answers the interface promises (new IPs only, DeleteOnTermination, statuses)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from eniway_cloudsim.testing import SimHandle, start_in_process
from eniway_operator.cloud import aws
from eniway_operator.cloud.aws import AwsProvider
from eniway_operator.cloud.backoff import Backoff, RetryPolicy
from eniway_operator.cloud.base import (
    InvalidState,
    NetworkInterface,
    QuotaExceeded,
    ServerError,
    Throttled,
    Unauthorized,
)
from eniway_operator.reconcile import instance_of
from eniway_operator.testing import FAST_RETRY

ZONE = "us-east-1a"


@dataclass
class Env:
    sim: SimHandle
    subnet: str
    sg: str

    def provider(self, key: tuple[str, str] | None = None, **kw: Any) -> AwsProvider:
        key_id, secret = key or (self.sim.access_key_id, self.sim.access_key_secret)
        session = boto3.session.Session(aws_access_key_id=key_id,
                                        aws_secret_access_key=secret)
        kw.setdefault("retry", FAST_RETRY)
        return AwsProvider(self.sim.aws_region, endpoint=self.sim.url, session=session, **kw)

    def instance(self, itype: str = "m5.large") -> dict[str, Any]:
        return self.sim.admin.create_instance(itype, self.subnet, [self.sg])

    def calls(self, api: str) -> int:
        return int(self.sim.admin.call_counts()["calls"].get(api, 0))


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask a real IMDS
    sim = start_in_process(attach_delay=0.3, detach_delay=0.3)
    try:
        topo = sim.bootstrap_aws({ZONE: ["10.0.0.0/24"]})
        yield Env(sim, topo.vswitch_ids(ZONE)[0], topo.security_group_id)
    finally:
        sim.close()


def wait_status(p: AwsProvider, eni_id: str, status: str, timeout: float = 10.0
                ) -> NetworkInterface:
    deadline = time.monotonic() + timeout
    while True:
        [eni] = p.describe_enis(eni_ids=[eni_id])
        if eni.status == status:
            return eni
        assert time.monotonic() < deadline, f"{eni_id} never {status} (is {eni.status})"
        time.sleep(0.05)


def test_node_lifecycle_with_attach_delay(env: Env) -> None:
    p = env.provider()
    inst = env.instance()
    node = instance_of({"spec": {"providerID": inst["provider_id"]}})
    assert inst["provider_id"].startswith("aws:///") and node == inst["instance_id"]
    info = p.describe_instance(node)
    assert (info.instance_type, info.zone_id, info.status) == ("m5.large", ZONE, "Running")
    lim = p.instance_limits(info.instance_type)
    assert (lim.max_enis, lim.ips_per_eni, lim.source, lim.max_pods) == (3, 10, "api", 29)
    [vsw] = p.describe_vswitches([env.subnet])
    assert vsw.gateway == "10.0.0.1" and vsw.zone_id == ZONE

    tags = {"eniway.io/cluster": "c1"}
    eni = p.create_eni(env.subnet, [env.sg], tags, secondary_ip_count=lim.ips_at_create,
                       delete_on_release=True)
    assert len(eni.private_ips) == 9 and eni.status == "Available"
    p.attach_eni(eni.eni_id, node)
    assert p.describe_enis(eni_ids=[eni.eni_id])[0].status == "Attaching"  # 0.3 s delay
    cur = wait_status(p, eni.eni_id, "InUse")
    assert (cur.instance_id, cur.device_index, cur.type) == (node, 1, "Secondary")
    assert cur.delete_on_release  # set on the attachment after the attach
    primary = [e for e in p.describe_enis(instance_id=node) if e.type == "Primary"]
    assert [e.eni_id for e in primary] == [info.primary_eni_id]

    p.unassign_ips(eni.eni_id, list(eni.private_ips[:4]))
    got = p.assign_ips(eni.eni_id, 3)
    cur = p.describe_enis(eni_ids=[eni.eni_id])[0]
    assert len(got) == 3 and set(got) <= set(cur.private_ips)  # the new ones, exactly
    assert len(cur.private_ips) == 8

    p.detach_eni(eni.eni_id, node)
    assert p.describe_enis(eni_ids=[eni.eni_id])[0].status == "Detaching"
    p.detach_eni(eni.eni_id, node)  # again while detaching: fine, nothing sent
    assert env.calls("DetachNetworkInterface") == 1
    wait_status(p, eni.eni_id, "Available")
    p.delete_eni(eni.eni_id)
    assert p.describe_enis(tags=tags) == []


def test_instance_limits_are_typed_quota_errors(env: Env) -> None:
    p = env.provider()
    node = env.instance()["instance_id"]  # m5.large: 3 ENIs, 10 IPs each
    enis = [p.create_eni(env.subnet, [env.sg], {}) for _ in range(3)]
    for e in enis[:2]:
        p.attach_eni(e.eni_id, node)
    with pytest.raises(QuotaExceeded) as ei:
        p.attach_eni(enis[2].eni_id, node)
    assert ei.value.code == "AttachmentLimitExceeded"
    assert env.calls("AttachNetworkInterface") == 3  # the refusal stands: no other index
    cur = wait_status(p, enis[0].eni_id, "InUse")
    assert len(p.assign_ips(cur.eni_id, 9)) == 9
    with pytest.raises(QuotaExceeded) as ei:
        p.assign_ips(cur.eni_id, 1)  # 10 with the primary IP
    assert ei.value.code == "PrivateIpAddressLimitExceeded"
    assert p.stats()["retries"] == {}  # quota is never retried


def test_device_index_taken_meanwhile_is_retried_with_another(env: Env) -> None:
    """Another client attaches at the index the provider chose, between its look and its
    call (a fault on the first attach does it, through boto3 itself)."""
    p = env.provider()
    node = env.instance("m5.xlarge")["instance_id"]  # 4 ENIs
    mine, theirs = (p.create_eni(env.subnet, [env.sg], {}) for _ in range(2))
    other = env.sim.ec2_client()
    seen = p.describe_enis

    def racing(*a: Any, **kw: Any) -> list[NetworkInterface]:
        out = seen(*a, **kw)
        if kw.get("instance_id") and not any(e.eni_id == theirs.eni_id for e in out):
            other.attach_network_interface(NetworkInterfaceId=theirs.eni_id,
                                           InstanceId=node, DeviceIndex=1)
        return out

    p.describe_enis = racing  # type: ignore[method-assign]
    p.attach_eni(mine.eni_id, node)
    p.describe_enis = seen  # type: ignore[method-assign]
    indexes = {e.eni_id: e.device_index for e in p.describe_enis(instance_id=node)}
    assert indexes[theirs.eni_id] == 1 and indexes[mine.eni_id] == 2
    errors = env.sim.admin.call_counts()["errors"].get("AttachNetworkInterface", {})
    assert sum(errors.values()) == 1  # the one refused, then another index


def test_throttled_and_server_errors_are_retried_by_the_provider(env: Env) -> None:
    p = env.provider()
    env.sim.admin.set_throttle("DescribeSubnets", per_second=2, burst=1)
    for _ in range(3):
        p.describe_vswitches([env.subnet])
    counts = env.sim.admin.call_counts()
    throttled = counts["errors"].get("DescribeSubnets", {}).get("RequestLimitExceeded", 0)
    assert throttled >= 1  # EC2's code, answered 503
    assert counts["calls"]["DescribeSubnets"] == 3 + throttled  # each attempt is one request
    assert p.stats()["retries"]["DescribeSubnets"] == throttled
    env.sim.admin.set_throttle("DescribeSubnets", None)

    env.sim.admin.add_fault("DescribeSecurityGroups", count=2, code="InternalError",
                            status=500)
    assert [g.security_group_id for g in p.describe_security_groups([env.sg])] == [env.sg]
    assert env.calls("DescribeSecurityGroups") == 3
    env.sim.admin.add_fault("DescribeSecurityGroups", count=100, code="Unavailable",
                            status=503)
    with pytest.raises(ServerError):
        p.describe_security_groups([env.sg])
    assert env.calls("DescribeSecurityGroups") == 3 + FAST_RETRY.server.max_attempts
    env.sim.admin.add_fault("DescribeInstances", count=100, code="RequestLimitExceeded",
                            status=503)
    with pytest.raises(Throttled):
        p.describe_instances(["i-00000000000000000"])
    assert env.calls("DescribeInstances") == FAST_RETRY.throttled.max_attempts


def test_lost_create_answer_gives_one_eni(env: Env) -> None:
    """The emulator creates, then answers 500: the retry carries the same ClientToken and
    gets the first ENI back."""
    p = env.provider()
    env.sim.admin.add_fault("CreateNetworkInterface", count=1, phase="after",
                            code="InternalError", status=500)
    eni = p.create_eni(env.subnet, [env.sg], {"t": "lost"}, secondary_ip_count=2)
    found = p.describe_enis(tags={"t": "lost"})
    assert [e.eni_id for e in found] == [eni.eni_id] and len(found[0].private_ips) == 2
    assert env.calls("CreateNetworkInterface") == 2


def test_lost_answers_of_attach_detach_unassign_delete(env: Env) -> None:
    p = env.provider()
    node = env.instance()["instance_id"]
    eni = p.create_eni(env.subnet, [env.sg], {}, secondary_ip_count=3)
    for api in ("AttachNetworkInterface", "DetachNetworkInterface",
                "UnassignPrivateIpAddresses", "DeleteNetworkInterface"):
        env.sim.admin.add_fault(api, count=1, phase="after", code="InternalError", status=500)
    p.attach_eni(eni.eni_id, node)
    wait_status(p, eni.eni_id, "InUse")
    p.unassign_ips(eni.eni_id, list(eni.private_ips))
    assert p.describe_enis(eni_ids=[eni.eni_id])[0].private_ips == ()
    p.detach_eni(eni.eni_id, node)
    wait_status(p, eni.eni_id, "Available")
    p.delete_eni(eni.eni_id)
    assert p.describe_enis(eni_ids=[eni.eni_id]) == []
    counts = env.sim.admin.call_counts()["calls"]
    for api in ("AttachNetworkInterface", "DetachNetworkInterface",
                "UnassignPrivateIpAddresses", "DeleteNetworkInterface"):
        assert counts[api] == 2, api


class Fence:
    """Refuses once ``open`` is cleared (leadership, as main wires it)."""

    def __init__(self) -> None:
        self.open = True

    def __call__(self, api: str) -> None:
        if not self.open:
            raise RuntimeError(f"fenced: {api}")


def test_a_lost_lease_stops_the_retry(env: Env) -> None:
    """The first create fails with a 500; leadership goes during the back-off; the
    emulator, counting by AccessKey, sees no second attempt."""
    fence = Fence()

    def sleep(seconds: float) -> None:
        fence.open = False
        time.sleep(min(seconds, 0.01))

    env.sim.admin.add_access_key("AKIDFENCED", "fenced-secret")
    p = env.provider(("AKIDFENCED", "fenced-secret"), sleep=sleep, fence=fence)
    env.sim.admin.add_fault("CreateNetworkInterface", count=1, code="InternalError",
                            status=500)
    with pytest.raises(RuntimeError, match="fenced: CreateNetworkInterface"):
        p.create_eni(env.subnet, [env.sg], {})
    assert env.sim.admin.call_counts()["callers"]["AKIDFENCED"] == {
        "CreateNetworkInterface": 1}


def test_credentials(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    unknown, wrong = env.provider(("AKIDUNKNOWN", "nope")), env.provider(
        (env.sim.access_key_id, "wrong"))
    with pytest.raises(Unauthorized) as ei:
        unknown.describe_vswitches([env.subnet])
    assert ei.value.code == "AuthFailure" and ei.value.status == 401
    with pytest.raises(Unauthorized) as ei:
        wrong.describe_vswitches([env.subnet])
    assert ei.value.code == "SignatureDoesNotMatch"
    assert unknown.calls["DescribeSubnets"] == wrong.calls["DescribeSubnets"] == 1  # no retry
    env.sim.admin.add_fault("CreateNetworkInterface", count=1, code="UnauthorizedOperation",
                            status=403)
    with pytest.raises(Unauthorized):
        env.provider().create_eni(env.subnet, [env.sg], {})
    # boto3's own chain, from the environment
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", env.sim.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", env.sim.access_key_secret)
    chain = AwsProvider(env.sim.aws_region, endpoint=env.sim.url)
    assert [v.vswitch_id for v in chain.describe_vswitches([env.subnet])] == [env.subnet]
    # no credentials anywhere (IMDS off): Unauthorized before anything is sent
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    before = env.calls("DescribeSubnets")
    with pytest.raises(Unauthorized) as ei:
        AwsProvider(env.sim.aws_region, endpoint=env.sim.url,
                    retry=FAST_RETRY).describe_vswitches([env.subnet])
    assert ei.value.code == "InvalidCredentials"
    assert env.calls("DescribeSubnets") == before


def test_paging_and_id_chunks(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    p = env.provider()
    tags = {"eniway.io/cluster": "paged"}
    made = {p.create_eni(env.subnet, [env.sg], tags).eni_id for _ in range(12)}
    monkeypatch.setattr(aws, "MAX_RESULTS", 5)
    before = env.calls("DescribeNetworkInterfaces")
    assert {e.eni_id for e in p.describe_enis(tags=tags)} == made
    assert env.calls("DescribeNetworkInterfaces") == before + 3  # 12 in pages of 5
    monkeypatch.setattr(aws, "IDS_PER_FILTER", 5)
    nodes = [env.instance("t3.medium")["instance_id"] for _ in range(7)]
    before = env.calls("DescribeInstances")
    assert {i.instance_id for i in p.describe_instances(nodes)} == set(nodes)
    assert env.calls("DescribeInstances") == before + 2  # 7 ids, 5 a call


def test_detach_from_another_instance_is_refused(env: Env) -> None:
    p = env.provider()
    a, b = (env.instance()["instance_id"] for _ in range(2))
    eni = p.create_eni(env.subnet, [env.sg], {})
    p.attach_eni(eni.eni_id, a)
    wait_status(p, eni.eni_id, "InUse")
    with pytest.raises(InvalidState):
        p.detach_eni(eni.eni_id, b)
    assert env.calls("DetachNetworkInterface") == 0


def test_no_retry_policy_in_botocore(env: Env) -> None:
    """Each of the provider's attempts is exactly one request: botocore adds none."""
    p = env.provider(retry=RetryPolicy(throttled=Backoff(0, 0, 1), server=Backoff(0, 0, 1)))
    env.sim.admin.add_fault("DescribeSubnets", count=5, code="InternalError", status=500)
    with pytest.raises(ServerError):
        p.describe_vswitches([env.subnet])
    assert env.calls("DescribeSubnets") == 1
