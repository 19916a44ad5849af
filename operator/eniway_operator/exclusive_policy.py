"""Which pods get an exclusive ENI, and with what: policies and the per-pod opt-in, parsed
and matched without I/O.

A pod opts in by requesting the extended resource ``EXCLUSIVE_RESOURCE`` (so the
scheduler places it where a slot is free), usually together with the annotation
``EXCLUSIVE_ANNOTATION: "true"``; the annotation alone opts in too. A policy
(cluster-scoped) selects pods by their namespace's labels and their own labels and names
the vSwitches, the security groups (1 to 5) and the IP type (``Elastic``, or ``Fixed`` with
``releaseAfter``) of their ENIs. The admission webhook (exclusive_admission.py) opts the
pods a policy selects in when they are created, writing the annotation and the request into
them; here a policy only supplies the settings of pods that opted in (the node agent, which
cannot read policies, must see the same pods as exclusive as the operator does). A pod
that opted in but no policy selects takes the node's vSwitches and security groups. A
StatefulSet pod's IP is fixed whatever its policy says: its name, and so its claim,
survives re-creation.

Bad input raises ``PolicyError`` naming the field; nothing else is read from a bad policy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cni_plugin import contract
from eniway_operator.cloud.base import SecurityGroup, VSwitch
from eniway_operator.config import _SG, _VSW, ConfigError, parse_duration
from eniway_operator.exclusive_plan import ELASTIC, FIXED, IP_TYPES, PodClaim, Settings

EXCLUSIVE_ANNOTATION = contract.ANNOTATION_EXCLUSIVE_ENI
EXCLUSIVE_RESOURCE = contract.RESOURCE_EXCLUSIVE_ENI
_OPS = ("In", "NotIn", "Exists", "DoesNotExist")
DEFAULT_RELEASE_AFTER = 600.0  # a Fixed ENI nobody claims is kept 10 minutes by default


class PolicyError(ValueError):
    """A policy is wrong; the message names the policy and the field."""


@dataclass(frozen=True)
class Selector:
    """A Kubernetes label selector (matchLabels and matchExpressions, ANDed)."""

    match_labels: Mapping[str, str] = field(default_factory=dict)
    match_expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for key, op, values in self.match_expressions:
            has = key in labels
            if op == "In" and not (has and labels[key] in values):
                return False
            if op == "NotIn" and has and labels[key] in values:
                return False
            if op == "Exists" and not has:
                return False
            if op == "DoesNotExist" and has:
                return False
        return True


@dataclass(frozen=True)
class Policy:
    name: str
    namespace_selector: Selector | None
    pod_selector: Selector | None
    settings: Settings

    def selects(self, namespace_labels: Mapping[str, str], pod_labels: Mapping[str, str]) -> bool:
        """An absent selector matches everything; a policy has at least one."""
        return ((self.namespace_selector is None
                 or self.namespace_selector.matches(namespace_labels))
                and (self.pod_selector is None or self.pod_selector.matches(pod_labels)))


def parse_selector(value: Any, where: str) -> Selector:
    if not isinstance(value, Mapping):
        raise PolicyError(f"{where}: expected a label selector (matchLabels, matchExpressions)")
    labels = value.get("matchLabels") or {}
    if not isinstance(labels, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise PolicyError(f"{where}.matchLabels: expected a map of strings")
    exprs = []
    for i, e in enumerate(value.get("matchExpressions") or []):
        at = f"{where}.matchExpressions[{i}]"
        if not isinstance(e, Mapping) or not isinstance(e.get("key"), str) or not e["key"]:
            raise PolicyError(f"{at}: expected key, operator and values")
        op, values = e.get("operator"), e.get("values") or []
        if op not in _OPS:
            raise PolicyError(f"{at}.operator: {op!r} is not one of {', '.join(_OPS)}")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise PolicyError(f"{at}.values: expected a list of strings")
        if (op in ("In", "NotIn")) != bool(values):
            raise PolicyError(f"{at}.values: {op} needs values" if op in ("In", "NotIn")
                              else f"{at}.values: {op} takes no values")
        exprs.append((e["key"], str(op), tuple(values)))
    return Selector(dict(labels), tuple(exprs))


def parse_policy(name: str, spec: Any) -> Policy:
    """A policy from its resource's spec; PolicyError names the first wrong field."""
    where = f"policy {name}: spec"
    if not isinstance(spec, Mapping):
        raise PolicyError(f"{where}: expected an object")
    sel = spec.get("selector") or {}
    if not isinstance(sel, Mapping):
        raise PolicyError(f"{where}.selector: expected namespaceSelector and/or podSelector")
    ns_sel = (parse_selector(sel["namespaceSelector"], f"{where}.selector.namespaceSelector")
              if sel.get("namespaceSelector") is not None else None)
    pod_sel = (parse_selector(sel["podSelector"], f"{where}.selector.podSelector")
               if sel.get("podSelector") is not None else None)
    if ns_sel is None and pod_sel is None:
        raise PolicyError(f"{where}.selector: name a namespaceSelector, a podSelector or both")
    vsws = spec.get("vSwitchIDs") or []
    if not isinstance(vsws, list) or not all(isinstance(v, str) and _VSW.match(v) for v in vsws):
        raise PolicyError(f"{where}.vSwitchIDs: expected a list of vSwitch ids (vsw-...)")
    sgs = spec.get("securityGroupIDs")
    if not isinstance(sgs, list) or not 1 <= len(sgs) <= 5:
        raise PolicyError(f"{where}.securityGroupIDs: an ENI takes 1 to 5 security groups")
    if not all(isinstance(g, str) and _SG.match(g) for g in sgs):
        raise PolicyError(f"{where}.securityGroupIDs: expected security group ids (sg-...)")
    if len(set(sgs)) != len(sgs):
        raise PolicyError(f"{where}.securityGroupIDs: a security group is listed twice")
    ip_type = spec.get("ipType", ELASTIC)
    if ip_type not in IP_TYPES:
        raise PolicyError(f"{where}.ipType: {ip_type!r} is not one of {', '.join(IP_TYPES)}")
    release_after = 0.0
    if ip_type == FIXED:
        try:
            release_after = parse_duration(spec.get("releaseAfter", DEFAULT_RELEASE_AFTER),
                                           f"{where}.releaseAfter")
        except ConfigError as e:
            raise PolicyError(str(e)) from e
    elif spec.get("releaseAfter") is not None:
        raise PolicyError(f"{where}.releaseAfter: only a Fixed ipType keeps an unclaimed ENI")
    return Policy(name, ns_sel, pod_sel,
                  Settings(tuple(dict.fromkeys(vsws)), tuple(sgs), str(ip_type), release_after))


