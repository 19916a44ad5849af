"""Shared fixtures: the real local control plane (session scope) and helpers."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "hack"))
# The console scripts live beside the interpreter in the project's virtual environment.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

from localcluster import BIN, LocalCluster  # noqa: E402

PROVIDER_ZONE = "cn-hangzhou-i"  # the zone of the ``topo`` fixture


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces, netlink)")


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    """etcd + kube-apiserver + controller-manager + scheduler, CRDs installed."""
    if not (BIN / "kube-apiserver").exists():
        pytest.fail(f"{BIN}/kube-apiserver missing: run hack/build-control-plane.sh (make deps)")
    c = LocalCluster()
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def root() -> None:
    _require_root()


@pytest.fixture
def netsim(root: None) -> Iterator[tuple[object, str]]:
    """An in-process eniway-cloudsim in network mode (needs root): (SimHandle, tag). Its
    namespaces, and those a test names with the tag as prefix, are removed afterwards."""
    import secrets
    import subprocess

    from eniway_cloudsim.netmode import NetMode
    from eniway_cloudsim.testing import start_in_process
    from eniway_operator.testing import with_provider

    tag = "cst" + secrets.token_hex(3)
    handle = with_provider(start_in_process(network=NetMode(prefix=tag + "-")))
    try:
        yield handle, tag
    finally:
        handle.close(teardown_network=True)
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                timeout=30).stdout.split()
        for ns in listed:
            if ns.startswith(tag):
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.fixture
def cloudsim() -> Iterator[object]:
    """A fresh eniway-cloudsim in this process on a free loopback port (in-memory state,
    attach/detach delays 0.05 s, no network mode). A SimHandle: .endpoint (host:port),
    .url, .region, .admin (CloudSimAdmin), .sim (the CloudSim), .access_key_id/_secret,
    .client() (official SDK client), .provider(**kw) (AliyunProvider). See docs/cloudsim.md."""
    from eniway_cloudsim.testing import start_in_process
    from eniway_operator.testing import with_provider

    handle = with_provider(start_in_process())
    try:
        yield handle
    finally:
        handle.close()


@pytest.fixture
def topo(cloudsim: Any) -> Any:
    """One VPC with a /24 vSwitch in ``PROVIDER_ZONE`` and one security group."""
    return cloudsim.admin.bootstrap({PROVIDER_ZONE: ["10.0.0.0/24"]})


@pytest.fixture
def provider(cloudsim: Any) -> Any:
    """The Alibaba provider on ``cloudsim``, retrying with short back-offs."""
    from eniway_operator.testing import FAST_RETRY

    return cloudsim.provider(retry=FAST_RETRY)


@pytest.fixture
def cloudsim_factory() -> Iterator[object]:
    """Start emulators with options: factory(state=..., network=True or NetMode(prefix),
    attach_delay=..., eni_quota=..., seed=...) or factory.subprocess([cli args]); all
    stopped (and their namespaces removed) at teardown."""
    from eniway_cloudsim import testing
    from eniway_operator.testing import with_provider

    handles: list[testing.SimHandle] = []

    class Factory:
        def __call__(self, **kwargs: object) -> testing.SimHandle:
            h = with_provider(testing.start_in_process(**kwargs))  # type: ignore[arg-type]
            handles.append(h)
            return h

        def subprocess(self, args: list[str] | tuple[str, ...] = ()) -> testing.SimHandle:
            h = with_provider(testing.start_subprocess(args))
            handles.append(h)
            return h

    try:
        yield Factory()
    finally:
        for h in reversed(handles):
            h.close()
