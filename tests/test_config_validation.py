"""A mistyped vSwitch or security group, and rules broken across keys, reported all at once
with their source as condition ConfigInvalid, while the node keeps serving with what is
valid: the operator against the real apiserver and the emulator (official SDK)."""

from __future__ import annotations

from typing import Any

import pytest
from test_operator_e2e import ZONE, Env, env  # noqa: F401 - the fixture

from cni_plugin import contract
from eniway_operator.testing import make_pods, wait_for

pytestmark = pytest.mark.cluster


def _condition(e: Env, node: str, ctype: str) -> dict[str, Any]:
    for c in ((e.pool(node) or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == ctype:
            return dict(c)
    return {}


def test_describe_security_groups_through_the_sdk(cloudsim: Any) -> None:
    topo = cloudsim.admin.bootstrap({ZONE: ["10.9.0.0/24"]})
    provider = cloudsim.provider()
    got = provider.describe_security_groups([topo.security_group_id, "sg-nosuch0000"])
    assert [(g.security_group_id, g.vpc_id) for g in got] == [
        (topo.security_group_id, topo.vpc_id)]
    assert provider.describe_security_groups(["sg-nosuch0000"]) == []


def test_bad_ids_reported_with_their_source_and_the_rest_used(env: Env) -> None:  # noqa: F811
    env.config(min_pool_size=2, max_pool_size=4)
    node = env.add_node("ecs.g6.xlarge")
    agent = env.start_agent()
    env.operator()
    wait_for(lambda: env.converged(node, 2, 4), 60, "pool")
    sg = env.topo.security_group_id
    good_vsw = env.vsw[1]
    env.custom.patch_cluster_custom_object(
        contract.GROUP, contract.VERSION, contract.PLURAL_ENIPOOL, node,
        {"spec": {"config": {"vswitches": {ZONE: ["vsw-typo00000", good_vsw]},
                             "security_group_ids": ["sg-typo00000", sg],
                             "max_pool_size": 1, "bogus_key": 3}}})
    cond = wait_for(lambda: _condition(env, node, "ConfigInvalid").get("status") == "True"
                    and _condition(env, node, "ConfigInvalid"), 30, "ConfigInvalid")
    src = f"enipool {node} spec.config"
    message = cond["message"]
    for needle in (f"{src}: vswitches.{ZONE}: vsw-typo00000 does not exist",
                   f"{src}: security_group_ids: sg-typo00000 does not exist",
                   f"{src}: max_pool_size (1) must be >= min_pool_size (2)",
                   f"{src}: unknown key 'bogus_key'"):
        assert needle in message, message
    assert cond["reason"] == "ConfigInvalid"
    assert any(e["reason"] == "ConfigInvalid" and "vsw-typo00000" in e["message"]
               for e in env.events(node))
    status_cfg = (env.pool(node) or {})["status"]["config"]
    assert status_cfg["vswitches"] == {ZONE: [good_vsw]}
    assert status_cfg["security_group_ids"] == [sg] and status_cfg["max_pool_size"] == 4
    # The node keeps serving: more pods than one ENI holds, the new ENI on what is valid.
    before = {e.eni_id for e in env.cloud_enis(node)}
    make_pods(env.api, node, 12, namespace=env.namespace)
    wait_for(lambda: len(agent.held(node)) == 12, 90, "pods served")
    new = [e for e in env.cloud_enis(node) if e.eni_id not in before]
    assert new and all(e.vswitch_id == good_vsw and list(e.security_group_ids) == [sg]
                       for e in new), new
    assert _condition(env, node, "ConfigInvalid")["status"] == "True"
    # Fixed: the condition clears.
    env.custom.patch_cluster_custom_object(
        contract.GROUP, contract.VERSION, contract.PLURAL_ENIPOOL, node,
        {"spec": {"config": None}})
    wait_for(lambda: _condition(env, node, "ConfigInvalid").get("status") == "False", 30,
             "ConfigInvalid cleared")
    assert agent.violations == []
