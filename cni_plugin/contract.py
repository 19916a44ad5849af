"""The contract shared by the operator, the node agent and the CNI shim.

Standard library only: the CNI shim imports this module on every pod start, so
it must stay cheap to import. Every name that crosses a process boundary (CRD
group and kinds, field values, annotation keys, cloud tag keys, socket path,
wire messages) is defined here once.
"""

from __future__ import annotations

from typing import Any

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
KIND_EXCLUSIVE_POLICY = "ExclusiveENIPolicy"  # cluster-scoped: settings of exclusive pods
PLURAL_EXCLUSIVE_POLICY = "exclusiveenipolicies"

# ENI phases (status.phase of an ENI resource)
PHASE_CREATING = "Creating"
PHASE_ATTACHING = "Attaching"
PHASE_INUSE = "InUse"
PHASE_DETACHING = "Detaching"
ENI_PHASES = (PHASE_CREATING, PHASE_ATTACHING, PHASE_INUSE, PHASE_DETACHING)

# Per secondary IP state on an ENI resource
IP_FREE = "free"
IP_ALLOCATED = "allocated"
IP_RELEASING = "releasing"

# Labels and annotations on our resources
LABEL_NODE = f"{GROUP}/node"
LABEL_ENI = f"{GROUP}/eni"
ANNOTATION_POOL_OVERRIDE = f"{GROUP}/pool-config"  # on a Node: JSON per-node override
ANNOTATION_MAX_PODS = f"{GROUP}/max-pods"  # on a Node: the figure eniway computed
ANNOTATION_EXCLUSIVE_ENI = f"{GROUP}/exclusive-eni"  # on a Pod: "true" asks for its own ENI
ANNOTATION_PUBLIC_IP = f"{GROUP}/public-ip"  # on a Pod: "true" or JSON asks for an EIP
RESOURCE_EXCLUSIVE_ENI = f"{GROUP}/eni"  # extended resource: a node's exclusive-ENI slots
FINALIZER = f"{GROUP}/cleanup"

# Tags eniway puts on every cloud object it creates (GC keys on them)
TAG_CREATOR = "eniway.io/creator"
TAG_CREATOR_VALUE = "eniway"
TAG_CLUSTER = "eniway.io/cluster"
TAG_NODE = "eniway.io/node"
TAG_INSTANCE = "eniway.io/instance"
# An ENI a pod owns whole (exclusive mode) carries this tag, and its ENI resource
# spec.mode says so: the shared pool neither uses nor records it, it only leaves its slot.
TAG_MODE = "eniway.io/mode"
TAG_MODE_EXCLUSIVE = "exclusive"
MODE_EXCLUSIVE = "Exclusive"
MODE_SHARED = "Shared"
# A pod condition the operator keeps on exclusive-ENI pods: True once its ENI is attached
# to its node, else False with the reason (ZoneMismatch, NoExclusiveSlot, ...).
CONDITION_EXCLUSIVE_ENI = f"{GROUP}/ExclusiveENIReady"
# An exclusive ENI's link parked on the node between pods: this + the MAC's 12 hex digits.
EXCLUSIVE_PARK_PREFIX = "xe"


def requests_exclusive_slot(pod: dict[str, Any]) -> bool:
    """Whether a container of the pod asks for an exclusive-ENI slot (the resource)."""
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        for part in ("limits", "requests"):
            if str((res.get(part) or {}).get(RESOURCE_EXCLUSIVE_ENI, "0")) not in ("0", ""):
                return True
    return False


