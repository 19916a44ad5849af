"""Network mode's internet with real packets: an EIP associated in NAT mode with a
secondary IP of an ENI is reachable from the internet namespace (the server sees the
client's address), traffic from that IP reaches the internet with the EIP as its source,
an address without an EIP does not get out, and disassociating stops the translation."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from alibabacloud_vpc20160428 import models as vpc
from test_cloudsim_netmode import in_ns, link_by_mac, ping, sh, wait_for

from eniway_cloudsim.internet import CLIENT_IP
from eniway_cloudsim.testing import SimHandle
from eniway_operator import testing

pytestmark = pytest.mark.netns
ZONE = "cn-hangzhou-i"
SERVER = """  # answers with the client's address
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = self.client_address[0].encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
port = int(sys.argv[2]) if len(sys.argv) > 2 else 8080
http.server.HTTPServer((sys.argv[1], port), H).serve_forever()
"""
FETCH = """
import sys, urllib.request
print(urllib.request.urlopen(f"http://{sys.argv[1]}:8080/", timeout=3).read().decode())
"""
LISTEN = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 9999))
s.settimeout(10); data, peer = s.recvfrom(100); print(peer[0])
"""


def fetch(ns: str, ip: str) -> str | None:
    p = in_ns(ns, sys.executable, "-c", FETCH, ip, check=False)
    return p.stdout.strip() if p.returncode == 0 else None


def test_eip_reaches_the_private_ip_both_ways(netsim: tuple[SimHandle, str]) -> None:
    sim, tag = netsim
    topo = sim.admin.bootstrap({ZONE: ["10.60.0.0/24"]})
    vsw, gw = topo.vswitch_ids(ZONE)[0], "10.60.0.253"
    node = f"{tag}-node"
    inst = sim.admin.create_instance("ecs.g6.xlarge", vsw, [topo.security_group_id],
                                     netns=node)
    p = sim.provider()
    eni = p.create_eni(vsw, [topo.security_group_id], {})
    p.attach_eni(eni.eni_id, inst["instance_id"])
    dev = wait_for(lambda: link_by_mac(node, eni.mac), "ENI link on the node")
    s1, s2 = p.assign_ips(eni.eni_id, 2)
    in_ns(node, "sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=0")
    sh("ip", "-n", node, "link", "set", dev, "up")
    for ip in (s1, s2):  # each secondary IP leaves through its own ENI
        sh("ip", "-n", node, "addr", "add", f"{ip}/32", "dev", dev)
        sh("ip", "-n", node, "rule", "add", "from", ip, "lookup", "100")
    sh("ip", "-n", node, "route", "add", "default", "via", gw, "dev", dev, "onlink",
       "table", "100")

    client = sim.vpc_client()
    eip = client.allocate_eip_address(vpc.AllocateEipAddressRequest(
        region_id=sim.region)).body
    internet = f"{tag}-internet"
    client.associate_eip_address(vpc.AssociateEipAddressRequest(
        region_id=sim.region, allocation_id=eip.allocation_id, instance_id=eni.eni_id,
        instance_type="NetworkInterface", private_ip_address=s1))
    server = subprocess.Popen(["ip", "netns", "exec", node, sys.executable, "-c", SERVER, s1])
    try:
        # a client on the internet fetches a page at the EIP; the server sees the client
        seen = testing.wait_for(lambda: fetch(internet, eip.eip_address), 20,
                                "the page fetched through the EIP", 0.1)
        assert seen == CLIENT_IP

        # the private IP's own traffic arrives on the internet from the EIP
        listener = subprocess.Popen(["ip", "netns", "exec", internet, sys.executable, "-c",
                                     LISTEN, CLIENT_IP], stdout=subprocess.PIPE, text=True)
        try:
            def sent() -> bool:
                in_ns(node, sys.executable, "-c", "import socket,sys; s=socket.socket("
                      "socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 0)); "
                      "s.sendto(b'x', (sys.argv[2], 9999))", s1, CLIENT_IP)
                return listener.poll() is not None

            testing.wait_for(sent, 10, "a datagram from the pod IP on the internet", 0.1)
            assert listener.stdout is not None
            assert listener.stdout.read().strip() == eip.eip_address
        finally:
            if listener.poll() is None:
                listener.kill()
            listener.wait(timeout=10)

        # an address without an EIP does not get out; the one with it does
        assert ping(node, CLIENT_IP, src=s1)
        assert not ping(node, CLIENT_IP, src=s2)

        # disassociated: the EIP leads nowhere, and s1 no longer gets out
        client.unassociate_eip_address(vpc.UnassociateEipAddressRequest(
            region_id=sim.region, allocation_id=eip.allocation_id))
        assert not ping(internet, eip.eip_address)
        assert not ping(node, CLIENT_IP, src=s1)
    finally:
        server.kill()
        server.wait(timeout=10)
    sim.close(teardown_network=True)
    listed = sh("ip", "netns", "list").stdout
    assert internet not in listed, "teardown removes the internet namespace"


def test_eip_translation_comes_back_after_a_restart(root: None, tmp_path: Any) -> None:
    """The kernel is rebuilt from the state file: an EIP InUse before the restart is
    translated again after it."""
    import secrets

    from eniway_cloudsim.netmode import NetMode
    from eniway_cloudsim.testing import start_in_process
    from eniway_operator.testing import with_provider

    tag = "cst" + secrets.token_hex(3)
    state = str(tmp_path / "net.db")
    sim = with_provider(start_in_process(state=state, network=NetMode(prefix=tag + "-"),
                                         eip_delay=0))
    try:
        topo = sim.admin.bootstrap({ZONE: ["10.61.0.0/24"]})
        vsw = topo.vswitch_ids(ZONE)[0]
        inst = sim.admin.create_instance("ecs.g6.xlarge", vsw, [topo.security_group_id],
                                         netns=f"{tag}-node")
        client = sim.vpc_client()
        eip = client.allocate_eip_address(vpc.AllocateEipAddressRequest(
            region_id=sim.region)).body
        client.associate_eip_address(vpc.AssociateEipAddressRequest(
            region_id=sim.region, allocation_id=eip.allocation_id,
            instance_id=inst["instance_id"], instance_type="EcsInstance"))
        internet = f"{tag}-internet"
        assert wait_for(lambda: ping(internet, eip.eip_address), "EIP answers ping")
        sim.close(teardown_network=False)
        vns = f"{tag}-{topo.vpc_id}"
        sh("ip", "netns", "exec", vns, "nft", "flush", "ruleset")
        sim = with_provider(start_in_process(state=state, network=NetMode(prefix=tag + "-")))
        assert wait_for(lambda: ping(internet, eip.eip_address), "EIP answers after restart")
    finally:
        sim.close(teardown_network=True)
        for ns in sh("ip", "netns", "list").stdout.split():
            if ns.startswith(tag):
                sh("ip", "netns", "del", ns, check=False)
