"""The contract shared by the operator, the node agent and the CNI shim.

Standard library only: the CNI shim imports this module on every pod start, so
it must stay cheap to import. Every name that crosses a process boundary (CRD
group and kinds, field values, annotation keys, cloud tag keys, socket path,
wire messages) is defined here once.
"""

from __future__ import annotations

GROUP = "network.eniway.io"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"

# Custom resources: (kind, plural, scope)
KIND_ENI = "ENI"
PLURAL_ENI = "enis"
KIND_PODIP = "PodIP"
PLURAL_PODIP = "podips"
KIND_ENIPOOL = "ENIPool"
PLURAL_ENIPOOL = "enipools"

# ENI phases (status.phase of an ENI resource)
PHASE_CREATING = "Creating"
PHASE_ATTACHING = "Attaching"
PHASE_INUSE = "InUse"
PHASE_DETACHING = "Detaching"
PHASE_DELETING = "Deleting"
PHASE_FAILED = "Failed"
ENI_PHASES = (
    PHASE_CREATING,
    PHASE_ATTACHING,
    PHASE_INUSE,
    PHASE_DETACHING,
    PHASE_DELETING,
    PHASE_FAILED,
)

# Per secondary IP state on an ENI resource
IP_FREE = "free"
IP_ALLOCATED = "allocated"
IP_RELEASING = "releasing"
IP_STATES = (IP_FREE, IP_ALLOCATED, IP_RELEASING)

# Labels and annotations on our resources
LABEL_NODE = f"{GROUP}/node"
LABEL_ENI = f"{GROUP}/eni"
ANNOTATION_POOL_OVERRIDE = f"{GROUP}/pool-config"  # on a Node: JSON per-node override
ANNOTATION_MAX_PODS = f"{GROUP}/max-pods"  # on a Node: the figure eniway computed
FINALIZER = f"{GROUP}/cleanup"

# Tags eniway puts on every cloud object it creates (GC keys on them)
TAG_CREATOR = "eniway.io/creator"
TAG_CREATOR_VALUE = "eniway"
TAG_CLUSTER = "eniway.io/cluster"
TAG_NODE = "eniway.io/node"
TAG_INSTANCE = "eniway.io/instance"

# Node-local paths
DEFAULT_RUN_DIR = "/run/eniway"
DEFAULT_SOCKET = "/run/eniway/eniway.sock"
DEFAULT_STATE_DIR = "/var/lib/eniway"
DEFAULT_CNI_BIN_DIR = "/opt/cni/bin"
DEFAULT_CNI_CONF_DIR = "/etc/cni/net.d"
DEFAULT_LIB_DIR = "/opt/eniway"
CNI_BINARY_NAME = "eniway"
CNI_CONFLIST_NAME = "10-eniway.conflist"
CNI_NETWORK_NAME = "eniway"

# Datapath constants (DESIGN.md §6)
POD_GATEWAY = "169.254.1.1"
RULE_PRIORITY_TO_POD = 512
RULE_PRIORITY_FROM_POD = 2048
ENI_TABLE_BASE = 1000
VETH_PREFIX = "eni"

# CNI spec
CNI_SPEC_VERSION = "1.1.0"
CNI_SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
# The conflist's version: the newest the usual chained plugins (portmap, bandwidth, tuning
# of containernetworking/plugins 1.1) accept; eniway itself answers in any supported one.
CNI_CONFLIST_VERSION = "1.0.0"

# CNI error codes (spec §"Error"), plus our own range (100+)
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN = 11
ERR_PLUGIN_NOT_AVAILABLE = 50
ERR_LIMITED_CONNECTIVITY = 51
ERR_NO_FREE_IP = 100
ERR_DATAPATH = 101
ERR_INTERNAL = 999


def veth_name(namespace: str, name: str) -> str:
    """Host-side veth name: stable for a pod across restarts, 15 chars max."""
    import hashlib

    digest = hashlib.sha1(f"{namespace}/{name}".encode()).hexdigest()
    return VETH_PREFIX + digest[:11]


def eni_table(ifindex: int) -> int:
    """Route table of an ENI (Terway's convention)."""
    return ENI_TABLE_BASE + ifindex

# Node-local allocation store (read by the agent, and by the shim when the agent is down):
# one JSON file per allocated IP under <state dir>/<STORE_ALLOC_DIR>/<ip>, and a lock file
# the agent holds (flock, exclusive) for as long as it runs.
STORE_ALLOC_DIR = "allocations"
STORE_LOCK_FILE = "store.lock"

# Shim <-> agent wire protocol: one JSON request per connection on the unix socket,
# answered by one JSON object {"ok": true, "result": {...}} or {"ok": false, "code", "msg"}.
WIRE_ADD = "ADD"
WIRE_DEL = "DEL"
WIRE_CHECK = "CHECK"
WIRE_GC = "GC"
WIRE_STATUS = "STATUS"
