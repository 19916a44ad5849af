"""Shared fixtures: the real local control plane (session scope) and helpers."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "hack"))

from localcluster import BIN, LocalCluster  # noqa: E402


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
