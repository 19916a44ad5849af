"""``eniway-operator uninstall``: take eniway out of a cluster without leaving anything stuck.

Every ENI object carries the ``network.eniway.io/cleanup`` finalizer, which only the operator
removes; once the operator is gone, deleting the objects (or their CRDs) would hang. This
command does the operator's last job, in this order:

1. refuses, changing nothing, while pods still hold eniway IPs (``--force`` goes on: their
   ENIs stay attached in the cloud and keep serving them, and are reported);
2. stops the operator from acting: scales its Deployment to 0 (``--scale-down``), waits
   until its pods are gone, and takes
   its leader Lease, so no replica can make a cloud call meanwhile;
3. takes every EIP off the ENIs it is about to delete, and releases this cluster's own
   EIPs (same tags) but those on ENIs kept for pods (``--force``); an EIP someone else
   made is only disassociated;
   then detaches and deletes, in the cloud, every secondary ENI tagged as this cluster's
   eniway ENI (``eniway.io/creator``, ``eniway.io/cluster``); primary ENIs and ENIs without
   these tags are never detached nor deleted; where the primary ENI served pods (EC2), the
   secondary IPs its ENI object lists as the pool's are unassigned from it (its own
   primary IP and IPs eniway never listed stay);
4. removes the finalizer from every ENI object and deletes it, and deletes every ENIPool.

The Helm chart runs it as a pre-delete hook (``uninstall.hook``); run it by hand with the
operator's image and flags otherwise (docs/install.md, "Uninstall").
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from kubernetes import client
from kubernetes.client.rest import ApiException

from cni_plugin import contract
from eniway_operator import kube as kube_mod
from eniway_operator.cloud.base import CloudError, CloudProvider, NetworkInterface, NotFound
from eniway_operator.cloud.credentials import CredentialsError
from eniway_operator.kube import JSON, Kube
from eniway_operator.leader import LeaseElector
from eniway_operator.plan import AVAILABLE, DETACHING

log = logging.getLogger(__name__)
IDENTITY = "eniway-uninstall"
EXIT_REFUSED = 2  # pods still hold eniway IPs (nothing changed)
EXIT_INCOMPLETE = 3  # something could not be removed (it is listed); run again


@dataclass(frozen=True)
class UninstallPlan:
    """What the command does with each ENI. Pure data, from ``plan_uninstall``."""

    delete: tuple[NetworkInterface, ...] = ()  # secondary ENIs of this cluster: detach, delete
    keep: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # ENI -> pods using it
    objects: tuple[str, ...] = ()  # ENI objects whose finalizer goes, then the object
    unassign: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # primary ENI -> IPs


def is_ours(eni: NetworkInterface, cluster_id: str) -> bool:
    return (eni.tags.get(contract.TAG_CREATOR) == contract.TAG_CREATOR_VALUE
            and eni.tags.get(contract.TAG_CLUSTER) == cluster_id and eni.type != "Primary")


def plan_uninstall(objects: Iterable[str], tagged: Iterable[NetworkInterface],
                   holders: Mapping[str, str], cluster_id: str,
                   force: bool = False,
                   primary_pool: Mapping[str, Sequence[str]] | None = None) -> UninstallPlan:
    """``tagged``: the cloud's ENIs carrying this cluster's tags (checked again here: a filter
    is the provider's); ``holders``: IP -> pod still using it. An ENI carrying a held IP is
    kept with ``force`` (the pod keeps its network); without it the caller refuses.
    ``primary_pool``: primary ENI -> the pool IPs its ENI object lists (EC2); those no pod
    holds are unassigned, the held ones stay with ``force``."""
    unassign = {eni_id: tuple(sorted(ip for ip in ips if ip not in holders))
                for eni_id, ips in sorted((primary_pool or {}).items())}
    delete: list[NetworkInterface] = []
    keep: dict[str, tuple[str, ...]] = {}
    for eni in sorted(tagged, key=lambda e: e.eni_id):
        if not is_ours(eni, cluster_id):
            continue
        pods = tuple(sorted({holders[ip] for ip in eni.private_ips if ip in holders}))
        if pods and force:
            keep[eni.eni_id] = pods
        elif not pods:
            delete.append(eni)
    for eni_id, ips in (primary_pool or {}).items():
        pods = tuple(sorted({holders[ip] for ip in ips if ip in holders}))
        if pods and force:
            keep[eni_id] = pods
    return UninstallPlan(tuple(delete), keep, tuple(sorted(set(objects))),
                         {k: v for k, v in unassign.items() if v})


def primary_pool(resources: Iterable[JSON]) -> dict[str, list[str]]:
    """Primary ENI -> the pool IPs its ENI object lists (only where the primary serves
    pods, EC2; on ECS its object lists none)."""
    out: dict[str, list[str]] = {}
    for r in resources:
        if (r.get("spec") or {}).get("primary"):
            ips = [str(e["ip"]) for e in (r.get("status") or {}).get("ips") or [] if e.get("ip")]
            if ips:
                out[r["metadata"]["name"]] = ips
    return out


def holders(kube: Kube) -> dict[str, str]:
    """IP -> "namespace/pod" for every PodIP whose pod still exists (same UID): a PodIP left
    behind by a deleted pod holds nothing."""
    got = cast(JSON, kube.custom.list_cluster_custom_object(
        contract.GROUP, contract.VERSION, contract.PLURAL_PODIP))
    out: dict[str, str] = {}
    for pip in got["items"]:
        spec = pip.get("spec") or {}
        ns, name = pip["metadata"]["namespace"], pip["metadata"]["name"]
        try:
            pod = kube.core.read_namespaced_pod(name, ns)
        except ApiException as e:
            if e.status == 404:
                continue
            raise
        uid = pod.metadata.uid if pod.metadata else ""
        if spec.get("ip") and (not spec.get("podUID") or spec.get("podUID") == uid):
            out[str(spec["ip"])] = f"{ns}/{name}"
    return out


class Uninstaller:
    def __init__(self, kube: Kube, cloud: CloudProvider, cluster_id: str,
                 out: Any = sys.stdout, poll: float = 1.0, timeout: float = 300.0) -> None:
        self.kube = kube
        self.cloud = cloud
        self.cluster_id = cluster_id
        self.out = out
        self.poll = poll
        self.timeout = timeout

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def tagged(self) -> list[NetworkInterface]:
        return self.cloud.describe_enis(tags={contract.TAG_CREATOR: contract.TAG_CREATOR_VALUE,
                                              contract.TAG_CLUSTER: self.cluster_id})

    def plan(self, force: bool) -> tuple[UninstallPlan, dict[str, str]]:
        held = holders(self.kube)
        resources = self.kube.list_enis()
        objects = [r["metadata"]["name"] for r in resources]
        return plan_uninstall(objects, self.tagged(), held, self.cluster_id, force,
                              primary_pool(resources)), held

    def refuse_message(self, held: Mapping[str, str]) -> str:
        pods = sorted(set(held.values()))
        shown = ", ".join(pods[:10]) + (f" and {len(pods) - 10} more" if len(pods) > 10 else "")
        return (f"refused: {len(pods)} pod(s) still use eniway IPs ({shown}). Move them off "
                "eniway first (drain the nodes or delete the pods), or pass --force to keep "
                "their ENIs attached (listed; delete them later by their eniway.io/cluster "
                "tag). Nothing was changed.")

    def free_cloud(self, enis: Sequence[NetworkInterface]) -> list[str]:
        """Detach what is attached, wait until Available, delete. Returns what is left."""
        left = {e.eni_id for e in enis}
        current = list(enis)
        deadline = time.monotonic() + self.timeout
        while True:
            for cur in current:
                try:
                    if cur.status == AVAILABLE:
                        self.cloud.delete_eni(cur.eni_id)
                        node = cur.tags.get(contract.TAG_NODE, "?")
                        self.say(f"  deleted {cur.eni_id} (node {node}, "
                                 f"{len(cur.private_ips)} secondary IPs)")
                        left.discard(cur.eni_id)
                    elif cur.instance_id and cur.status not in (DETACHING, "Deleting"):
                        self.cloud.detach_eni(cur.eni_id, cur.instance_id)
                except NotFound:
                    left.discard(cur.eni_id)
                except CloudError as err:  # InvalidState while attaching, throttling...
                    log.info("%s: %s (will look again)", cur.eni_id, err)
            if not left or time.monotonic() >= deadline:
                return sorted(left)
            time.sleep(self.poll)
            found = {e.eni_id: e for e in self.cloud.describe_enis(eni_ids=sorted(left))}
            left &= set(found)
            current = [found[i] for i in sorted(left)]

    def free_public_ips(self, enis: Sequence[NetworkInterface]) -> list[str]:
        """EIPs off ``enis`` (the ENIs about to go); this cluster's own EIPs released unless
        they sit on an ENI that stays. Returns the allocation ids left over."""
        owned = {contract.TAG_CREATOR: contract.TAG_CREATOR_VALUE,
                 contract.TAG_CLUSTER: self.cluster_id}
        going = {e.eni_id for e in enis}
        try:
            found = {p.allocation_id: p for p in self.cloud.describe_public_ips(tags=owned)
                     if not p.eni_id or p.eni_id in going}
            for eni_id in sorted(going):
                found.update({p.allocation_id: p
                              for p in self.cloud.describe_public_ips(eni_id=eni_id)})
        except NotImplementedError:
            return []
        left = set(found)
        deadline = time.monotonic() + self.timeout
        while True:
            for p in list(found.values()):
                mine = all(p.tags.get(k) == v for k, v in owned.items())
                try:
                    if p.status == "InUse":
                        self.cloud.unassociate_public_ip(p.allocation_id, p.eni_id,
                                                         p.private_ip)
                        self.say(f"  EIP {p.allocation_id} ({p.ip}) taken off {p.eni_id}")
                    elif p.status == "Available" and mine:
                        self.cloud.release_public_ip(p.allocation_id)
                        self.say(f"  EIP {p.allocation_id} ({p.ip}) released")
                        left.discard(p.allocation_id)
                    elif p.status == "Available":
                        left.discard(p.allocation_id)  # not ours: only taken off
                except CloudError as err:
                    log.info("%s: %s (will look again)", p.allocation_id, err)
            if not left or time.monotonic() >= deadline:
                return sorted(left)
            time.sleep(self.poll)
            found = {p.allocation_id: p
                     for p in self.cloud.describe_public_ips(sorted(left))}
            left &= set(found)

    def free_primary_ips(self, unassign: Mapping[str, Sequence[str]],
                         per_call: int = 10) -> list[str]:
        """Unassign the pool's IPs from primary ENIs (those the cloud still has there).
        Returns the ENIs where some could not be unassigned."""
        left = []
        for eni_id, ips in sorted(unassign.items()):
            try:
                found = self.cloud.describe_enis(eni_ids=[eni_id])
                there = sorted(set(ips) & set(found[0].private_ips)) if found else []
                for i in range(0, len(there), per_call):
                    self.cloud.unassign_ips(eni_id, there[i:i + per_call])
                self.say(f"  unassigned {len(there)} pool IP(s) from primary ENI {eni_id}")
            except CloudError as err:
                log.warning("%s: %s", eni_id, err)
                left.append(eni_id)
        return left

    def remove_objects(self, names: Sequence[str]) -> int:
        for name in names:
            self.kube.release_eni(name)
        pools = self.kube.list_pools()
        for pool in pools:
            self.kube.delete_pool(pool["metadata"]["name"])
        return len(pools)


class Fence:
    """Keeps the operator from acting while the command runs: its Deployment scaled to 0,
    then its leader Lease held by this command. ``restore`` undoes both."""

    def __init__(self, api: client.ApiClient, namespace: str, deployment: str, lease: str,
                 timeout: float, say: Any) -> None:
        self.apps = client.AppsV1Api(api)
        self.api = api
        self.namespace, self.deployment, self.lease = namespace, deployment, lease
        self.timeout = timeout
        self.say = say
        self.replicas: int | None = None
        self.elector: LeaseElector | None = None

    def _scale(self, replicas: int) -> None:
        self.apps.patch_namespaced_deployment_scale(
            self.deployment, self.namespace, {"spec": {"replicas": replicas}})

    def _wait_pods_gone(self, selector: str) -> None:
        """A replica still terminating may write ENI objects after they are listed: wait
        (up to the timeout) until the Deployment's pods are gone. Past it, go on: the Lease
        taken next still keeps them from any cloud call."""
        if not selector:
            return
        core = client.CoreV1Api(self.api)
        deadline = time.monotonic() + self.timeout
        while pods := core.list_namespaced_pod(self.namespace, label_selector=selector).items:
            if time.monotonic() >= deadline:
                self.say(f"operator: {len(pods)} pod(s) of {self.deployment} still there after "
                         f"{self.timeout:.0f}s; going on behind its Lease")
                return
            time.sleep(1.0)
        self.say(f"operator: no pod of {self.deployment} left")

    def take(self) -> bool:
        if self.deployment:
            try:
                scale = self.apps.read_namespaced_deployment_scale(self.deployment,
                                                                   self.namespace)
            except ApiException as e:
                if e.status != 404:
                    raise
                self.say(f"operator: deployment {self.namespace}/{self.deployment} not found")
            else:
                self.replicas = int(scale.spec.replicas or 0) if scale.spec else 0
                if self.replicas:
                    self._scale(0)
                self.say(f"operator: deployment {self.namespace}/{self.deployment} scaled "
                         f"{self.replicas} -> 0" if self.replicas else
                         f"operator: deployment {self.namespace}/{self.deployment} at 0 already")
                self._wait_pods_gone(str(scale.status.selector or "") if scale.status else "")
        if not self.lease:
            return True
        self.elector = LeaseElector(self.api, self.namespace, self.lease, IDENTITY,
                                    renew_deadline=10.0, lease_seconds=15.0, retry_period=1.0)
        deadline = time.monotonic() + self.timeout
        while not self.elector.try_acquire_or_renew():
            if time.monotonic() >= deadline:
                self.say(f"operator: lease {self.namespace}/{self.lease} still held after "
                         f"{self.timeout:.0f}s: an operator is still running")
                return False
            time.sleep(1.0)
        self.elector.keep_renewing()
        self.say(f"operator: lease {self.namespace}/{self.lease} taken (no replica acts)")
        return True

    def restore(self) -> None:
        if self.elector is not None:
            self.elector.release()
        if self.replicas:
            self._scale(self.replicas)
            self.say(f"operator: deployment {self.namespace}/{self.deployment} scaled back "
                     f"to {self.replicas}")

    def release(self) -> None:
        if self.elector is not None:
            self.elector.release()


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The operator's own flags (cloud, credentials, namespace, Lease) and this command's."""
    from eniway_operator import main as operator_main

    p = operator_main.build_parser()
    p.prog = "eniway-operator uninstall"
    p.description = __doc__
    p.add_argument("--scale-down", default="", metavar="DEPLOYMENT",
                   help="the operator's Deployment, scaled to 0 first (empty: none)")
    p.add_argument("--force", action="store_true",
                   help="go on while pods hold eniway IPs: their ENIs stay attached")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds to wait for the operator's Lease and for detaches")
    return operator_main.parse_args(argv, p)


def main(argv: Sequence[str] | None = None) -> int:
    from eniway_operator.main import make_provider

    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cloud = make_provider(args)
    except (CredentialsError, OSError) as e:
        print(f"eniway-operator uninstall: cloud credentials: {e}", file=sys.stderr)
        return 1
    api = kube_mod.load_config(args.kubeconfig)
    kube = Kube(api, args.namespace)
    u = Uninstaller(kube, cloud, args.cluster_id, timeout=args.timeout)
    u.say(f"eniway uninstall, cluster id {args.cluster_id}")
    plan, held = u.plan(args.force)
    if held and not args.force:
        u.say(u.refuse_message(held))
        return EXIT_REFUSED
    fence = Fence(api, args.namespace, args.scale_down, args.lease_name, args.timeout, u.say)
    if not fence.take():
        fence.restore()
        return EXIT_INCOMPLETE
    try:
        plan, held = u.plan(args.force)  # again: nothing moves from here on
        if held and not args.force:
            fence.restore()
            u.say(u.refuse_message(held))
            return EXIT_REFUSED
        u.say(f"cloud: {len(plan.delete)} secondary ENI(s) of this cluster to detach and "
              "delete; primary ENIs and untagged ENIs are left alone")
        left = u.free_public_ips(plan.delete)
        left += u.free_cloud(plan.delete)
        left += u.free_primary_ips(plan.unassign)  # held IPs are not in it
        for eni_id, pods in sorted(plan.keep.items()):
            u.say(f"  kept {eni_id}: still used by {', '.join(pods)} (--force)")
        pools = u.remove_objects(plan.objects)
        u.say(f"cluster: {len(plan.objects)} ENI object(s) released (finalizer removed) and "
              f"{pools} ENIPool(s) deleted")
    finally:
        fence.release()
    if left:
        u.say(f"incomplete: {', '.join(left)} not deleted in time; run the command again")
        return EXIT_INCOMPLETE
    if plan.keep:
        u.say(f"done, but {len(plan.keep)} ENI(s) stay attached for their pods: run this "
              "command again once those pods are gone")
    u.say("the CRDs can be deleted now (kubectl delete crd enis.network.eniway.io "
          "enipools.network.eniway.io podips.network.eniway.io)")
    return 0
