"""The instance metadata service, in Alibaba Cloud's path layout (100.100.100.200).

On ECS only the instance itself reaches its metadata service, so whoever can read the
RAM role's STS keys is that instance. The emulator serves every instance on one
listener, so it binds the keys to a secret instead: each instance has a metadata token,
made at creation and handed out only through the admin API, and its metadata URL is
``http://<sim>/instances/<instance-id>/<token>`` (the admin view's ``metadata_url``, what
a node is configured with). Under that URL everything is served; without the token
(``/instances/<instance-id>/latest/...``, or ``/latest/...`` with the header
``X-Eniway-Instance-Id``) everything but ``ram/security-credentials/<role>``, which
answers 403 unless the header ``X-Eniway-Metadata-Token`` carries the token. Each STS key
records the instance it was issued to.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import time
from typing import Any

from .engine import ENI_INUSE, EcsError, Engine, Instance
from .signing import Verifier


def _tree(e: Engine, inst: Instance, verifier: Verifier) -> dict[str, Any]:
    vpc = e.vpcs[inst.vpc_id]
    vsw = e.vswitches[inst.vswitch_id]
    primary = e.enis[inst.primary_eni_id]
    macs: dict[str, Any] = {}
    for eni in e.enis_of(inst.instance_id):
        if eni.status != ENI_INUSE:
            continue
        evsw = e.vswitches[eni.vswitch_id]
        net = ipaddress.ip_network(evsw.cidr)
        macs[eni.mac] = {
            "network-interface-id": eni.eni_id,
            "primary-ip-address": eni.primary_ip,
            "private-ipv4s": json.dumps(eni.all_ips),
            "gateway": evsw.gateway,
            "netmask": str(net.netmask),
            "vswitch-id": evsw.vswitch_id,
            "vswitch-cidr-block": evsw.cidr,
            "vpc-id": eni.vpc_id,
            "vpc-cidr-block": vpc.cidr,
            "mac": eni.mac,
            "device-number": str(eni.device_index),
        }
    tree: dict[str, Any] = {
        "instance-id": inst.instance_id,
        "instance": {"instance-type": inst.instance_type, "instance-name": inst.name,
                     "virtualization-solution": "ECS Virt"},
        "region-id": e.settings.region_id,
        "zone-id": inst.zone_id,
        "owner-account-id": str(e.settings.owner_id),
        "hostname": inst.name,
        "vpc-id": inst.vpc_id,
        "vpc-cidr-block": vpc.cidr,
        "vswitch-id": vsw.vswitch_id,
        "vswitch-cidr-block": vsw.cidr,
        "private-ipv4": primary.primary_ip,
        "mac": primary.mac,
        "network-type": "vpc",
        "network": {"interfaces": {"macs": macs}},
    }
    if inst.ram_role:
        tree["ram"] = {"security-credentials": {inst.ram_role: None}}
    return tree


def identity_document(e: Engine, inst: Instance) -> str:
    return json.dumps({"instance-id": inst.instance_id, "region-id": e.settings.region_id,
                       "zone-id": inst.zone_id, "instance-type": inst.instance_type,
                       "owner-account-id": str(e.settings.owner_id),
                       "serial-number": inst.instance_id, "image-id": "eniway-cloudsim"})


def lookup(e: Engine, verifier: Verifier, instance_id: str, path: str,
           token: str | None = None) -> str:
    """The body for GET ``path`` (the part after /latest/), EcsError(404) for what does
    not exist, EcsError(403) for credentials asked without the instance's ``token``."""
    with e.lock:
        inst = e.instances.get(instance_id)
        if inst is None:
            raise EcsError(404, "NotFound", f"no instance {instance_id}")
        if path.rstrip("/") == "dynamic/instance-identity/document":
            return identity_document(e, inst)
        parts = [p for p in path.split("/") if p]
        if not parts or parts[0] != "meta-data":
            if not parts:
                return "meta-data/\ndynamic/\n"
            raise EcsError(404, "NotFound", path)
        node: Any = _tree(e, inst, verifier)
        proven = token is not None and hmac.compare_digest(token, inst.metadata_token)
    for i, part in enumerate(parts[1:], start=1):
        if isinstance(node, dict) and part in node:
            if node[part] is None and parts[1:i] == ["ram", "security-credentials"]:
                if not proven:
                    raise EcsError(403, "Forbidden", "the RAM role's credentials are served "
                                   "only under the instance's metadata URL")
                return _credentials(verifier, instance_id)
            node = node[part]
        else:
            raise EcsError(404, "NotFound", path)
    if isinstance(node, dict):
        return "\n".join(k + "/" if isinstance(v, dict) else k for k, v in node.items())
    return str(node)


def _credentials(verifier: Verifier, instance_id: str) -> str:
    ak, key = verifier.issue_sts(instance_id)
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return json.dumps({"AccessKeyId": ak, "AccessKeySecret": key.secret,
                       "SecurityToken": key.token,
                       "Expiration": time.strftime(fmt, time.gmtime(key.expires)),
                       "LastUpdated": time.strftime(fmt, time.gmtime()), "Code": "Success"})
