"""Exclusive-ENI policies and the per-pod opt-in: parsing, validation, selection, claims."""

from __future__ import annotations

from typing import Any

import pytest

from eniway_operator.cloud.base import SecurityGroup, VSwitch
from eniway_operator.exclusive_plan import ELASTIC, FIXED, Settings
from eniway_operator.exclusive_policy import (
    DEFAULT_RELEASE_AFTER,
    EXCLUSIVE_ANNOTATION,
    EXCLUSIVE_RESOURCE,
    Policy,
    PolicyError,
    Selector,
    cloud_problems,
    parse_policy,
    pick_policy,
    pod_claim,
)

SPEC: dict[str, Any] = {
    "selector": {"podSelector": {"matchLabels": {"app": "web"}}},
    "vSwitchIDs": ["vsw-aaaa0001"],
    "securityGroupIDs": ["sg-web00001", "sg-app00001"],
}


def spec(**kw: Any) -> dict[str, Any]:
    out = dict(SPEC)
    out.update(kw)
    return {k: v for k, v in out.items() if v is not None}


def test_parse_a_policy() -> None:
    p = parse_policy("web", spec())
    assert p.settings == Settings(("vsw-aaaa0001",), ("sg-web00001", "sg-app00001"), ELASTIC)
    assert p.namespace_selector is None and p.pod_selector == Selector({"app": "web"})
    f = parse_policy("db", spec(ipType="Fixed", releaseAfter="5m"))
    assert (f.settings.ip_type, f.settings.release_after) == (FIXED, 300.0)
    assert parse_policy("db", spec(ipType="Fixed")).settings.release_after == (
        DEFAULT_RELEASE_AFTER)


@pytest.mark.parametrize("bad,field", [
    ({"securityGroupIDs": []}, "securityGroupIDs: an ENI takes 1 to 5"),
    ({"securityGroupIDs": None}, "securityGroupIDs: an ENI takes 1 to 5"),
    ({"securityGroupIDs": [f"sg-abcd000{i}" for i in range(6)]}, "1 to 5"),
    ({"securityGroupIDs": ["sg-web00001", "sg-web00001"]}, "listed twice"),
    ({"securityGroupIDs": ["web"]}, "security group ids (sg-...)"),
    ({"vSwitchIDs": ["subnet-1"]}, "vSwitchIDs"),
    ({"ipType": "Sticky"}, "ipType: 'Sticky'"),
    ({"releaseAfter": "5m"}, "only a Fixed ipType"),
    ({"ipType": "Fixed", "releaseAfter": "soon"}, "releaseAfter"),
    ({"ipType": "Fixed", "releaseAfter": "-5s"}, "releaseAfter"),
    ({"selector": {}}, "namespaceSelector, a podSelector or both"),
    ({"selector": {"podSelector": {"matchLabels": {"a": 1}}}}, "matchLabels"),
    ({"selector": {"podSelector": {"matchExpressions": [
        {"key": "a", "operator": "Near"}]}}}, "operator: 'Near'"),
    ({"selector": {"podSelector": {"matchExpressions": [
        {"key": "a", "operator": "In"}]}}}, "In needs values"),
    ({"selector": {"podSelector": {"matchExpressions": [
        {"key": "a", "operator": "Exists", "values": ["x"]}]}}}, "Exists takes no values"),
])
def test_bad_policies_name_the_field(bad: dict[str, Any], field: str) -> None:
    with pytest.raises(PolicyError, match="policy p: spec") as e:
        parse_policy("p", spec(**bad))
    assert field in str(e.value)
    with pytest.raises(PolicyError):
        parse_policy("p", "not a map")


def test_selectors() -> None:
    s = Selector({"app": "web"}, (("tier", "In", ("a", "b")), ("canary", "DoesNotExist", ()),
                                  ("zone", "NotIn", ("z9",)), ("team", "Exists", ())))
    ok = {"app": "web", "tier": "a", "team": "x"}
    assert s.matches(ok)
    assert not s.matches({**ok, "app": "db"})
    assert not s.matches({**ok, "tier": "c"})
    assert not s.matches({**ok, "canary": "1"})
    assert not s.matches({**ok, "zone": "z9"})
    assert not s.matches({k: v for k, v in ok.items() if k != "team"})
    both = Policy("p", Selector({"env": "prod"}), Selector({"app": "web"}), Settings())
    assert both.selects({"env": "prod"}, {"app": "web"})
    assert not both.selects({"env": "dev"}, {"app": "web"})


