"""Run the emulator for tests: in-process (a thread) or as a subprocess, on a free
loopback port, plus a ready SDK client. Used by the ``cloudsim`` pytest fixture."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .admin import CloudSimAdmin
from .engine import Settings
from .server import CloudSim

ACCESS_KEY_ID = "eniway"
ACCESS_KEY_SECRET = "eniway-secret"


class SimHandle:
    """What tests get: ``endpoint`` (host:port), ``url``, ``region``, ``admin``
    (CloudSimAdmin), the credentials, ``sim`` (the in-process CloudSim, None for a
    subprocess), ``client()`` (the official SDK client) and ``provider(**kw)`` (an
    AliyunProvider pointed at it)."""

    def __init__(self, endpoint: str, region: str, sim: CloudSim | None = None,
                 proc: subprocess.Popen[str] | None = None) -> None:
        self.endpoint = endpoint
        self.url = f"http://{endpoint}"
        self.region = region
        self.sim = sim
        self.proc = proc
        self.admin = CloudSimAdmin(endpoint)
        self.access_key_id = ACCESS_KEY_ID
        self.access_key_secret = ACCESS_KEY_SECRET

    def client(self, access_key_id: str = ACCESS_KEY_ID,
               access_key_secret: str = ACCESS_KEY_SECRET) -> Any:
        from alibabacloud_ecs20140526.client import Client
        from alibabacloud_tea_openapi.utils_models import Config

        return Client(Config(access_key_id=access_key_id, access_key_secret=access_key_secret,
                             endpoint=self.endpoint, protocol="http", region_id=self.region,
                             read_timeout=30000, connect_timeout=5000))

    def provider(self, **kwargs: Any) -> Any:
        from eniway_operator.cloud.aliyun import AliyunProvider
        from eniway_operator.cloud.credentials import StaticCredentials

        kwargs.setdefault("credentials", StaticCredentials(self.access_key_id,
                                                           self.access_key_secret))
        return AliyunProvider(region_id=self.region, endpoint=self.endpoint, protocol="http",
                              **kwargs)

    def close(self, teardown_network: bool = True) -> None:
        if self.sim is not None:
            self.sim.stop(teardown_network=teardown_network)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_in_process(state: str = ":memory:", region: str = "cn-hangzhou",
                     attach_delay: float = 0.05, detach_delay: float = 0.05,
                     eni_quota: int = 100, network: Any = None, seed: int | None = None,
                     port: int = 0) -> SimHandle:
    """``network=True`` builds the VPC network (root) under a random namespace prefix;
    pass a NetMode to choose it. Close the handle to stop (and remove the namespaces)."""
    if network is True:
        from .netmode import NetMode

        network = NetMode(prefix=f"csim{secrets.token_hex(3)}-")
    sim = CloudSim(port=port, state=state,
                   settings=Settings(region_id=region, eni_quota=eni_quota,
                                     attach_delay=attach_delay, detach_delay=detach_delay),
                   network=network, keys={ACCESS_KEY_ID: ACCESS_KEY_SECRET}, seed=seed)
    sim.start()
    return SimHandle(sim.endpoint, region, sim=sim)


def start_subprocess(args: Sequence[str] = (), region: str = "cn-hangzhou",
                     env: Mapping[str, str] | None = None, timeout: float = 30.0
                     ) -> SimHandle:
    """``eniway-cloudsim --listen 127.0.0.1:0 --print-endpoint ARGS`` in a child process."""
    cmd = [sys.executable, "-m", "eniway_cloudsim.main", "--listen", "127.0.0.1:0",
           "--print-endpoint", "--region", region,
           "--access-key", f"{ACCESS_KEY_ID}:{ACCESS_KEY_SECRET}", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise RuntimeError(f"eniway-cloudsim exited with {proc.wait(timeout=10)}")
    endpoint = json.loads(line)["endpoint"]
    handle = SimHandle(endpoint, region, proc=proc)
    while not handle.admin.healthy():
        if time.monotonic() > deadline or proc.poll() is not None:
            handle.close()
            raise RuntimeError("eniway-cloudsim did not become healthy")
        time.sleep(0.05)
    return handle
