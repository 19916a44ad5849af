"""The HTTP front: ECS RPC calls and VPC RPC calls (EIPs; told apart by their API
version) on ``/``, and EC2 Query calls on the same ``/`` (told apart by their SigV4
``Authorization: AWS4-HMAC-SHA256`` header or ``Version=2016-11-15``; see ec2_api.py),
admin JSON under ``/admin/``, instance metadata under
``/instances/<id>/<token>/latest/`` (see metadata.py; IMDSv2 for aws instances, see
ec2_metadata.py).

The admin API changes the region at will (instances, access keys, faults), so every
``/admin/`` request but ``GET /admin/healthz`` (for probes) must carry
``Authorization: Bearer <admin token>``. Request bodies are bounded by ``MAX_BODY``: a
larger Content-Length is refused with 413 before anything is read."""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from . import ec2_api, metadata, sigv4, vpc_api
from .ec2_metadata import Imds
from .ec2_metadata import serve as serve_imds
from .ecs_api import ACTIONS
from .eips import EipBook, EipSettings
from .engine import AWS, EcsError, Engine, Settings
from .faults import Decision, Gate, Rate
from .signing import Verifier
from .store import Store

log = logging.getLogger("eniway_cloudsim")
API_VERSION = "2014-05-26"
MAX_BODY = 1 << 20  # bytes; the largest ECS call eniway makes is a few KiB


