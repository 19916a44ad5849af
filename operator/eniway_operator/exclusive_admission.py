"""Admission of new pods to exclusive ENIs, without I/O: whether a pod being created opts in,
and the JSON patch that writes the opt-in into the pod.

A pod opts in with the annotation ``EXCLUSIVE_ANNOTATION: "true"``, by requesting the
extended resource ``EXCLUSIVE_RESOURCE``, or by being selected by an ExclusiveENIPolicy.
Whatever the reason, the admitted pod carries both the annotation and the request (one
slot, in its first container's requests and limits): the scheduler then counts slots for
it, and the node agent (which cannot read policies) sees the same pods as exclusive as the
operator does. A pod annotated ``"false"`` stays shared even if a policy selects it;
host-network pods and pods of the skipped namespaces (kube-system, eniway's own) are never
changed. The webhook never refuses a pod: it only adds to it.

``parse_review`` raises ``ReviewError`` for a body that is not an AdmissionReview request;
``admit`` and ``response`` cannot fail.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eniway_operator.exclusive_policy import (
    EXCLUSIVE_ANNOTATION,
    EXCLUSIVE_RESOURCE,
    Policy,
    pick_policy,
    requests_slot,
)

REVIEW_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
NOT_OPTED_IN = "not opted in"  # the one answer that depends on the policies


class ReviewError(ValueError):
    """The request body is not an AdmissionReview request; the message says what is wrong."""


@dataclass(frozen=True)
class Review:
    api_version: str
    uid: str
    operation: str
    namespace: str
    resource: str  # "pods", or what else the request is about
    sub_resource: str
    pod: Mapping[str, Any] | None  # the object of a pod CREATE, else None


@dataclass(frozen=True)
class Decision:
    patch: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""


def parse_review(body: bytes) -> Review:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ReviewError(f"not JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("kind") != "AdmissionReview":
        raise ReviewError("expected an AdmissionReview object")
    version = doc.get("apiVersion")
    if version not in REVIEW_VERSIONS:
        raise ReviewError(f"apiVersion {version!r} is not one of {', '.join(REVIEW_VERSIONS)}")
    req = doc.get("request")
    if not isinstance(req, dict):
        raise ReviewError("the AdmissionReview has no request")
    uid = req.get("uid")
    if not isinstance(uid, str) or not uid:
        raise ReviewError("request.uid is missing")
    resource: dict[str, Any] = req["resource"] if isinstance(req.get("resource"), dict) else {}
    group = str(resource.get("group") or "")
    name = str(resource.get("resource") or "")
    operation = str(req.get("operation") or "")
    sub = str(req.get("subResource") or "")
    pod = None
    if group == "" and name == "pods" and operation == "CREATE" and not sub:
        obj = req.get("object")
        if not isinstance(obj, dict) or obj.get("kind") not in (None, "Pod"):
            raise ReviewError("request.object of a pod CREATE is not a Pod")
        spec = obj.get("spec")
        if not isinstance(spec, dict) or not isinstance(spec.get("containers"), list):
            raise ReviewError("request.object.spec.containers is missing")
        pod = obj
    namespace = str(req.get("namespace") or ((pod or {}).get("metadata") or {}).get(
        "namespace") or "")
    return Review(str(version), uid, operation, namespace, name, sub, pod)


def _escape(key: str) -> str:
    """A map key as one JSON-pointer segment (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def admit(pod: Mapping[str, Any], namespace: str, namespace_labels: Mapping[str, str],
          policies: Sequence[Policy], skip_namespaces: Collection[str]) -> Decision:
    """What to add to a pod being created in ``namespace`` (empty patch: nothing)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    annotations = meta.get("annotations")
    opt = str((annotations or {}).get(EXCLUSIVE_ANNOTATION, "")).lower()
    if namespace in skip_namespaces:
        return Decision(reason=f"namespace {namespace} is skipped")
    if spec.get("hostNetwork"):
        return Decision(reason="host network")
    if opt not in ("", "true"):
        return Decision(reason=f"annotation {EXCLUSIVE_ANNOTATION} is {opt!r}")
    containers = spec.get("containers") or []
    if not containers or not isinstance(containers[0], Mapping):
        return Decision(reason="no container")
    asks = requests_slot(pod)
    policy, _ = pick_policy(policies, namespace_labels, meta.get("labels") or {})
    if opt != "true" and not asks and policy is None:
        return Decision(reason=NOT_OPTED_IN)
    patch: list[dict[str, Any]] = []
    if not isinstance(annotations, Mapping):
        patch.append({"op": "add", "path": "/metadata/annotations",
                      "value": {EXCLUSIVE_ANNOTATION: "true"}})
    elif opt != "true":
        patch.append({"op": "add", "value": "true",
                      "path": f"/metadata/annotations/{_escape(EXCLUSIVE_ANNOTATION)}"})
    if not asks:
        base = "/spec/containers/0/resources"
        resources = containers[0].get("resources")
        if not isinstance(resources, Mapping):
            patch.append({"op": "add", "path": base, "value": {
                "requests": {EXCLUSIVE_RESOURCE: "1"}, "limits": {EXCLUSIVE_RESOURCE: "1"}}})
        else:
            for part in ("requests", "limits"):
                if isinstance(resources.get(part), Mapping):
                    patch.append({"op": "add", "value": "1",
                                  "path": f"{base}/{part}/{_escape(EXCLUSIVE_RESOURCE)}"})
                else:
                    patch.append({"op": "add", "path": f"{base}/{part}",
                                  "value": {EXCLUSIVE_RESOURCE: "1"}})
    why = (f"selected by policy {policy.name}" if policy is not None and opt != "true"
           and not asks else "opted in")
    return Decision(patch, why)


def response(review: Review, decision: Decision) -> dict[str, Any]:
    """The AdmissionReview answer: always allowed, with the patch if there is one."""
    answer: dict[str, Any] = {"uid": review.uid, "allowed": True}
    if decision.patch:
        answer["patchType"] = "JSONPatch"
        answer["patch"] = base64.b64encode(json.dumps(decision.patch).encode()).decode()
    return {"apiVersion": review.api_version, "kind": "AdmissionReview", "response": answer}
