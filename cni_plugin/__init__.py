"""Node side of eniway: the CNI shim, the node agent, the pool store and the datapath.

This package's ``__init__`` must stay empty of imports: the CNI shim imports
``cni_plugin.contract`` on every pod start and must not pay for anything else.
"""
