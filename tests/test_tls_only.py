"""Tokens over encrypted connections only where plain http is redirected
(``SECURE_SSL_REDIRECT``, production's default): a plain ``ws://`` socket cannot follow a
redirect, and the bearer token it asks for would cross the network in clear, so it is
refused (``insecure_transport``) and audited; over ``wss`` or a TLS proxy that says so, it
is served."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import pytest
from websockets.sync.client import connect as sync_connect

from challenges.authority import check_challenge_text
from challenges.client import get_token_async
from challenges.errors import TokenClientError
from challenges.identity import PrivateKey, encode_buffer
from challenges.tokens import verify_token
from tests import servers
from tests.grpcwebutil import Call, key_message, metadata_block
from tests.rpcutil import API_KEY, API_SECRET
from tests.test_consumers import expect_error, last_row
from tests.test_serve import AUTHORITY, _health, make_serve, production_env
from tests.wsutil import challenge, connect, send, sign_frame


@pytest.mark.django_db(transaction=True)
async def test_a_plain_socket_is_refused_where_plain_http_is_redirected(settings, user_key):
    """SECURE_SSL_REDIRECT sends plain http to https; a socket cannot follow a redirect, and
    its token would cross the network in clear: refused, audited, closed with 4008."""
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    comm = await connect()
    frame = await expect_error(comm, "insecure_transport")
    assert "wss://" in frame["value"]
    assert (await comm.receive_output(2))["code"] == 4008
    row = await last_row()
    assert (row.outcome, row.client_ip, row.transport) == ("insecure_transport", "127.0.0.9", "ws")
    # A TLS proxy that does not say so (its page's Origin is https, the socket plain): what
    # is wrong is the transport, not the Origin.
    comm = await connect(origin="https://127.0.0.1:8000")
    await expect_error(comm, "insecure_transport")
    # Over TLS, to the server or to the proxy that says so, the flow runs.
    https = [(b"x-forwarded-proto", b"https")]
    for secure in (await connect(scheme="wss"), await connect(extra=https)):
        frame = await challenge(secure, user_key)
        text = bytes(frame["value"]["data"])
        check_challenge_text(text, audience="https://127.0.0.1:8000", key=user_key.public)
        assert (await send(secure, sign_frame(user_key, frame)))["type"] == "token"
        await secure.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("redirect", "exempt", "served"),
    [
        (False, [], True),  # as under DEBUG (make run)
        (True, [r"^ws/token$"], True),  # the operator's own choice, as for pages
        (True, [r"^api/health$"], False),  # another path's exemption is not this one's
    ],
)
async def test_a_plain_socket_is_served_where_plain_http_is(settings, user_key, redirect, exempt, served):
    settings.SECURE_SSL_REDIRECT = redirect  # each case its own test: the runtime reads them once
    settings.SECURE_REDIRECT_EXEMPT = exempt
    comm = await connect()
    reply = await send(comm, {"type": "token", "pub": str(user_key.public)})
    if served:
        assert (await send(comm, sign_frame(user_key, reply)))["type"] == "token"
    else:
        await expect_error(comm, "insecure_transport", reply)
    await comm.disconnect()


@pytest.mark.server
@pytest.mark.once
def test_make_serve_gives_tokens_over_tls_only(tmp_path):
    """Production's default (SECURE_SSL_REDIRECT): a plain ws:// socket, for /ws/token or
    GetToken over gRPC-Web, is refused and audited (a socket cannot follow the redirect plain
    http gets, and its token would cross the network in clear); through a TLS proxy that
    says so, as the README's nginx does, the same flow gets its token."""
    env = production_env(tmp_path, AUTHORITY_API_KEYS=f"{API_KEY}:{API_SECRET}")
    del env["SECURE_SSL_REDIRECT"]
    port = servers.free_port()
    process, log_path = make_serve(env, port)
    try:
        servers.wait_ready(process, log_path, lambda: _health(port), timeout=60, what="make serve")
        user = PrivateKey.generate()
        with pytest.raises(TokenClientError) as refused:
            asyncio.run(get_token_async(f"ws://127.0.0.1:{port}/ws/token", user, timeout=10))
        assert refused.value.code == "insecure_transport"
        assert "wss://" in refused.value.message

        async def grpc_web() -> tuple[int, str]:
            call = await Call.open(f"ws://127.0.0.1:{port}")
            await call.send(metadata_block(), key_message(str(user.public)))
            return (await call.end()).status

        status = asyncio.run(grpc_web())
        assert status[0] == 7, status  # PERMISSION_DENIED
        assert "wss://" in status[1], status

        with sync_connect(
            f"ws://127.0.0.1:{port}/ws/token", additional_headers={"X-Forwarded-Proto": "https"}
        ) as sock:
            sock.send(json.dumps({"type": "token", "pub": str(user.public)}))
            challenge = json.loads(sock.recv(10))
            signature = encode_buffer(user.sign(bytes(challenge["value"]["data"])))
            sock.send(json.dumps({"type": "challenge", "sig": signature}))
            reply = json.loads(sock.recv(10))
        assert reply["type"] == "token", reply
        assert verify_token(reply["value"], issuer=AUTHORITY.public)["sub"] == str(user.public)
        text = bytes(challenge["value"]["data"])  # the audience is the https origin the proxy said
        check_challenge_text(text, audience=f"https://127.0.0.1:{port}", key=user.public)
        rows = servers.query(
            env["DATABASE_URL"],
            "SELECT outcome, transport FROM challenges_challengeattempt ORDER BY id",
        )
        assert rows == [("insecure_transport", "ws"), ("insecure_transport", "grpc-web"), ("success", "ws")]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(15)
    assert "Traceback" not in log_path.read_text()
