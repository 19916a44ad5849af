"""eniway-cloudsim's own doors: the admin API wants its token, an instance's RAM
credentials go only to the holder of its metadata URL, a signed request cannot be
replayed (ECS: SignatureNonceUsed, a date within 15 minutes), and a request body is
bounded. Raw HTTP where the point is what a client without the SDK can send."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from alibabacloud_ecs20140526 import models as ecs
from alibabacloud_tea_openapi.exceptions import ClientException

from eniway_cloudsim.admin import AdminError, CloudSimAdmin
from eniway_cloudsim.server import MAX_BODY
from eniway_cloudsim.signing import REPLAY_WINDOW
from eniway_operator.cloud.base import Unauthorized
from eniway_operator.cloud.credentials import RamRoleCredentials

ZONE = "cn-hangzhou-i"


def status_of(url: str, headers: dict[str, str] | None = None, method: str = "GET",
              data: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {}, method=method, data=data)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# --- admin API -----------------------------------------------------------------------


def test_admin_api_needs_the_token(cloudsim: Any) -> None:
    assert status_of(cloudsim.url + "/admin/healthz")[0] == 200  # probes need no token
    assert status_of(cloudsim.url + "/admin/state")[0] == 401
    assert status_of(cloudsim.url + "/admin/state",
                     {"Authorization": "Bearer wrong"})[0] == 401
    assert status_of(cloudsim.url + "/admin/state",
                     {"Authorization": f"Basic {cloudsim.admin_token}"})[0] == 401
    code, body = status_of(cloudsim.url + "/admin/state",
                           {"Authorization": f"Bearer {cloudsim.admin_token}"})
    assert code == 200 and "enis" in json.loads(body)
    # nobody without the token can add an access key...
    code, _ = status_of(cloudsim.url + "/admin/credentials", method="POST",
                        headers={"Content-Type": "application/json"},
                        data=json.dumps({"access_key_id": "intruder",
                                         "access_key_secret": "s"}).encode())
    assert code == 401
    with pytest.raises(ClientException) as ei:
        cloudsim.client("intruder", "s").describe_vswitches(
            ecs.DescribeVSwitchesRequest(region_id=cloudsim.region))
    assert ei.value.code == "InvalidAccessKeyId.NotFound"
    # ...or change the region through the client with a wrong token
    with pytest.raises(AdminError) as ai:
        CloudSimAdmin(cloudsim.endpoint, token="wrong").set_quota(1)
    assert ai.value.status == 401
    assert cloudsim.admin.state()["settings"]["eni_quota"] == 100


def test_admin_token_from_the_environment_for_a_process(cloudsim_factory: Any) -> None:
    sim = cloudsim_factory.subprocess()
    assert sim.admin_token and sim.admin.state()["vpcs"] == []
    with pytest.raises(AdminError) as ei:
        CloudSimAdmin(sim.endpoint, token="").state()
    assert ei.value.status == 401


# --- instance metadata ---------------------------------------------------------------


@pytest.fixture
def two_instances(cloudsim: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    topo = cloudsim.admin.bootstrap({ZONE: ["10.0.0.0/24"]})
    make = [cloudsim.admin.create_instance("ecs.g6.large", topo.vswitch_ids(ZONE)[0],
                                           [topo.security_group_id], ram_role="node-role")
            for _ in range(2)]
    return make[0], make[1]


def test_ram_credentials_only_under_the_instances_own_metadata_url(
        cloudsim: Any, two_instances: tuple[dict[str, Any], dict[str, Any]]) -> None:
    a, b = two_instances
    creds = "/latest/meta-data/ram/security-credentials/node-role"
    code, body = status_of(a["metadata_url"] + creds)
    assert code == 200 and json.loads(body)["AccessKeyId"].startswith("STS.")
    bare = f"{cloudsim.url}/instances/{a['instance_id']}"
    assert status_of(bare + creds)[0] == 403  # naming the instance is not enough
    assert status_of(bare + "/latest/meta-data/instance-id") == (200, a["instance_id"].encode())
    token_b = b["metadata_url"].rsplit("/", 1)[1]
    assert status_of(f"{bare}/{token_b}{creds}")[0] == 403  # another instance's token
    header = {"X-Eniway-Instance-Id": a["instance_id"]}
    assert status_of(cloudsim.url + creds, header)[0] == 403
    token_a = a["metadata_url"].rsplit("/", 1)[1]
    assert status_of(cloudsim.url + creds, {**header, "X-Eniway-Metadata-Token": token_b}
                     )[0] == 403
    assert status_of(cloudsim.url + creds, {**header, "X-Eniway-Metadata-Token": token_a}
                     )[0] == 200
    # the keys work, and each records the instance it was issued to
    ak = json.loads(status_of(a["metadata_url"] + creds)[1])["AccessKeyId"]
    assert cloudsim.sim.verifier.sts[ak].instance_id == a["instance_id"]
    p = cloudsim.provider(credentials=RamRoleCredentials(a["metadata_url"]))
    assert p.describe_instance(a["instance_id"]).instance_type == "ecs.g6.large"


def test_metadata_token_survives_a_restart(cloudsim_factory: Any, tmp_path: Any) -> None:
    state = str(tmp_path / "sim.db")
    first = cloudsim_factory(state=state)
    topo = first.admin.bootstrap({ZONE: ["10.0.0.0/24"]})
    inst = first.admin.create_instance("ecs.g6.large", topo.vswitch_ids(ZONE)[0],
                                       [topo.security_group_id], ram_role="r")
    first.close()
    second = cloudsim_factory(state=state)
    url = second.admin.instance(inst["instance_id"])["metadata_url"]
    assert url.rsplit("/", 1)[1] == inst["metadata_url"].rsplit("/", 1)[1]
    assert status_of(url + "/latest/meta-data/ram/security-credentials/r")[0] == 200


# --- replay --------------------------------------------------------------------------


class Recorder:
    """A pass-through HTTP proxy that keeps every request it forwards, so a request the
    SDK signed can be sent again byte for byte."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        rec = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = dict(self.headers.items())
                rec.seen.append((self.command, self.path, headers, body))
                status, rheaders, rbody = rec.send(self.command, self.path, headers, body)
                self.send_response(status)
                for k, v in rheaders:
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(rbody)))
                self.end_headers()
                self.wfile.write(rbody)

            do_GET = do_POST

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def send(self, method: str, path: str, headers: dict[str, str], body: bytes
             ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.target, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def recorder(cloudsim: Any) -> Iterator[Recorder]:
    rec = Recorder(cloudsim.endpoint)
    try:
        yield rec
    finally:
        rec.close()


def client_via(cloudsim: Any, endpoint: str) -> Any:
    from alibabacloud_ecs20140526.client import Client
    from alibabacloud_tea_openapi.utils_models import Config

    return Client(Config(access_key_id=cloudsim.access_key_id,
                         access_key_secret=cloudsim.access_key_secret, endpoint=endpoint,
                         protocol="http", region_id=cloudsim.region))


def test_a_signed_request_cannot_be_replayed(cloudsim: Any, recorder: Recorder) -> None:
    """ECS common errors (AlibabaCloudDocs/ecs, intl.en-US/API Reference/Call methods/
    Response results.md): 400 SignatureNonceUsed, "The request signature nonce has been
    used"; "How to ensure idempotence.md": ECS uses SignatureNonce to prevent replay."""
    topo = cloudsim.admin.bootstrap({ZONE: ["10.0.0.0/24"]})
    client = client_via(cloudsim, recorder.endpoint)
    client.create_network_interface(ecs.CreateNetworkInterfaceRequest(
        region_id=cloudsim.region, v_switch_id=topo.vswitch_ids(ZONE)[0],
        security_group_ids=[topo.security_group_id]))
    assert len(cloudsim.admin.state()["enis"]) == 1
    method, path, headers, body = recorder.seen[-1]
    status, _, answer = recorder.send(method, path, headers, body)
    assert status == 400 and json.loads(answer)["Code"] == "SignatureNonceUsed"
    assert len(cloudsim.admin.state()["enis"]) == 1  # the replay created nothing
    # the SDK signs each attempt anew: back-to-back calls all pass
    for _ in range(5):
        client.describe_vswitches(ecs.DescribeVSwitchesRequest(region_id=cloudsim.region))
    nonces = [h["x-acs-signature-nonce"] for _, _, h, _ in recorder.seen]
    assert len(set(nonces)) == len(nonces) == 6


def test_a_request_dated_too_far_from_now_is_refused(cloudsim: Any) -> None:
    """The signed x-acs-date must be within 15 minutes of the emulator's clock
    (InvalidTimeStamp.Expired, 400); the operator reads it as Unauthorized (a clock to fix,
    no retry will help)."""
    verifier = cloudsim.sim.verifier
    for skew in (REPLAY_WINDOW + 60, -(REPLAY_WINDOW + 60)):
        verifier.clock = lambda skew=skew: time.time() + skew
        with pytest.raises(ClientException) as ei:
            cloudsim.client().describe_vswitches(
                ecs.DescribeVSwitchesRequest(region_id=cloudsim.region))
        assert (ei.value.code, ei.value.status_code) == ("InvalidTimeStamp.Expired", 400)
        with pytest.raises(Unauthorized):
            cloudsim.provider().describe_enis()
    verifier.clock = lambda: time.time() + REPLAY_WINDOW - 60  # within the window
    cloudsim.client().describe_vswitches(ecs.DescribeVSwitchesRequest(region_id=cloudsim.region))


# --- request size --------------------------------------------------------------------


def raw(endpoint: str, request: bytes) -> bytes:
    host, port = endpoint.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize("path", ["/", "/admin/vpcs"])
def test_content_length_is_bounded(cloudsim: Any, path: str) -> None:
    huge = raw(cloudsim.endpoint, f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: "
               f"{MAX_BODY + 1}\r\n\r\n".encode())  # announced, never sent
    assert huge.startswith(b"HTTP/1.1 413"), huge[:80]
    assert b"RequestEntityTooLarge" in huge
    bad = raw(cloudsim.endpoint,
              f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n".encode())
    assert bad.startswith(b"HTTP/1.1 400"), bad[:80]
    assert cloudsim.admin.healthy()
    assert cloudsim.admin.state()["vpcs"] == []  # nothing got through
