"""IMDSv2 for instances in aws-flavoured VPCs, under the instance's own metadata URL
(``/instances/<id>/<secret>/latest/...``, see metadata.py for why a secret):

- ``PUT latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds`` (1 to 21600)
  answers a session token for that instance;
- every GET needs ``X-aws-ec2-metadata-token`` with a live token of that instance: 401
  without one, with an expired one or with another instance's;
- ``meta-data/iam/security-credentials/<role>`` hands out temporary keys (ASIA...) that
  the EC2 dialect accepts with their session token, only under the secret URL (403
  elsewhere), as the Alibaba layout does for RAM roles."""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from .engine import ENI_INUSE, EcsError, Engine, Instance
from .signing import Verifier

MAX_TTL = 21600


class Imds:
    def __init__(self, engine: Engine, verifier: Verifier,
                 clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.verifier = verifier
        self.clock = clock
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (instance, expiry)
        self._lock = threading.Lock()

    def issue(self, instance_id: str, ttl_header: str | None) -> str:
        """A session token, or EcsError(400) for a missing or out-of-range TTL."""
        if ttl_header is None or not ttl_header.strip().isdigit() or \
                not 1 <= int(ttl_header) <= MAX_TTL:
            raise EcsError(400, "BadRequest", "X-aws-ec2-metadata-token-ttl-seconds must "
                           f"be 1 to {MAX_TTL}")
        token = secrets.token_urlsafe(42)
        now = self.clock()
        with self._lock:
            self._tokens = {k: v for k, v in self._tokens.items() if v[1] > now}
            self._tokens[token] = (instance_id, now + int(ttl_header))
        return token

    def check(self, instance_id: str, token: str | None) -> None:
        with self._lock:
            held = self._tokens.get(token or "")
        if held is None or held[0] != instance_id or held[1] <= self.clock():
            raise EcsError(401, "Unauthorized", "a live X-aws-ec2-metadata-token of this "
                           "instance is required")

    def lookup(self, inst: Instance, path: str, proven: bool) -> str:
        """The body for GET latest/``path``; EcsError 404 for what does not exist, 403
        for role credentials outside the instance's secret URL."""
        e = self.engine
        parts = [p for p in path.split("/") if p]
        if not parts:
            return "dynamic\nmeta-data\n"
        if parts == ["dynamic", "instance-identity", "document"]:
            return self._identity(inst)
        if parts[0] != "meta-data":
            raise EcsError(404, "NotFound", path)
        with e.lock:
            node: Any = self._tree(inst)
        for i, part in enumerate(parts[1:], start=1):
            if not isinstance(node, dict) or part not in node:
                raise EcsError(404, "NotFound", path)
            if node[part] is None and parts[1:i] == ["iam", "security-credentials"]:
                if not proven:
                    raise EcsError(403, "Forbidden", "role credentials are served only "
                                   "under the instance's metadata URL")
                return self._credentials(inst)
            node = node[part]
        if isinstance(node, dict):
            return "\n".join(k + "/" if isinstance(v, dict) else k for k, v in node.items())
        return str(node)

    def _tree(self, inst: Instance) -> dict[str, Any]:
        e = self.engine
        vpc = e.vpcs[inst.vpc_id]
        primary = e.enis[inst.primary_eni_id]
        region = e.settings.aws_region
        macs: dict[str, Any] = {}
        for eni in e.enis_of(inst.instance_id):
            if eni.status != ENI_INUSE:
                continue
            vsw = e.vswitches[eni.vswitch_id]
            macs[eni.mac] = {
                "device-number": str(eni.device_index),
                "network-card": str(eni.network_card_index),
                "interface-id": eni.eni_id,
                "local-ipv4s": "\n".join(eni.all_ips),
                "mac": eni.mac,
                "owner-id": e.settings.aws_account_id,
                "security-group-ids": "\n".join(eni.security_group_ids),
                "subnet-id": vsw.vswitch_id,
                "subnet-ipv4-cidr-block": vsw.cidr,
                "vpc-id": eni.vpc_id,
                "vpc-ipv4-cidr-block": vpc.cidr,
                "vpc-ipv4-cidr-blocks": vpc.cidr,
            }
        host = f"ip-{primary.primary_ip.replace('.', '-')}"
        tree: dict[str, Any] = {
            "ami-id": "ami-0eniwaycloudsim0",
            "hostname": host,
            "instance-id": inst.instance_id,
            "instance-type": inst.instance_type,
            "local-hostname": host,
            "local-ipv4": primary.primary_ip,
            "mac": primary.mac,
            "network": {"interfaces": {"macs": macs}},
            "placement": {"availability-zone": inst.zone_id, "region": region},
            "security-groups": "\n".join(inst.security_group_ids),
            "services": {"domain": "amazonaws.com", "partition": "aws"},
        }
        if inst.ram_role:
            tree["iam"] = {
                "info": json.dumps({
                    "Code": "Success", "InstanceProfileArn":
                        f"arn:aws:iam::{e.settings.aws_account_id}:instance-profile/"
                        f"{inst.ram_role}", "InstanceProfileId": "AIPA" + inst.instance_id[2:]}),
                "security-credentials": {inst.ram_role: None}}
        return tree

    def _identity(self, inst: Instance) -> str:
        e = self.engine
        with e.lock:
            primary = e.enis[inst.primary_eni_id]
            return json.dumps({
                "accountId": e.settings.aws_account_id, "architecture": "x86_64",
                "availabilityZone": inst.zone_id, "imageId": "ami-0eniwaycloudsim0",
                "instanceId": inst.instance_id, "instanceType": inst.instance_type,
                "privateIp": str(ipaddress.IPv4Address(primary.primary_ip)),
                "region": e.settings.aws_region, "version": "2017-09-30"})

    def _credentials(self, inst: Instance) -> str:
        ak, key = self.verifier.issue_sts(inst.instance_id, aws=True)
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        return json.dumps({"Code": "Success", "LastUpdated": time.strftime(fmt, time.gmtime()),
                           "Type": "AWS-HMAC", "AccessKeyId": ak,
                           "SecretAccessKey": key.secret, "Token": key.token,
                           "Expiration": time.strftime(fmt, time.gmtime(key.expires))})


def serve(imds: Imds, method: str, instance_id: str, sub: str, secret: str | None,
          headers: Any) -> tuple[int, str]:
    """(status, body) for one IMDS request under latest/ (``sub`` after it)."""
    e = imds.engine
    with e.lock:
        inst = e.instances.get(instance_id)
    if inst is None:
        return 404, "Not Found"
    try:
        if method == "PUT":
            if sub != "api/token":
                return 405, "Method Not Allowed"
            return 200, imds.issue(instance_id, headers.get("X-aws-ec2-metadata-token-ttl-seconds"))
        if method != "GET":
            return 405, "Method Not Allowed"
        imds.check(instance_id, headers.get("X-aws-ec2-metadata-token"))
        proven = secret is not None and hmac.compare_digest(secret, inst.metadata_token)
        return 200, imds.lookup(inst, sub, proven)
    except EcsError as err:
        return err.status, {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden"}.get(
            err.status, "Not Found")