def cloud_problems(policy: Policy, vpc_id: str, vswitches: Mapping[str, VSwitch],
                   groups: Mapping[str, SecurityGroup]) -> list[str]:
    """What the cloud says is wrong with a policy's ids (absent from the maps: the cloud
    has none). A policy with problems selects no pod until fixed."""
    problems = []
    for vid in policy.settings.vswitch_ids:
        v = vswitches.get(vid)
        if v is None:
            problems.append(f"vSwitchIDs: {vid} does not exist (InvalidVSwitchId.NotFound)")
        elif vpc_id and v.vpc_id and v.vpc_id != vpc_id:
            problems.append(f"vSwitchIDs: {vid} is in {v.vpc_id}, not in {vpc_id}")
    for sg in policy.settings.security_group_ids:
        g = groups.get(sg)
        if g is None:
            problems.append(f"securityGroupIDs: {sg} does not exist "
                            "(InvalidSecurityGroupId.NotFound)")
        elif vpc_id and g.vpc_id and g.vpc_id != vpc_id:
            problems.append(f"securityGroupIDs: {sg} is in {g.vpc_id}, not in {vpc_id}")
    return problems


def pick_policy(policies: Sequence[Policy], namespace_labels: Mapping[str, str],
                pod_labels: Mapping[str, str]) -> tuple[Policy | None, list[str]]:
    """The policy for a pod: the first by name among those selecting it, and the names of
    the others (a problem worth an Event: which applies is then not obvious)."""
    hits = sorted((p for p in policies if p.selects(namespace_labels, pod_labels)),
                  key=lambda p: p.name)
    if not hits:
        return None, []
    return hits[0], [p.name for p in hits[1:]]


def wants_exclusive(pod: Mapping[str, Any]) -> bool:
    """Whether the pod opted in (the annotation says true, or it requests a slot)."""
    return contract.wants_exclusive_eni(dict(pod))


def requests_slot(pod: Mapping[str, Any]) -> bool:
    """Whether a container of the pod asks for an exclusive-ENI slot."""
    return contract.requests_exclusive_slot(dict(pod))


def pod_claim(pod: Mapping[str, Any], namespace_labels: Mapping[str, str],
              policies: Sequence[Policy]) -> tuple[PodClaim | None, list[str]]:
    """The pod's exclusive-ENI claim (None: shared mode, not scheduled, done or
    host-network) and the problems to report on it."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    status = pod.get("status") or {}
    problems: list[str] = []
    annotations = meta.get("annotations") or {}
    opt = str(annotations.get(EXCLUSIVE_ANNOTATION, "")).lower()
    if opt not in ("", "true", "false"):
        problems.append(f"annotation {EXCLUSIVE_ANNOTATION}: expected true or false, got "
                        f"{annotations[EXCLUSIVE_ANNOTATION]!r}; the pod is not given an ENI")
        return None, problems
    if (not spec.get("nodeName") or spec.get("hostNetwork")
            or status.get("phase") in ("Succeeded", "Failed") or opt == "false"):
        return None, problems
    if opt != "true" and not requests_slot(pod):
        return None, problems
    policy, others = pick_policy(policies, namespace_labels, meta.get("labels") or {})
    if others and policy is not None:
        problems.append(f"policies {', '.join([policy.name, *others])} all select the pod: "
                        f"{policy.name} applies (first by name)")
    stateful = any(o.get("kind") == "StatefulSet" and o.get("controller")
                   for o in meta.get("ownerReferences") or [])
    settings = policy.settings if policy is not None else Settings()
    if stateful and settings.ip_type != FIXED:
        settings = Settings(settings.vswitch_ids, settings.security_group_ids, FIXED,
                            settings.release_after or DEFAULT_RELEASE_AFTER)
    claim = PodClaim(str(meta.get("namespace") or "default"), str(meta.get("name") or ""),
                     str(meta.get("uid") or ""), str(spec["nodeName"]), settings,
                     stateful=stateful, terminating=bool(meta.get("deletionTimestamp")))
    return claim, problems
