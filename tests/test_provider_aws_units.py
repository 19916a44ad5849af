"""The aws provider's pure parts: EC2's states and attachment as the interface's status and
type, the device index an attach takes, EC2 error codes as typed errors, the limits and
the max-pods formula, providerIDs of EC2 nodes, and the command line's --cloud aws."""

from __future__ import annotations

import pytest

from eniway_operator import main as operator_main
from eniway_operator.cloud import aws
from eniway_operator.cloud.aws_errors import error_class, make_error
from eniway_operator.cloud.base import (
    CloudError,
    InstanceLimits,
    InvalidParameter,
    InvalidState,
    NotFound,
    QuotaExceeded,
    ServerError,
    Throttled,
    Unauthorized,
    VSwitchExhausted,
)
from eniway_operator.cloud.limits import bundled_table
from eniway_operator.cloud.ratelimit import Rate, RateLimiter
from eniway_operator.maxpods import table_limits
from eniway_operator.reconcile import instance_of


@pytest.mark.parametrize(("status", "attachment", "want"), [
    ("available", "", "Available"),
    ("available", "detached", "Available"),
    ("in-use", "attaching", "Attaching"),
    ("attaching", "attaching", "Attaching"),
    ("attaching", "", "Attaching"),
    ("in-use", "attached", "InUse"),
    ("in-use", "detaching", "Detaching"),
    ("detaching", "", "Detaching"),
    ("associated", "", "InUse"),
])
def test_eni_status(status: str, attachment: str, want: str) -> None:
    assert aws.eni_status(status, attachment) == want


@pytest.mark.parametrize(("state", "want"), [
    ("pending", "Starting"), ("running", "Running"), ("stopping", "Stopping"),
    ("stopped", "Stopped"), ("shutting-down", "Stopping"), ("terminated", "Stopped")])
def test_instance_status(state: str, want: str) -> None:
    assert aws.instance_status(state) == want


def _item(**att: object) -> dict[str, object]:
    d: dict[str, object] = {
        "NetworkInterfaceId": "eni-1", "Status": "in-use", "MacAddress": "02:00:00:00:00:01",
        "SubnetId": "subnet-1", "VpcId": "vpc-1", "AvailabilityZone": "us-east-1a",
        "PrivateIpAddress": "10.0.1.4",
        "PrivateIpAddresses": [{"Primary": True, "PrivateIpAddress": "10.0.1.4"},
                               {"Primary": False, "PrivateIpAddress": "10.0.1.5"},
                               {"Primary": False, "PrivateIpAddress": "10.0.1.6"}],
        "Groups": [{"GroupId": "sg-1"}, {"GroupId": "sg-2"}],
        "TagSet": [{"Key": "eniway.io/cluster", "Value": "c1"}]}
    if att:
        d["Attachment"] = att
    return d


def test_eni_type_ips_and_attachment() -> None:
    primary = aws.to_eni(_item(DeviceIndex=0, NetworkCardIndex=0, Status="attached",
                               InstanceId="i-1", DeleteOnTermination=True))
    assert (primary.type, primary.status, primary.instance_id, primary.device_index) == (
        "Primary", "InUse", "i-1", 0)
    assert primary.primary_ip == "10.0.1.4"
    assert primary.private_ips == ("10.0.1.5", "10.0.1.6")  # the primary apart
    assert primary.security_group_ids == ("sg-1", "sg-2")
    assert primary.tags == {"eniway.io/cluster": "c1"} and primary.delete_on_release
    assert (primary.mac, primary.vswitch_id, primary.vpc_id, primary.zone_id) == (
        "02:00:00:00:00:01", "subnet-1", "vpc-1", "us-east-1a")
    secondary = aws.to_eni(_item(DeviceIndex=2, Status="attaching", InstanceId="i-1"))
    assert (secondary.type, secondary.status, secondary.device_index) == (
        "Secondary", "Attaching", 2)
    # index 0 of another network card is not the primary ENI
    other_card = aws.to_eni(_item(DeviceIndex=0, NetworkCardIndex=1, Status="attached",
                                  InstanceId="i-1"))
    assert other_card.type == "Secondary"
    free = aws.to_eni({**_item(), "Status": "available"})
    assert (free.status, free.instance_id, free.device_index, free.type) == (
        "Available", "", None, "Secondary")
    gone = aws.to_eni({**_item(DeviceIndex=1, Status="detached", InstanceId="i-1"),
                       "Status": "available"})
    assert (gone.status, gone.instance_id, gone.device_index) == ("Available", "", None)


