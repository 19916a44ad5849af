"""Exclusive ENIs end to end: the real apiserver, the operator process, eniway-cloudsim in
network mode (an ENI is a veth with the cloud's MAC plugged into its instance's netns),
two nodes each with a real eniway-agent, and the installed CNI binary run as a runtime
runs it against real pod netns.

An annotated pod requesting ``network.eniway.io/eni`` gets its own ENI with its policy's
security groups; its link in the pod's netns has the ENI's IP and MAC and reaches a
shared-mode pod on the other node through the VPC; ADD before the ENI is there answers
code 11; DEL returns the link to the node and the Elastic ENI goes. A Fixed pod deleted
and re-created on the other node gets the same ENI (IP and MAC) moved there, also when
DEL comes from a restarted agent or from the CNI binary alone (agent down); releaseAfter
deletes it once unclaimed. The operator's admission webhook, called by the API server,
opts in a pod only a policy selects (the resource request and the annotation added), leaves
other pods alone, refuses malformed reviews cleanly, and when it hangs, pods are still
created. One world serves the module.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_rbac import render
from kubernetes import client
from kubernetes.client.rest import ApiException
from node_harness import AgentProcess, CniResult, Shim

from cni_plugin import contract
from cni_plugin.agent.exclusive import park_name
from eniway_operator import kube as kube_mod
from eniway_operator.exclusive_plan import Node, node_capacity
from eniway_operator.exclusive_reconcile import TAG_CLAIM
from eniway_operator.testing import (
    OperatorProcess,
    free_port,
    make_node,
    wait_for,
    with_provider,
)

pytestmark = [pytest.mark.cluster, pytest.mark.netns]
ZONE = "cn-hangzhou-i"
TYPE = "ecs.g6.xlarge"  # 3 ENIs: the primary, one for the shared pool, one exclusive slot
SPLIT = 1
NS = "xshop"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=check)


def links(netns: str) -> dict[str, str]:
    """MAC -> link name in a netns."""
    return {str(link.get("address")): str(link["ifname"])
            for link in json.loads(sh("ip", "-n", netns, "-j", "link", "show").stdout)}


def addrs(netns: str, ifname: str) -> list[str]:
    out = json.loads(sh("ip", "-n", netns, "-j", "-4", "addr", "show", "dev", ifname).stdout)
    return [f"{a['local']}/{a['prefixlen']}" for i in out for a in i.get("addr_info", [])]


def ping(netns: str, dst: str) -> bool:
    return sh("ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "1", "-n", "-q", dst,
              check=False).returncode == 0


class World:
    def __init__(self, cluster: Any, tmp: Path) -> None:
        from eniway_cloudsim.netmode import NetMode
        from eniway_cloudsim.testing import start_in_process

        self.tag = "cx" + secrets.token_hex(3)
        self.tmp = tmp
        self.cluster = cluster
        self.sim = with_provider(start_in_process(network=NetMode(prefix=self.tag + "-")))
        self.cloud = self.sim.provider()
        self.api = kube_mod.load_config(str(cluster.kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.cluster_id = f"x-{self.tag}"
        self.namespace = f"eniway-{self.tag}"
        self.topo = self.sim.admin.bootstrap({ZONE: ["10.62.0.0/24"]})
        self.vsw = self.topo.vswitch_ids(ZONE)[0]
        self.web_sg = self.sim.admin.create_security_group(self.topo.vpc_id)["security_group_id"]
        self.db_sg = self.sim.admin.create_security_group(self.topo.vpc_id)["security_group_id"]
        self.nodes: dict[str, str] = {}  # node -> its netns
        self.agents: dict[str, AgentProcess] = {}
        self.shims: dict[str, Shim] = {}
        self.policies: list[str] = []
        self.pod_netns: list[str] = []
        for ns in (self.namespace, NS):
            with contextlib.suppress(ApiException):
                self.core.create_namespace({"metadata": {"name": ns}})  # type: ignore[arg-type]
        config = {"security_group_ids": [self.topo.security_group_id],
                  "vswitches": {ZONE: [self.vsw]}, "ip_cooldown": 0, "min_pool_size": 1,
                  "max_pool_size": 3, "exclusive_enis": SPLIT}
        self.core.create_namespaced_config_map(self.namespace, {  # type: ignore[arg-type]
            "metadata": {"name": "eniway-config"},
            "data": {"config.yaml": yaml.safe_dump(config)}})
        for n in ("a", "b"):
            self.add_node(n)
        self.webhook_port = free_port()
        self.webhook = self.webhook_configuration()
        self.operator = OperatorProcess(
            cluster.kubeconfig, self.cluster_id, self.sim.endpoint, self.sim.region,
            self.namespace, "eniway-config",
            (self.sim.access_key_id, self.sim.access_key_secret), tmp / "operator.log",
            extra=("--standalone", "--exclusive-interval=1", "--debounce=0.1",
                   "--resync=5", f"--webhook-port={self.webhook_port}",
                   "--webhook-host=127.0.0.1", "--webhook-names=127.0.0.1",
                   f"--webhook-config={self.webhook}")).start()
        for name in self.nodes:
            self.start_agent(name)

    def webhook_configuration(self) -> str:
        """The chart's MutatingWebhookConfiguration, calling the operator on loopback (no
        Service here) and only for namespaces labelled with this world's tag (the API
        server is shared with other tests)."""
        doc = next(d for d in render(values={"admissionWebhook": {"timeoutSeconds": 2}},
                                     show_only=("templates/admission-webhook.yaml",))
                   if d["kind"] == "MutatingWebhookConfiguration")
        doc["metadata"] = {"name": f"eniway-webhook-{self.tag}"}
        hook = doc["webhooks"][0]
        hook["clientConfig"] = {"url": f"https://127.0.0.1:{self.webhook_port}/mutate-pods"}
        hook["namespaceSelector"]["matchLabels"] = {"eniway-webhook": self.tag}
        client.AdmissionregistrationV1Api(self.api).create_mutating_webhook_configuration(doc)
        return str(doc["metadata"]["name"])

    def webhook_ca(self) -> bytes:
        """The caBundle the operator put into the configuration."""
        import base64

        cfg = client.AdmissionregistrationV1Api(self.api).read_mutating_webhook_configuration(
            self.webhook)
        return base64.b64decode(cfg.webhooks[0].client_config.ca_bundle or "")

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """The webhook on for the test namespace while the block runs."""
        wait_for(self.webhook_ca, 30, f"caBundle injected\n{self.operator_log()}")
        self.core.patch_namespace(NS, {"metadata": {"labels": {"eniway-webhook": self.tag}}})
        try:
            yield
        finally:
            self.core.patch_namespace(NS, {"metadata": {"labels": {"eniway-webhook": None}}})

    def add_node(self, n: str) -> None:
        name, netns = f"{self.tag}-{n}", f"{self.tag}-node-{n}"
        inst = self.sim.admin.create_instance(TYPE, self.vsw, [self.topo.security_group_id],
                                              name=name, netns=netns)
        make_node(self.api, name, inst["provider_id"], TYPE, ZONE)
        self.nodes[name] = netns
        work = self.tmp / name
        work.mkdir()
        self.agents[name] = AgentProcess(work, name, self.cluster.kubeconfig, netns,
                                         extra=["--exclusive-wait", "2"])
        self.shims[name] = Shim(work, self.agents[name].socket, self.agents[name].state_dir)

    def start_agent(self, name: str) -> None:
        self.agents[name].start()

    def node(self, i: int) -> str:
        return sorted(self.nodes)[i]

    def instance(self, node: str) -> str:
        return str(self.core.read_node(node).spec.provider_id).rsplit(".", 1)[-1]

    # -- objects -------------------------------------------------------------------------
    def policy(self, name: str, app: str, groups: list[str], **spec: Any) -> None:
        self.custom.create_cluster_custom_object(
            contract.GROUP, contract.VERSION, contract.PLURAL_EXCLUSIVE_POLICY,
            {"apiVersion": contract.API_VERSION, "kind": contract.KIND_EXCLUSIVE_POLICY,
             "metadata": {"name": f"{name}-{self.tag}"},
             "spec": {"selector": {"podSelector": {"matchLabels": {"app": app}}},
                      "securityGroupIDs": groups, **spec}})
        self.policies.append(f"{name}-{self.tag}")

    def pod(self, name: str, node: str, app: str = "", exclusive: bool = True) -> str:
        """A pod bound to ``node`` (no kubelet here: the CNI calls below are its runtime's)."""
        res = {"limits": {contract.RESOURCE_EXCLUSIVE_ENI: "1"}} if exclusive else {}
        body = {"metadata": {"name": name, "namespace": NS, "labels": {"app": app or name},
                             "annotations": {contract.ANNOTATION_EXCLUSIVE_ENI: "true"}
                             if exclusive else {}},
                "spec": {"nodeName": node, "containers": [
                    {"name": "c", "image": "busybox", "resources": res}]}}
        got = self.core.create_namespaced_pod(NS, body)  # type: ignore[arg-type]
        return str(got.metadata.uid)

    def delete_pod(self, name: str) -> None:
        with contextlib.suppress(ApiException):
            self.core.delete_namespaced_pod(name, NS, grace_period_seconds=0)

        def gone() -> bool:
            try:
                self.core.read_namespaced_pod(name, NS)
                return False
            except ApiException as e:
                return e.status == 404

        wait_for(gone, 30, f"pod {name} gone")

    def netns(self, name: str) -> str:
        ns = f"{self.tag}-pod-{name}-{secrets.token_hex(2)}"
        sh("ip", "netns", "add", ns)
        self.pod_netns.append(ns)
        return ns

    def add(self, node: str, cid: str, netns: str, name: str, uid: str) -> CniResult:
        return self.shims[node].add(cid, netns, pod=(NS, name, uid))

    def add_until_ready(self, node: str, cid: str, netns: str, name: str,
                        uid: str) -> tuple[CniResult, int]:
        """ADD as kubelet does: again after code 11, until it succeeds."""
        tries = 0
        deadline = time.monotonic() + 60
        while True:
            tries += 1
            r = self.add(node, cid, netns, name, uid)
            if r.rc == 0:
                return r, tries
            assert r.out.get("code") == contract.ERR_TRY_AGAIN, (r.out, r.stderr)
            if time.monotonic() > deadline:
                raise AssertionError(f"ADD never succeeded: {r.out}\n"
                                     f"{self.agents[node].tail()}\n{self.operator_log()}")

    def exclusive_enis(self) -> list[Any]:
        return [e for e in self.cloud.describe_enis(tags={contract.TAG_CLUSTER: self.cluster_id})
                if e.tags.get(contract.TAG_MODE) == contract.TAG_MODE_EXCLUSIVE]

    def eni_of(self, claim: str) -> Any:
        found = [e for e in self.exclusive_enis() if e.tags.get(TAG_CLAIM) == claim]
        return found[0] if found else None

    def eni_resource(self, eni_id: str) -> dict[str, Any] | None:
        try:
            return dict(self.custom.get_cluster_custom_object(
                contract.GROUP, contract.VERSION, contract.PLURAL_ENI, eni_id))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def podip(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.custom.get_namespaced_custom_object(
                contract.GROUP, contract.VERSION, NS, contract.PLURAL_PODIP, name))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def operator_log(self) -> str:
        return "\n".join(Path(self.operator.log_path).read_text(
            errors="replace").splitlines()[-30:])

    def close(self) -> None:
        for a in self.agents.values():
            a.stop()
        if self.operator.proc is not None:  # nothing of it is needed any more
            self.operator.proc.kill()
            self.operator.proc.wait(15)
        for ns in self.pod_netns:
            sh("ip", "netns", "del", ns, check=False)
        for p in self.policies:
            with contextlib.suppress(ApiException):
                self.custom.delete_cluster_custom_object(
                    contract.GROUP, contract.VERSION, contract.PLURAL_EXCLUSIVE_POLICY, p)
        with contextlib.suppress(ApiException):
            self.core.delete_collection_namespaced_pod(NS, grace_period_seconds=0)
        for name in self.nodes:
            with contextlib.suppress(ApiException):
                self.core.delete_node(name)
        with contextlib.suppress(ApiException):
            client.AdmissionregistrationV1Api(self.api).delete_mutating_webhook_configuration(
                self.webhook)
        with contextlib.suppress(ApiException):
            self.core.delete_namespace(self.namespace)
        self.api.close()
        self.sim.close(teardown_network=True)
        listed = sh("ip", "netns", "list", check=False).stdout.split()
        for ns in listed:
            if ns.startswith(self.tag):
                sh("ip", "netns", "del", ns, check=False)


@pytest.fixture(scope="module")
def world(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if os.geteuid() != 0:
        pytest.fail("exclusive-ENI end-to-end tests need root (network namespaces)")
    w = World(cluster, tmp_path_factory.mktemp("exclusive"))
    try:
        yield w
    finally:
        w.close()


def test_node_offers_the_planners_slots_as_an_extended_resource(world: World) -> None:
    limits = world.cloud.instance_limits(TYPE)

    def published() -> dict[str, str]:
        return {n: (world.core.read_node(n).status.capacity or {}).get(
            contract.RESOURCE_EXCLUSIVE_ENI, "") for n in world.nodes}

    wait_for(lambda: all(published().values()), 60,
             f"slots published\n{world.operator_log()}")
    for node, slots in published().items():
        shared = [e for e in world.cloud.describe_enis(instance_id=world.instance(node))
                  if e.type != "Primary" and e.tags.get(contract.TAG_MODE) is None]
        want = node_capacity(Node(node, world.instance(node), ZONE, limits, split=SPLIT,
                                  shared_enis=len(shared)))
        assert slots == str(want.slots) == str(SPLIT), (node, slots, want)
        alloc = world.core.read_node(node).status.allocatable or {}
        assert alloc.get(contract.RESOURCE_EXCLUSIVE_ENI) == slots


def test_pod_gets_its_own_eni_and_talks_to_a_shared_pod(world: World) -> None:
    a, b = world.node(0), world.node(1)
    world.policy("web", "web", [world.web_sg, world.db_sg])
    # a shared-mode pod on b
    shared_uid = world.pod("plain", b, exclusive=False)
    shared_ns = world.netns("plain")
    wait_for(lambda: world.agents[b].status().get("counts", {}).get("free", 0) >= 1, 60,
             "b's shared pool warm")
    shared = world.add(b, "c-plain", shared_ns, "plain", shared_uid)
    assert shared.rc == 0, shared.out
    # the exclusive pod on a: with the operator stopped, ADD waits its bounded time and
    # answers "try again later"
    assert world.operator.proc is not None
    world.operator.proc.send_signal(signal.SIGSTOP)
    try:
        uid = world.pod("web-1", a, app="web")
        pod_ns = world.netns("web-1")
        t0 = time.monotonic()
        early = world.add(a, "c-web-1", pod_ns, "web-1", uid)
        waited = time.monotonic() - t0
        assert early.rc != 0 and early.out.get("code") == contract.ERR_TRY_AGAIN, early.out
        assert "try again later" in early.out.get("msg", "")
        assert 1.9 <= waited < 10, waited
    finally:
        world.operator.proc.send_signal(signal.SIGCONT)
    t0 = time.monotonic()
    res, tries = world.add_until_ready(a, "c-web-1", pod_ns, "web-1", uid)
    print(f"\nexclusive ADD succeeded {time.monotonic() - t0:.2f} s after the operator "
          f"resumed ({tries} tries)")
    eni = world.eni_of(uid)
    assert eni is not None and eni.instance_id == world.instance(a)
    assert sorted(eni.security_group_ids) == sorted([world.web_sg, world.db_sg])
    assert res.ip == eni.primary_ip
    assert links(pod_ns).get(eni.mac) == "eth0", links(pod_ns)
    assert addrs(pod_ns, "eth0") == [f"{eni.primary_ip}/24"]
    assert eni.mac not in links(world.nodes[a]), "the link left the node for the pod"
    # through the VPC to the shared pod on the other node, and back
    assert ping(pod_ns, shared.ip), "exclusive pod -> shared pod"
    assert ping(shared_ns, eni.primary_ip), "shared pod -> exclusive pod"
    # the records say who and how
    r = world.eni_resource(eni.eni_id)
    assert r is not None
    assert (r["spec"]["mode"], r["spec"]["podNamespace"], r["spec"]["podName"]) == (
        contract.MODE_EXCLUSIVE, NS, "web-1")
    wait_for(lambda: (world.podip("web-1") or {}).get("spec", {}).get("mode")
             == contract.MODE_EXCLUSIVE, 20, "PodIP with the mode")
    assert world.podip("web-1")["spec"]["ip"] == eni.primary_ip  # type: ignore[index]
    assert (world.podip("plain") or {}).get("spec", {}).get("mode") == contract.MODE_SHARED

    def condition() -> str:
        for c in world.core.read_namespaced_pod("web-1", NS).status.conditions or []:
            if c.type == contract.CONDITION_EXCLUSIVE_ENI:
                return f"{c.status}/{c.reason}"
        return ""

    wait_for(lambda: condition() == "True/Attached", 20, "the pod's condition")
    out = world.cluster.kubectl("get", "enis", eni.eni_id).stdout.splitlines()
    assert "Exclusive" in out[1].split() and "web-1" in out[1].split()
    # CHECK verifies the pod's link
    check = world.shims[a].run("CHECK", "c-web-1", f"/run/netns/{pod_ns}",
                               pod=(NS, "web-1", uid),
                               conf=world.shims[a].conf(prevResult=res.out))
    assert check.rc == 0, check.out
    # a non-exclusive pod on the same node still gets a shared IP
    plain2_uid = world.pod("plain2", a, exclusive=False)
    plain2 = world.add(a, "c-plain2", world.netns("plain2"), "plain2", plain2_uid)
    assert plain2.rc == 0 and plain2.ip != eni.primary_ip, plain2.out
    assert plain2.out["interfaces"][0]["name"].startswith(contract.VETH_PREFIX), "a veth"
    # DEL: the link back on the node; DEL again is fine; the pod gone takes its ENI
    assert world.shims[a].delete("c-web-1", pod_ns, pod=(NS, "web-1", uid)).rc == 0
    assert links(world.nodes[a]).get(eni.mac) == park_name(eni.mac)
    assert eni.mac not in links(pod_ns)
    assert world.shims[a].delete("c-web-1", pod_ns, pod=(NS, "web-1", uid)).rc == 0
    world.delete_pod("web-1")
    t0 = time.monotonic()
    wait_for(lambda: world.eni_of(uid) is None, 30, f"Elastic ENI deleted\n{world.operator_log()}")
    print(f"Elastic ENI detached and deleted {time.monotonic() - t0:.2f} s after its pod")
    wait_for(lambda: world.eni_resource(eni.eni_id) is None, 20, "its resource gone")
    for name, cid, ns_ in (("plain", "c-plain", shared_ns),):
        world.shims[b].delete(cid, ns_, pod=(NS, name, shared_uid))
    world.shims[a].delete("c-plain2", "", pod=(NS, "plain2", plain2_uid))


def test_fixed_ip_follows_its_pod_to_another_node(world: World) -> None:
    a, b = world.node(0), world.node(1)
    world.policy("db", "db", [world.db_sg], ipType="Fixed", releaseAfter="3s")
    uid1 = world.pod("db-0", a, app="db")
    ns1 = world.netns("db-0")
    first, _ = world.add_until_ready(a, "c-db-0", ns1, "db-0", uid1)
    eni = world.eni_of(f"{NS}/db-0")
    assert eni is not None and first.ip == eni.primary_ip
    assert list(eni.security_group_ids) == [world.db_sg]
    # the agent restarts before DEL: its store says which link goes back
    world.agents[a].stop(signal.SIGKILL)
    world.start_agent(a)
    assert world.shims[a].delete("c-db-0", ns1, pod=(NS, "db-0", uid1)).rc == 0
    assert links(world.nodes[a]).get(eni.mac) == park_name(eni.mac)
    world.delete_pod("db-0")
    # re-created on the other node of the zone: the same ENI moves there
    t0 = time.monotonic()
    uid2 = world.pod("db-0", b, app="db")
    ns2 = world.netns("db-0")
    second, tries = world.add_until_ready(b, "c-db-0b", ns2, "db-0", uid2)
    print(f"\nfixed-IP ENI moved between nodes and in the new pod in "
          f"{time.monotonic() - t0:.2f} s ({tries} ADD tries)")
    moved = world.eni_of(f"{NS}/db-0")
    assert (moved.eni_id, moved.mac, moved.primary_ip) == (eni.eni_id, eni.mac, eni.primary_ip)
    assert moved.instance_id == world.instance(b)
    assert second.ip == eni.primary_ip and links(ns2).get(eni.mac) == "eth0"
    assert eni.mac not in links(world.nodes[a])
    r = world.eni_resource(eni.eni_id)
    assert r is not None and r["spec"]["nodeName"] == b
    assert r["metadata"]["labels"][contract.LABEL_NODE] == b
    # DEL with the agent down: the CNI binary's slow path moves the link back itself
    world.agents[b].stop()
    assert world.shims[b].delete("c-db-0b", ns2, pod=(NS, "db-0", uid2)).rc == 0
    assert links(world.nodes[b]).get(eni.mac) == park_name(eni.mac)
    assert addrs(world.nodes[b], park_name(eni.mac)) == [], "bare on the node"
    assert eni.mac not in links(ns2)
    assert not list((Path(world.agents[b].state_dir) / contract.STORE_ALLOC_DIR).glob(
        eni.primary_ip)), "its record is gone"
    world.start_agent(b)
    # gone for good: detached, kept releaseAfter (3 s) unclaimed, then deleted
    assert world.shims[b].delete("c-db-0b", ns2, pod=(NS, "db-0", uid2)).rc == 0
    world.delete_pod("db-0")
    wait_for(lambda: (world.eni_resource(eni.eni_id) or {}).get("status", {}).get(
        "unclaimedSince"), 30, "unclaimed clock started")
    assert world.eni_of(f"{NS}/db-0") is not None, "kept while releaseAfter runs"
    wait_for(lambda: world.eni_of(f"{NS}/db-0") is None, 30, "released after releaseAfter")


def _opted_in(pod: Any) -> bool:
    limits = pod.spec.containers[0].resources.limits or {}
    requests = pod.spec.containers[0].resources.requests or {}
    return ((pod.metadata.annotations or {}).get(contract.ANNOTATION_EXCLUSIVE_ENI) == "true"
            and limits.get(contract.RESOURCE_EXCLUSIVE_ENI) == "1"
            and requests.get(contract.RESOURCE_EXCLUSIVE_ENI) == "1")


def _post_review(world: World, body: bytes, port: int = 0) -> tuple[int, dict[str, Any]]:
    """A request straight to an operator's webhook, trusting the published caBundle."""
    ctx = ssl.create_default_context(cadata=world.webhook_ca().decode())
    req = urllib.request.Request(f"https://127.0.0.1:{port or world.webhook_port}/mutate-pods",
                                 data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_webhook_opts_in_a_pod_only_a_policy_selects(world: World) -> None:
    a = world.node(0)
    world.policy("cache", "cache", [world.web_sg])
    with world.admitted():
        uid = world.pod("cache-1", a, app="cache", exclusive=False)
        other_uid = world.pod("other-1", a, app="other", exclusive=False)
    try:
        pod = world.core.read_namespaced_pod("cache-1", NS)
        assert _opted_in(pod), (pod.metadata.annotations, pod.spec.containers[0].resources)
        assert not pod.spec.containers[0].resources.limits.keys() - {
            contract.RESOURCE_EXCLUSIVE_ENI}, "only the slot was added"
        other = world.core.read_namespaced_pod("other-1", NS)
        assert not other.metadata.annotations, "a pod no policy selects is unchanged"
        assert not other.spec.containers[0].resources.limits
        assert not other.spec.containers[0].resources.requests
        # the operator and the agent take it as exclusive: its own ENI, the policy's group
        netns = world.netns("cache-1")
        res, _ = world.add_until_ready(a, "c-cache-1", netns, "cache-1", uid)
        eni = world.eni_of(uid)
        assert eni is not None and res.ip == eni.primary_ip
        assert list(eni.security_group_ids) == [world.web_sg]
        assert links(netns).get(eni.mac) == "eth0"
        assert world.shims[a].delete("c-cache-1", netns, pod=(NS, "cache-1", uid)).rc == 0
    finally:
        world.delete_pod("cache-1")
        world.delete_pod("other-1")
    wait_for(lambda: world.eni_of(uid) is None, 30, "its Elastic ENI deleted")
    assert world.eni_of(other_uid) is None


@pytest.mark.parametrize(("body", "message"), [
    (b"\x00 not json", "not JSON"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(),
     "the AdmissionReview has no request"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "u-1", "operation": "CREATE", "resource": {"group": "", "resource": "pods"},
        "object": {"kind": "Pod", "spec": {}}}}).encode(), "spec.containers is missing"),
])
def test_webhook_refuses_malformed_reviews_cleanly(world: World, body: bytes,
                                                   message: str) -> None:
    code, out = _post_review(world, body)
    assert code == 400 and message in out["error"], out
    code, out = _post_review(world, json.dumps({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "u-2", "operation": "DELETE", "namespace": NS,
            "resource": {"group": "", "resource": "pods"}}}).encode())
    assert (code, out["response"]) == (200, {"uid": "u-2", "allowed": True})


