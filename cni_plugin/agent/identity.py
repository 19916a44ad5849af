"""The node's own view of itself from its cloud's instance metadata service: which
instance it is, in which zone, and which network interfaces (MAC -> ENI id, device
number, IPs) the cloud says are attached to it right now.

The agent serves an ENI resource only if its MAC is one of those interfaces with the same
ENI id: a resource pointing at another instance's ENI (a stale record, a wrong node name)
is refused rather than wired, since its IPs would leave through a link the VPC does not
route for them. Two layouts: Alibaba's (``/latest/meta-data/...``, 100.100.100.200) and
EC2's IMDSv2 (a session token from ``PUT /latest/api/token``, sent with every GET;
169.254.169.254). Stdlib only: the CNI path must not import an SDK.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

ALIYUN, AWS = "aliyun", "aws"
CLOUDS = (ALIYUN, AWS)
DEFAULT_URL = {ALIYUN: "http://100.100.100.200", AWS: "http://169.254.169.254"}
TOKEN_TTL = 21600  # seconds, IMDSv2's maximum
_TOKEN_HEADER = "X-aws-ec2-metadata-token"


class MetadataError(RuntimeError):
    """The metadata service could not be read (unreachable, or an unexpected answer)."""


@dataclass(frozen=True)
class Interface:
    mac: str
    eni_id: str
    device_number: int | None
    ips: tuple[str, ...] = ()


@dataclass(frozen=True)
class Identity:
    instance_id: str
    zone: str
    interfaces: dict[str, Interface] = field(default_factory=dict)  # lower-case MAC -> it

    def status(self) -> dict[str, object]:
        """What the agent publishes (``status.agent.instance``) and ``debug`` shows."""
        return {"instanceId": self.instance_id, "zone": self.zone,
                "interfaces": {i.eni_id: {"mac": i.mac, "deviceNumber": i.device_number}
                               for i in sorted(self.interfaces.values(),
                                               key=lambda i: (i.device_number or 0, i.mac))}}


class MetadataClient:
    """Reads one instance's metadata. ``base_url`` is the service's root (the part before
    ``/latest/``)."""

    def __init__(self, base_url: str, cloud: str = ALIYUN, timeout: float = 2.0) -> None:
        if cloud not in CLOUDS:
            raise ValueError(f"unknown cloud {cloud!r} (one of {', '.join(CLOUDS)})")
        self.base = base_url.rstrip("/")
        self.cloud = cloud
        self.timeout = timeout
        self._token = ""
        self._token_until = 0.0

    def _session_token(self, renew: bool = False) -> str:
        """IMDSv2: a session token, renewed a minute before it expires."""
        if renew or not self._token or time.monotonic() > self._token_until - 60:
            req = urllib.request.Request(
                f"{self.base}/latest/api/token", method="PUT", data=b"",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL)})
            self._token = self._open(req).strip()
            self._token_until = time.monotonic() + TOKEN_TTL
        return self._token

    def _open(self, req: urllib.request.Request) -> str:
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return str(resp.read().decode())
        except urllib.error.HTTPError as e:
            raise MetadataError(f"{req.get_method()} {req.full_url}: HTTP {e.code}") from e
        except (OSError, ValueError) as e:
            raise MetadataError(f"{req.get_method()} {req.full_url}: {e}") from e

    def get(self, path: str) -> str:
        """The text at ``/latest/meta-data/<path>``."""
        url = f"{self.base}/latest/meta-data/{path}"
        if self.cloud != AWS:
            return self._open(urllib.request.Request(url))
        for renew in (False, True):  # a token the service forgot (restart): once more
            req = urllib.request.Request(url, headers={_TOKEN_HEADER: self._session_token(renew)})
            try:
                return self._open(req)
            except MetadataError as e:
                if "HTTP 401" not in str(e) or renew:
                    raise
        raise AssertionError("unreachable")

    def _lines(self, path: str) -> list[str]:
        return [x.strip().rstrip("/") for x in self.get(path).splitlines() if x.strip()]

    def identity(self) -> Identity:
        instance_id = self.get("instance-id").strip()
        zone = self.get("placement/availability-zone" if self.cloud == AWS else "zone-id")
        interfaces: dict[str, Interface] = {}
        for mac in self._lines("network/interfaces/macs/"):
            at = f"network/interfaces/macs/{mac}/"
            if self.cloud == AWS:
                eni_id = self.get(at + "interface-id").strip()
                ips = tuple(self._lines(at + "local-ipv4s"))
            else:
                eni_id = self.get(at + "network-interface-id").strip()
                ips = tuple(json.loads(self.get(at + "private-ipv4s") or "[]"))
            try:
                device: int | None = int(self.get(at + "device-number"))
            except (MetadataError, ValueError):
                device = None
            interfaces[mac.lower()] = Interface(mac.lower(), eni_id, device, ips)
        return Identity(instance_id, zone.strip(), interfaces)


class InstanceView:
    """The agent's cached ``Identity``, refreshed when asked about a MAC it does not know
    yet (an ENI just attached: the service lags the cloud a little), at most once per
    ``min_refresh`` seconds."""

    def __init__(self, client: MetadataClient, min_refresh: float = 1.0) -> None:
        self.client = client
        self.min_refresh = min_refresh
        self.identity: Identity | None = None
        self._read_at = -float("inf")
        self._lock = threading.Lock()

    def refresh(self) -> Identity:
        with self._lock:
            self.identity = self.client.identity()
            self._read_at = time.monotonic()
            return self.identity

    def owns(self, mac: str, eni_id: str) -> tuple[bool, str]:
        """Whether this instance has ``eni_id`` attached with ``mac``, and if not, why."""
        mac = mac.lower()
        ident = self.identity
        if (ident is None or mac not in ident.interfaces) and \
                time.monotonic() - self._read_at >= self.min_refresh:
            ident = self.refresh()
        if ident is None:
            return False, "instance metadata not read yet"
        iface = ident.interfaces.get(mac)
        if iface is None:
            return False, (f"MAC {mac} is not an interface of instance {ident.instance_id} "
                           "(per its metadata service)")
        if iface.eni_id != eni_id:
            return False, (f"MAC {mac} belongs to {iface.eni_id} on instance "
                           f"{ident.instance_id}, not to {eni_id}")
        return True, ""
