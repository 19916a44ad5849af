"""The admission decision for exclusive ENIs (pure), the webhook's certificates and caBundle,
and the HTTPS server answering reviews that need no API server read (pods opted in by
their annotation, skipped namespaces, malformed requests). The API server calling the
webhook, policies and all, is in test_exclusive_e2e.py."""

from __future__ import annotations

import base64
import copy
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import jsonpatch
import pytest
from cryptography import x509
from kubernetes import client

from cni_plugin import contract
from eniway_operator.exclusive_admission import (
    NOT_OPTED_IN,
    ReviewError,
    admit,
    parse_review,
    response,
)
from eniway_operator.exclusive_policy import parse_policy
from eniway_operator.testing import free_port
from eniway_operator.webhook import PATH, AdmissionWebhook
from eniway_operator.webhook_tls import make_serving_tls, merge_bundle, split_pem

ANN, RES = contract.ANNOTATION_EXCLUSIVE_ENI, contract.RESOURCE_EXCLUSIVE_ENI
SKIP = {"kube-system", "eniway-system"}
WEB = parse_policy("web", {"selector": {"podSelector": {"matchLabels": {"app": "web"}},
                                        "namespaceSelector": {"matchLabels": {"team": "a"}}},
                           "securityGroupIDs": ["sg-web00001"]})


def pod(labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
        resources: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "p", "labels": labels or {"app": "web"}}
    if annotations is not None:
        meta["annotations"] = annotations
    c: dict[str, Any] = {"name": "c", "image": "busybox"}
    if resources is not None:
        c["resources"] = resources
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [c, {"name": "side", "image": "busybox"}], **spec}}


def patched(p: dict[str, Any], ns: str = "shop", labels: dict[str, str] | None = None,
            policies: tuple[Any, ...] = (WEB,)) -> tuple[dict[str, Any], str]:
    d = admit(p, ns, {"team": "a"} if labels is None else labels, list(policies), SKIP)
    return jsonpatch.apply_patch(copy.deepcopy(p), d.patch), d.reason


def opted_in(p: dict[str, Any], container: int = 0) -> bool:
    res = p["spec"]["containers"][container].get("resources") or {}
    return (p["metadata"]["annotations"][ANN] == "true"
            and res["requests"][RES] == "1" and res["limits"][RES] == "1")


@pytest.mark.parametrize("before", [
    pod(),  # no annotations, no resources
    pod(annotations={"other": "x"}, resources={}),
    pod(annotations={}, resources={"limits": {"cpu": "1"}}),
    pod(resources={"requests": {"memory": "1Gi"}, "limits": {"memory": "1Gi", RES: "0"}}),
])
def test_a_pod_a_policy_selects_gets_the_annotation_and_one_slot(before: dict[str, Any]) -> None:
    after, why = patched(before)
    assert why == "selected by policy web"
    assert opted_in(after)
    assert "resources" not in after["spec"]["containers"][1], "one container asks, not two"
    # what it had stays
    for k, v in (before["metadata"].get("annotations") or {}).items():
        assert after["metadata"]["annotations"][k] == v
    res = before["spec"]["containers"][0].get("resources") or {}
    for part, values in res.items():
        for k, v in values.items():
            if k != RES:
                assert after["spec"]["containers"][0]["resources"][part][k] == v


def test_an_annotated_pod_gets_the_slot_a_requesting_pod_the_annotation() -> None:
    after, why = patched(pod(labels={"app": "db"}, annotations={ANN: "true"}))
    assert opted_in(after) and why == "opted in"
    asks = pod(labels={"app": "db"}, resources={"limits": {RES: "1"}})
    after, _ = patched(asks)
    assert after["metadata"]["annotations"] == {ANN: "true"}
    assert after["spec"]["containers"][0]["resources"] == {"limits": {RES: "1"}}, \
        "a request it has is left alone"
    both = pod(annotations={ANN: "true"}, resources={"limits": {RES: "1"}})
    assert admit(both, "shop", {}, [], SKIP).patch == []


@pytest.mark.parametrize(("p", "ns", "labels", "reason"), [
    (pod(labels={"app": "db"}), "shop", {"team": "a"}, NOT_OPTED_IN),  # pod labels differ
    (pod(), "shop", {"team": "b"}, NOT_OPTED_IN),  # namespace labels differ
    (pod(annotations={ANN: "false"}), "shop", {"team": "a"}, f"annotation {ANN} is 'false'"),
    (pod(annotations={ANN: "yes"}), "shop", {"team": "a"}, f"annotation {ANN} is 'yes'"),
    (pod(annotations={ANN: "true"}), "kube-system", {}, "namespace kube-system is skipped"),
    (pod(), "eniway-system", {"team": "a"}, "namespace eniway-system is skipped"),
    (pod(annotations={ANN: "true"}, hostNetwork=True), "shop", {}, "host network"),
])
def test_pods_left_unchanged(p: dict[str, Any], ns: str, labels: dict[str, str],
                             reason: str) -> None:
    d = admit(p, ns, labels, [WEB], SKIP)
    assert (d.patch, d.reason) == ([], reason)


def test_keys_with_slashes_are_escaped_in_the_patch() -> None:
    d = admit(pod(annotations={"a": "b"}, resources={"limits": {}, "requests": {}}), "shop",
              {"team": "a"}, [WEB], SKIP)
    paths = [op["path"] for op in d.patch]
    assert "/metadata/annotations/network.eniway.io~1exclusive-eni" in paths
    assert "/spec/containers/0/resources/limits/network.eniway.io~1eni" in paths