@pytest.mark.parametrize(("used", "want"), [
    ([], 0), ([0], 1), ([0, 1, 2], 3), ([0, 2], 1), ([2, 0, 3], 1), ([1], 0)])
def test_lowest_free_device_index(used: list[int], want: int) -> None:
    assert aws.lowest_free_index(used) == want


def test_index_taken_is_only_the_index_race_or_the_slot_count() -> None:
    taken = make_error("InvalidParameterValue", "Instance 'i-1' already has an interface "
                       "attached at device index '1'.", 400)
    assert isinstance(taken, InvalidParameter) and aws.index_taken(taken)
    full = make_error("AttachmentLimitExceeded", "Interface count 4 exceeds the limit", 400)
    assert isinstance(full, QuotaExceeded) and aws.index_taken(full)
    assert not aws.index_taken(make_error("InvalidParameterValue", "bad subnet", 400))
    assert not aws.index_taken(make_error("InvalidNetworkInterfaceID.NotFound", "x", 400))


@pytest.mark.parametrize(("code", "status", "cls"), [
    ("RequestLimitExceeded", 503, Throttled),
    ("Throttling", 400, Throttled),
    ("InternalError", 500, ServerError),
    ("Unavailable", 503, ServerError),
    ("ServiceUnavailable", 503, ServerError),
    ("SomethingNew", 502, ServerError),
    ("PrivateIpAddressLimitExceeded", 400, QuotaExceeded),
    ("AttachmentLimitExceeded", 400, QuotaExceeded),
    ("NetworkInterfaceLimitExceeded", 400, QuotaExceeded),
    ("InsufficientFreeAddressesInSubnet", 400, VSwitchExhausted),
    ("InvalidNetworkInterfaceID.NotFound", 400, NotFound),
    ("InvalidInstanceID.NotFound", 400, NotFound),
    ("InvalidSubnetID.NotFound", 400, NotFound),
    ("InvalidAttachmentID.NotFound", 400, NotFound),
    ("InvalidGroup.NotFound", 400, NotFound),
    ("IncorrectState", 400, InvalidState),
    ("InvalidNetworkInterface.InUse", 400, InvalidState),
    ("InvalidParameterValue", 400, InvalidParameter),
    ("InvalidParameterCombination", 400, InvalidParameter),
    ("MissingParameter", 400, InvalidParameter),
    ("InvalidNetworkInterfaceID.Malformed", 400, InvalidParameter),
    ("AuthFailure", 401, Unauthorized),
    ("UnauthorizedOperation", 403, Unauthorized),
    ("SignatureDoesNotMatch", 403, Unauthorized),
    ("RequestExpired", 400, Unauthorized),
    ("InvalidClientTokenId", 403, Unauthorized),
    ("SomethingElse", 400, CloudError),
])
def test_ec2_error_classes(code: str, status: int, cls: type) -> None:
    assert error_class(code, status) is cls
    err = make_error(code, "msg", status, "req-1", "AttachNetworkInterface")
    assert type(err) is cls and err.code == code and err.status == status
    assert err.request_id == "req-1" and err.api == "AttachNetworkInterface"
    assert err.retryable == (cls in (Throttled, ServerError, InvalidState))


