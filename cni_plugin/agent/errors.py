"""The agent's last errors, kept for ``eniway-agent debug``: what went wrong lately on
this node without reading the log."""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

MAX_ERRORS = 20


class RecentErrors:
    """The last MAX_ERRORS errors (CNI requests, API server calls, ENIs), newest last."""

    def __init__(self) -> None:
        self._items: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_ERRORS)
        self._lock = threading.Lock()

    def add(self, source: str, message: str) -> None:
        with self._lock:
            self._items.append({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                "source": source, "message": message[:500]})

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._items)