def test_a_standby_replica_serves_the_webhook_with_its_own_ca(world: World) -> None:
    """A second operator that does not hold the Lease answers reviews too, and adds its CA
    to the caBundle beside the first one's."""
    from eniway_operator.leader import LeaseElector
    from eniway_operator.webhook_tls import split_pem

    lease = f"standby-{world.tag}"
    holder = LeaseElector(world.api, world.namespace, lease, "someone-else", lease_seconds=120,
                          renew_deadline=80)
    assert holder.try_acquire_or_renew()
    first = split_pem(world.webhook_ca())
    port = free_port()
    standby = OperatorProcess(
        world.cluster.kubeconfig, world.cluster_id, world.sim.endpoint, world.sim.region,
        world.namespace, "eniway-config", (world.sim.access_key_id, world.sim.access_key_secret),
        world.tmp / "standby.log", extra=(
            f"--lease-name={lease}", f"--webhook-port={port}", "--webhook-host=127.0.0.1",
            "--webhook-names=127.0.0.1", f"--webhook-config={world.webhook}")).start()
    try:
        bundle = wait_for(lambda: len(split_pem(world.webhook_ca())) == 2 and world.webhook_ca(),
                          30, f"the standby's CA added\n{standby.log_path.read_text()}")
        assert split_pem(bundle)[0] == first[0], "the first replica's CA is kept"
        review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "u-3", "operation": "CREATE", "namespace": NS,
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "object": {"kind": "Pod", "metadata": {"annotations": {
                contract.ANNOTATION_EXCLUSIVE_ENI: "true"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}
        code, out = _post_review(world, json.dumps(review).encode(), port)
        assert code == 200 and out["response"]["patchType"] == "JSONPatch", out
        assert "waiting for the leader lease" in standby.log_path.read_text()
        assert "leading" not in standby.log_path.read_text()
    finally:
        standby.stop()
        holder.release()


def test_pods_are_created_while_the_webhook_hangs(world: World) -> None:
    """failurePolicy Ignore: the API server waits the webhook's timeout (2 s here), then
    creates the pod as asked, even one a policy selects (it runs in shared mode)."""
    assert world.operator.proc is not None
    world.policy("late", "late", [world.web_sg])
    with world.admitted():
        world.operator.proc.send_signal(signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            world.pod("late-1", world.node(0), app="late", exclusive=False)
            world.pod("plain-3", world.node(0), app="plain3", exclusive=False)
            took = time.monotonic() - t0
        finally:
            world.operator.proc.send_signal(signal.SIGCONT)
    try:
        print(f"\ntwo pods created in {took:.2f} s with the webhook hanging")
        assert took < 15, took
        for name in ("late-1", "plain-3"):
            pod = world.core.read_namespaced_pod(name, NS)
            assert not pod.metadata.annotations and not pod.spec.containers[0].resources.limits
    finally:
        world.delete_pod("late-1")
        world.delete_pod("plain-3")


def test_policy_with_six_security_groups_is_rejected(world: World) -> None:
    with pytest.raises(ApiException) as err:
        world.policy("six", "six", [f"sg-six{i:05d}" for i in range(6)])
    assert err.value.status == 422 and "at most 5 items" in str(err.value.body)


def test_scheduler_places_exclusive_pods_only_where_a_slot_is_free(world: World) -> None:
    """The real kube-scheduler counts the published slots: node b set to no exclusive
    slot, the first pod requesting one goes to a, the next one finds none left."""
    a, b = world.node(0), world.node(1)
    world.core.patch_node(b, {"metadata": {"annotations": {
        contract.ANNOTATION_POOL_OVERRIDE: json.dumps({"exclusive_enis": 0})}}})

    def slots(node: str) -> str:
        return str((world.core.read_node(node).status.allocatable or {}).get(
            contract.RESOURCE_EXCLUSIVE_ENI, ""))

    wait_for(lambda: slots(b) == "0" and slots(a) == "1", 30, "b offers no slot")
    # no kubelet here: the nodes are made schedulable by hand (Ready, room for pods)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for n in (a, b):
        world.core.patch_node_status(n, {"status": {
            "capacity": {"pods": "110", "cpu": "4", "memory": "8Gi"},
            "allocatable": {"pods": "110", "cpu": "4", "memory": "8Gi"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}]}})
    wait_for(lambda: not any(world.core.read_node(n).spec.taints for n in (a, b)), 30,
             "not-ready taints lifted")

    def pending(name: str) -> None:
        world.core.create_namespaced_pod(NS, {  # type: ignore[arg-type]
            "metadata": {"name": name, "namespace": NS},
            "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {
                "limits": {contract.RESOURCE_EXCLUSIVE_ENI: "1"}}}]}})

    def placed(name: str) -> str:
        return str(world.core.read_namespaced_pod(name, NS).spec.node_name or "")

    def unschedulable(name: str) -> str:
        for c in world.core.read_namespaced_pod(name, NS).status.conditions or []:
            if c.type == "PodScheduled" and c.status == "False":
                return str(c.message)
        return ""

    try:
        pending("sched-1")
        wait_for(lambda: placed("sched-1"), 30, "sched-1 scheduled")
        assert placed("sched-1") == a
        pending("sched-2")
        wait_for(lambda: unschedulable("sched-2"), 30, "sched-2 refused")
        assert f"Insufficient {contract.RESOURCE_EXCLUSIVE_ENI}" in unschedulable("sched-2")
        assert placed("sched-2") == ""
    finally:
        world.delete_pod("sched-2")
        world.delete_pod("sched-1")
        world.core.patch_node(b, {"metadata": {"annotations": {
            contract.ANNOTATION_POOL_OVERRIDE: None}}})
