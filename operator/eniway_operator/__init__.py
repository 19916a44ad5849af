"""eniway operator: keeps a warm pool of ENI secondary IPs on every node."""
