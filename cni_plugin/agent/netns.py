"""Enter a network namespace from one thread only, to open sockets or sysctls there.

``setns(2)`` on a thread moves only that thread, and a socket keeps the namespace it
was created in. So a netlink socket for a pod (or for the node's "host" namespace
when the agent manages an emulated node) is made by briefly switching the calling
thread and switching it back: no fork, no helper process (pyroute2's own netns
support forks a child per socket, which costs milliseconds per pod).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def netns_path(name_or_path: str) -> str:
    """A named netns (``ip netns add NAME``) or a path (``/proc/PID/ns/net``, ...)."""
    return name_or_path if "/" in name_or_path else f"/run/netns/{name_or_path}"


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(path: str | None) -> Iterator[None]:
    """Run the body with this thread in the netns at ``path`` (None: stay put)."""
    if path is None:
        yield
        return
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def netlink_socket(path: str | None) -> socket.socket:
    """An rtnetlink socket bound to the netns at ``path`` (None: the current one)."""
    with entered(path):
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)


def _sysctl_root() -> str:
    # In a container /proc/sys is read-only; the chart mounts the host's procfs
    # writable and names it here. Net sysctls resolve to the opener's netns either way.
    return os.environ.get("ENIWAY_PROC_SYS", "/proc/sys")


def write_sysctl(path: str | None, key: str, value: str) -> None:
    """Write ``<proc sys>/<key>`` (slash-separated) as seen from the netns at ``path``."""
    with entered(path), open(f"{_sysctl_root()}/{key}", "w") as f:
        f.write(value)


def read_sysctl(path: str | None, key: str) -> str:
    with entered(path), open(f"{_sysctl_root()}/{key}") as f:
        return f.read().strip()
