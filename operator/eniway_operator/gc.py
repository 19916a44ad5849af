"""Cluster-wide garbage collection (docs/architecture.md, invariant 3).

- ENIs tagged as this cluster's eniway ENIs, Available, that no ENI resource records: deleted
  once seen so in two passes at least ``grace`` seconds apart (a create whose record has not
  been written yet is never mistaken for a leak).
- ENIPools and ENI resources of Nodes that no longer exist: handed to the node's reconcile,
  which releases the cloud side and forgets the node.
- ENI resources without their node's label (agents watch by it): labelled.
IPs on ENIs that no resource records, and ENI resources whose cloud ENI is gone, are handled
by each node's resync. Nothing without eniway's tags is ever touched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kubernetes.client.rest import ApiException

from cni_plugin import contract
from eniway_operator import metrics
from eniway_operator.cloud.base import CloudError, CloudProvider, NotFound
from eniway_operator.kube import Kube
from eniway_operator.plan import AVAILABLE

log = logging.getLogger(__name__)


class GarbageCollector:
    def __init__(self, kube: Kube, cloud: CloudProvider, cluster_id: str, grace: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.cloud = cloud
        self.cluster_id = cluster_id
        self.grace = grace
        self.clock = clock
        self.suspects: dict[str, float] = {}  # ENI id -> first seen untracked

    def collect(self) -> dict[str, Any]:
        """One pass. Returns what it found and did, and the node names to reconcile."""
        nodes = self.kube.node_names()
        recorded = {r["metadata"]["name"]: r for r in self.kube.list_enis()}
        orphans = set()
        for pool in self.kube.list_pools():
            if pool["metadata"]["name"] not in nodes:
                orphans.add(pool["metadata"]["name"])
        for r in recorded.values():
            node = (r.get("spec") or {}).get("nodeName", "")
            if node and node not in nodes:
                orphans.add(node)
            try:
                self.kube.ensure_node_label(r)  # agents see an ENI only by this label
            except ApiException as e:
                log.warning("gc: labelling ENI %s: %s", r["metadata"]["name"], e.reason)
        deleted: list[str] = []
        try:
            tagged = self.cloud.describe_enis(tags={
                contract.TAG_CREATOR: contract.TAG_CREATOR_VALUE,
                contract.TAG_CLUSTER: self.cluster_id})
        except CloudError as e:
            log.warning("gc: describe failed: %s", e)
            return {"deleted": deleted, "orphans": sorted(orphans), "suspects": len(self.suspects)}
        now = self.clock()
        seen = set()
        for eni in tagged:
            if eni.status != AVAILABLE or eni.eni_id in recorded:
                continue
            if (eni.tags.get(contract.TAG_CREATOR) != contract.TAG_CREATOR_VALUE
                    or eni.tags.get(contract.TAG_CLUSTER) != self.cluster_id):
                continue  # the filter is the provider's: check again, never trust it blindly
            seen.add(eni.eni_id)
            first = self.suspects.setdefault(eni.eni_id, now)
            if now - first < self.grace:
                continue
            try:
                self.cloud.delete_eni(eni.eni_id)
            except NotFound:
                pass
            except CloudError as e:
                log.warning("gc: delete %s failed: %s", eni.eni_id, e)
                continue
            log.info("gc: deleted leaked ENI %s (node %s, untracked since %.0fs)",
                     eni.eni_id, eni.tags.get(contract.TAG_NODE, "?"), now - first)
            metrics.GC_DELETED.labels("eni").inc()
            deleted.append(eni.eni_id)
            seen.discard(eni.eni_id)
        self.suspects = {k: v for k, v in self.suspects.items() if k in seen}
        return {"deleted": deleted, "orphans": sorted(orphans), "suspects": len(self.suspects)}
