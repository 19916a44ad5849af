"""eniway-cloudsim's EC2 dialect: SigV4 checking, EC2's request throttling, faults and
call counting by EC2 action name, and IMDSv2, all through boto3 (and urllib for IMDS).

References:
- Common errors (RequestExpired after 15 minutes, AuthFailure, SignatureDoesNotMatch):
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/CommonErrors.html and
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html
- Request throttling (per-API token buckets: non-mutating 100/20 per s, unfiltered and
  unpaginated non-mutating 50/10, mutating 200/5; RequestLimitExceeded):
  https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html
- IMDSv2 (PUT /latest/api/token with X-aws-ec2-metadata-token-ttl-seconds 1..21600, GETs
  with X-aws-ec2-metadata-token, 401 without a valid one):
  https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/configuring-instance-metadata-service.html
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from eniway_cloudsim import ec2_api
from eniway_cloudsim.testing import SimHandle, start_in_process

ZONE = "us-east-1a"


@pytest.fixture
def sim() -> Iterator[SimHandle]:
    handle = start_in_process()
    try:
        yield handle
    finally:
        handle.close()


def code_of(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def status_of(exc: pytest.ExceptionInfo[ClientError]) -> int:
    return int(exc.value.response["ResponseMetadata"]["HTTPStatusCode"])


def aws_instance(sim: SimHandle, **kw: Any) -> dict[str, Any]:
    topo = sim.bootstrap_aws()
    return sim.admin.create_instance("m5.large", topo.vswitch_ids(ZONE)[0],
                                     [topo.security_group_id], **kw)


# --- SigV4 -------------------------------------------------------------------------------


def test_sigv4_is_checked(sim: SimHandle) -> None:
    sim.bootstrap_aws()
    assert len(sim.ec2_client().describe_subnets()["Subnets"]) == 1
    with pytest.raises(ClientError) as exc:
        sim.ec2_client(access_key_secret="not-the-secret").describe_subnets()
    assert code_of(exc) == "SignatureDoesNotMatch"
    assert status_of(exc) == 403
    with pytest.raises(ClientError) as exc:
        sim.ec2_client(access_key_id="AKIANOSUCHKEY").describe_subnets()
    assert code_of(exc) == "AuthFailure"
    assert status_of(exc) == 401
    import boto3

    with pytest.raises(ClientError) as exc:
        boto3.session.Session().client(
            "ec2", endpoint_url=sim.url, region_name="eu-west-1",
            aws_access_key_id=sim.access_key_id,
            aws_secret_access_key=sim.access_key_secret).describe_subnets()
    assert code_of(exc) == "AuthFailure", "the scope must name the emulator's EC2 region"
    # a key added through the admin API signs too: the one key store of both dialects
    sim.admin.add_access_key("AKIAEXAMPLEKEY", "example-secret")
    assert sim.ec2_client("AKIAEXAMPLEKEY", "example-secret").describe_subnets()["Subnets"]


def test_request_expired_outside_15_minutes(sim: SimHandle) -> None:
    """X-Amz-Date more than 15 minutes from the server's clock: RequestExpired (400)."""
    assert sim.sim is not None
    ec2 = sim.ec2_client()
    sim.sim.verifier.clock = lambda: time.time() + 16 * 60
    with pytest.raises(ClientError) as exc:
        ec2.describe_subnets()
    assert code_of(exc) == "RequestExpired"
    assert status_of(exc) == 400
    sim.sim.verifier.clock = lambda: time.time() + 14 * 60
    assert ec2.describe_subnets()["Subnets"] == []