def wants_exclusive_eni(pod: dict[str, Any]) -> bool:
    """Whether a pod opted in to its own ENI: the annotation says true, or it requests
    a slot. The operator and the agent decide by this one test."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return (str(annotations.get(ANNOTATION_EXCLUSIVE_ENI, "")).lower() == "true"
            or requests_exclusive_slot(pod))

# Node-local paths
DEFAULT_SOCKET = "/run/eniway/eniway.sock"
DEFAULT_STATE_DIR = "/var/lib/eniway"
DEFAULT_CNI_BIN_DIR = "/opt/cni/bin"
DEFAULT_CNI_CONF_DIR = "/etc/cni/net.d"
DEFAULT_LIB_DIR = "/opt/eniway"
CNI_BINARY_NAME = "eniway"
CNI_CONFLIST_NAME = "10-eniway.conflist"
CNI_NETWORK_NAME = "eniway"

# Datapath constants (docs/node.md)
POD_GATEWAY = "169.254.1.1"
RULE_PRIORITY_TO_POD = 512
RULE_PRIORITY_FROM_POD = 2048
# Connections that reach the node through its primary ENI (a hostPort's DNAT) are marked
# so their replies from pods leave through the primary ENI again (main table), not
# through the pod's ENI, whose source check would drop the un-NATed node address.
RULE_PRIORITY_NODE_REPLY = 1024
CONNMARK_NODE = 0x80
ENI_TABLE_BASE = 1000
VETH_PREFIX = "eni"

# CNI spec
CNI_SPEC_VERSION = "1.1.0"
CNI_SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
# The conflist's version: the newest the usual chained plugins (portmap, bandwidth, tuning
# of containernetworking/plugins 1.1) accept; eniway itself answers in any supported one.
CNI_CONFLIST_VERSION = "1.0.0"

# CNI error codes (the CNI spec's "Error" section), plus our own range (100+)
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN = 11
ERR_PLUGIN_NOT_AVAILABLE = 50
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
WIRE_DEBUG = "DEBUG"  # eniway-agent debug: the node's pool, ENIs, releases, last errors

# Release handshake fields: the operator lists IPs in ENIPool spec.release.ips under a
# token it renews whenever it adds one; the agent's status.agent.acknowledged counts only
# with the token it was computed from echoed beside it.
RELEASE_TOKEN = "token"
AGENT_RELEASE_TOKEN = "releaseToken"

# CNI inputs the spec constrains (1.1.0, "Parameters"), checked by the shim and again by
# the agent (anything on the node that reaches its socket may call it). A violation is
# error code 4; nothing is allocated or written. No ``re``: the shim imports this.
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_CONTAINER_ID_CHARS = _ALNUM | frozenset("_.-")
_DNS_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_ARG_KEY_CHARS = _ALNUM | frozenset("_-")
MAX_IFNAME = 15  # IFNAMSIZ - 1


def _printable(s: str) -> bool:
    return all(" " <= c <= "~" for c in s)


def container_id_error(cid: object) -> str:
    if not isinstance(cid, str) or not cid:
        return "CNI_CONTAINERID is empty"
    if cid[0] not in _ALNUM or not set(cid) <= _CONTAINER_ID_CHARS:
        return (f"CNI_CONTAINERID {cid!r} is not a container ID: it must start with a letter "
                "or digit, followed by letters, digits, '_', '.' or '-'")
    return ""


def ifname_error(ifname: object) -> str:
    """The kernel's (and libcni's) rules for an interface name."""
    if not isinstance(ifname, str) or not ifname:
        return "CNI_IFNAME is empty"
    if len(ifname.encode()) > MAX_IFNAME:
        return f"CNI_IFNAME {ifname!r} is longer than {MAX_IFNAME} bytes"
    if ifname in (".", "..") or not _printable(ifname) or any(c in "/: " for c in ifname):
        return (f"CNI_IFNAME {ifname!r} is not an interface name: no '/', ':', whitespace or "
                "control characters, not '.' or '..'")
    return ""


def netns_error(netns: object, required: bool) -> str:
    if not isinstance(netns, str):
        return "CNI_NETNS must be a string"
    if not netns:
        return "CNI_NETNS is empty" if required else ""
    if not netns.startswith("/") or not _printable(netns) or "/../" in f"{netns}/":
        return f"CNI_NETNS {netns!r} is not an absolute path to a network namespace"
    return ""


def _dns_error(what: str, value: str, max_len: int, dots: bool) -> str:
    chars = _DNS_CHARS | (frozenset(".") if dots else frozenset())
    if (len(value) > max_len or not set(value) <= chars or value[0] not in _ALNUM
            or value[-1] not in _ALNUM):
        return (f"{what} {value!r} is not a Kubernetes name (lower-case letters, digits, '-'"
                f"{', .' if dots else ''}; at most {max_len})")
    return ""


def pod_identity_error(namespace: object, name: object, uid: object) -> str:
    """K8S_POD_* from CNI_ARGS: they name the allocation record and the PodIP."""
    if not (isinstance(namespace, str) and isinstance(name, str) and isinstance(uid, str)):
        return "K8S_POD_NAMESPACE, K8S_POD_NAME and K8S_POD_UID must be strings"
    if namespace:  # a Kubernetes pod: both are Kubernetes names
        err = (_dns_error("K8S_POD_NAMESPACE", namespace, 63, False)
               or _dns_error("K8S_POD_NAME", name or "-", 253, True))
        if err:
            return err
    elif name and (len(name) > 253 or not _printable(name) or "/" in name):
        # Runtimes outside Kubernetes (podman) pass a container name alone.
        return f"K8S_POD_NAME {name!r} is not a name (printable, no '/', at most 253)"
    if uid and (len(uid) > 128 or not set(uid) <= _ALNUM | frozenset("-")):
        return f"K8S_POD_UID {uid!r} is not a pod UID"
    return ""


def cni_args_error(raw: str) -> str:
    """CNI_ARGS: ``KEY=VALUE`` pairs separated by ';'."""
    if not raw:
        return ""
    for part in raw.split(";"):
        key, sep, value = part.partition("=")
        if (not sep or not key or not set(key) <= _ARG_KEY_CHARS or not _printable(value)
                or "=" in value):
            return (f"CNI_ARGS has a malformed pair {part!r}: expected KEY=VALUE pairs "
                    "separated by ';'")
    return ""


def request_error(command: str, req: dict[str, object]) -> str:
    """What is wrong with the inputs of an ADD, DEL or CHECK (wire field names), or ''."""
    return (container_id_error(req.get("containerId"))
            or ifname_error(req.get("ifname"))
            or netns_error(req.get("netns", ""), required=command != WIRE_DEL)
            or pod_identity_error(req.get("podNamespace", ""), req.get("podName", ""),
                                  req.get("podUID", "")))
