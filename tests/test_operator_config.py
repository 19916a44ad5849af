"""Pool configuration: parsing, layering and validation errors."""

from __future__ import annotations

import json

import pytest

from cni_plugin import contract
from eniway_operator.config import (
    ConfigError,
    PoolConfig,
    from_annotation,
    from_configmap,
    merge,
    merge_report,
    parse_duration,
)


def test_defaults_are_terways() -> None:
    cfg = merge()
    assert cfg == PoolConfig()
    assert (cfg.min_pool_size, cfg.max_pool_size, cfg.ips_per_call) == (0, 5, 0)


@pytest.mark.parametrize("text", [
    "min_pool_size: 2\nmax_pool_size: 8\nidle_ip_reclaim_after: 5m\n"
    "vswitches:\n  z1: [vsw-aaaa0001, vsw-bbbb0002]\nsecurity_groups: [sg-abcd1234]\n",
    json.dumps({"min_pool_size": 2, "max_pool_size": 8, "idle_ip_reclaim_after": 300,
                "vswitches": {"z1": ["vsw-aaaa0001", "vsw-bbbb0002"]},
                "security_group_ids": ["sg-abcd1234"]}),
])
def test_yaml_and_json_configmap(text: str) -> None:
    for key in ("config.yaml", "config.json"):
        cfg = merge((from_configmap({key: text}, "cm"), "cm"))
        assert cfg.min_pool_size == 2 and cfg.max_pool_size == 8
        assert cfg.idle_ip_reclaim_after == 300.0
        assert cfg.vswitches_for("z1") == ("vsw-aaaa0001", "vsw-bbbb0002")
        assert cfg.security_group_ids == ("sg-abcd1234",)


def test_layers_override_in_order() -> None:
    glob = from_configmap({"config.yaml": "min_pool_size: 1\nmax_pool_size: 9"}, "cm")
    ann = from_annotation({contract.ANNOTATION_POOL_OVERRIDE: '{"min_pool_size": 3}'}, "node")
    spec = {"max_pool_size": 4}
    cfg = merge((glob, "cm"), (ann, "node"), (spec, "enipool"))
    assert (cfg.min_pool_size, cfg.max_pool_size) == (3, 4)
    assert cfg.to_status()["min_pool_size"] == 3


@pytest.mark.parametrize("raw,needle", [
    ({"min_pool_size": -1}, "min_pool_size: must be >= 0"),
    ({"min_pool_size": "many"}, "expected an integer"),
    ({"max_pool_size": 1, "min_pool_size": 2}, "max_pool_size (1) must be >= min_pool_size"),
    ({"security_group_ids": [f"sg-aaaa000{i}" for i in range(6)]}, "1 to 5 security groups"),
    ({"security_group_ids": ["default"]}, "not a security group id"),
    ({"vswitches": {"z1": []}}, "non-empty list"),
    ({"vswitches": ["vsw-aaaa0001"]}, "map of zone id"),
    ({"idle_ip_reclaim_after": "soon"}, "expected a duration"),
    ({"eni_tags": {"eniway.io/node": "x"}}, "reserved"),
    ({"ips_per_call": 51}, "between 0 and 50"),
    ({"min_pol_size": 1}, "unknown key 'min_pol_size'"),
    ({"vswitch_selection_policy": "random"}, "expected one of"),
    ({"min_eni": 3, "max_eni": 2}, "min_eni (3) must be <= max_eni (2)"),
])
def test_errors_name_the_key(raw: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        merge((raw, "enipool/n1 spec.config"))
    assert needle in str(e.value)


def test_bad_documents() -> None:
    with pytest.raises(ConfigError, match="not valid JSON or YAML"):
        from_configmap({"config.yaml": "a: [1"}, "cm")
    with pytest.raises(ConfigError, match="map at the top level"):
        from_configmap({"config.json": "[1, 2]"}, "cm")
    with pytest.raises(ConfigError, match="only one of"):
        from_configmap({"config.json": "{}", "config.yaml": ""}, "cm")
    assert from_configmap(None, "cm") == {}
    assert from_annotation({}, "node") == {}


@pytest.mark.parametrize("value,seconds", [
    (30, 30.0), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("250ms", 0.25), (1.5, 1.5)])
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value, "k") == seconds


def test_every_problem_at_once_with_its_source_and_the_rest_in_effect() -> None:
    glob = {"min_pool_size": 2, "max_pool_size": 6, "ip_cooldown": "soon"}
    node = {"max_pool_size": 1, "vswitches": {"z1": ["vsw-aaaa0001", "bad"]}, "min_pol": 1,
            "max_eni": 2}
    merged = merge_report((glob, "configmap kube-system/eniway-config"),
                          (node, "enipool n1 spec.config"))
    problems = "\n".join(merged.problems)
    assert len(merged.problems) == 4, problems
    assert "configmap kube-system/eniway-config: ip_cooldown: expected a duration" in problems
    assert "enipool n1 spec.config: vswitches.z1: 'bad' is not a vSwitch id" in problems
    assert "enipool n1 spec.config: unknown key 'min_pol'" in problems
    assert ("enipool n1 spec.config: max_pool_size (1) must be >= min_pool_size (2) "
            "(its max_pool_size ignored)") in problems
    cfg = merged.config  # what is valid stays in effect, the bad values fall back
    assert (cfg.min_pool_size, cfg.max_pool_size, cfg.ip_cooldown, cfg.max_eni) == (2, 6, 30, 2)
    assert cfg.vswitches == {}
    assert merged.origin["max_eni"] == "enipool n1 spec.config"
    assert merged.origin["min_pool_size"] == "configmap kube-system/eniway-config"
    with pytest.raises(ConfigError) as e:
        merge((glob, "cm"), (node, "enipool"))
    assert str(e.value).count(";") == 3


def test_ec2_subnet_ids_are_vswitch_ids_and_junk_is_not() -> None:
    cfg = merge((from_configmap({"config.json": json.dumps(
        {"vswitches": {"us-east-1a": ["subnet-0123456789abcdef0"]},
         "security_group_ids": ["sg-0123456789abcdef0"]})}, "cm"), "cm"))
    assert cfg.vswitches_for("us-east-1a") == ("subnet-0123456789abcdef0",)
    for bad in ("subnet_0123", "vpc-0123456789", "subnet-"):
        with pytest.raises(ConfigError, match="nor an EC2 subnet id"):
            merge((from_configmap({"config.json": json.dumps({"vswitches": {"z": [bad]}})},
                                  "cm"), "cm"))
