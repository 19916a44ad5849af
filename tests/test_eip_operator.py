"""Public IPs for pods, the operator's side in-process (no kopf): pods and PodIPs on the
real apiserver, EIPs in eniway-cloudsim through the official VPC SDK. Rounds are driven by
the test; the PodIPs are written as the agent writes them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
from kubernetes import client

from cni_plugin import contract
from eniway_operator import kube as kube_mod
from eniway_operator import testing
from eniway_operator.eip_controller import PublicIps
from eniway_operator.metrics import MeteredProvider

pytestmark = pytest.mark.cluster
ZONE = "cn-hangzhou-i"
VPC_APIS = ("AllocateEipAddress", "AssociateEipAddress", "UnassociateEipAddress",
            "ReleaseEipAddress", "DescribeEipAddresses")


class World:
    def __init__(self, cluster: Any, sim: Any) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.api = kube_mod.load_config(str(cluster.kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.ns = f"eip-{self.tag}"
        self.core.create_namespace({"metadata": {"name": self.ns}})  # type: ignore[arg-type]
        self.sim = sim
        topo = sim.admin.bootstrap({ZONE: ["10.0.0.0/24"]})
        provider = sim.provider()
        inst = sim.admin.create_instance("ecs.g6.xlarge", topo.vswitch_ids(ZONE)[0],
                                         [topo.security_group_id])
        eni = provider.create_eni(topo.vswitch_ids(ZONE)[0], [topo.security_group_id], {},
                                  secondary_ip_count=4)
        provider.attach_eni(eni.eni_id, inst["instance_id"])
        self.eni_id, self.ips = eni.eni_id, list(eni.private_ips)
        self.cloud = MeteredProvider(provider)
        self.kube = kube_mod.Kube(self.api, self.ns)
        self.cluster_id = f"eip-{self.tag}"

    def controller(self) -> PublicIps:
        return PublicIps(self.kube, self.cloud, self.cluster_id)

    def pod(self, name: str, annotation: str | None, ip: str | None) -> str:
        ann = {contract.ANNOTATION_PUBLIC_IP: annotation} if annotation is not None else {}
        pod = self.core.create_namespaced_pod(self.ns, {  # type: ignore[arg-type]
            "metadata": {"name": name, "annotations": ann},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
        uid = str(pod.metadata.uid)  # type: ignore[union-attr]
        if ip is not None:
            self.custom.create_namespaced_custom_object(
                contract.GROUP, contract.VERSION, self.ns, contract.PLURAL_PODIP, {
                    "apiVersion": contract.API_VERSION, "kind": contract.KIND_PODIP,
                    "metadata": {"name": name},
                    "spec": {"ip": ip, "eniId": self.eni_id, "nodeName": "n1",
                             "podUID": uid, "containerId": "c0ffee",
                             "allocatedAt": kube_mod.now_iso()}})
        return uid

    def delete_pod(self, name: str) -> None:
        self.core.delete_namespaced_pod(name, self.ns, grace_period_seconds=0)
        self.custom.delete_namespaced_custom_object(
            contract.GROUP, contract.VERSION, self.ns, contract.PLURAL_PODIP, name)
        testing.wait_for(lambda: not [p for p in self.core.list_namespaced_pod(self.ns).items
                                      if p.metadata and p.metadata.name == name],
                         30, f"pod {name} gone")

    def podip_status(self, name: str) -> dict[str, Any]:
        obj = cast(dict[str, Any], self.custom.get_namespaced_custom_object(
            contract.GROUP, contract.VERSION, self.ns, contract.PLURAL_PODIP, name))
        return cast(dict[str, Any], obj.get("status") or {})

    def eips(self) -> list[dict[str, Any]]:
        return [e for e in self.sim.admin.state()["eips"]
                if e["tags"].get(contract.TAG_CLUSTER) == self.cluster_id
                and e["tags"].get("eniway.io/pod", "").startswith(self.ns + "/")]

    def events(self, name: str) -> dict[str, str]:
        items = self.core.list_namespaced_event(self.ns).items
        return {str(e.reason): str(e.message) for e in items
                if e.involved_object.name == name}

    def rounds(self, ctl: PublicIps, until: Any, limit: int = 60) -> Any:
        def step() -> Any:
            ctl.round()
            return until()

        return testing.wait_for(step, 60, "public IPs converged", 0.05)


@pytest.fixture
def world(cluster: Any, cloudsim: Any) -> Iterator[World]:
    cloudsim.admin.set_eip_settings(associate_delay=0.05, unassociate_delay=0.05)
    w = World(cluster, cloudsim)
    try:
        yield w
    finally:  # the controller is cluster-wide: leave no pod asking to the next test
        w.core.delete_collection_namespaced_pod(w.ns, grace_period_seconds=0)
        testing.wait_for(lambda: not w.core.list_namespaced_pod(w.ns).items, 60,
                         f"pods of {w.ns} gone")
        w.core.delete_namespace(w.ns)


def vpc_calls(sim: Any) -> dict[str, int]:
    calls = sim.admin.call_counts()["calls"]
    return {a: int(calls.get(a, 0)) for a in VPC_APIS}


def test_a_pod_gets_its_eip_and_gives_it_back(world: World) -> None:
    ctl = world.controller()
    assert ctl.held_ips() is None, "before the first round nothing may be released"
    world.pod("plain", None, world.ips[3])
    world.pod("web", "true", world.ips[0])
    world.sim.admin.reset_call_counts()
    status = world.rounds(ctl, lambda: world.podip_status("web").get("publicIP"))
    eip = world.eips()[0]
    assert (status, eip["private_ip"], eip["eni_id"], eip["status"]) == (
        eip["ip"], world.ips[0], world.eni_id, "InUse")
    cond = world.podip_status("web")["conditions"][0]
    assert (cond["type"], cond["status"], cond["reason"]) == ("PublicIP", "True",
                                                              "Associated")
    events = world.events("web")
    assert "PublicIPAllocated" in events and "PublicIPReady" in events
    assert eip["ip"] in events["PublicIPReady"]
    assert ctl.held_ips() == {world.ips[0]}
    assert world.podip_status("plain") == {}, "a pod that asks nothing gets nothing"
    up = vpc_calls(world.sim)
    world.delete_pod("web")
    world.rounds(ctl, lambda: world.eips() == [])
    assert ctl.held_ips() == set()
    down = {k: v - up[k] for k, v in vpc_calls(world.sim).items()}
    print(f"\nVPC API calls for one pod: up {up}, down {down}")
    assert (up["AllocateEipAddress"], up["AssociateEipAddress"]) == (1, 1)
    assert (down["UnassociateEipAddress"], down["ReleaseEipAddress"]) == (1, 1)


def test_never_keeps_the_eip_for_the_next_pod_of_that_name(world: World) -> None:
    ctl = world.controller()
    world.pod("db-0", json.dumps({"release": "Never", "bandwidth": 10}), world.ips[0])
    first = world.rounds(ctl, lambda: world.podip_status("db-0").get("publicIP"))
    world.delete_pod("db-0")
    world.rounds(ctl, lambda: [e["status"] for e in world.eips()] == ["Available"])
    assert world.eips()[0]["ip"] == first
    world.pod("db-0", json.dumps({"release": "Never", "bandwidth": 10}), world.ips[1])
    again = world.rounds(ctl, lambda: world.podip_status("db-0").get("publicIP"))
    assert again == first and world.eips()[0]["private_ip"] == world.ips[1]
    assert len(world.eips()) == 1


def test_quota_leaves_the_pod_on_its_private_ip_and_is_retried(world: World) -> None:
    world.sim.admin.set_eip_settings(quota=0)
    ctl = world.controller()
    world.pod("api", "true", world.ips[0])
    ctl.round()
    cond = world.podip_status("api")["conditions"][0]
    assert (cond["status"], cond["reason"]) == ("False", "QuotaExceeded.Eip")
    assert "QuotaExceeded.Eip" in world.events("api")["PublicIPFailed"]
    assert world.podip_status("api").get("publicIP") is None
    world.sim.admin.set_eip_settings(quota=5)
    assert world.rounds(ctl, lambda: world.podip_status("api").get("publicIP"))


def test_a_new_operator_after_a_crash_mid_association_leaks_nothing(world: World) -> None:
    """The first operator allocates, then its association fails (as if it died there);
    a fresh one (no memory) finds the tagged EIP and associates it: one EIP in all."""
    world.pod("job", "true", world.ips[2])
    world.sim.admin.add_fault("AssociateEipAddress", count=1, code="ServiceUnavailable",
                              status=503)
    first = world.controller()
    first.cloud.inner.retry = first.cloud.inner.retry.__class__(  # no retry: it "dies"
        server=first.cloud.inner.retry.server.__class__(0, 0, 1))
    first.round()
    assert [e["status"] for e in world.eips()] == ["Available"]
    second = world.controller()
    world.rounds(second, lambda: world.podip_status("job").get("publicIP"))
    assert len(world.eips()) == 1


def test_a_new_operator_after_a_crash_while_associating_does_not_associate_twice(
        world: World) -> None:
    """The first operator's association was accepted and is still in transit when it
    stops; a fresh one waits for it rather than asking again: one EIP, one association."""
    world.sim.admin.set_eip_settings(associate_delay=2.0, unassociate_delay=0.05)
    world.pod("mid", "true", world.ips[3])
    world.sim.admin.reset_call_counts()
    first = world.controller()
    testing.wait_for(lambda: (first.round(), vpc_calls(world.sim)["AssociateEipAddress"])[1],
                     30, "association requested", 0.05)
    assert [e["status"] for e in world.eips()] == ["Associating"]
    second = world.controller()
    world.rounds(second, lambda: world.podip_status("mid").get("publicIP"))
    assert len(world.eips()) == 1 and world.eips()[0]["status"] == "InUse"
    assert vpc_calls(world.sim)["AssociateEipAddress"] == 1
    assert vpc_calls(world.sim)["AllocateEipAddress"] == 1


def test_bad_annotation_is_an_event_and_nothing_else(world: World) -> None:
    """...and with nothing to do, the cloud is described once per idle_resync (60 s),
    not every round."""
    ctl = world.controller()
    world.pod("bad", '{"bandwidth": 999}', world.ips[0])
    world.sim.admin.reset_call_counts()
    for _ in range(3):
        ctl.round()
    assert "bandwidth" in world.events("bad")["PublicIPInvalid"]
    assert world.eips() == [] and world.podip_status("bad") == {}
    assert vpc_calls(world.sim)["DescribeEipAddresses"] == 1
    assert ctl.held_ips() == set()
