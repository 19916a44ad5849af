"""The operator's copy of the Nodes, ENIPools and ENI resources kopf already watches, so a
round reads its node, pool and ENIs from memory instead of three requests.

Fed by kopf's indexing pass (which kopf runs for every object, and finishes for every
object listed at start, before any handler runs: so once a handler has run, the copy is
complete) and by the operator's own writes (the API server's answer), keeping per object
whichever is newer by resourceVersion (etcd's revision: comparable as an integer; a value
that is not makes the newer arrival win). Objects deleted (a DELETED event, or the
operator's own delete) are forgotten by uid, so a late event cannot bring them back.
Until ``ready``, readers fall back to GETs.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

JSON = dict[str, Any]
KINDS = ("nodes", "enipools", "enis")
GONE_FOR = 600.0  # seconds a deleted object's uid is remembered (a late event is older)


def _rv(obj: JSON) -> int | None:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or "")
    except ValueError:
        return None


class ObjectCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objs: dict[str, dict[str, JSON]] = {k: {} for k in KINDS}
        self._gone: dict[str, float] = {}  # uid of a deleted object -> when
        self._eni_nodes: dict[str, set[str]] = {}  # node -> its ENI resources' names
        self.ready = False

    def _put(self, kind: str, name: str, obj: JSON | None) -> None:
        """Store (None: drop) an object, keeping the ENIs-by-node index in step."""
        if kind == "enis":
            old = self._objs[kind].get(name)
            if old is not None:
                self._eni_nodes.get(_node_of(old), set()).discard(name)
            if obj is not None:
                self._eni_nodes.setdefault(_node_of(obj), set()).add(name)
        if obj is None:
            self._objs[kind].pop(name, None)
        else:
            self._objs[kind][name] = obj

    def seen(self, kind: str, obj: JSON) -> None:
        """A version of an object (watch event or write answer): kept if newer."""
        meta = obj.get("metadata") or {}
        name, uid = meta.get("name"), meta.get("uid")
        if not name:
            return
        with self._lock:
            if uid in self._gone:
                return
            old = self._objs[kind].get(name)
            if old is not None and (old.get("metadata") or {}).get("uid") == uid:
                new_rv, old_rv = _rv(obj), _rv(old)
                if new_rv is not None and old_rv is not None and new_rv < old_rv:
                    return
            self._put(kind, name, copy.deepcopy(obj))

    def forget(self, kind: str, obj: JSON) -> None:
        """The object is deleted: drop it, and ignore any later version of it."""
        meta = obj.get("metadata") or {}
        now = time.monotonic()
        with self._lock:
            self._gone = {u: t for u, t in self._gone.items() if now - t < GONE_FOR}
            if meta.get("uid"):
                self._gone[str(meta["uid"])] = now
            cur = self._objs[kind].get(meta.get("name") or "")
            if cur is not None and (not meta.get("uid") or (cur.get("metadata") or {}).get(
                    "uid") == meta.get("uid")):
                self._put(kind, meta["name"], None)

    def get(self, kind: str, name: str) -> JSON | None:
        with self._lock:
            obj = self._objs[kind].get(name)
            return copy.deepcopy(obj) if obj is not None else None

    def enis_of(self, node: str) -> list[JSON]:
        """The node's ENI resources, by ``spec.nodeName`` (labelled or not yet)."""
        with self._lock:
            enis = self._objs["enis"]
            return [copy.deepcopy(enis[n]) for n in sorted(self._eni_nodes.get(node, ()))]


def _node_of(obj: JSON) -> str:
    return str((obj.get("spec") or {}).get("nodeName") or "")
