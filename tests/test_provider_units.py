"""Pure parts of the cloud provider: token buckets, backoff policy, error mapping,
limits cache and credentials sources. No I/O, no sleeping (fake clocks)."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest

from eniway_operator.cloud.backoff import Backoff, RetryPolicy
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
from eniway_operator.cloud.credentials import (
    CredentialsError,
    RamRoleCredentials,
    SecretFileCredentials,
    StaticCredentials,
    resolve,
)
from eniway_operator.cloud.errors import error_class, make_error
from eniway_operator.cloud.limits import LimitsCache, bundled_table, family_hot_swap
from eniway_operator.cloud.ratelimit import (
    DEFAULT_RATES,
    Rate,
    RateLimiter,
    TokenBucket,
    parse_rates,
)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


# --- token buckets ---------------------------------------------------------------------


def test_bucket_burst_then_refill() -> None:
    clock = FakeClock()
    b = TokenBucket(Rate(per_minute=60, burst=3), clock)
    assert [b.try_take() for _ in range(4)] == [True, True, True, False]
    assert b.wait_time() == pytest.approx(1.0)
    clock.t += 0.5
    assert not b.try_take()
    clock.t += 0.5
    assert b.try_take()
    clock.t += 100
    assert b.tokens == pytest.approx(3)  # never above the burst


def test_bucket_take_blocks_until_refilled_and_honours_timeout() -> None:
    clock = FakeClock()
    b = TokenBucket(Rate(per_minute=120, burst=1), clock)
    assert b.take(sleep=clock.sleep)
    start = clock.t
    assert b.take(sleep=clock.sleep)
    assert clock.t - start == pytest.approx(0.5)
    assert not b.take(timeout=0.1, sleep=clock.sleep)


def test_terway_default_rates() -> None:
    assert DEFAULT_RATES["AssignPrivateIpAddresses"].per_minute == 400
    assert DEFAULT_RATES["CreateNetworkInterface"].per_minute == 500
    assert DEFAULT_RATES["DescribeNetworkInterfaces"].per_minute == 800


def test_limiter_keeps_apis_apart() -> None:
    clock = FakeClock()
    lim = RateLimiter({"A": Rate(60, 1), "B": Rate(60, 1)}, clock)
    assert lim.bucket("A").try_take()
    assert not lim.bucket("A").try_take()
    assert lim.bucket("B").try_take()  # A's drain does not touch B
    assert lim.bucket("Unknown").try_take()


def test_parse_rates() -> None:
    got = parse_rates({"A": "400/min", "B": "5/s", "C": "120", "D": {"perMinute": 30,
                                                                     "burst": 2}})
    assert got["A"].per_minute == 400 and got["B"].per_minute == 300
    assert got["C"].per_minute == 120 and got["D"] == Rate(30, 2)


# --- errors and backoff ----------------------------------------------------------------


@pytest.mark.parametrize("code,status,cls", [
    ("Throttling", 400, Throttled),
    ("Throttling.User", 400, Throttled),
    ("InternalError", 500, ServerError),
    ("SomethingNew", 503, ServerError),
    ("InvalidVSwitchId.IpNotEnough", 403, VSwitchExhausted),
    ("EniPerInstanceLimitExceeded", 403, QuotaExceeded),
    ("QuotaExceeded.PrivateIpAddress", 400, VSwitchExhausted),
    ("QuotaExceeded.Eni", 403, QuotaExceeded),
    ("MaxEniCountExceeded", 403, QuotaExceeded),
    ("InvalidOperation.Ipv4CountExceeded", 403, QuotaExceeded),
    ("MaxEniPrivateIpsCountExceeded", 403, QuotaExceeded),
    ("JoinedGroupLimitExceed", 400, InvalidParameter),
    ("InvalidOperation.InvalidEcsState", 400, InvalidState),
    ("IncorrectInstanceStatus", 403, InvalidState),
    ("InvalidOperation.InvalidEniState", 403, InvalidState),
    ("Operation.Conflict", 403, InvalidState),
    ("InvalidEniId.NotFound", 404, NotFound),
    ("InvalidIp.IpUnassigned", 403, NotFound),
    ("InvalidOperation.DetachPrimaryEniNotAllowed", 403, InvalidParameter),
    ("IdempotentParameterMismatch", 400, InvalidParameter),
    ("SignatureDoesNotMatch", 400, Unauthorized),
    ("InvalidAccessKeyId.NotFound", 404, Unauthorized),
    ("InvalidTimeStamp.Expired", 400, Unauthorized),
    ("SignatureNonceUsed", 400, ServerError),
    ("Weird", 400, CloudError),
])
def test_error_mapping(code: str, status: int, cls: type) -> None:
    assert error_class(code, status) is cls
    err = make_error(code, "m", status, "rid", "Api")
    assert type(err) is cls and err.status == status and err.request_id == "rid"


def test_backoff_by_error_type() -> None:
    p = RetryPolicy(throttled=Backoff(1.0, 20.0, 4), server=Backoff(0.2, 3.0, 3),
                    rng=random.Random(1))
    thr = Throttled("Throttling", "x")
    srv = ServerError("InternalError", "x")
    d1, d2, d3 = (p.delay(a, thr) for a in (1, 2, 3))
    assert d1 is not None and d2 is not None and d3 is not None
    assert 0.5 <= d1 <= 1.0 and 1.0 <= d2 <= 2.0 and 2.0 <= d3 <= 4.0
    assert p.delay(4, thr) is None  # attempts used up
    s1 = p.delay(1, srv)
    assert s1 is not None and 0.1 <= s1 <= 0.2  # server errors retry sooner
    assert p.delay(3, srv) is None
    for err in (QuotaExceeded("EniPerInstanceLimitExceeded", "x"),
                VSwitchExhausted("InvalidVSwitchId.IpNotEnough", "x"),
                InvalidParameter("InvalidParameter", "x"), NotFound("X.NotFound", "x"),
                Unauthorized("SignatureDoesNotMatch", "x"),
                InvalidState("IncorrectInstanceStatus", "x")):
        assert p.delay(1, err) is None, err


def test_backoff_caps() -> None:
    b = Backoff(1.0, 5.0, 100)
    rng = random.Random(0)
    assert all(b.delay(i, rng) <= 5.0 for i in range(30))


# --- limits ----------------------------------------------------------------------------


def test_bundled_table_and_hot_swap() -> None:
    t = bundled_table()
    assert t["ecs.g6.large"].eni_quantity == 2 and t["ecs.g6.large"].eni_private_ip_quantity == 6
    assert t["ecs.g6.large"].source  # the source column is kept
    assert not family_hot_swap("ecs.t6-c1m1.large", t)
    assert not family_hot_swap("ecs.t6-c9m9.huge", t)  # unknown type of a no-swap family
    assert family_hot_swap("ecs.g6.large", t)
    assert family_hot_swap("ecs.zz9.large", t)


def test_limits_cache_order() -> None:
    clock = FakeClock()
    calls: list[str] = []
    answers: dict[str, InstanceLimits | None] = {
        "ecs.g6.large": InstanceLimits("ecs.g6.large", 2, 6, True, "api"),
        "ecs.g6.xlarge": None,
    }

    def fetch(t: str) -> InstanceLimits | None:
        calls.append(t)
        if t == "down":
            raise ServerError("InternalError", "x")
        return answers.get(t)

    cache = LimitsCache(fetch, {"ecs.c6.large": {"enis": 9, "ipsPerENI": 9}}, ttl=60,
                        clock=clock)
    assert cache.get("ecs.c6.large").source == "override" and calls == []
    assert cache.get("ecs.g6.large").source == "api"
    assert cache.get("ecs.g6.large").source == "api" and calls == ["ecs.g6.large"]
    clock.t += 61
    cache.get("ecs.g6.large")
    assert calls == ["ecs.g6.large", "ecs.g6.large"]
    table = cache.get("ecs.g6.xlarge")  # unknown to the API: the table answers
    assert table.source == "table"
    assert table.max_enis == bundled_table()["ecs.g6.xlarge"].eni_quantity
    with pytest.raises(NotFound):
        cache.get("ecs.none.large")
    with pytest.raises(ValueError):
        LimitsCache(fetch, {"x": {"enis": 0}})


def test_limits_cache_falls_back_when_the_cloud_is_down() -> None:
    def fetch(t: str) -> InstanceLimits | None:
        raise ServerError("InternalError", "x")

    got = LimitsCache(fetch).get("ecs.g6.large")
    assert got.source == "table" and got.max_enis == 2


# --- credentials -----------------------------------------------------------------------


def test_env_then_secret_then_ram_role(tmp_path: Path) -> None:
    env = {"ALIBABA_CLOUD_ACCESS_KEY_ID": "ak", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "sk"}
    c = resolve(str(tmp_path), env=env)
    assert isinstance(c, StaticCredentials) and c.get_credential().access_key_id == "ak"
    (tmp_path / "access-key-id").write_text("fileak\n")
    (tmp_path / "access-key-secret").write_text("filesk\n")
    c2 = resolve(str(tmp_path), env={})
    assert isinstance(c2, SecretFileCredentials)
    m = c2.get_credential()
    assert (m.access_key_id, m.access_key_secret, m.type) == ("fileak", "filesk", "access_key")
    assert isinstance(resolve(str(tmp_path / "missing"), env={}), RamRoleCredentials)


def test_secret_rotation_is_picked_up(tmp_path: Path) -> None:
    (tmp_path / "accessKeyId").write_text("a1")
    (tmp_path / "accessKeySecret").write_text("s1")
    c = SecretFileCredentials(tmp_path)
    assert c.get_credential().access_key_id == "a1"
    (tmp_path / "accessKeyId").write_text("a2")
    import os

    os.utime(tmp_path / "accessKeyId", (time.time() + 5, time.time() + 5))
    assert c.get_credential().access_key_id == "a2"
    with pytest.raises(CredentialsError):
        SecretFileCredentials(tmp_path / "nothing")


def test_ram_role_refreshes_before_expiry() -> None:
    clock = FakeClock()
    clock.t = 1_700_000_000.0
    served: list[str] = []

    def fetch(url: str) -> str:
        served.append(url)
        if url.endswith("/security-credentials/"):
            return "eniway-role\n"
        n = len(served)
        exp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock.t + 3600))
        return json.dumps({"Code": "Success", "AccessKeyId": f"STS.{n}", "AccessKeySecret": "s",
                           "SecurityToken": "t", "Expiration": exp})

    c = RamRoleCredentials("http://md", refresh_before=300, fetch=fetch, clock=clock)
    m = c.get_credential()
    assert m.type == "sts" and m.security_token == "t" and m.access_key_id == "STS.2"
    clock.t += 2800
    assert c.get_credential().access_key_id == "STS.2"  # still fresh
    clock.t += 100  # 2900 s in: past the 80% mark
    assert c.get_credential().access_key_id == "STS.3"
    assert served[0] == "http://md/latest/meta-data/ram/security-credentials/"


def test_ram_role_without_role() -> None:
    c = RamRoleCredentials("http://md", fetch=lambda url: "")
    with pytest.raises(CredentialsError):
        c.get_credential()


def _unused(x: Any) -> None:  # keeps the Any import honest for type checkers
    del x