def _review(obj: Any, version: str = "admission.k8s.io/v1", **req: Any) -> bytes:
    request = {"uid": "u-1", "operation": "CREATE", "namespace": "shop",
               "resource": {"group": "", "version": "v1", "resource": "pods"},
               "object": obj, **req}
    return json.dumps({"apiVersion": version, "kind": "AdmissionReview",
                       "request": request}).encode()


def test_reviews_parse_and_answers_carry_the_uid_and_the_patch() -> None:
    r = parse_review(_review(pod(), version="admission.k8s.io/v1beta1"))
    assert (r.api_version, r.uid, r.namespace, r.pod is not None) == (
        "admission.k8s.io/v1beta1", "u-1", "shop", True)
    d = admit(r.pod or {}, r.namespace, {"team": "a"}, [WEB], SKIP)
    out = response(r, d)
    assert out["apiVersion"] == "admission.k8s.io/v1beta1" and out["kind"] == "AdmissionReview"
    assert out["response"]["uid"] == "u-1" and out["response"]["allowed"] is True
    assert out["response"]["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(out["response"]["patch"])) == d.patch
    bare = response(r, admit(pod(labels={"app": "x"}), "shop", {}, [WEB], SKIP))
    assert bare["response"] == {"uid": "u-1", "allowed": True}
    # not a pod creation: parsed, no pod to decide on
    for req in ({"operation": "UPDATE"}, {"subResource": "status"},
                {"resource": {"group": "apps", "version": "v1", "resource": "deployments"}}):
        assert parse_review(_review({"kind": "Whatever"}, **req)).pod is None


@pytest.mark.parametrize(("body", "message"), [
    (b"", "not JSON"),
    (b"{not json", "not JSON"),
    (b"[]", "expected an AdmissionReview object"),
    (json.dumps({"kind": "Pod"}).encode(), "expected an AdmissionReview object"),
    (json.dumps({"kind": "AdmissionReview", "apiVersion": "v1"}).encode(), "apiVersion 'v1'"),
    (json.dumps({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}).encode(),
     "has no request"),
    (_review(pod(), uid=""), "request.uid is missing"),
    (_review("a string"), "is not a Pod"),
    (_review({"kind": "Pod", "spec": {}}), "spec.containers is missing"),
])
def test_malformed_reviews_are_refused_with_the_reason(body: bytes, message: str) -> None:
    with pytest.raises(ReviewError, match=message):
        parse_review(body)


# -- certificates ---------------------------------------------------------------------------

def test_serving_certificate_is_signed_by_the_ca_for_the_names() -> None:
    tls = make_serving_tls(["eniway-webhook.eniway-system.svc", "127.0.0.1", ""])
    ca = x509.load_pem_x509_certificate(tls.ca_pem)
    leaf = x509.load_pem_x509_certificate(tls.cert_pem)
    leaf.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["eniway-webhook.eniway-system.svc"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert split_pem(tls.cert_pem)[1] == tls.ca_pem, "the chain ends with the CA"
    with pytest.raises(ValueError, match="at least one"):
        make_serving_tls([" "])


def test_bundle_keeps_the_newest_cas_and_each_once() -> None:
    cas = [make_serving_tls(["localhost"]).ca_pem for _ in range(5)]
    bundle = b""
    for ca in cas:
        bundle = merge_bundle(bundle, ca)
    assert split_pem(bundle) == cas[1:], "the oldest drops out"
    assert merge_bundle(bundle, cas[2]) == b"".join([cas[1], cas[3], cas[4], cas[2]])
    assert merge_bundle(b"garbage", cas[0]) == cas[0]


# -- the server, through TLS ----------------------------------------------------------------

@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, ssl.SSLContext]]:
    tls = make_serving_tls(["localhost"])
    port = free_port()
    # nothing listens there: answers that need a read fail as the API server down would
    api = client.ApiClient(client.Configuration(host="http://127.0.0.1:9"))
    hook = AdmissionWebhook(api, "127.0.0.1", port, tls, SKIP).start()
    ctx = ssl.create_default_context(cadata=tls.ca_pem.decode())
    try:
        yield f"https://localhost:{port}{PATH}", ctx
    finally:
        hook.stop()


def post(url: str, ctx: ssl.SSLContext, body: bytes) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_server_answers_over_tls_its_ca_verifies(
        served: tuple[str, ssl.SSLContext]) -> None:
    url, ctx = served
    code, out = post(url, ctx, _review(pod(annotations={ANN: "true"})))
    assert code == 200 and out["response"]["allowed"] is True
    ops = json.loads(base64.b64decode(out["response"]["patch"]))
    assert opted_in(jsonpatch.apply_patch(pod(annotations={ANN: "true"}), ops))
    code, out = post(url, ctx, _review(pod(), namespace="kube-system"))
    assert (code, out["response"]) == (200, {"uid": "u-1", "allowed": True})
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        post(url, ssl.create_default_context(), _review(pod()))


@pytest.mark.parametrize(("body", "code", "message"), [
    (b"\x00\xff garbage", 400, "not an AdmissionReview request: not JSON"),
    (_review(pod(), uid=""), 400, "request.uid is missing"),
    (_review(pod()), 500, "cannot read the exclusive-ENI policies or the namespace"),
])
def test_server_refuses_what_it_cannot_answer_cleanly(
        served: tuple[str, ssl.SSLContext], body: bytes, code: int, message: str) -> None:
    url, ctx = served
    got, out = post(url, ctx, body)
    assert got == code and message in out["error"], out
