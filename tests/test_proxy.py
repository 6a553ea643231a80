"""Behind a proxy, in real server processes: the client address is the entry the nearest
proxy appended (never one the client wrote), and a TLS-terminating proxy's
``X-Forwarded-Proto: https`` makes the service's own origin (and the challenges'
audience) ``https://``."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import websockets.sync.client

from challenges import authority
from challenges.identity import PrivateKey, encode_buffer
from tests import servers

pytestmark = [pytest.mark.server, pytest.mark.once]


def post(
    server: servers.Server, path: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{server.http}{path}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def rows(server: servers.Server, outcome: str) -> list[tuple[str, str]]:
    return [
        (str(ip), transport)
        for ip, transport in server.rows(
            "SELECT client_ip, transport FROM challenges_challengeattempt WHERE outcome = ? ORDER BY id",
            (outcome,),
        )
    ]


@pytest.fixture(scope="module")
def daphne_proxy_headers(tmp_path_factory) -> Iterator[servers.Server]:
    """daphne --proxy-headers, CLIENT_IP_HEADER unset: daphne itself takes the leftmost entry."""
    tmp = tmp_path_factory.mktemp("daphne-proxy-headers")
    env = servers.base_env(tmp, CLIENT_IP_HEADER="")
    with servers.running(tmp, kind="daphne", env=env, args=["--proxy-headers"]) as server:
        yield server


@pytest.mark.parametrize(
    ("forwarded", "client"),
    [("6.6.6.6, 127.0.0.1", "127.0.0.1"), ("6.6.6.6, 203.0.113.7", "203.0.113.7")],
)
def test_daphne_proxy_headers_audit_the_entry_the_proxy_appended(daphne_proxy_headers, forwarded, client):
    server = daphne_proxy_headers
    headers = {"X-Forwarded-For": forwarded}
    with websockets.sync.client.connect(server.ws, additional_headers=headers) as ws:
        ws.send("[]")
        assert json.loads(ws.recv(5))["code"] == "invalid_frame"
    assert post(server, "/api/token/challenge", {}, headers) == (
        400,
        {
            "type": "error",
            "value": "a 'token' frame needs 'pub', the public key string",
            "code": "missing_pub",
        },
    )
    assert servers.wait_for(lambda: len(rows(server, "missing_pub")) >= 1, timeout=5)
    assert rows(server, "invalid_frame")[-1] == (client, "ws")
    assert rows(server, "missing_pub")[-1] == (client, "http")
    log = server.log()
    assert log.count("set CLIENT_IP_HEADER") == 1, log


@pytest.fixture(scope="module", params=["daphne", "uvicorn"])
def behind_tls(request, tmp_path_factory) -> Iterator[servers.Server]:
    """A server behind a TLS-terminating proxy (uvicorn as ``make serve`` runs it, without its
    own proxy-header rewrite)."""
    tmp = tmp_path_factory.mktemp(f"tls-{request.param}")
    env = servers.base_env(tmp, SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto")
    args = ["--no-proxy-headers"] if request.param == "uvicorn" else []
    with servers.running(tmp, kind=request.param, env=env, args=args) as server:
        yield server
        log = server.log()
    assert "Traceback" not in log, log


def audience(challenge: dict[str, Any]) -> str:
    return authority.parse_challenge_text(bytes(challenge["value"]["data"])).audience


def test_a_socket_from_the_services_https_page_is_admitted(behind_tls):
    own = f"https://127.0.0.1:{behind_tls.port}"
    user = PrivateKey.generate()
    connect = websockets.sync.client.connect
    with connect(behind_tls.ws, origin=own, additional_headers={"X-Forwarded-Proto": "https"}) as ws:
        ws.send(json.dumps({"type": "token", "pub": str(user.public)}))
        challenge = json.loads(ws.recv(5))
        assert challenge["type"] == "challenge", challenge
        assert audience(challenge) == own
        ws.send(
            json.dumps(
                {"type": "challenge", "sig": encode_buffer(user.sign(bytes(challenge["value"]["data"])))}
            )
        )
        assert json.loads(ws.recv(5))["type"] == "token"
    # Without the proxy's word the page is foreign: the socket itself is plain http.
    with connect(behind_tls.ws, origin=own) as ws:
        assert json.loads(ws.recv(5))["code"] == "origin_not_allowed"


def test_the_http_two_step_from_the_services_https_page(behind_tls):
    own = f"https://127.0.0.1:{behind_tls.port}"
    headers = {"Origin": own, "X-Forwarded-Proto": "https"}
    user = PrivateKey.generate()
    status, challenge = post(behind_tls, "/api/token/challenge", {"pub": str(user.public)}, headers)
    assert status == 200, challenge
    assert audience(challenge) == own
    sig = encode_buffer(user.sign(bytes(challenge["value"]["data"])))
    status, token = post(behind_tls, "/api/token", {"id": challenge["id"], "sig": sig}, headers)
    assert (status, token["type"]) == (200, "token")
    status, refused = post(behind_tls, "/api/token/challenge", {"pub": str(user.public)}, {"Origin": own})
    assert (status, refused["code"]) == (403, "origin_not_allowed")
