"""Exclusive-ENI rounds: observe the pods, policies, nodes and this cluster's exclusive ENIs,
plan with ``exclusive_plan``, act through the cloud provider, record.

The cloud is the truth for which exclusive ENIs exist and whom they belong to: each is
created with tags naming its claim (the pod's uid, or ``namespace/name`` for a fixed IP),
its IP type and ``releaseAfter``, so a round after a crash (an ENI created but not
recorded, a move half done) rebuilds the same state from one tagged describe. The ENI
resources (``spec.mode: Exclusive``) are the record the agent and ``kubectl get enis``
read; they are rewritten from the cloud after every round.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes.client.rest import ApiException

from cni_plugin import contract
from eniway_operator.cloud.base import CloudError, CloudProvider, InvalidState, NotFound, VSwitch
from eniway_operator.cloud.base import NetworkInterface as CloudENI
from eniway_operator.exclusive_plan import (
    ATTACHING,
    CREATING,
    DETACHING,
    ENI,
    FIXED,
    Attach,
    Create,
    Delete,
    Detach,
    ExclusivePlan,
    Node,
    PodClaim,
    State,
    plan_exclusive,
)
from eniway_operator.exclusive_policy import Policy, PolicyError, parse_policy, pod_claim
from eniway_operator.kube import JSON, Kube, iso, parse_time
from eniway_operator.reconcile import instance_of

log = logging.getLogger(__name__)

TAG_CLAIM = "eniway.io/claim"
TAG_IP_TYPE = "eniway.io/ip-type"
TAG_RELEASE_AFTER = "eniway.io/release-after"
TAG_POD = "eniway.io/pod"


@dataclass(frozen=True)
class NodeFacts:
    """What a round needs to know about a node besides its pods."""

    name: str
    split: int  # exclusive_enis of the node's configuration
    shared_enis: int = 0  # the shared pool's secondary ENIs on it


class ExclusiveReconciler:
    def __init__(self, kube: Kube, cloud: CloudProvider, cluster_id: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.kube = kube
        self.cloud = cloud
        self.cluster_id = cluster_id
        self.clock = clock
        self._nodes: dict[str, Node] = {}  # instance facts never change for a node name
        self.known = True  # the last round saw exclusive ENIs (at start: not known yet)
        self.settling = False  # the last round left ENIs creating, attaching or detaching

    def tags(self) -> dict[str, str]:
        return {contract.TAG_CREATOR: contract.TAG_CREATOR_VALUE,
                contract.TAG_CLUSTER: self.cluster_id,
                contract.TAG_MODE: contract.TAG_MODE_EXCLUSIVE}

    # -- observe -------------------------------------------------------------------------
    def _node(self, facts: NodeFacts) -> Node | None:
        node = self._nodes.get(facts.name)
        if node is None:
            obj = self.kube.get_node(facts.name)
            if obj is None:
                return None
            instance_id = instance_of(obj)
            if not instance_id:
                return None
            info = self.cloud.describe_instance(instance_id)
            limits = self.cloud.instance_limits(info.instance_type)
            primary = [e for e in self.cloud.describe_enis(instance_id=instance_id)
                       if e.type == "Primary"]
            vsws = tuple(self.cloud.describe_vswitches([info.vswitch_id])) if info.vswitch_id \
                else ()
            node = Node(facts.name, instance_id, info.zone_id, limits,
                        instance_running=info.status != "Stopped", vswitches=vsws,
                        default_vswitches=(info.vswitch_id,) if info.vswitch_id else (),
                        default_security_groups=primary[0].security_group_ids if primary else ())
            self._nodes[facts.name] = node
        return Node(node.name, node.instance_id, node.zone_id, node.limits,
                    node.instance_running, facts.split, facts.shared_enis, node.vswitches,
                    node.default_vswitches, node.default_security_groups)

    def observe(self, pods: Sequence[JSON], namespace_labels: Mapping[str, Mapping[str, str]],
                policies: Sequence[JSON], nodes: Sequence[NodeFacts]
                ) -> tuple[State, dict[str, CloudENI], dict[str, JSON], list[tuple[str, str]]]:
        problems: list[tuple[str, str]] = []  # (pod or policy, message)
        parsed = []
        for p in policies:
            try:
                parsed.append(parse_policy(p["metadata"]["name"], p.get("spec")))
            except PolicyError as err:
                problems.append((f"policy/{p['metadata']['name']}", str(err)))
        by_name: dict[str, Node] = {}
        for f in nodes:
            n = self._node(f)
            if n is not None:
                by_name[f.name] = n
        described = self._vswitches(parsed, problems)
        for name, n in by_name.items():
            by_name[name] = Node(n.name, n.instance_id, n.zone_id, n.limits, n.instance_running,
                                 n.split, n.shared_enis, (*n.vswitches, *described),
                                 n.default_vswitches, n.default_security_groups)
        claims: list[PodClaim] = []
        for pod in pods:
            meta = pod.get("metadata") or {}
            claim, why = pod_claim(pod, namespace_labels.get(meta.get("namespace", ""), {}),
                                   parsed)
            problems += [(f"{meta.get('namespace')}/{meta.get('name')}", w) for w in why]
            if claim is not None:
                claims.append(claim)
        cloud = {e.eni_id: e for e in self.cloud.describe_enis(tags=self.tags())
                 if e.tags.get(contract.TAG_MODE) == contract.TAG_MODE_EXCLUSIVE
                 and e.tags.get(contract.TAG_CLUSTER) == self.cluster_id}
        records = {r["metadata"]["name"]: r for r in self.kube.list_enis()
                   if (r.get("spec") or {}).get("mode") == contract.MODE_EXCLUSIVE}
        enis = []
        for e in cloud.values():
            r = records.get(e.eni_id) or {}
            spec, status = r.get("spec") or {}, r.get("status") or {}
            enis.append(ENI(
                e.eni_id, e.status, e.zone_id, e.vswitch_id, e.security_group_ids,
                instance_id=e.instance_id, claim=str(spec.get("claim") or e.tags.get(TAG_CLAIM)
                                                     or ""),
                fixed=e.tags.get(TAG_IP_TYPE) == FIXED,
                release_after=float(e.tags.get(TAG_RELEASE_AFTER) or 0),
                unclaimed_since=parse_time(status.get("unclaimedSince")),
                deleting=bool((r.get("metadata") or {}).get("deletionTimestamp"))))
        state = State(self.clock(), by_name, tuple(claims), tuple(enis))
        return state, cloud, records, problems

    def _vswitches(self, parsed: Sequence[Policy], problems: list[tuple[str, str]]
                   ) -> list[VSwitch]:
        """The vSwitches the policies name, described once per round. One the cloud does not
        have is the problem of the policies naming it, not the round's: the others are
        described one by one and their pods still get ENIs."""
        wanted = sorted({v for p in parsed for v in p.settings.vswitch_ids})
        if not wanted:
            return []
        with contextlib.suppress(NotFound):
            return list(self.cloud.describe_vswitches(wanted))
        found: list[VSwitch] = []
        for vid in wanted:
            try:
                found += self.cloud.describe_vswitches([vid])
            except NotFound as e:
                problems += [(f"policy/{p.name}", f"vSwitch {vid} does not exist: {e}")
                             for p in parsed if vid in p.settings.vswitch_ids]
        return found

    # -- one round -----------------------------------------------------------------------
    def round(self, pods: Sequence[JSON], namespace_labels: Mapping[str, Mapping[str, str]],
              policies: Sequence[JSON], nodes: Sequence[NodeFacts]) -> ExclusivePlan:
        state, cloud, records, problems = self.observe(pods, namespace_labels, policies, nodes)
        plan = plan_exclusive(state)
        self.known = bool(state.enis) or bool(plan.actions)
        self.settling = any(e.status in (CREATING, ATTACHING, DETACHING) for e in state.enis)
        pod_of = {c.key: c for c in state.claims}
        for action in plan.actions:
            try:
                self._do(action, state, cloud, records)
            except CloudError as e:
                log.warning("exclusive ENIs: %s failed: %s", type(action).__name__, e)
                who = action.pod if isinstance(action, Create | Attach) else ""
                if who:
                    problems.append((who, f"{type(action).__name__}: {e}"))
        for problem in plan.problems:
            problems.append((problem.pod, f"{problem.reason}: {problem.message}"))
        self._record(state, plan, pod_of)
        for name, cap in plan.capacity.items():
            self._capacity(name, cap.slots)
            if cap.reason:
                self.kube.node_event(name, cap.reason, cap.message)
        uids = {f"{(p.get('metadata') or {}).get('namespace')}/"
                f"{(p.get('metadata') or {}).get('name')}": str(
                    (p.get("metadata") or {}).get("uid") or "") for p in pods}
        for who, message in problems:
            self._problem(who, message, uids.get(who, ""))
        self._conditions(pods, state, plan)
        return plan

    def _conditions(self, pods: Sequence[JSON], state: State, plan: ExclusivePlan) -> None:
        """Each exclusive pod's condition: True once its ENI is attached to its node, else
        False with why (the planner's problem, or on its way); written when it changes."""
        why = {p.pod: (p.reason, p.message) for p in plan.problems}
        have = {}
        for p in pods:
            meta = p.get("metadata") or {}
            for c in (p.get("status") or {}).get("conditions") or []:
                if c.get("type") == contract.CONDITION_EXCLUSIVE_ENI:
                    have[f"{meta.get('namespace')}/{meta.get('name')}"] = (
                        c.get("status"), c.get("reason"), c.get("message"))
        for c in state.claims:
            if c.terminating:
                continue
            if c.key in plan.ready:
                want = ("True", "Attached", f"ENI {plan.ready[c.key]} is attached to {c.node}")
            elif c.pod in why:
                want = ("False", *why[c.pod])
            else:
                want = ("False", "Attaching", "its ENI is being created, moved or attached")
            if have.get(c.pod) == want:
                continue
            cond = {"type": contract.CONDITION_EXCLUSIVE_ENI, "status": want[0],
                    "reason": want[1], "message": want[2][:1000],
                    "lastTransitionTime": iso(self.clock())}
            try:
                self.kube.set_pod_condition(c.namespace, c.name, cond)
            except ApiException as err:
                log.warning("pod %s condition: %s", c.pod, err.reason)

    def _do(self, action: Any, state: State, cloud: dict[str, CloudENI],
            records: dict[str, JSON]) -> None:
        if isinstance(action, Create):
            node = state.nodes[action.node]
            tags = {**self.tags(), TAG_CLAIM: action.claim, TAG_POD: action.pod,
                    TAG_IP_TYPE: FIXED if action.fixed else "Elastic",
                    TAG_RELEASE_AFTER: f"{action.release_after:g}"}
            e = self.cloud.create_eni(action.vswitch_id, action.security_group_ids, tags,
                                      description=f"eniway exclusive ENI of {action.pod}")
            cloud[e.eni_id] = e
            records[e.eni_id] = self.kube.create_eni(
                e.eni_id, action.node, self._spec(e, action.node, node.instance_id,
                                                  action.claim, action.pod),
                {"phase": contract.PHASE_CREATING})
        elif isinstance(action, Attach):
            self.cloud.attach_eni(action.eni_id, action.instance_id)
            e = cloud[action.eni_id]
            spec = self._spec(e, action.node, action.instance_id, action.claim, action.pod)
            if action.eni_id in records:
                self.kube.patch_eni_spec(action.eni_id, spec)
                self.kube.ensure_node_label({"metadata": {"name": action.eni_id, "labels": (
                    records[action.eni_id]["metadata"].get("labels") or {})},
                    "spec": {"nodeName": action.node}})
            else:
                records[action.eni_id] = self.kube.create_eni(
                    action.eni_id, action.node, spec, {"phase": contract.PHASE_ATTACHING})
        elif isinstance(action, Detach):
            try:
                self.cloud.detach_eni(action.eni_id, action.instance_id)
            except InvalidState as e:
                log.info("detach %s: %s (next round)", action.eni_id, e)
        elif isinstance(action, Delete):
            with contextlib.suppress(NotFound):
                self.cloud.delete_eni(action.eni_id)
            cloud.pop(action.eni_id, None)
            if action.eni_id in records:
                self.kube.release_eni(action.eni_id)
                records.pop(action.eni_id)

    def _spec(self, e: CloudENI, node: str, instance_id: str, claim: str, pod: str) -> JSON:
        ns, _, name = pod.partition("/")
        vsw = next(iter(self.cloud.describe_vswitches([e.vswitch_id])), None)
        spec: JSON = {"nodeName": node, "instanceId": instance_id, "managed": True,
                      "primary": False, "mode": contract.MODE_EXCLUSIVE, "claim": claim,
                      "podNamespace": ns, "podName": name, "vpcId": e.vpc_id,
                      "zoneId": e.zone_id, "vSwitchId": e.vswitch_id,
                      "primaryIP": e.primary_ip, "macAddress": e.mac,
                      "securityGroupIds": list(e.security_group_ids)[:5]}
        if vsw is not None:
            spec["vSwitchCidr"], spec["gatewayIP"] = vsw.cidr, vsw.gateway
        return spec

    # -- record --------------------------------------------------------------------------
    def _record(self, state: State, plan: ExclusivePlan, pod_of: Mapping[str, PodClaim]) -> None:
        """ENI resources' phase and unclaimed clock from the cloud as it is now."""
        ids = sorted(e.eni_id for e in state.enis)
        now_cloud = {e.eni_id: e for e in self.cloud.describe_enis(eni_ids=ids)} if ids else {}
        phase = {"Available": contract.PHASE_CREATING, "Attaching": contract.PHASE_ATTACHING,
                 "InUse": contract.PHASE_INUSE, "Detaching": contract.PHASE_DETACHING}
        for e in state.enis:
            cur = now_cloud.get(e.eni_id)
            if cur is None or self.kube.get_eni(e.eni_id) is None:
                continue
            status: JSON = {"phase": phase.get(cur.status, contract.PHASE_CREATING)}
            if e.eni_id in plan.unclaimed_since:
                since = plan.unclaimed_since[e.eni_id]
                status["unclaimedSince"] = iso(since) if since is not None else None
            try:
                self.kube.patch_eni_status(e.eni_id, status)
            except ApiException as err:
                log.warning("ENI %s status: %s", e.eni_id, err.reason)

    def _capacity(self, node: str, slots: int) -> None:
        """The node's exclusive-ENI slots as an extended resource the scheduler counts."""
        res = contract.RESOURCE_EXCLUSIVE_ENI
        obj = self.kube.node(node)
        if obj is None:
            return
        st = obj.get("status") or {}
        if (st.get("capacity") or {}).get(res) == str(slots) and (
                st.get("allocatable") or {}).get(res) == str(slots):
            return
        self.kube.publish_node_resource(node, res, str(slots))

    def _problem(self, who: str, message: str, uid: str = "") -> None:
        if who.startswith("policy/"):
            name = who.split("/", 1)[1]
            self.kube.event({"kind": "ExclusiveENIPolicy", "name": name, "uid": name,
                             "apiVersion": contract.API_VERSION}, "PolicyInvalid", message)
            return
        ns, _, name = who.partition("/")
        reason = message.split(":", 1)[0] if ":" in message else "ExclusiveENI"
        self.kube.event({"kind": "Pod", "namespace": ns, "name": name, "uid": uid or name,
                         "apiVersion": "v1"}, reason if reason.isalnum() else "ExclusiveENI",
                        message)
