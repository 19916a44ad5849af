"""Every request the provider sends is counted by its own answer, retries included, so
the operator's throttling figure is the cloud's (the emulator's own count, through the
official SDK)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from eniway_operator import metrics
from eniway_operator.cloud.base import Throttled


def test_each_throttled_attempt_counted_as_the_cloud_counts(cloudsim: Any) -> None:
    topo = cloudsim.admin.bootstrap({"cn-hangzhou-i": ["10.7.0.0/24"]})
    vsw = topo.vswitch_ids("cn-hangzhou-i")[0]
    seen: Counter[tuple[str, str]] = Counter()

    def record(api: str, result: str) -> None:
        seen[(api, result)] += 1
        metrics.count_attempt(api, result)

    provider = cloudsim.provider(on_attempt=record, sleep=lambda s: None)
    before = metrics.CLOUD_ATTEMPTS.labels("DescribeVSwitches", "Throttled")._value.get()
    cloudsim.admin.reset_call_counts()
    # Refused 3 times, then served: one call, four requests.
    cloudsim.admin.set_faults({"DescribeVSwitches": {"count": 3, "code": "Throttling",
                                                     "status": 400}})
    assert provider.describe_vswitches([vsw])[0].vswitch_id == vsw
    assert seen == {("DescribeVSwitches", "Throttled"): 3, ("DescribeVSwitches", "ok"): 1}
    cloud = cloudsim.admin.call_counts()
    assert cloud["calls"]["DescribeVSwitches"] == 4
    assert cloud["errors"]["DescribeVSwitches"] == {"Throttling": 3}
    # Refused every time: the provider gives up after its attempts, each one counted.
    cloudsim.admin.set_faults({"DescribeVSwitches": {"error_rate": 1.0, "code": "Throttling",
                                                     "status": 400}})
    with pytest.raises(Throttled):
        provider.describe_vswitches([vsw])
    sent = cloudsim.admin.call_counts()["calls"]["DescribeVSwitches"] - 4
    assert sent == provider.retry.throttled.max_attempts
    assert seen[("DescribeVSwitches", "Throttled")] == 3 + sent
    after = metrics.CLOUD_ATTEMPTS.labels("DescribeVSwitches", "Throttled")._value.get()
    assert after - before == 3 + sent


def test_series_exported_before_their_first_event() -> None:
    """A fresh operator process: the throttling and GC series alerts read are there at 0."""
    import subprocess
    import sys

    code = ("from prometheus_client import generate_latest\n"
            "from eniway_operator import metrics\n"
            "print(generate_latest(metrics.REGISTRY).decode())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    for series in ('eniway_cloud_attempts_total{api="AssignPrivateIpAddresses",'
                   'result="Throttled"} 0.0',
                   'eniway_cloud_calls_total{api="CreateNetworkInterface",result="ok"} 0.0',
                   'eniway_gc_deleted_total{kind="eni"} 0.0',
                   'eniway_reconcile_seconds_count{result="error"} 0.0'):
        assert series in out, series
