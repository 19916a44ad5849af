"""A small Kubernetes REST client: just what the agent needs (get, list, watch, create,
update, merge-patch, delete), over ``http.client``.

Why not the official client: importing ``kubernetes.client`` alone costs ~45 MB of
RSS and half a second, and the agent's budget is 60 MB in total. Authentication:
a kubeconfig (token, token file, client certificate, CA; inline ``-data`` too) or
the in-cluster service account.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ApiError(Exception):
    def __init__(self, status: int, body: Any, what: str) -> None:
        msg = body.get("message") if isinstance(body, dict) else str(body)[:200]
        super().__init__(f"{what}: HTTP {status}: {msg}")
        self.status = status
        self.body = body


@dataclass
class KubeConfig:
    server: str
    ssl_context: ssl.SSLContext | None
    token: str | None = None
    token_file: str | None = None

    def bearer(self) -> str | None:
        if self.token_file:
            return Path(self.token_file).read_text().strip()
        return self.token


def _materialise(entry: dict[str, Any], key: str, base: Path) -> str | None:
    """A kubeconfig file reference, or its inline ``-data`` twin written to a temp file."""
    if entry.get(key):
        p = Path(entry[key])
        return str(p if p.is_absolute() else base / p)
    data = entry.get(f"{key}-data")
    if not data:
        return None
    fd, path = tempfile.mkstemp(prefix="eniway-kube-")
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64decode(data))
    return path


def load_kubeconfig(path: str | None) -> KubeConfig:
    """From ``path`` (or $KUBECONFIG), else the in-cluster service account."""
    path = path or os.environ.get("KUBECONFIG")
    if not path:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get(
            "KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise RuntimeError("no --kubeconfig, no $KUBECONFIG and not running in a cluster")
        ctx = ssl.create_default_context(cafile=str(SA_DIR / "ca.crt"))
        return KubeConfig(f"https://{host}:{port}", ctx, token_file=str(SA_DIR / "token"))
    base = Path(path).resolve().parent
    cfg = yaml.safe_load(Path(path).read_text())
    ctx_name = cfg.get("current-context")
    context = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
    cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == context["cluster"])
    users = [u["user"] for u in cfg.get("users", []) if u["name"] == context.get("user")]
    user: dict[str, Any] = users[0] if users else {}
    server = cluster["server"].rstrip("/")
    sslctx = None
    if server.startswith("https://"):
        if cluster.get("insecure-skip-tls-verify"):
            sslctx = ssl._create_unverified_context()
        else:
            sslctx = ssl.create_default_context(
                cafile=_materialise(cluster, "certificate-authority", base))
        cert = _materialise(user, "client-certificate", base)
        if cert:
            sslctx.load_cert_chain(cert, _materialise(user, "client-key", base))
    return KubeConfig(server, sslctx, token=user.get("token"), token_file=user.get("tokenFile"))


class Kube:
    """Thread-safe: one keep-alive connection per thread."""

    def __init__(self, config: KubeConfig, timeout: float = 15.0) -> None:
        self.config = config
        self.timeout = timeout
        url = urllib.parse.urlsplit(config.server)
        self._https = url.scheme == "https"
        self._host = url.hostname or "localhost"
        self._port = url.port or (443 if self._https else 80)
        self._local = threading.local()

    def _connect(self, timeout: float | None) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout,
                                               context=self.config.ssl_context)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _headers(self, content_type: str | None) -> dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": "eniway-agent"}
        token = self.config.bearer()
        if token:
            h["Authorization"] = f"Bearer {token}"
        if content_type:
            h["Content-Type"] = content_type
        return h

    def request(self, method: str, path: str, body: Any = None,
                params: dict[str, str] | None = None,
                content_type: str = "application/json") -> Any:
        """JSON in, JSON out; raises ApiError on a non-2xx answer."""
        if params:
            path += "?" + urllib.parse.urlencode(params)
        data = None if body is None else json.dumps(body).encode()
        for attempt in (0, 1):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = self._connect(self.timeout)
            try:
                conn.request(method, path, body=data,
                             headers=self._headers(content_type if data is not None else None))
                resp = conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
                continue
            obj = json.loads(raw) if raw[:1] in (b"{", b"[") else raw.decode(errors="replace")
            if resp.status >= 300:
                raise ApiError(resp.status, obj, f"{method} {path}")
            return obj
        raise AssertionError("unreachable")

    def watch(self, path: str, resource_version: str, timeout_seconds: int = 300,
              params: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
        """Watch events (``{"type", "object"}``) from ``resource_version`` until the server
        closes the stream. An ERROR event (e.g. 410 Gone) is yielded for the caller to
        handle (relist)."""
        q = {"watch": "true", "resourceVersion": resource_version,
             "timeoutSeconds": str(timeout_seconds), "allowWatchBookmarks": "true",
             **(params or {})}
        conn = self._connect(timeout_seconds + 30)
        try:
            conn.request("GET", f"{path}?{urllib.parse.urlencode(q)}",
                         headers=self._headers(None))
            resp = conn.getresponse()
            if resp.status != 200:
                raise ApiError(resp.status, resp.read()[:500].decode(errors="replace"),
                               f"WATCH {path}")
            while True:
                line = resp.readline()
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()