def test_unsigned_request_is_refused(sim: SimHandle) -> None:
    body = f"Action=DescribeSubnets&Version={ec2_api.API_VERSION}".encode()
    req = urllib.request.Request(sim.url + "/", data=body, method="POST", headers={
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    text = exc.value.read().decode()
    assert exc.value.code == 401
    assert "<Code>MissingAuthenticationToken</Code>" in text
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors>')
    assert "<RequestID>" in text


# --- throttling, faults, counters ------------------------------------------------------


def test_ec2_throttle_preset() -> None:
    """The unfiltered, unpaginated Describe* bucket holds 50 and refills 10/s; the
    filtered form of the same API has its own bucket (100, 20/s); RequestLimitExceeded
    is HTTP 503."""
    sim = start_in_process(throttle=ec2_api.throttle_preset())
    try:
        sim.bootstrap_aws()
        ec2 = sim.ec2_client()
        start = time.monotonic()
        ok = 0
        with pytest.raises(ClientError) as exc:
            for _ in range(500):
                ec2.describe_subnets()
                ok += 1
        elapsed = time.monotonic() - start
        assert code_of(exc) == "RequestLimitExceeded"
        assert status_of(exc) == 503
        assert 50 <= ok <= 50 + 10 * elapsed + 1, (ok, elapsed)
        vpc = [{"Name": "vpc-id", "Values": ["vpc-0123456789abcdef0"]}]
        assert ec2.describe_subnets(Filters=vpc)["Subnets"] == []
        counts = sim.admin.call_counts()
        assert counts["errors"]["DescribeSubnets"]["RequestLimitExceeded"] == 1
        assert counts["calls"]["DescribeSubnets"] == ok + 2
    finally:
        sim.close()


def test_throttle_preset_through_admin_and_cli(sim: SimHandle) -> None:
    described = sim.admin.throttle_preset("ec2")["throttle"]
    assert described["CreateNetworkInterface"] == {"per_second": 5.0, "burst": 200}
    assert described["DescribeNetworkInterfaces"] == {"per_second": 20.0, "burst": 100}
    assert described["DescribeNetworkInterfaces/unfiltered"] == \
        {"per_second": 10.0, "burst": 50}
    from eniway_cloudsim.main import build_parser, make_sim

    args = build_parser().parse_args(["--listen", "127.0.0.1:0", "--throttle", "ec2",
                                      "--aws-region", "eu-west-1"])
    made = make_sim(args)
    try:
        assert made.gate.describe()["throttle"]["AttachNetworkInterface"] == \
            {"per_second": 5.0, "burst": 200}
        assert made.engine.settings.aws_region == "eu-west-1"
    finally:
        made.httpd.server_close()
        made.store.close()


def test_ec2_in_a_subprocess_with_its_flags() -> None:
    """The command line: --aws-region sets the SigV4 scope and zones, --throttle ec2 the
    buckets."""
    from eniway_cloudsim.testing import start_subprocess

    sim = start_subprocess(["--throttle", "ec2"], aws_region="eu-west-1")
    try:
        topo = sim.bootstrap_aws()
        assert list(topo.vswitches) == ["eu-west-1a"]
        ec2 = sim.ec2_client()
        assert ec2.describe_subnets()["Subnets"][0]["AvailabilityZone"] == "eu-west-1a"
        assert sim.admin.faults()["throttle"]["DeleteTags"] == \
            {"per_second": 5.0, "burst": 200}
    finally:
        sim.close()


def test_faults_and_counts_cover_ec2_actions(sim: SimHandle) -> None:
    inst = aws_instance(sim)
    ec2 = sim.ec2_client()
    sim.admin.reset_call_counts()
    sim.admin.add_fault("CreateNetworkInterface", count=1, code="InternalError", status=500)
    with pytest.raises(ClientError) as exc:
        ec2.create_network_interface(SubnetId=inst["vswitch_id"])
    assert code_of(exc) == "InternalError"
    assert status_of(exc) == 500
    eni = ec2.create_network_interface(SubnetId=inst["vswitch_id"])["NetworkInterface"]
    # phase "after": performed, then the answer is lost
    sim.admin.add_fault("AttachNetworkInterface", count=1, code="InternalError", status=500,
                        phase="after")
    with pytest.raises(ClientError):
        ec2.attach_network_interface(NetworkInterfaceId=eni["NetworkInterfaceId"],
                                     InstanceId=inst["instance_id"], DeviceIndex=1)
    now = ec2.describe_network_interfaces(NetworkInterfaceIds=[eni["NetworkInterfaceId"]])
    assert now["NetworkInterfaces"][0]["Attachment"]["InstanceId"] == inst["instance_id"]
    counts = sim.admin.call_counts()
    assert counts["calls"] == {"CreateNetworkInterface": 2, "AttachNetworkInterface": 1,
                               "DescribeNetworkInterfaces": 1}
    assert counts["errors"]["CreateNetworkInterface"] == {"InternalError": 1}
    assert counts["callers"][sim.access_key_id]["CreateNetworkInterface"] == 2
    # no IAM policies: UnauthorizedOperation (403) comes only from a fault
    sim.admin.add_fault("DeleteNetworkInterface", count=1, code="UnauthorizedOperation",
                        status=403, message="You are not authorized to perform this operation.")
    with pytest.raises(ClientError) as exc:
        ec2.delete_network_interface(NetworkInterfaceId=eni["NetworkInterfaceId"])
    assert code_of(exc) == "UnauthorizedOperation"
    assert status_of(exc) == 403


# --- IMDSv2 -------------------------------------------------------------------------------


def _imds(url: str, method: str = "GET", headers: dict[str, str] | None = None
          ) -> tuple[int, str]:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_imdsv2_needs_a_live_token(sim: SimHandle) -> None:
    inst = aws_instance(sim)
    base = inst["metadata_url"] + "/latest"
    assert _imds(f"{base}/meta-data/instance-id")[0] == 401
    assert _imds(f"{base}/api/token", "PUT")[0] == 400, "the TTL header is required"
    assert _imds(f"{base}/api/token", "PUT",
                 {"X-aws-ec2-metadata-token-ttl-seconds": "21601"})[0] == 400
    status, token = _imds(f"{base}/api/token", "PUT",
                          {"X-aws-ec2-metadata-token-ttl-seconds": "1"})
    assert status == 200 and token
    good = {"X-aws-ec2-metadata-token": token}
    assert _imds(f"{base}/meta-data/instance-id", headers=good) == (200, inst["instance_id"])
    assert _imds(f"{base}/meta-data/instance-id",
                 headers={"X-aws-ec2-metadata-token": "forged"})[0] == 401
    # a token is the instance's own
    other = sim.admin.create_instance("m5.large", inst["vswitch_id"],
                                      inst["security_group_ids"])
    assert _imds(other["metadata_url"] + "/latest/meta-data/instance-id", headers=good)[0] \
        == 401
    time.sleep(1.2)
    assert _imds(f"{base}/meta-data/instance-id", headers=good)[0] == 401, "expired"


def test_imdsv2_tree(sim: SimHandle) -> None:
    inst = aws_instance(sim)
    ec2 = sim.ec2_client()
    eni = ec2.create_network_interface(SubnetId=inst["vswitch_id"],
                                       SecondaryPrivateIpAddressCount=2)["NetworkInterface"]
    ec2.attach_network_interface(NetworkInterfaceId=eni["NetworkInterfaceId"],
                                 InstanceId=inst["instance_id"], DeviceIndex=1)
    deadline = time.monotonic() + 5
    while ec2.describe_network_interfaces(NetworkInterfaceIds=[eni["NetworkInterfaceId"]])[
            "NetworkInterfaces"][0]["Attachment"]["Status"] != "attached":
        assert time.monotonic() < deadline
        time.sleep(0.05)

    def md(path: str) -> str:
        return sim.admin.imds(inst["instance_id"], "meta-data/" + path)

    assert md("instance-id") == inst["instance_id"]
    assert md("instance-type") == "m5.large"
    assert md("placement/availability-zone") == ZONE
    assert md("placement/region") == "us-east-1"
    assert md("local-ipv4") == inst["primary_ip"]
    assert md("mac") == inst["enis"][0]["mac"]
    macs = md("network/interfaces/macs/").split("\n")
    assert macs == [inst["enis"][0]["mac"] + "/", eni["MacAddress"] + "/"]
    per = f"network/interfaces/macs/{eni['MacAddress']}/"
    assert md(per + "device-number") == "1"
    assert md(per + "interface-id") == eni["NetworkInterfaceId"]
    assert md(per + "local-ipv4s").split("\n") == \
        [a["PrivateIpAddress"] for a in eni["PrivateIpAddresses"]]
    assert md(per + "subnet-id") == inst["vswitch_id"]
    assert md(per + "subnet-ipv4-cidr-block") == "10.0.0.0/24"
    assert md(per + "vpc-id") == inst["vpc_id"]
    assert md(per + "security-group-ids") == "\n".join(inst["security_group_ids"])
    with pytest.raises(urllib.error.HTTPError) as exc:
        md("iam/security-credentials/")
    assert exc.value.code == 404, "no role, no iam tree"


def test_imds_role_credentials_sign_ec2_calls(sim: SimHandle) -> None:
    """Role keys from IMDS are accepted with their session token, refused without it,
    and served only under the instance's secret metadata URL."""
    inst = aws_instance(sim, iam_role="eniway-node")
    assert sim.admin.imds(inst["instance_id"], "meta-data/iam/security-credentials/") == \
        "eniway-node"
    creds = json.loads(sim.admin.imds(inst["instance_id"],
                                      "meta-data/iam/security-credentials/eniway-node"))
    assert creds["Code"] == "Success" and creds["AccessKeyId"].startswith("ASIA")
    ec2 = sim.ec2_client(creds["AccessKeyId"], creds["SecretAccessKey"], creds["Token"])
    got = ec2.describe_instances(InstanceIds=[inst["instance_id"]])
    assert got["Reservations"][0]["Instances"][0]["InstanceId"] == inst["instance_id"]
    with pytest.raises(ClientError) as exc:
        sim.ec2_client(creds["AccessKeyId"], creds["SecretAccessKey"]).describe_subnets()
    assert code_of(exc) == "AuthFailure"
    with pytest.raises(ClientError) as exc:
        sim.ec2_client(creds["AccessKeyId"], creds["SecretAccessKey"],
                       "not-the-token").describe_subnets()
    assert code_of(exc) == "AuthFailure"
    # without the secret in the URL: the tree yes, the keys no
    public = f"{sim.url}/instances/{inst['instance_id']}/latest"
    _, token = _imds(f"{public}/api/token", "PUT",
                     {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    hdr = {"X-aws-ec2-metadata-token": token}
    assert _imds(f"{public}/meta-data/instance-id", headers=hdr) == (200, inst["instance_id"])
    assert _imds(f"{public}/meta-data/iam/security-credentials/eniway-node",
                 headers=hdr)[0] == 403
