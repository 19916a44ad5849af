"""The unix socket the CNI shim talks to: one JSON request per connection.

The socket file is created with mode 0600 (root only: whoever can talk to it can
wire network namespaces). Connections are served by a fixed pool of worker threads,
so the per-thread netlink sockets of the datapath are reused across requests.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("eniway.server")

MAX_REQUEST = 1 << 20


class ShimServer:
    def __init__(self, path: str, handle: Callable[[dict[str, Any]], dict[str, Any]],
                 workers: int = 16) -> None:
        self.path = path
        self.handle = handle
        self.workers = workers
        self.sock: socket.socket | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._active = 0
        self._active_lock = threading.Lock()

    def bind(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(256)
        self.sock = sock

    def _accept_loop(self) -> None:
        # Every worker blocks in accept() on the shared socket: the kernel hands a new
        # connection straight to an idle worker, with no thread hand-off in between.
        assert self.sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                if self._stop.is_set():
                    return
                continue
            with self._active_lock:
                self._active += 1
            try:
                self._serve(conn)
            except Exception:
                log.exception("serving a CNI request")
            finally:
                with self._active_lock:
                    self._active -= 1

    def start(self) -> None:
        for i in range(self.workers):
            t = threading.Thread(target=self._accept_loop, name=f"cni-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def close(self, drain: float = 20.0) -> None:
        self._stop.set()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()
        deadline = time.monotonic() + drain
        while self._active and time.monotonic() < deadline:
            time.sleep(0.01)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(30)
                chunks, size = [], 0
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
                    chunks.append(data)
                    size += len(data)
                    if size > MAX_REQUEST:
                        raise ValueError("request too large")
                req = json.loads(b"".join(chunks))
                resp = self.handle(req if isinstance(req, dict) else {})
            except (ValueError, OSError) as e:
                resp = {"ok": False, "code": 6, "msg": f"bad request to eniway-agent: {e}"}
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(resp, separators=(",", ":")).encode())
