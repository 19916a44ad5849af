"""The agent's view of its instance from the metadata service (cni_plugin.agent.identity),
against the emulator's metadata service in the cloud's own layout."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import PROVIDER_ZONE as ZONE

from cni_plugin import contract
from cni_plugin.agent.core import AgentConfig, NodeAgent
from cni_plugin.agent.datapath import Datapath
from cni_plugin.agent.identity import ALIYUN, AWS, InstanceView, MetadataClient, MetadataError
from cni_plugin.agent.metrics import Metrics


def _instance(cloudsim: Any, topo: Any) -> dict[str, Any]:
    return dict(cloudsim.admin.create_instance("ecs.g6.xlarge", topo.vswitch_ids(ZONE)[0],
                                               [topo.security_group_id]))


def test_identity_lists_the_instance_and_its_attached_interfaces(
        cloudsim: Any, topo: Any, provider: Any) -> None:
    inst = _instance(cloudsim, topo)
    client = MetadataClient(inst["metadata_url"], ALIYUN)
    ident = client.identity()
    assert ident.instance_id == inst["instance_id"] and ident.zone == ZONE
    primary = next(e for e in inst["enis"] if e["type"] == "Primary")
    assert set(ident.interfaces) == {primary["mac"].lower()}
    assert ident.interfaces[primary["mac"].lower()].device_number == 0
    # A secondary ENI shows up once attached; the view refreshes for an unknown MAC.
    view = InstanceView(client, min_refresh=0.0)
    view.refresh()
    eni = provider.create_eni(topo.vswitch_ids(ZONE)[0], [topo.security_group_id], {},
                              secondary_ip_count=2)
    assert not view.owns(eni.mac, eni.eni_id)[0]  # created, not attached
    provider.attach_eni(eni.eni_id, inst["instance_id"])
    deadline = time.monotonic() + 10
    while not view.owns(eni.mac, eni.eni_id)[0]:
        assert time.monotonic() < deadline, "attached ENI never listed by the metadata"
        time.sleep(0.05)
    iface = view.identity.interfaces[eni.mac.lower()] if view.identity else None
    assert iface is not None and iface.device_number and iface.device_number >= 1
    assert set(eni.private_ips) <= set(iface.ips)
    # Another instance's ENI, or the right MAC under a wrong id, is refused with a reason.
    ok, why = view.owns(eni.mac, "eni-someoneelse")
    assert not ok and eni.eni_id in why
    other = _instance(cloudsim, topo)
    ok, why = InstanceView(MetadataClient(other["metadata_url"], ALIYUN)).owns(
        eni.mac, eni.eni_id)
    assert not ok and other["instance_id"] in why


def test_unreachable_metadata_is_an_error_not_an_empty_identity() -> None:
    with pytest.raises(MetadataError, match=r"127\.0\.0\.1:9"):
        MetadataClient("http://127.0.0.1:9", ALIYUN, timeout=0.5).identity()
    with pytest.raises(ValueError, match="unknown cloud"):
        MetadataClient("http://127.0.0.1:9", "gcp")


def test_agent_serves_only_enis_its_instance_metadata_lists(
        netsim: tuple[Any, str], tmp_path: Path) -> None:
    """A real node namespace of the emulator's VPC: the agent (with ``--metadata-url``)
    brings up and serves its own attached ENI, and refuses a resource that names this
    node but another instance's ENI, saying why (``eniway-agent debug`` shows it)."""
    sim, tag = netsim
    topo = sim.admin.bootstrap({ZONE: ["10.9.0.0/24"]})
    vsw, sg = topo.vswitch_ids(ZONE)[0], topo.security_group_id
    mine = sim.admin.create_instance("ecs.g6.xlarge", vsw, [sg], netns=f"{tag}-a")
    other = sim.admin.create_instance("ecs.g6.xlarge", vsw, [sg], netns=f"{tag}-b")
    provider = sim.provider()
    enis = []
    for inst in (mine, other):
        eni = provider.create_eni(vsw, [sg], {}, secondary_ip_count=2)
        provider.attach_eni(eni.eni_id, inst["instance_id"])
        enis.append(eni)
    deadline = time.monotonic() + 10
    while {e.status for e in provider.describe_enis([e.eni_id for e in enis])} != {"InUse"}:
        assert time.monotonic() < deadline
        time.sleep(0.05)

    def resource(eni: Any) -> dict[str, Any]:
        return {"metadata": {"name": eni.eni_id},
                "spec": {"nodeName": "a", "macAddress": eni.mac, "gatewayIP": "10.9.0.253",
                         "vSwitchCidr": "10.9.0.0/24"},
                "status": {"phase": contract.PHASE_INUSE,
                           "ips": [{"ip": ip} for ip in eni.private_ips]}}

    cfg = AgentConfig(node_name="a", state_dir=str(tmp_path / "state"),
                      socket_path=str(tmp_path / "sock"), host_netns=f"{tag}-a")
    agent = NodeAgent(cfg, Datapath(f"{tag}-a"), Metrics())
    agent.instance = InstanceView(MetadataClient(mine["metadata_url"], ALIYUN))
    agent.set_enis([resource(enis[0]), resource(enis[1])])
    assert set(agent.enis) == {enis[0].eni_id}
    assert set(agent.pool.counts()) and agent.enis[enis[0].eni_id].ips == list(
        enis[0].private_ips)
    refused = [e for e in agent.errors.list() if enis[1].eni_id in e["message"]]
    assert refused and mine["instance_id"] in refused[0]["message"], agent.errors.list()
    status = agent.agent_status()["instance"]
    assert status["instanceId"] == mine["instance_id"]
    assert set(status["interfaces"]) == {enis[0].eni_id, next(
        e["eni_id"] for e in mine["enis"] if e["type"] == "Primary")}


def test_identity_from_imdsv2_on_an_ec2_instance(cloudsim: Any) -> None:
    """EC2's layout: a session token first, then every GET with it; the interfaces come
    with EC2's ids and device numbers, and a forgotten token is renewed once."""
    topo = cloudsim.bootstrap_aws()
    zone = next(iter(topo.vswitches))
    inst = cloudsim.admin.create_instance("m5.large", topo.vswitch_ids(zone)[0],
                                          [topo.security_group_id])
    client = MetadataClient(inst["metadata_url"], AWS)
    ident = client.identity()
    assert ident.instance_id == inst["instance_id"] and ident.zone == zone
    primary = next(e for e in inst["enis"] if e["type"] == "Primary")
    iface = ident.interfaces[primary["mac"].lower()]
    assert iface.eni_id == primary["eni_id"] and iface.device_number == 0
    assert primary["primary_ip"] in iface.ips
    client._token = "forgotten"  # as after a restart of the service
    assert client.get("instance-id") == inst["instance_id"]
    assert client._token != "forgotten"
    # Without the token the service refuses: the client did not get in by accident.
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{inst['metadata_url']}/latest/meta-data/instance-id",
                               timeout=5)
    assert e.value.code == 401
