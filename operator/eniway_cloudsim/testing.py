"""Run the emulator for tests: in-process (a thread) or as a subprocess, on a free
loopback port, plus a ready SDK client. Used by the ``cloudsim`` pytest fixture."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .admin import ADMIN_TOKEN_ENV, CloudSimAdmin, Topology
from .eips import EipSettings
from .engine import Settings
from .server import CloudSim

ACCESS_KEY_ID = "eniway"
ACCESS_KEY_SECRET = "eniway-secret"


class SimHandle:
    """What tests get: ``endpoint`` (host:port), ``url``, ``region``, ``admin``
    (CloudSimAdmin, holding ``admin_token``), the credentials, ``sim`` (the in-process
    CloudSim, None for a subprocess) and ``client()`` (the official SDK client).

    ``provider(**kw)`` is wired by the operator's side
    (``eniway_operator.testing.with_provider``): the emulator knows nothing of the
    operator, so that it stays an independent check on it."""

    def __init__(self, endpoint: str, region: str, sim: CloudSim | None = None,
                 proc: subprocess.Popen[str] | None = None, admin_token: str = "",
                 aws_region: str = "us-east-1") -> None:
        self.endpoint = endpoint
        self.url = f"http://{endpoint}"
        self.region = region
        self.aws_region = aws_region
        self.sim = sim
        self.proc = proc
        self.admin_token = admin_token
        self.admin = CloudSimAdmin(endpoint, token=admin_token)
        self.access_key_id = ACCESS_KEY_ID
        self.access_key_secret = ACCESS_KEY_SECRET
        self.provider: Callable[..., Any] = self._no_provider

    def _no_provider(self, **kwargs: Any) -> Any:
        raise RuntimeError("no provider wired: use eniway_operator.testing.with_provider")

    def client(self, access_key_id: str = ACCESS_KEY_ID,
               access_key_secret: str = ACCESS_KEY_SECRET) -> Any:
        from alibabacloud_ecs20140526.client import Client
        from alibabacloud_tea_openapi.utils_models import Config

        return Client(Config(access_key_id=access_key_id, access_key_secret=access_key_secret,
                             endpoint=self.endpoint, protocol="http", region_id=self.region,
                             read_timeout=30000, connect_timeout=5000))

    def vpc_client(self, access_key_id: str = ACCESS_KEY_ID,
                   access_key_secret: str = ACCESS_KEY_SECRET) -> Any:
        """The official VPC SDK client (EIPs), on the same endpoint."""
        from alibabacloud_tea_openapi.utils_models import Config
        from alibabacloud_vpc20160428.client import Client

        return Client(Config(access_key_id=access_key_id, access_key_secret=access_key_secret,
                             endpoint=self.endpoint, protocol="http", region_id=self.region,
                             read_timeout=30000, connect_timeout=5000))

    def ec2_client(self, access_key_id: str = ACCESS_KEY_ID,
                   access_key_secret: str = ACCESS_KEY_SECRET, session_token: str | None = None,
                   max_attempts: int = 1) -> Any:
        """A boto3 EC2 client on the same endpoint, in the emulator's EC2 region.
        ``max_attempts`` 1 (no retries) shows every error as the emulator answered it."""
        import boto3
        from botocore.config import Config as BotoConfig

        return boto3.session.Session().client(
            "ec2", endpoint_url=self.url, region_name=self.aws_region,
            aws_access_key_id=access_key_id, aws_secret_access_key=access_key_secret,
            aws_session_token=session_token,
            config=BotoConfig(retries={"total_max_attempts": max_attempts, "mode": "standard"},
                              connect_timeout=5, read_timeout=30))

    def bootstrap_aws(self, zones: Mapping[str, Sequence[str]] | None = None,
                      vpc_cidr: str = "10.0.0.0/16") -> Topology:
        """An aws VPC, its subnets (zone -> CIDRs; default one /24 in <region>a) and a
        security group; instances go in with admin.create_instance(<EC2 type>, ...)."""
        return self.admin.bootstrap(zones, vpc_cidr=vpc_cidr, cloud="aws")

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
                     port: int = 0, eip_quota: int = 20, eip_delay: float = 0.05,
                     aws_region: str = "us-east-1", throttle: Mapping[str, Any] | None = None
                     ) -> SimHandle:
    """``network=True`` builds the VPC network (root) under a random namespace prefix;
    pass a NetMode to choose it. Close the handle to stop (and remove the namespaces)."""
    if network is True:
        from .netmode import NetMode

        network = NetMode(prefix=f"csim{secrets.token_hex(3)}-")
    sim = CloudSim(port=port, state=state,
                   settings=Settings(region_id=region, eni_quota=eni_quota,
                                     attach_delay=attach_delay, detach_delay=detach_delay,
                                     aws_region=aws_region),
                   network=network, keys={ACCESS_KEY_ID: ACCESS_KEY_SECRET}, seed=seed,
                   throttle=throttle,
                   eip_settings=EipSettings(quota=eip_quota, associate_delay=eip_delay,
                                            unassociate_delay=eip_delay))
    sim.start()
    return SimHandle(sim.endpoint, region, sim=sim, admin_token=sim.admin_token,
                     aws_region=aws_region)


def start_subprocess(args: Sequence[str] = (), region: str = "cn-hangzhou",
                     env: Mapping[str, str] | None = None, timeout: float = 30.0,
                     aws_region: str = "us-east-1") -> SimHandle:
    """``eniway-cloudsim --listen 127.0.0.1:0 --print-endpoint ARGS`` in a child process,
    its admin token given in the environment (``env`` may set another)."""
    cmd = [sys.executable, "-m", "eniway_cloudsim.main", "--listen", "127.0.0.1:0",
           "--print-endpoint", "--region", region, "--aws-region", aws_region,
           "--access-key", f"{ACCESS_KEY_ID}:{ACCESS_KEY_SECRET}", *args]
    env = {ADMIN_TOKEN_ENV: secrets.token_urlsafe(24), **(env or {})}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, **env})
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise RuntimeError(f"eniway-cloudsim exited with {proc.wait(timeout=10)}")
    printed = json.loads(line)
    handle = SimHandle(printed["endpoint"], region, proc=proc,
                       admin_token=printed["admin_token"], aws_region=aws_region)
    while not handle.admin.healthy():
        if time.monotonic() > deadline or proc.poll() is not None:
            handle.close()
            raise RuntimeError("eniway-cloudsim did not become healthy")
        time.sleep(0.05)
    return handle