class CloudSim:
    """One emulated region behind one HTTP listener. ``start()`` serves in a thread;
    ``serve_forever()`` in the caller's."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, state: str = ":memory:",
                 settings: Settings | None = None, network: Any = None,
                 keys: Mapping[str, str] | None = None, auth: bool = True,
                 seed: int | None = None, throttle: Mapping[str, Rate] | None = None,
                 tick_interval: float = 0.02, admin_token: str | None = None,
                 eip_settings: EipSettings | None = None) -> None:
        """``admin_token`` None makes a random one (read it from ``.admin_token``)."""
        self.store = Store(state)
        self.engine = Engine(settings or Settings(), self.store, network)
        self.engine.save_settings()
        self.eips = EipBook(self.engine, eip_settings, network)
        self.verifier = Verifier(keys if keys is not None else {"eniway": "eniway-secret"},
                                 enabled=auth)
        self.gate = Gate(seed, throttle)
        self.imds = Imds(self.engine, self.verifier)
        self.admin_token = admin_token or secrets.token_urlsafe(24)
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.httpd.daemon_threads = True
        self.tick_interval = tick_interval
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    @property
    def endpoint(self) -> str:
        """host:port, what the SDK's Config.endpoint wants (with protocol="http")."""
        host, port = self.address
        return f"{host}:{port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def _ticker(self) -> None:
        while not self._stop.wait(self.tick_interval):
            try:
                self.engine.tick()
                self.eips.tick()
            except Exception:  # keep ticking: one bad transition must not stop the region
                log.exception("tick failed")

    def start(self) -> CloudSim:
        self.engine.rebuild_network()
        self.eips.rebuild_network()
        for name, target in (("http", lambda: self.httpd.serve_forever(poll_interval=0.05)),
                             ("ticker", self._ticker)):
            t = threading.Thread(target=target, daemon=True, name=f"cloudsim-{name}")
            t.start()
            self._threads.append(t)
        return self

    def serve_forever(self) -> None:
        self.engine.rebuild_network()
        self.eips.rebuild_network()
        t = threading.Thread(target=self._ticker, daemon=True, name="cloudsim-ticker")
        t.start()
        self._threads.append(t)
        try:
            self.httpd.serve_forever()
        finally:
            self._stop.set()

    def stop(self, teardown_network: bool = False) -> None:
        """Stop serving. ``teardown_network`` also removes the namespaces network mode
        built (keep them to restart on the same state file)."""
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        for t in self._threads:
            t.join(timeout=5)
        if teardown_network:
            self.teardown_network()
        self.store.close()

    def teardown_network(self) -> None:
        net = self.engine.net
        if hasattr(net, "teardown"):
            with self.engine.lock:
                net.teardown(list(self.engine.vpcs.values()),
                             list(self.engine.instances.values()))

    # --- ECS ---------------------------------------------------------------------------

    def call(self, action: str, params: Mapping[str, str], caller: str = "",
             version: str = API_VERSION) -> dict[str, Any]:
        """One ECS (or, by ``version``, VPC) action; ``caller`` (the signing AccessKey id)
        is counted apart."""
        handler: Any
        if version == vpc_api.API_VERSION:
            vpc_handler = vpc_api.ACTIONS.get(action)
            handler = None if vpc_handler is None else (
                lambda _e, p: vpc_handler(self.eips, p))
        else:
            handler = ACTIONS.get(action)
        if handler is None:
            raise EcsError(400, "InvalidAction.NotFound",
                           f"Specified api {action} is not found.")
        def run() -> dict[str, Any]:
            self.engine.check_region(params.get("RegionId"))
            with self.engine.lock:  # one consistent view per call, as one region would give
                return handler(self.engine, params)

        return self._gated(action, self.gate.decide(action, caller), run)

    def _gated(self, action: str, decision: Decision,
               run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The gate's decision around one call: its delay, its error before or after the
        call (a lost response), and the call's own errors counted."""
        if decision.delay > 0:
            time.sleep(decision.delay)
        if decision.error is not None and decision.phase == "before":
            raise decision.error
        try:
            body = run()
        except EcsError as e:
            self.gate.record_error(action, e.code)
            raise
        if decision.error is not None:
            raise decision.error
        return body

    def call_ec2(self, action: str, params: Mapping[str, str], caller: str = ""
                 ) -> dict[str, Any]:
        """One EC2 Query action: faults and counters by its action name, throttling
        from its bucket (see ec2_api.bucket_of), answering RequestLimitExceeded."""
        if action not in ec2_api.ACTIONS:
            raise EcsError(400, "InvalidAction",
                           f"The action {action} is not valid for this web service.")
        decision = self.gate.decide(
            action, caller, bucket=ec2_api.bucket_of(action, params),
            throttled=EcsError(503, "RequestLimitExceeded", "Request limit exceeded."))
        return self._gated(action, decision, lambda: ec2_api.run(self.engine, action, params))

    # --- admin ---------------------------------------------------------------------------

    def admin(self, method: str, path: str, body: dict[str, Any]) -> Any:
        e = self.engine
        parts = [p for p in path.split("/") if p][1:]  # drop "admin"
        route = (method, *parts[:1])
        if route == ("GET", "healthz"):
            return {"ok": True}
        if route == ("GET", "state"):
            return dict(e.snapshot(), eips=self.eips.snapshot())
        if route == ("POST", "vpcs"):
            return asdict(e.create_vpc(body.get("cidr", "172.16.0.0/12"), body.get("vpc_id", ""),
                                       body.get("cloud", "aliyun")))
        if route == ("POST", "vswitches"):
            vsw = e.create_vswitch(body["vpc_id"], body["zone_id"], body["cidr"],
                                   body.get("name", ""), body.get("vswitch_id", ""))
            return dict(asdict(vsw), gateway=vsw.gateway, available_ips=e.available_ips(vsw))
        if route == ("POST", "security-groups"):
            return asdict(e.create_security_group(body["vpc_id"]))
        if route == ("POST", "instances") and len(parts) == 1:
            inst = e.create_instance(
                body["instance_type"], body["vswitch_id"], body.get("security_group_ids", []),
                name=body.get("name", ""), netns=body.get("netns", ""),
                status=body.get("status", "Running"),
                ram_role=body.get("ram_role", "") or body.get("iam_role", ""),
                primary_ip=body.get("primary_ip", ""), instance_id=body.get("instance_id", ""))
            return self._instance_view(inst.instance_id)
        if route == ("GET", "instances") and len(parts) == 2:
            return self._instance_view(parts[1])
        if route == ("POST", "instances") and len(parts) == 3:
            if parts[2] == "release":
                return e.release_instance(parts[1])
            e.set_instance_status(parts[1], parts[2])
            return self._instance_view(parts[1])
        if route == ("PUT", "settings"):
            with e.lock:
                for k in ("eni_quota", "attach_delay", "detach_delay", "delay_spread"):
                    if k in body:
                        setattr(e.settings, k, type(getattr(e.settings, k))(body[k]))
                for k, v in body.get("eip", {}).items():
                    if k in ("quota", "associate_delay", "unassociate_delay"):
                        setattr(self.eips.settings, k,
                                type(getattr(self.eips.settings, k))(v))
                e.save_settings()
                return dict(asdict(e.settings), eip=asdict(self.eips.settings))
        if route == ("GET", "faults"):
            return self.gate.describe()
        if route in (("PUT", "faults"), ("POST", "faults")):
            faults = body.get("faults", {})
            self.gate.set_faults(faults, body.get("seed"), replace=method == "PUT")
            return self.gate.describe()
        if route == ("DELETE", "faults"):
            self.gate.set_faults({}, None)
            return self.gate.describe()
        if route == ("PUT", "throttle"):
            rates: dict[str, Rate | None] = {}
            if body.get("preset") == "ec2":
                rates.update(ec2_api.throttle_preset())
            elif body.get("preset"):
                raise EcsError(400, "InvalidParameter.Preset",
                               f"unknown throttle preset {body['preset']!r} (ec2)")
            for api, spec in body.get("throttle", {}).items():
                rates[api] = None if not spec else Rate(float(spec["per_second"]),
                                                        int(spec.get("burst", 1)))
            self.gate.set_throttle(rates)
            return self.gate.describe()
        if route == ("GET", "calls"):
            return self.gate.counts()
        if route == ("DELETE", "calls"):
            self.gate.reset_counts()
            return self.gate.counts()
        if route == ("POST", "credentials"):
            self.verifier.keys[body["access_key_id"]] = body["access_key_secret"]
            return {"ok": True}
        raise EcsError(404, "NotFound", f"no admin route {method} {path}")

    def _instance_view(self, instance_id: str) -> dict[str, Any]:
        e = self.engine
        with e.lock:
            inst = e._instance(instance_id, None)
            out = asdict(inst)
            out["enis"] = [asdict(n) for n in e.enis_of(instance_id)]
            out["primary_ip"] = e.enis[inst.primary_eni_id].primary_ip
            out["metadata_url"] = f"{self.url}/instances/{instance_id}/{inst.metadata_token}"
            out["cloud"] = e.cloud_of(inst.vpc_id)
            if out["cloud"] == AWS:  # Kubernetes' AWS providerID: aws:///<zone>/<id>
                out["provider_id"] = f"aws:///{inst.zone_id}/{instance_id}"
            else:
                out["provider_id"] = f"{e.settings.region_id}.{instance_id}"
            return out


def _handler(sim: CloudSim) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes
        server_version = "eniway-cloudsim"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def _send(self, status: int, body: bytes, ctype: str,
                  headers: Mapping[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                log.debug("client went away before the response")

        def _json(self, status: int, obj: Any, request_id: str = "",
                  headers: Mapping[str, str] | None = None) -> None:
            extra = dict(headers or {})
            if request_id:
                extra["x-acs-request-id"] = request_id
            self._send(status, json.dumps(obj).encode(), "application/json;charset=utf-8",
                       extra)

        def _body(self) -> bytes | None:
            """The request body, or None once an error has been answered (the connection
            is then closed: an unread body cannot be skipped)."""
            text = self.headers.get("Content-Length") or "0"
            if not text.strip().isdigit():
                self.close_connection = True
                self._json(400, {"Code": "InvalidParameter.ContentLength",
                                 "Message": f"Content-Length {text!r} is not a byte count."})
                return None
            n = int(text)
            if n > MAX_BODY:
                self.close_connection = True
                self._json(413, {"Code": "RequestEntityTooLarge",
                                 "Message": f"The request body is {n} bytes; at most "
                                            f"{MAX_BODY} are accepted."})
                return None
            return self.rfile.read(n) if n else b""

        def _admin_allowed(self, path: str) -> bool:
            if self.command == "GET" and path.rstrip("/") == "/admin/healthz":
                return True
            scheme, _, given = self.headers.get("Authorization", "").partition(" ")
            return scheme.lower() == "bearer" and hmac.compare_digest(
                given.strip().encode(), sim.admin_token.encode())

        def _handle(self) -> None:
            raw = self._body()
            if raw is None:
                return
            split = urlsplit(self.path)
            path = split.path
            try:
                if path.startswith("/admin/"):
                    if not self._admin_allowed(path):
                        self._json(401, {"Code": "Unauthorized", "Message": "the admin API "
                                         "needs 'Authorization: Bearer <admin token>'"},
                                   headers={"WWW-Authenticate": "Bearer"})
                        return
                    body = json.loads(raw) if raw else {}
                    self._json(200, sim.admin(self.command, path, body))
                elif path.startswith(("/instances/", "/latest")):
                    self._metadata(path)
                elif self.headers.get("Authorization", "").startswith(sigv4.ALGORITHM) or \
                        ("Version", ec2_api.API_VERSION) in parse_qsl(
                            raw.decode(errors="replace")):
                    self._ec2(split.query, raw)
                else:
                    self._ecs(split.query, raw)
            except EcsError as e:
                self._json(e.status, {"Code": e.code, "Message": e.message})
            except (KeyError, ValueError, TypeError) as e:
                self._json(400, {"Code": "InvalidParameter", "Message": repr(e)})

        def _metadata(self, path: str) -> None:
            token: str | None
            if path.startswith("/instances/"):
                _, _, rest = path.partition("/instances/")
                instance_id, _, rest = rest.partition("/")
                token = None
                if not rest.startswith("latest"):  # /instances/<id>/<token>/latest/...
                    token, _, rest = rest.partition("/")
            else:
                instance_id, rest = self.headers.get("X-Eniway-Instance-Id", ""), path[1:]
                token = self.headers.get("X-Eniway-Metadata-Token")
            if not rest.startswith("latest"):
                raise EcsError(404, "NotFound", path)
            sub = rest[len("latest"):].lstrip("/")
            with sim.engine.lock:
                inst = sim.engine.instances.get(instance_id)
                aws = inst is not None and sim.engine.cloud_of(inst.vpc_id) == AWS
            if aws:
                status, text = serve_imds(sim.imds, self.command, instance_id, sub, token,
                                          self.headers)
                self._send(status, text.encode(), "text/plain")
                return
            if self.command == "PUT" and sub == "api/token":
                self._send(200, uuid.uuid4().hex.encode(), "text/plain")
                return
            try:
                text = metadata.lookup(sim.engine, sim.verifier, instance_id, sub, token)
            except EcsError as e:
                if e.status == 403:
                    self._send(403, b"Forbidden", "text/plain")
                else:
                    self._send(404, b"Not Found", "text/plain")
                return
            self._send(200, text.encode(), "text/plain")

        def _ecs(self, query: str, raw: bytes) -> None:
            request_id = str(uuid.uuid4()).upper()
            params = dict(parse_qsl(query, keep_blank_values=True))
            headers = {k.lower(): v for k, v in self.headers.items()}
            action = headers.get("x-acs-action") or params.get("Action", "")
            host_id = "ecs.aliyuncs.com"
            try:
                caller = sim.verifier.verify(self.command, urlsplit(self.path).path, params,
                                             headers, raw)
                if raw and "form" in headers.get("content-type", ""):
                    params.update(parse_qsl(raw.decode(), keep_blank_values=True))
                version = headers.get("x-acs-version") or params.get("Version", API_VERSION)
                if version not in (API_VERSION, vpc_api.API_VERSION):
                    raise EcsError(400, "InvalidVersion", f"Specified version {version} "
                                   "is not valid.")
                if version == vpc_api.API_VERSION:
                    host_id = "vpc.aliyuncs.com"
                result = sim.call(action, params, caller, version)
            except EcsError as e:
                self._json(e.status, {"RequestId": request_id, "HostId": host_id,
                                      "Code": e.code, "Message": e.message,
                                      "Recommend": "https://api.aliyun.com/troubleshoot?q="
                                      + e.code}, request_id)
                return
            self._json(200, dict(result, RequestId=request_id), request_id)

        def _ec2(self, query: str, raw: bytes) -> None:
            request_id = str(uuid.uuid4())
            pairs = parse_qsl(query, keep_blank_values=True)
            headers = {k.lower(): v for k, v in self.headers.items()}
            params = dict(pairs)
            try:
                caller = sigv4.verify(sim.verifier, sim.engine.settings.aws_region,
                                      self.command, urlsplit(self.path).path, pairs,
                                      headers, raw)
                params.update(parse_qsl(raw.decode(), keep_blank_values=True))
                if params.get("Version") != ec2_api.API_VERSION:
                    raise EcsError(400, "InvalidParameterValue",
                                   f"Version {params.get('Version')!r}: this endpoint "
                                   f"speaks EC2 {ec2_api.API_VERSION}.")
                action = params.get("Action", "")
                body = sim.call_ec2(action, params, caller)
            except EcsError as e:
                self._send(e.status, ec2_api.error_response(e.code, e.message, request_id),
                           "text/xml;charset=UTF-8", {"x-amzn-RequestId": request_id})
                return
            self._send(200, ec2_api.response(action, request_id, body),
                       "text/xml;charset=UTF-8", {"x-amzn-RequestId": request_id})

        def do_GET(self) -> None:
            self._handle()

        do_POST = do_GET
        do_PUT = do_GET
        do_DELETE = do_GET

    return Handler
