"""The instance metadata service, in Alibaba Cloud's layout, per instance."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

ZONE = "cn-hangzhou-i"


def get(url: str, headers: dict[str, str] | None = None) -> str:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read().decode()


def test_metadata_layout(cloudsim: Any) -> None:
    topo = cloudsim.admin.bootstrap({ZONE: ["10.2.0.0/24", "10.2.1.0/24"]})
    vsw_a, vsw_b = topo.vswitch_ids(ZONE)
    inst = cloudsim.admin.create_instance("ecs.g6.xlarge", vsw_a, [topo.security_group_id],
                                          name="node-1")
    base = inst["metadata_url"] + "/latest/meta-data/"
    iid = inst["instance_id"]
    assert get(base + "instance-id") == iid
    assert get(base + "instance/instance-type") == "ecs.g6.xlarge"
    assert get(base + "region-id") == cloudsim.region
    assert get(base + "zone-id") == ZONE
    assert get(base + "vpc-id") == topo.vpc_id
    assert get(base + "vswitch-id") == vsw_a
    assert get(base + "private-ipv4") == inst["primary_ip"]
    assert get(base + "hostname") == "node-1"
    assert "instance-id" in get(base).splitlines()

    p = cloudsim.provider()
    eni = p.create_eni(vsw_b, [topo.security_group_id], {}, secondary_ip_count=2)
    p.attach_eni(eni.eni_id, iid)
    deadline = time.monotonic() + 10
    while eni.mac + "/" not in get(base + "network/interfaces/macs/").splitlines():
        assert time.monotonic() < deadline, "the attached ENI never showed in the metadata"
        time.sleep(0.02)
    m = base + f"network/interfaces/macs/{eni.mac}/"
    assert get(m + "network-interface-id") == eni.eni_id
    assert get(m + "primary-ip-address") == eni.primary_ip
    assert json.loads(get(m + "private-ipv4s")) == [eni.primary_ip, *eni.private_ips]
    assert get(m + "gateway") == "10.2.1.253"
    assert get(m + "netmask") == "255.255.255.0"
    assert get(m + "vswitch-id") == vsw_b
    assert get(m + "vswitch-cidr-block") == "10.2.1.0/24"
    assert get(m + "vpc-id") == topo.vpc_id
    primary_mac = get(base + "mac")
    assert get(base + f"network/interfaces/macs/{primary_mac}/network-interface-id") == \
        inst["primary_eni_id"]
    # a newly assigned IP shows up; the header form serves the same tree
    new = p.assign_ips(eni.eni_id, 1)
    assert new[0] in json.loads(get(m + "private-ipv4s"))
    assert get(cloudsim.url + "/latest/meta-data/instance-id",
               {"X-Eniway-Instance-Id": iid}) == iid
    assert "instance-id" in json.loads(get(inst["metadata_url"]
                                           + "/latest/dynamic/instance-identity/document"))


def test_metadata_unknown_paths_are_404(cloudsim: Any) -> None:
    topo = cloudsim.admin.bootstrap({ZONE: ["10.3.0.0/24"]})
    inst = cloudsim.admin.create_instance("ecs.g6.large", topo.vswitch_ids(ZONE)[0],
                                          [topo.security_group_id])
    for path in ("/latest/meta-data/nope", "/latest/meta-data/ram/security-credentials/"):
        with pytest.raises(urllib.error.HTTPError) as ei:
            get(inst["metadata_url"] + path)
        assert ei.value.code == 404
    with pytest.raises(urllib.error.HTTPError):
        get(cloudsim.url + "/instances/i-unknown/latest/meta-data/instance-id")
