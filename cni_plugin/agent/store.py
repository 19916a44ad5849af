"""Crash-safe allocation store: one file per allocated IP, host-local style.

``<state>/allocations/<ip>`` holds the JSON record of the allocation. A record is
written to a temporary file, then hard-linked to its final name: ``link`` fails when
the name exists, so claiming an IP is atomic and exclusive across threads, processes
and process crashes, and a record is never seen half-written.

No fsync by default (host-local does not either): what the page cache holds survives
any crash of the agent or the shim; only a machine crash can lose or tear a record,
and a machine crash also ends every pod of the node, so nothing live can then hold an
IP the store forgot (a torn record is reclaimed at start). ``fsync=True`` (agent flag
``--store-fsync``) syncs the file and the directory anyway, at about a millisecond
per ADD and DEL on a quiet disk.

The agent holds ``<state>/store.lock`` (flock, exclusive) for its whole life: a
second agent on the same state dir refuses to start, and the CNI shim's slow path
(DEL while the agent is down) takes the same lock before it touches records.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from cni_plugin import contract


@dataclass(frozen=True)
class Allocation:
    """One pod interface's address. Field names are also the on-disk JSON keys,
    which the shim's slow path reads (``ip``, ``containerId``, ``ifname``, ``veth``,
    ``hostNetns``)."""

    ip: str
    eniId: str
    containerId: str
    ifname: str
    netns: str
    podNamespace: str
    podName: str
    podUID: str
    veth: str
    hostNetns: str
    table: int
    mtu: int
    allocatedAt: str
    allocatedAtEpoch: float
    mac: str = ""  # exclusive mode: the MAC of the pod's own ENI (no veth, no table)

    @property
    def exclusive(self) -> bool:
        return bool(self.mac)

    @property
    def pod_key(self) -> str:
        return f"{self.podNamespace}/{self.podName}"

    @property
    def attachment(self) -> tuple[str, str]:
        return (self.containerId, self.ifname)


class StoreLocked(RuntimeError):
    """Another live process holds the store lock."""


class AllocationStore:
    def __init__(self, state_dir: Path, fsync: bool = False) -> None:
        self.state_dir = state_dir
        self.fsync = fsync
        self.dir = state_dir / contract.STORE_ALLOC_DIR
        self._lock_fd: int | None = None

    def open(self) -> None:
        """Create the directories and take the store lock (non-blocking)."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.state_dir / contract.STORE_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLocked(
                f"{self.state_dir / contract.STORE_LOCK_FILE} is locked: another eniway-agent "
                "(or a CNI DEL running without the agent) is using this state dir") from None
        self._lock_fd = fd
        for tmp in self.dir.glob(".*"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def load(self) -> tuple[list[Allocation], list[str]]:
        """All records, and the IPs whose record is unreadable (to be reclaimed)."""
        records, broken = [], []
        for path in sorted(self.dir.iterdir()):
            if path.name.startswith("."):
                continue
            try:
                data = json.loads(path.read_text())
                records.append(Allocation(**data))
            except (ValueError, TypeError, OSError):
                broken.append(path.name)
        return records, broken

    def claim(self, alloc: Allocation) -> bool:
        """Write the record for ``alloc.ip``; False if the IP is already claimed."""
        tmp = self.dir / f".{alloc.ip}.{os.getpid()}.{id(alloc)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, json.dumps(asdict(alloc), separators=(",", ":")).encode())
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, self.dir / alloc.ip)
        except FileExistsError:
            return False
        finally:
            tmp.unlink()
        self._sync_dir()
        return True

    def release(self, ip: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / ip).unlink()
            self._sync_dir()

    def _sync_dir(self) -> None:
        if not self.fsync:
            return
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
