"""The whole product in a real daphne process on a free loopback port.

Drives it with the Python client, with raw frames copied from the tutorial's
client, and with the abuse that crashed the tutorial's server.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request

import pytest
import websockets

from challenges import tokens
from challenges.client import TokenClientError, get_token_async
from challenges.identity import PrivateKey, encode_buffer
from tests import servers

pytestmark = pytest.mark.server
AUTHORITY = PrivateKey.generate()
TIMEOUT = 1.5


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("daphne")
    env = servers.base_env(
        tmp, AUTHORITY_PRIVATE_KEY=str(AUTHORITY), CHALLENGE_TIMEOUT=str(TIMEOUT), DEBUG="false",
        SECRET_KEY="test-secret-key-for-a-real-server-process-0123456789", ALLOWED_HOSTS="127.0.0.1",
        SECURE_SSL_REDIRECT="false",  # its clients speak plain ws:// on loopback (see test_serve)
    )  # fmt: skip
    with servers.running(tmp, kind="daphne", env=env) as srv:
        yield srv
        log = srv.log()
    assert "Traceback" not in log, log


async def recv(sock, timeout=5.0) -> dict:
    return json.loads(await asyncio.wait_for(sock.recv(), timeout))


async def test_python_client_gets_a_token_that_verifies_and_is_audited(server):
    user = PrivateKey.generate()
    token = await get_token_async(server.ws, user, timeout=10)
    claims = tokens.verify_token(token, issuer=AUTHORITY.public)
    assert claims["sub"] == str(user.public)
    rows = server.rows(
        "SELECT a.outcome, a.public_key, a.client_ip, t.jti, t.token_sha256"
        " FROM challenges_challengeattempt a JOIN challenges_issuedtoken t ON t.attempt_id = a.id"
        " WHERE t.jti = ?",
        (claims["jti"],),
    )
    assert rows == [("success", str(user.public), "127.0.0.1", claims["jti"], tokens.token_sha256(token))]
    assert token not in repr(server.rows("SELECT * FROM challenges_challengeattempt"))
    assert token not in repr(server.rows("SELECT * FROM challenges_issuedtoken"))


async def test_raw_frames_of_the_tutorial_client(server):
    """The tutorial's client: `{pub, type: 'token'}`, then `sig: signed.toJSON()` plus `pub`; it reads
    only `type` and `value`."""
    user = PrivateKey.generate()
    public_key = str(user.public)
    async with websockets.connect(server.ws) as sock:
        await sock.send(json.dumps({"pub": public_key, "type": "token"}))
        data = await recv(sock)
        assert data["type"] == "challenge"
        buf = bytes(data["value"]["data"])  # Buffer.from(data.value)
        signed = user.sign(buf)
        await sock.send(json.dumps({"type": "challenge", "sig": encode_buffer(signed), "pub": public_key}))
        data = await recv(sock)
        assert data["type"] == "token"
        assert tokens.verify_token(data["value"], issuer=AUTHORITY.public)["sub"] == public_key


async def test_unanswered_challenge_gets_an_error_not_a_crash(server):
    """The tutorial's server rejected the wait with nothing after 1.5 s and then read `.message` of
    undefined, killing the Node process. Here the client is told, the socket stays usable, and the
    process keeps serving everyone."""
    user = PrivateKey.generate()
    async with websockets.connect(server.ws) as sock:
        await sock.send(json.dumps({"type": "token", "pub": str(user.public)}))
        first = await recv(sock)
        assert first["type"] == "challenge"
        started = time.monotonic()
        err = await recv(sock, timeout=TIMEOUT + 3)
        assert err["type"] == "error"
        assert err["code"] == "challenge_timeout"
        assert TIMEOUT - 0.3 < time.monotonic() - started < TIMEOUT + 2
        # Same socket, new flow.
        await sock.send(json.dumps({"type": "token", "pub": str(user.public)}))
        again = await recv(sock)
        await sock.send(
            json.dumps({"type": "challenge", "sig": list(user.sign(bytes(again["value"]["data"])))})
        )
        assert (await recv(sock))["type"] == "token"
    assert server.process.poll() is None
    rows = server.rows(
        "SELECT outcome FROM challenges_challengeattempt WHERE challenge_id = ?", (first["id"],)
    )
    assert rows == [("challenge_timeout",)]
    # Another client is served as usual.
    assert await get_token_async(server.ws, PrivateKey.generate(), timeout=10)


async def test_many_bad_frames_and_a_good_flow_alongside(server):
    async def abuse():
        async with websockets.connect(server.ws) as sock:
            for junk in [
                "{",
                "[]",
                "null",
                '{"type":"x"}',
                '{"type":"token","pub":"bbaa"}',
                '{"type":"challenge"}',
            ]:
                await sock.send(junk)
                frame = await recv(sock)
                assert frame["type"] == "error"
                assert frame["code"]
            await sock.send(b"\x00binary")
            assert (await recv(sock))["code"] == "binary_frame"

    results = await asyncio.gather(
        *(abuse() for _ in range(5)), *(get_token_async(server.ws, PrivateKey.generate()) for _ in range(10))
    )
    assert all(isinstance(t, str) for t in results[5:])
    assert server.process.poll() is None


async def test_oversized_frame_is_refused_with_a_policy_close(server):
    async with websockets.connect(server.ws, max_size=None) as sock:
        await sock.send(json.dumps({"type": "token", "pub": "b" * 100_000}))
        frame = await recv(sock)
        assert frame["code"] == "frame_too_large"
        with pytest.raises(websockets.ConnectionClosed) as info:
            await asyncio.wait_for(sock.recv(), 5)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 4009


async def test_client_refuses_a_challenge_for_another_audience(server):
    with pytest.raises(TokenClientError) as info:
        await get_token_async(server.ws, PrivateKey.generate(), audience="https://app.example")
    assert info.value.code == "challenge_refused"
    assert "audience" in info.value.message


async def test_client_reports_the_servers_code(server):
    url = server.ws.replace("127.0.0.1", "localhost")  # Host not in ALLOWED_HOSTS
    with pytest.raises(TokenClientError) as info:
        await get_token_async(url, PrivateKey.generate(), timeout=5)
    assert info.value.code == "invalid_host"


async def test_client_timeout_and_connection_errors(server):
    with pytest.raises(TokenClientError) as info:
        await get_token_async(
            f"ws://127.0.0.1:{servers.free_port()}/ws/token", PrivateKey.generate(), timeout=3
        )
    assert info.value.code == "connection_closed"


def test_health(server):
    with urllib.request.urlopen(f"{server.http}/api/health", timeout=5) as response:
        assert response.status == 200
        assert json.load(response) == {"status": "ok", "database": "ok", "channel_layer": "ok"}


def test_gettoken_command(server, tmp_path):
    key = PrivateKey.generate()
    key_file = tmp_path / "key"
    key_file.write_text(str(key))
    out = subprocess.run(
        [sys.executable, "manage.py", "gettoken", "--url", server.ws, "--key-file", str(key_file)],
        cwd=servers.ROOT, env=server.env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    token = out.stdout.strip()
    assert tokens.verify_token(token, issuer=AUTHORITY.public)["sub"] == str(key.public)
    assert str(key) not in out.stdout + out.stderr


def test_make_runs_runserver_gives_the_client_module_its_own_headers(tmp_path):
    """``make run``'s ``runserver`` (daphne's, DEBUG on): Django's static-files handler in front
    of the application answered the module without ``Access-Control-Allow-Origin``, so an app
    on another origin (a development server on another port) could not import it there. The
    admin's static files are still served."""
    runserver = servers.start(tmp_path, kind="runserver")

    def get(path: str) -> tuple[int, dict[str, str], bytes]:
        with urllib.request.urlopen(f"{runserver.http}{path}", timeout=5) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()

    try:
        status, headers, body = get("/static/challenges/token-client.js")
        assert status == 200
        assert headers["access-control-allow-origin"] == "*"
        assert headers["cache-control"] == "no-cache"
        assert b"export function getToken(" in body
        status, headers, _ = get("/static/admin/css/base.css")
        assert status == 200
        assert headers["content-type"].startswith("text/css")
    finally:
        runserver.stop()
    assert "Traceback" not in runserver.log()
