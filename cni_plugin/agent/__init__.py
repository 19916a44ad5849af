"""eniway-agent: the per-node daemon behind the CNI shim."""