def test_limits_from_describe_instance_types_and_the_eks_formula() -> None:
    m5 = aws.limits_of({"InstanceType": "m5.large", "NetworkInfo": {
        "MaximumNetworkInterfaces": 3, "Ipv4AddressesPerInterface": 10,
        "DefaultNetworkCardIndex": 0,
        "NetworkCards": [{"NetworkCardIndex": 0, "MaximumNetworkInterfaces": 3}]}})
    assert m5 is not None
    assert (m5.max_enis, m5.ips_per_eni, m5.hot_swap, m5.source) == (3, 10, True, "api")
    assert (m5.ips_per_call, m5.ips_at_create, m5.pods_on_primary_eni, m5.max_pods_extra) == (
        9, 9, True, 2)
    assert m5.pod_ips == 27 and m5.max_pods == 29  # 3 x (10 - 1) + 2
    # several network cards: device indexes on the default card only
    multi = aws.limits_of({"InstanceType": "p5.48xlarge", "NetworkInfo": {
        "MaximumNetworkInterfaces": 64, "Ipv4AddressesPerInterface": 50,
        "DefaultNetworkCardIndex": 0,
        "NetworkCards": [{"NetworkCardIndex": i, "MaximumNetworkInterfaces": 2}
                         for i in range(32)]}})
    assert multi is not None and multi.max_enis == 2
    assert aws.limits_of({"InstanceType": "x.none", "NetworkInfo": {}}) is None
    # the rules go on whatever the figures came from (override, table)
    ruled = aws.ec2_limits(InstanceLimits("t3.nano", 2, 2, True, "override"))
    assert (ruled.ips_per_call, ruled.max_pods, ruled.source) == (1, 4, "override")


def test_bundled_ec2_table_gives_the_eks_figures() -> None:
    table = bundled_table(aws.DATA_FILE)
    # EKS's eni-max-pods.txt figures for these types
    for itype, pods in {"m5.large": 29, "m5.xlarge": 58, "m5.4xlarge": 234,
                        "m5.16xlarge": 737, "t3.nano": 4, "t3.medium": 17, "t3.large": 35,
                        "c5.large": 29, "c5.18xlarge": 737, "r5.large": 29}.items():
        assert itype in table, itype
        lim = table_limits(itype, "aws")
        assert lim is not None and lim.max_pods == pods, (itype, lim)
    assert table_limits("m5.large") is None  # not an ECS type
    assert table_limits("ecs.g6.large", "aws") is None


def test_gateway_is_the_network_address_plus_one() -> None:
    assert aws.gateway_of("10.0.1.0/24") == "10.0.1.1"
    assert aws.gateway_of("172.31.32.0/20") == "172.31.32.1"


