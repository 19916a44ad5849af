"""The mutating admission webhook for exclusive ENIs: an HTTPS server (aiohttp on a thread of
its own) that answers the API server's AdmissionReviews of pod CREATEs with the patch
``exclusive_admission.admit`` decides, and a thread that keeps this replica's CA in the
MutatingWebhookConfiguration's caBundle.

Every replica serves, leader or not: admission needs no cloud call and no lease, and the
Service in front of the replicas may pick any of them. The inputs (the pod's namespace
labels, the policies) are read from the API server on each request, so a policy applies
to the next pod created after it. A request that cannot be read is answered 400, an API
server that cannot be reached 500; the webhook's failurePolicy then decides (the chart's
Ignore: the pod is created unchanged).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import tempfile
import threading
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from kubernetes import client
from kubernetes.client.rest import ApiException

from cni_plugin import contract
from eniway_operator.exclusive_admission import (
    NOT_OPTED_IN,
    Decision,
    ReviewError,
    admit,
    parse_review,
    response,
)
from eniway_operator.exclusive_policy import Policy, PolicyError, parse_policy
from eniway_operator.metrics import WEBHOOK_ADMISSIONS
from eniway_operator.webhook_tls import ServingTls, merge_bundle, split_pem

log = logging.getLogger(__name__)
PATH = "/mutate-pods"
MAX_BODY = 3 * 1024 * 1024  # the API server's own limit on an object is 3 MiB
CA_INTERVAL = 10.0  # seconds between checks that the caBundle still trusts this replica


class AdmissionWebhook:
    def __init__(self, api: client.ApiClient, host: str, port: int, tls: ServingTls,
                 skip_namespaces: Collection[str], config_name: str = "") -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.admission = client.AdmissionregistrationV1Api(api)
        self.host, self.port, self.tls = host, port, tls
        self.skip = frozenset(skip_namespaces)
        self.config_name = config_name
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- serving -------------------------------------------------------------------------
    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # the key lives in memory only: written to a private temporary file for the loader
        with tempfile.TemporaryDirectory(prefix="eniway-webhook-") as d:
            cert, key = Path(d) / "tls.crt", Path(d) / "tls.key"
            cert.write_bytes(self.tls.cert_pem)
            key.touch(mode=0o600)
            key.write_bytes(self.tls.key_pem)
            ctx.load_cert_chain(cert, key)
        return ctx

    def start(self) -> AdmissionWebhook:
        """Listening when it returns; a port that cannot be bound raises OSError."""
        ready = threading.Event()
        failed: list[BaseException] = []
        threading.Thread(target=self._serve, args=(ready, failed), name="webhook",
                         daemon=True).start()
        ready.wait()
        if failed:
            raise failed[0]
        if self.config_name:
            threading.Thread(target=self._keep_ca, name="webhook-ca", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)

    def _serve(self, ready: threading.Event, failed: list[BaseException]) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post(PATH, self._mutate)
        runner = web.AppRunner(app, access_log=None)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(
                web.TCPSite(runner, self.host, self.port, ssl_context=self._ssl()).start())
        except BaseException as e:
            failed.append(e)
            ready.set()
            return
        log.info("admission webhook on https://%s:%d%s", self.host, self.port, PATH)
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    async def _mutate(self, request: web.Request) -> web.Response:
        try:
            review = parse_review(await request.read())
        except ReviewError as e:
            WEBHOOK_ADMISSIONS.labels("bad_request").inc()
            return web.json_response({"error": f"not an AdmissionReview request: {e}"},
                                     status=400)
        decision = Decision(reason="not a pod creation")
        if review.pod is not None:
            try:
                decision = await asyncio.to_thread(self.decide, review.pod, review.namespace)
            except Exception as e:
                log.warning("admission of a pod in %s: %s", review.namespace, e)
                WEBHOOK_ADMISSIONS.labels("error").inc()
                return web.json_response({"error": f"cannot read the exclusive-ENI policies "
                                                   f"or the namespace: {e}"}, status=500)
            meta = review.pod.get("metadata") or {}
            who = meta.get("name") or f"{meta.get('generateName') or ''}*"
            if decision.patch:
                log.info("pod %s/%s gets an exclusive ENI: %s", review.namespace, who,
                         decision.reason)
        WEBHOOK_ADMISSIONS.labels("exclusive" if decision.patch else "unchanged").inc()
        return web.json_response(response(review, decision))

    def decide(self, pod: Mapping[str, Any], namespace: str) -> Decision:
        """The decision, reading the namespace's labels and the policies when they matter."""
        first = admit(pod, namespace, {}, [], self.skip)
        if first.reason != NOT_OPTED_IN:
            return first
        meta = self.core.read_namespace(namespace).metadata
        labels = dict((meta.labels if meta is not None else None) or {})
        return admit(pod, namespace, labels, self.policies(), self.skip)

    def policies(self) -> list[Policy]:
        """Every policy that parses (a bad one selects no pod, as in the operator's rounds)."""
        listed: Any = self.custom.list_cluster_custom_object(
            contract.GROUP, contract.VERSION, contract.PLURAL_EXCLUSIVE_POLICY)
        items = listed["items"]
        out = []
        for item in items:
            try:
                out.append(parse_policy(item["metadata"]["name"], item.get("spec")))
            except PolicyError:
                continue
        return out

    # -- the caBundle --------------------------------------------------------------------
    def ensure_ca(self) -> bool:
        """Add this replica's CA to every webhook of the configuration whose caBundle lacks
        it (a conflicting write by another replica: next time). True: it is there."""
        try:
            cfg = self.admission.read_mutating_webhook_configuration(self.config_name)
        except ApiException as e:
            log.warning("webhook configuration %s: %s", self.config_name, e.reason)
            return False
        mine = split_pem(self.tls.ca_pem)[0]
        changed = False
        for hook in cfg.webhooks or []:
            current = base64.b64decode(hook.client_config.ca_bundle or "")
            if mine not in split_pem(current):
                hook.client_config.ca_bundle = base64.b64encode(
                    merge_bundle(current, mine)).decode()
                changed = True
        if not changed:
            return True
        try:
            self.admission.replace_mutating_webhook_configuration(self.config_name, cfg)
        except ApiException as e:
            log.info("webhook configuration %s not updated (%s), trying again", self.config_name,
                     e.reason)
            return False
        log.info("webhook configuration %s trusts this replica's CA", self.config_name)
        return True

    def _keep_ca(self) -> None:
        while not self._stop.is_set():
            try:
                ok = self.ensure_ca()
            except Exception as e:
                log.warning("webhook configuration %s: %s", self.config_name, e)
                ok = False
            self._stop.wait(CA_INTERVAL if ok else 1.0)
