#!/usr/bin/env python3
"""A real, local Kubernetes control plane: etcd, kube-apiserver, controller-manager, scheduler.

Used by the test suite (a session fixture) and by the demo. Everything binds to
loopback on free ports under a temporary data dir; every child runs in its own
process group and dies with its parent (PR_SET_PDEATHSIG), so nothing is left
behind even when the caller is killed.

    python3 hack/localcluster.py up       # start, print the kubeconfig path, wait for Ctrl-C

The binaries come from ``hack/build-control-plane.sh`` (``$ENIWAY_CACHE/bin``).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CACHE = Path(os.environ.get("ENIWAY_CACHE", Path.home() / ".cache" / "eniway"))
BIN = CACHE / "bin"
REPO = Path(__file__).resolve().parent.parent
CRD_DIR = REPO / "crds"

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: new process group, SIGKILL when the parent goes away."""
    os.setpgrp()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(*args: str | Path) -> None:
    subprocess.run([str(a) for a in args], check=True, capture_output=True)


@dataclass
class LocalCluster:
    """One control plane. ``start()`` returns once the apiserver is ready and CRDs are in."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="eniway-kube-")))
    install_crds: bool = True
    controllers: bool = True
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    admin_token: str = field(default_factory=lambda: base64.b32encode(os.urandom(20)).decode())
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "pki" / "ca.crt"

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> LocalCluster:
        for b in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"):
            if not (BIN / b).exists():
                raise RuntimeError(f"{BIN / b} missing: run hack/build-control-plane.sh first")
        t0 = time.monotonic()
        try:
            self._pki()
            self._start_etcd()
            self._start_apiserver()
            self.timings["apiserver_ready_s"] = time.monotonic() - t0
            if self.controllers:
                self._start_controllers()
            if self.install_crds:
                self.apply_crds()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every child (TERM, then KILL) and remove the data dir."""
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- pieces --------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child
        self.procs[name] = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _pki(self) -> None:
        pki = self.workdir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        ca_key, ca = pki / "ca.key", pki / "ca.crt"
        _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3",
             "-subj", "/CN=eniway-test-ca", "-keyout", ca_key, "-out", ca)
        ext = pki / "san.cnf"
        ext.write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
            "DNS:kubernetes.default.svc,IP:10.96.0.1\n"
            "extendedKeyUsage=serverAuth\n"
        )
        _run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kube-apiserver",
             "-keyout", pki / "apiserver.key", "-out", pki / "apiserver.csr")
        _run("openssl", "x509", "-req", "-in", pki / "apiserver.csr", "-CA", ca, "-CAkey", ca_key,
             "-CAcreateserial", "-days", "3", "-extfile", ext, "-out", pki / "apiserver.crt")
        self.client_cert("kube-apiserver-kubelet-client", "system:masters", "kubelet-client")
        _run("openssl", "genrsa", "-out", pki / "sa.key", "2048")
        _run("openssl", "rsa", "-in", pki / "sa.key", "-pubout", "-out", pki / "sa.pub")
        self.tokens = {
            "admin": self.admin_token,
            "system:kube-controller-manager": base64.b32encode(os.urandom(20)).decode(),
            "system:kube-scheduler": base64.b32encode(os.urandom(20)).decode(),
        }
        rows = [
            f'{self.tokens["admin"]},admin,admin,"system:masters"',
            f'{self.tokens["system:kube-controller-manager"]},system:kube-controller-manager,kcm',
            f'{self.tokens["system:kube-scheduler"]},system:kube-scheduler,ksched',
        ]
        (pki / "tokens.csv").write_text("\n".join(rows) + "\n")

    def _start_etcd(self) -> None:
        self.ports["etcd"], self.ports["etcd_peer"] = free_port(), free_port()
        client = f"http://127.0.0.1:{self.ports['etcd']}"
        peer = f"http://127.0.0.1:{self.ports['etcd_peer']}"
        self._spawn("etcd", [
            str(BIN / "etcd"), "--name", "default", "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"default={peer}", "--log-level", "warn",
            "--quota-backend-bytes", str(2 * 1024**3), "--unsafe-no-fsync",
        ])
        self._wait(lambda: self._http_ok(f"{client}/health"), "etcd", 30)

    def _start_apiserver(self) -> None:
        self.ports["apiserver"] = free_port()
        pki = self.workdir / "pki"
        self._spawn("apiserver", [
            str(BIN / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.ports['apiserver']}", "--insecure-port=0",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--api-audiences=https://kubernetes.default.svc",
            "--service-cluster-ip-range=10.96.0.0/24",
            "--allow-privileged=true",
            "--enable-priority-and-fairness=false",
            "--cert-dir", str(pki),
            # exec/logs reach a kubelet at its InternalIP (a node's may not resolve by name)
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'kubelet-client.key'}",
            "--v=1",
        ])
        self._write_kubeconfig(self.kubeconfig, self.admin_token, "admin")
        self._wait(self._ready, "apiserver", 90)

    def _start_controllers(self) -> None:
        pki = self.workdir / "pki"
        kcm = self.workdir / "kcm.kubeconfig"
        sched = self.workdir / "scheduler.kubeconfig"
        self._write_kubeconfig(kcm, self.tokens["system:kube-controller-manager"], "kcm")
        self._write_kubeconfig(sched, self.tokens["system:kube-scheduler"], "sched")
        self._spawn("controller-manager", [
            str(BIN / "kube-controller-manager"), f"--kubeconfig={kcm}",
            f"--authentication-kubeconfig={kcm}", f"--authorization-kubeconfig={kcm}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}", "--use-service-account-credentials=true",
            "--bind-address=127.0.0.1", "--port=0", "--secure-port=0", "--leader-elect=false",
            "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service,-route",
            "--node-monitor-grace-period=40s", "--v=1",
        ])
        self._spawn("scheduler", [
            str(BIN / "kube-scheduler"), f"--kubeconfig={sched}",
            f"--authentication-kubeconfig={sched}", f"--authorization-kubeconfig={sched}",
            "--bind-address=127.0.0.1", "--port=0", "--secure-port=0", "--leader-elect=false",
            "--v=1",
        ])
        # The default ServiceAccount appearing proves the controller-manager is working.
        self._wait(lambda: self._get("/api/v1/namespaces/default/serviceaccounts/default")
                   is not None, "controller-manager", 60)

    def client_cert(self, cn: str, org: str, name: str) -> tuple[Path, Path]:
        """A client certificate (CN=user, O=group) signed by the cluster CA."""
        pki = self.workdir / "pki"
        crt, key, csr = pki / f"{name}.crt", pki / f"{name}.key", pki / f"{name}.csr"
        _run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/O={org}/CN={cn}",
             "-keyout", key, "-out", csr)
        ext = pki / f"{name}.cnf"
        ext.write_text("extendedKeyUsage=clientAuth\n")
        _run("openssl", "x509", "-req", "-in", csr, "-CA", pki / "ca.crt", "-CAkey",
             pki / "ca.key", "-CAcreateserial", "-days", "3", "-extfile", ext, "-out", crt)
        return crt, key

    def node_kubeconfig(self, node: str) -> Path:
        """A kubelet's kubeconfig: CN=system:node:NODE, O=system:nodes, as a cluster's
        node bootstrap issues; the group is bound to the ``system:node`` ClusterRole."""
        crt, key = self.client_cert(f"system:node:{node}", "system:nodes", f"node-{node}")
        self.request("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "eniway-local-nodes"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "system:node"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                          "name": "system:nodes"}]})  # 409 once it exists: fine
        path = self.workdir / f"node-{node}.kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "local", "cluster": {
                "server": self.server, "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": node, "user": {"client-certificate": str(crt),
                                              "client-key": str(key)}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": node}}],
            "current-context": "local"}, indent=2))
        path.chmod(0o600)
        return path

    # -- API helpers (stdlib only, so the fixture does not depend on the code under test) --

    def _ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def request(self, method: str, path: str, body: object = None, token: str | None = None,
                content_type: str = "application/json") -> tuple[int, dict[str, object]]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.admin_token}")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self._ssl(), timeout=10) as resp:
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw.startswith(b"{") else {})
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, (json.loads(raw) if raw.startswith(b"{") else {"raw": raw.decode()})

    def _get(self, path: str) -> dict[str, object] | None:
        try:
            code, obj = self.request("GET", path)
        except OSError:
            return None
        return obj if code == 200 else None

    def _ready(self) -> bool:
        try:
            code, _ = self.request("GET", "/readyz")
        except OSError:
            return False
        return code == 200

    @staticmethod
    def _http_ok(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def _wait(self, cond: object, what: str, timeout: float) -> None:
        assert callable(cond)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            proc = self.procs.get(what)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{what} exited {proc.returncode}:\n{self.log_tail(what)}")
            time.sleep(0.1)
        raise TimeoutError(f"{what} not ready after {timeout}s:\n{self.log_tail(what)}")

    def _write_kubeconfig(self, path: Path, token: str, user: str,
                          namespace: str = "default") -> None:
        path.write_text(json.dumps({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {
                "server": self.server, "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "local", "context": {
                "cluster": "local", "user": user, "namespace": namespace}}],
            "current-context": "local",
        }, indent=2))
        path.chmod(0o600)

    def kubectl(self, *args: str, kubeconfig: Path | None = None, check: bool = True,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "kubectl"), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
            capture_output=True, text=True, check=check, input=input,
        )

    def apply_crds(self) -> None:
        self.kubectl("apply", "-f", str(CRD_DIR))
        for crd in sorted(CRD_DIR.glob("*.yaml")):
            name = crd.name.split("_", 1)[1].removesuffix(".yaml") + "." + crd.name.split("_")[0]
            self.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")

    def serviceaccount_kubeconfig(self, namespace: str, name: str) -> Path:
        """A kubeconfig that authenticates as ServiceAccount ``namespace/name`` (created if
        missing), so a component can be run with exactly the RBAC granted to it."""
        self.request("POST", "/api/v1/namespaces", {
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        self.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", {
            "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})
        token = ""
        deadline = time.monotonic() + 30
        while not token and time.monotonic() < deadline:
            sa = self._get(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}") or {}
            for ref in sa.get("secrets", []) or []:  # type: ignore[attr-defined]
                secret = self._get(f"/api/v1/namespaces/{namespace}/secrets/{ref['name']}")
                if secret and secret.get("type") == "kubernetes.io/service-account-token":
                    data = secret.get("data") or {}
                    if isinstance(data, dict) and data.get("token"):
                        token = base64.b64decode(data["token"]).decode()
            if not token:
                time.sleep(0.2)
        if not token:
            raise TimeoutError(f"no token for serviceaccount {namespace}/{name}")
        path = self.workdir / f"sa-{namespace}-{name}.kubeconfig"
        self._write_kubeconfig(path, token, f"system:serviceaccount:{namespace}:{name}",
                               namespace)
        return path


def main(argv: list[str]) -> int:
    if argv[:1] != ["up"]:
        print(__doc__)
        return 2
    cluster = LocalCluster().start()
    print(f"kubeconfig: {cluster.kubeconfig}", flush=True)
    print(f"apiserver ready in {cluster.timings['apiserver_ready_s']:.1f}s", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    sys.exit(main(sys.argv[1:]))