def test_cloud_validation() -> None:
    p = parse_policy("web", spec(vSwitchIDs=["vsw-aaaa0001", "vsw-gone0001"]))
    vsw = {"vsw-aaaa0001": VSwitch("vsw-aaaa0001", "vpc-1", "z1", "10.0.0.0/24", 10)}
    groups = {"sg-web00001": SecurityGroup("sg-web00001", "vpc-1"),
              "sg-app00001": SecurityGroup("sg-app00001", "vpc-2")}
    assert cloud_problems(p, "vpc-1", vsw, groups) == [
        "vSwitchIDs: vsw-gone0001 does not exist (InvalidVSwitchId.NotFound)",
        "securityGroupIDs: sg-app00001 is in vpc-2, not in vpc-1"]
    groups["sg-app00001"] = SecurityGroup("sg-app00001", "vpc-1")
    assert cloud_problems(parse_policy("web", spec()), "vpc-1", vsw, groups) == []


def pod(name: str = "web-0", **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "metadata": {"name": name, "namespace": "shop", "uid": f"uid-{name}",
                     "labels": {"app": "web"},
                     "annotations": {EXCLUSIVE_ANNOTATION: "true"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
        "status": {"phase": "Pending"},
    }
    for k, v in kw.items():
        part, _, key = k.partition("__")
        out[part][key] = v
    return out


def test_pod_claims() -> None:
    web = parse_policy("web", spec())
    claim, problems = pod_claim(pod(), {}, [web])
    assert claim is not None and problems == []
    assert (claim.pod, claim.node, claim.key, claim.settings) == (
        "shop/web-0", "n1", "uid-web-0", web.settings)
    # not scheduled, host network, finished, opted out, unselected: shared mode
    assert pod_claim(pod(spec__nodeName=""), {}, [web])[0] is None
    assert pod_claim(pod(spec__hostNetwork=True), {}, [web])[0] is None
    assert pod_claim(pod(status__phase="Succeeded"), {}, [web])[0] is None
    assert pod_claim(pod(metadata__annotations={EXCLUSIVE_ANNOTATION: "false"}), {},
                     [web])[0] is None
    unselected = pod_claim(pod(metadata__labels={"app": "db"}), {}, [web])[0]
    assert unselected is not None and unselected.settings == Settings()
    # a policy supplies settings, it does not opt a pod in
    assert pod_claim(pod(metadata__annotations={}), {}, [web])[0] is None
    # the annotation alone, or the resource alone: the node's settings
    alone, _ = pod_claim(pod(metadata__labels={}, metadata__annotations={
        EXCLUSIVE_ANNOTATION: "true"}), {}, [])
    assert alone is not None and alone.settings == Settings()
    asks = pod(metadata__labels={}, spec__containers=[
        {"name": "c", "resources": {"limits": {EXCLUSIVE_RESOURCE: "1"}}}])
    assert pod_claim(asks, {}, [])[0] is not None
    # a bad annotation is reported, never guessed
    claim, problems = pod_claim(pod(metadata__annotations={EXCLUSIVE_ANNOTATION: "yes"}), {},
                                [web])
    assert claim is None and "expected true or false" in problems[0]


def test_statefulset_pods_get_a_fixed_ip_and_terminating_pods_hold() -> None:
    web = parse_policy("web", spec())
    owned = pod(metadata__ownerReferences=[
        {"kind": "StatefulSet", "name": "web", "controller": True}])
    claim, _ = pod_claim(owned, {}, [web])
    assert claim is not None and claim.fixed and claim.key == "shop/web-0"
    assert claim.settings.release_after == DEFAULT_RELEASE_AFTER
    gone, _ = pod_claim(pod(metadata__deletionTimestamp="2026-01-01T00:00:00Z"), {}, [web])
    assert gone is not None and gone.terminating


def test_overlapping_policies_first_by_name_and_reported() -> None:
    a = parse_policy("a-web", spec())
    b = parse_policy("b-all", spec(selector={"namespaceSelector": {}}))
    assert pick_policy([b, a], {}, {"app": "web"}) == (a, ["b-all"])
    claim, problems = pod_claim(pod(), {}, [b, a])
    assert claim is not None and claim.settings == a.settings
    assert "a-web, b-all all select the pod" in problems[0]
