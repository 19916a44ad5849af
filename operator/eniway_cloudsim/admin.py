"""A small client for the emulator's admin API (stdlib only), for tests and demos."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ADMIN_TOKEN_ENV = "ENIWAY_CLOUDSIM_ADMIN_TOKEN"


class AdminError(RuntimeError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass
class Topology:
    """What ``CloudSimAdmin.bootstrap`` made: one VPC, vSwitches per zone, one SG."""

    vpc_id: str
    security_group_id: str
    vswitches: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # zone -> vsws

    def vswitch_ids(self, zone: str) -> list[str]:
        return [v["vswitch_id"] for v in self.vswitches[zone]]


class CloudSimAdmin:
    """``token``: the emulator's admin token (default: $ENIWAY_CLOUDSIM_ADMIN_TOKEN)."""

    def __init__(self, endpoint: str, timeout: float = 30.0, token: str | None = None
                 ) -> None:
        self.url = endpoint if endpoint.startswith("http") else f"http://{endpoint}"
        self.timeout = timeout
        self.token = token if token is not None else os.environ.get(ADMIN_TOKEN_ENV, "")

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        data = json.dumps(body or {}).encode() if method != "GET" else None
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            payload = e.read()
            try:
                err = json.loads(payload)
            except ValueError:
                err = {"Code": "HTTPError", "Message": payload.decode(errors="replace")}
            raise AdminError(e.code, err.get("Code", ""), err.get("Message", "")) from None

    # topology
    def state(self) -> dict[str, Any]:
        return self._call("GET", "/admin/state")

    def healthy(self) -> bool:
        try:
            return bool(self._call("GET", "/admin/healthz").get("ok"))
        except (OSError, AdminError):
            return False

    def create_vpc(self, cidr: str = "172.16.0.0/12", cloud: str = "aliyun") -> dict[str, Any]:
        """``cloud`` "aws" makes an EC2-flavoured VPC: its subnets follow EC2's rules
        and only the EC2 dialect sees it (and only the ECS dialect an "aliyun" one)."""
        return self._call("POST", "/admin/vpcs", {"cidr": cidr, "cloud": cloud})

    def create_vswitch(self, vpc_id: str, zone_id: str, cidr: str, name: str = ""
                       ) -> dict[str, Any]:
        return self._call("POST", "/admin/vswitches",
                          {"vpc_id": vpc_id, "zone_id": zone_id, "cidr": cidr, "name": name})

    def create_security_group(self, vpc_id: str) -> dict[str, Any]:
        return self._call("POST", "/admin/security-groups", {"vpc_id": vpc_id})

    def bootstrap(self, zones: Mapping[str, Sequence[str]] | None = None,
                  vpc_cidr: str = "10.0.0.0/8", cloud: str = "aliyun") -> Topology:
        """A VPC, vSwitches (zone -> CIDRs; subnets for ``cloud="aws"``, default one
        /24 in the EC2 region's zone a) and one security group in one call."""
        if zones is None and cloud == "aws":
            zones = {self.state()["settings"]["aws_region"] + "a": ["10.0.0.0/24"]}
        zones = zones or {"cn-hangzhou-i": ["10.0.0.0/24"]}
        vpc = self.create_vpc(vpc_cidr, cloud)
        sg = self.create_security_group(vpc["vpc_id"])
        topo = Topology(vpc["vpc_id"], sg["security_group_id"])
        for zone, cidrs in zones.items():
            topo.vswitches[zone] = [self.create_vswitch(vpc["vpc_id"], zone, c) for c in cidrs]
        return topo

    # instances
    def create_instance(self, instance_type: str, vswitch_id: str,
                        security_group_ids: Sequence[str], name: str = "", netns: str = "",
                        status: str = "Running", ram_role: str = "", primary_ip: str = "",
                        iam_role: str = ""
                        ) -> dict[str, Any]:
        """Returns the instance with its ENIs, ``provider_id`` (<region>.<id>; for an
        instance in an aws VPC aws:///<zone>/<id>, its type one of EC2's) and
        ``metadata_url`` (the base the agent appends /latest/meta-data/... to)."""
        return self._call("POST", "/admin/instances", {
            "instance_type": instance_type, "vswitch_id": vswitch_id,
            "security_group_ids": list(security_group_ids), "name": name, "netns": netns,
            "status": status, "ram_role": ram_role or iam_role, "primary_ip": primary_ip})

    def instance(self, instance_id: str) -> dict[str, Any]:
        return self._call("GET", f"/admin/instances/{instance_id}")

    def stop(self, instance_id: str) -> dict[str, Any]:
        return self._call("POST", f"/admin/instances/{instance_id}/stop")

    def start(self, instance_id: str) -> dict[str, Any]:
        return self._call("POST", f"/admin/instances/{instance_id}/start")

    def release(self, instance_id: str) -> dict[str, Any]:
        """ECS DeleteInstance: returns {"deleted": [eni ids], "detached": [eni ids]}."""
        return self._call("POST", f"/admin/instances/{instance_id}/release")

    # behaviour
    def set_settings(self, **settings: Any) -> dict[str, Any]:
        """eni_quota, attach_delay, detach_delay, delay_spread (> 1: each attach or detach
        takes a delay drawn uniformly between the delay and delay_spread times it)."""
        return self._call("PUT", "/admin/settings", settings)

    def set_quota(self, eni_quota: int) -> dict[str, Any]:
        return self.set_settings(eni_quota=eni_quota)

    def set_eip_settings(self, **eip: Any) -> dict[str, Any]:
        """quota (EIPs per region), associate_delay, unassociate_delay."""
        return self._call("PUT", "/admin/settings", {"eip": eip})

    def set_faults(self, faults: Mapping[str, Mapping[str, Any]], seed: int | None = None
                   ) -> dict[str, Any]:
        """Replace all faults. Per API (or "*"): error_rate, count, code, status, message,
        phase ("before" | "after"), latency_ms, jitter_ms."""
        return self._call("PUT", "/admin/faults", {"faults": faults, "seed": seed})

    def add_fault(self, api: str, seed: int | None = None, **spec: Any) -> dict[str, Any]:
        return self._call("POST", "/admin/faults", {"faults": {api: spec}, "seed": seed})

    def faults(self) -> dict[str, Any]:
        """{"faults": {API: spec}, "throttle": {API or bucket: {"per_second", "burst"}}}."""
        return self._call("GET", "/admin/faults")

    def clear_faults(self) -> dict[str, Any]:
        return self._call("DELETE", "/admin/faults")

    def set_throttle(self, api: str, per_second: float | None, burst: int = 1
                     ) -> dict[str, Any]:
        """Token bucket for ``api`` ("*": every API without its own); None removes it."""
        spec = None if per_second is None else {"per_second": per_second, "burst": burst}
        return self._call("PUT", "/admin/throttle", {"throttle": {api: spec}})

    def throttle_preset(self, preset: str = "ec2") -> dict[str, Any]:
        """EC2's documented request-rate buckets for every EC2 action (RequestLimitExceeded
        once empty)."""
        return self._call("PUT", "/admin/throttle", {"preset": preset, "throttle": {}})

    def imds(self, instance_id: str, path: str, ttl: int = 21600) -> str:
        """IMDSv2 for an aws instance: a session token, then GET <metadata_url>/latest/
        <path> with it (e.g. path="meta-data/instance-id")."""
        base = self.instance(instance_id)["metadata_url"]
        put = urllib.request.Request(f"{base}/latest/api/token", method="PUT",
                                     headers={"X-aws-ec2-metadata-token-ttl-seconds": str(ttl)})
        with urllib.request.urlopen(put, timeout=self.timeout) as resp:
            token = resp.read().decode()
        get = urllib.request.Request(f"{base}/latest/{path}",
                                     headers={"X-aws-ec2-metadata-token": token})
        with urllib.request.urlopen(get, timeout=self.timeout) as resp:
            return resp.read().decode()

    def call_counts(self) -> dict[str, Any]:
        """{"calls": {api: n}, "total": n, "errors": {api: {code: n}},
        "callers": {access key id: {api: n}}}."""
        return self._call("GET", "/admin/calls")

    def reset_call_counts(self) -> dict[str, Any]:
        return self._call("DELETE", "/admin/calls")

    def add_access_key(self, access_key_id: str, access_key_secret: str) -> None:
        self._call("POST", "/admin/credentials", {"access_key_id": access_key_id,
                                                  "access_key_secret": access_key_secret})

    def metadata(self, instance_id: str, path: str) -> str:
        """GET <metadata_url>/latest/<path>, e.g. path="meta-data/instance-id" (through
        the instance's metadata URL, so the RAM role's credentials are served too)."""
        base = self.instance(instance_id)["metadata_url"]
        req = urllib.request.Request(f"{base}/latest/{path}")
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            return resp.read().decode()