def test_endpoint_url() -> None:
    assert aws.endpoint_url("") is None
    assert aws.endpoint_url("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert aws.endpoint_url("ec2.us-east-1.amazonaws.com") == \
        "https://ec2.us-east-1.amazonaws.com"


def test_ec2_default_rates_and_their_override() -> None:
    lim = RateLimiter({"AttachNetworkInterface": Rate(60, 5)}, defaults=aws.EC2_RATES,
                      fallback=aws.EC2_FALLBACK_RATE)
    assert lim.bucket("AssignPrivateIpAddresses").rate == Rate(300, 100)  # 100, 5/s
    assert lim.bucket("DescribeNetworkInterfaces").rate == Rate(1200, 100)  # 100, 20/s
    assert lim.bucket("DetachNetworkInterface").rate == Rate(300, 50)  # mutating: 50, 5/s
    assert lim.bucket("AttachNetworkInterface").rate == Rate(60, 5)  # the user's
    assert lim.bucket("CreateTags").rate == aws.EC2_FALLBACK_RATE
    # the ECS defaults are not EC2's
    assert RateLimiter().bucket("AssignPrivateIpAddresses").rate == Rate(400, 10)


@pytest.mark.parametrize(("pid", "want"), [
    ("aws:///us-east-1a/i-0123456789abcdef0", "i-0123456789abcdef0"),
    ("aws:///eu-west-1b/i-abc", "i-abc"),
    ("aws://us-east-1a/i-abc", "i-abc"),
    ("cn-hangzhou.i-bp1abc", "i-bp1abc"),
    ("alicloud://cn-hangzhou.i-bp1abc", "i-bp1abc"),
    ("kind://docker/kind/node", ""),
    ("aws:///us-east-1a/", ""),
    ("gce://project/zone/vm-1", ""),
    ("", ""),
])
def test_instance_of_provider_ids(pid: str, want: str) -> None:
    assert instance_of({"spec": {"providerID": pid}}) == want


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.startswith(("ENIWAY_", "ALIBABA_CLOUD_", "AWS_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


def test_cli_cloud_aws_region_and_credentials(clean_env: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    args = operator_main.parse_args(["--cluster-id", "c", "--cloud", "aws",
                                     "--region", "eu-west-1"])
    assert args.region == "eu-west-1"
    provider = operator_main.make_provider(args)
    assert isinstance(provider, aws.AwsProvider)
    assert provider._client.meta.region_name == "eu-west-1"
    assert provider._client.meta.config.retries["total_max_attempts"] == 1
    # an empty region: ECS's default for aliyun, boto3's for aws, else a usage error
    assert operator_main.parse_args(["--cluster-id", "c"]).region == "cn-hangzhou"
    with pytest.raises(SystemExit) as e:
        operator_main.parse_args(["--cluster-id", "c", "--cloud", "aws"])
    assert e.value.code == 2 and "needs a region" in capsys.readouterr().err
    clean_env.setenv("AWS_DEFAULT_REGION", "ap-southeast-1")
    assert operator_main.parse_args(["--cluster-id", "c", "--cloud", "aws"]).region == \
        "ap-southeast-1"
    # an Alibaba AccessKey with --cloud aws is a mistake, said so
    with pytest.raises(SystemExit):
        operator_main.parse_args(["--cluster-id", "c", "--cloud", "aws",
                                  "--credentials-dir", "/etc/x"])
    assert "boto3's chain" in capsys.readouterr().err
    # the rate flag reaches EC2's buckets
    args = operator_main.parse_args(["--cluster-id", "c", "--cloud", "aws", "--rate-limits",
                                     '{"AssignPrivateIpAddresses": "60/min"}'])
    p = operator_main.make_provider(args)
    assert p.limiter.bucket("AssignPrivateIpAddresses").rate == Rate(60, 10)
    assert p.limiter.bucket("CreateNetworkInterface").rate == Rate(300, 100)


def test_unreachable_ec2_is_a_server_error_and_limits_fall_back_on_the_table(
        clean_env: pytest.MonkeyPatch) -> None:
    import socket

    import boto3

    from eniway_operator.testing import FAST_RETRY

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    session = boto3.session.Session(aws_access_key_id="AKIDEXAMPLE",
                                    aws_secret_access_key="secret")
    p = aws.AwsProvider("us-east-1", endpoint=f"http://127.0.0.1:{port}", session=session,
                        retry=FAST_RETRY, connect_timeout=1, read_timeout=1)
    with pytest.raises(ServerError) as ei:
        p.describe_enis()
    assert ei.value.code == "ConnectionError"
    assert p.calls["DescribeNetworkInterfaces"] == FAST_RETRY.server.max_attempts
    lim = p.instance_limits("m5.large")  # the API is down: the bundled EC2 table
    assert (lim.source, lim.max_enis, lim.ips_per_eni, lim.max_pods) == ("table", 3, 10, 29)
    assert lim.pods_on_primary_eni and lim.ips_per_call == 9
    over = aws.AwsProvider("us-east-1", endpoint=f"http://127.0.0.1:{port}", session=session,
                           retry=FAST_RETRY, limits_override={"m5.large": {
                               "enis": 2, "ipsPerENI": 5}})
    lim = over.instance_limits("m5.large")  # the override wins, with EC2's rules
    assert (lim.source, lim.max_pods, lim.ips_per_call) == ("override", 10, 4)
