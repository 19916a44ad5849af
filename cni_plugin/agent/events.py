"""Kubernetes Events from the agent: where users look (``kubectl describe pod``), not only
its log. Best effort: an Event that cannot be written is logged, never raised."""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from cni_plugin.agent.kube import Kube

log = logging.getLogger("eniway.events")

COMPONENT = "eniway-agent"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def event_body(involved: dict[str, Any], reason: str, message: str, node: str,
               warning: bool = True) -> dict[str, Any]:
    """A core/v1 Event on ``involved`` (kind, name, namespace, uid), named after what it
    says so the same one is not written twice under two names."""
    key = hashlib.sha1(
        f"{involved.get('kind')}/{involved.get('name')}/{reason}/{message}".encode()
    ).hexdigest()[:12]
    ts = _now()
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{involved.get('name')}.eniway.{key}",
                     "namespace": involved.get("namespace") or "default"},
        "involvedObject": {k: v for k, v in involved.items() if v},
        "reason": reason, "message": message[:1000],
        "type": "Warning" if warning else "Normal",
        "source": {"component": COMPONENT, "host": node},
        "reportingComponent": COMPONENT, "reportingInstance": node,
        "firstTimestamp": ts, "lastTimestamp": ts, "count": 1,
    }


def post_event(kube: Kube, body: dict[str, Any]) -> bool:
    """Create the Event; True when the API server took it (or already had it)."""
    ns = body["metadata"]["namespace"]
    try:
        kube.request("POST", f"/api/v1/namespaces/{ns}/events", body)
        return True
    except Exception as e:
        if getattr(e, "status", 0) == 409:
            return True
        log.warning("event %s on %s %s not recorded: %s", body["reason"],
                    body["involvedObject"].get("kind"), body["involvedObject"].get("name"), e)
        return False
