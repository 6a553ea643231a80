"""The gRPC-Web ``GetToken`` endpoint on real daphne and uvicorn processes, driven by a raw
``websockets`` client (``tests.grpcwebutil``) that frames the bytes itself.

The hostile battery sends what the Hub's client never sends: each gets a trailer naming
what was wrong, then a normal close (1000, never 1011), and an audit row; the server's
log has no traceback. The handshake is refused without the subprotocol and on other
paths. SIGTERM ends a call in progress with ``UNAVAILABLE`` and an audit row.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from challenges import tokens
from challenges.hubstatus import Status
from challenges.identity import PrivateKey
from tests import servers
from tests.grpcwebutil import (
    HALF_CLOSE,
    Call,
    data,
    key_message,
    metadata_block,
    signature_message,
)
from tests.rpcutil import API_KEY, API_SECRET, OPEN_KEY

pytestmark = [pytest.mark.server, pytest.mark.once]
SIGNER = PrivateKey.generate()
KINDS = ["daphne", "uvicorn"]


def endpoint_env(tmp: Path, **overrides: str) -> dict[str, str]:
    settings = {
        "AUTHORITY_PRIVATE_KEY": str(SIGNER),
        "AUTHORITY_API_KEYS": f"{API_KEY}:{API_SECRET},{OPEN_KEY}",
        "AUTHORITY_CHALLENGE_DEADLINE": "2",
        "TOKEN_TTL": "600",
    }
    return servers.base_env(tmp, **(settings | overrides))


@pytest.fixture(scope="module", params=KINDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[servers.Server]:
    tmp = tmp_path_factory.mktemp(f"grpcweb-{request.param}")
    with servers.running(tmp, kind=request.param, env=endpoint_env(tmp)) as running:
        yield running
    assert "Traceback" not in running.log(), running.log()
    assert API_SECRET not in running.log()


def base(server: servers.Server) -> str:
    return f"ws://127.0.0.1:{server.port}"


def row(server: servers.Server, pub: str) -> tuple:
    """The one audit row of the call made with public key ``pub``."""
    query = (
        "SELECT outcome, upstream_status, transport, api_key, detail FROM challenges_challengeattempt"
        " WHERE public_key = ?"
    )
    for _ in range(100):  # a cancelled call's row lands after its socket has gone
        rows = server.rows(query, (pub,))
        if rows:
            [found] = rows
            return found
        time.sleep(0.05)
    raise AssertionError(f"no audit row for {pub}")


def refusals(server: servers.Server, outcome: str) -> int:
    """Refusals of calls that never began are counted per address, code and minute."""
    return servers.refusals(server, outcome, "grpc-web")


def wait_for_count(server: servers.Server, outcome: str, at_least: int) -> int:
    count = 0
    for _ in range(100):  # counts after a group's first row are added once a second
        count = refusals(server, outcome)
        if count >= at_least:
            return count
        time.sleep(0.05)
    return count


# -- the flow -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/threads.pb.API/GetToken",
        "/threads.net.pb.API/GetToken",
        "/hub/threads.pb.API/GetToken",
        "//threads.pb.API/GetToken",
    ],
)
async def test_a_raw_client_gets_a_token_block_by_block(server, path):
    user = PrivateKey.generate()
    call = await Call.open(base(server), path)
    await call.send(metadata_block(), key_message(str(user.public)))
    challenge = await call.challenge()
    await call.send(signature_message(user.sign(challenge)), HALF_CLOSE)
    ended = await call.end()
    assert ended.close_code == 1000
    assert [flag for flag, _ in ended.blocks] == [0x80, 0x00, 0x00, 0x80]
    assert ended.status == (0, "")
    [_, (kind, token)] = ended.replies
    assert kind == "token"
    claims = tokens.verify_token(token.decode(), issuer=SIGNER.public)
    assert claims["sub"] == str(user.public)
    assert row(server, str(user.public))[:4] == ("success", "OK", "grpc-web", API_KEY)


async def test_a_key_without_secret_needs_no_signature(server):
    user = PrivateKey.generate()
    call = await Call.open(base(server))
    await call.send(metadata_block(key=OPEN_KEY, secret=None), key_message(str(user.public)))
    challenge = await call.challenge()
    await call.send(signature_message(user.sign(challenge)), HALF_CLOSE)
    assert (await call.end()).status == (0, "")
    assert row(server, str(user.public))[:4] == ("success", "OK", "grpc-web", OPEN_KEY)


@pytest.mark.parametrize(
    ("metadata", "status", "message", "outcome", "audited_key"),
    [
        (metadata_block(key=None), 16, "Session or API key required", "api_key_required", ""),
        (
            metadata_block(key="b" + "q" * 26),
            5,
            "API key not found or is invalid",
            "api_key_not_found",
            "b" + "q" * 26,
        ),
        (metadata_block(secret=None), 16, "API key signature required", "api_sig_required", API_KEY),
        (metadata_block(ahead=timedelta(minutes=-1)), 16, "Bad API key signature", "api_sig_bad", API_KEY),
    ],
    ids=["no-key", "unknown-key", "no-signature", "expired-signature"],
)
async def test_api_key_refusals_are_the_hubs(server, metadata, status, message, outcome, audited_key):
    user = PrivateKey.generate()
    started = time.monotonic()
    call = await Call.open(base(server))
    await call.send(metadata, key_message(str(user.public)))
    ended = await call.end()
    assert time.monotonic() - started < 3
    assert (ended.status, ended.close_code, len(ended.blocks)) == ((status, message), 1000, 1)
    assert row(server, str(user.public)) == (outcome, Status(status).name, "grpc-web", audited_key, message)


async def test_the_hubs_messages_for_a_bad_call(server):
    user = PrivateKey.generate()
    call = await Call.open(base(server))
    await call.send(metadata_block(), key_message(str(user.public)))
    challenge = await call.challenge()
    await call.send(signature_message(user.sign(challenge + b"!")), HALF_CLOSE)
    assert (await call.end()).status == (2, "bad signature")
    assert row(server, str(user.public))[:3] == ("bad_signature", "UNKNOWN", "grpc-web")

    late = PrivateKey.generate()
    call = await Call.open(base(server))
    await call.send(metadata_block(), key_message(str(late.public)))
    await call.challenge()
    started = time.monotonic()
    ended = await call.end()
    assert 1.9 <= time.monotonic() - started < 4  # AUTHORITY_CHALLENGE_DEADLINE=2
    assert ended.status == (4, "Challenge deadline exceeded")
    assert row(server, str(late.public))[:2] == ("challenge_timeout", "DEADLINE_EXCEEDED")


# -- the hostile battery ------------------------------------------------------------------------


def _garbage() -> bytes:
    return os.urandom(40).replace(b"\x00", b"\x07").replace(b"\x01", b"\x07")


#: What reaches the endpoint before a call began: a refusal counted per address and code.
BEFORE_THE_CALL = [
    ("bad-metadata", [b"host\r\n"], 13, "metadata line 1 is not 'name: value'", "invalid_grpc_web"),
    (
        "data-before-metadata",
        [data(b"\x0a\x03abc")],
        13,
        "data before the metadata block",
        "invalid_grpc_web",
    ),
    ("text-first", ["host: x\r\n"], 13, "a text message", "invalid_grpc_web"),
    ("garbage-first", [b"\x80" + _garbage()], 13, "not printable ASCII", "invalid_grpc_web"),
    (
        "grpc-web-text",
        [b"content-type: application/grpc-web-text\r\n"],
        13,
        "is not served",
        "invalid_grpc_web",
    ),
    ("metadata-over-64k", [b"a: " + b"x" * 70_000], 8, "larger than the limit", "frame_too_large"),
]


@pytest.mark.parametrize(
    ("case", "messages", "status", "says", "outcome"), BEFORE_THE_CALL, ids=[c[0] for c in BEFORE_THE_CALL]
)
async def test_hostile_input_before_the_call(server, case, messages, status, says, outcome):
    before = refusals(server, outcome)
    call = await Call.open(base(server))
    await call.send(*messages)
    ended = await call.end()
    assert ended.close_code == 1000
    code, message = ended.status
    assert (code, len(ended.blocks)) == (status, 1), message
    assert says in message
    assert wait_for_count(server, outcome, before + 1) == before + 1


def _in_call(pub: str) -> dict[str, list[bytes | str]]:
    key = key_message(pub)
    return {
        "length-prefix-lies": [key[:-5]],
        "length-prefix-says-less": [b"\x00\x00\x00\x00\x00\x02" + key[6:]],
        "message-over-64k": [data(b"\x12\x83\x80\x04" + bytes(70_000))],
        "length-prefix-over-64k": [b"\x00\x00\x00\x01\x10\x00"],
        "compressed": [data(key[6:], flag=1)],
        "garbage": [b"\x42" + _garbage()],
        "not-a-protobuf": [data(b"\xff\xff\xff\xff")],
        "text-message": [key, "signature please"],
        "after-half-close": [key, HALF_CLOSE, key],
    }


IN_CALL = [
    ("length-prefix-lies", 13, "length prefix says 61 bytes but 56 follow", "invalid_grpc_web"),
    ("length-prefix-says-less", 13, "not hold a GetTokenRequest", "invalid_grpc_web"),
    ("message-over-64k", 8, "larger than the limit (64 KiB)", "frame_too_large"),
    ("length-prefix-over-64k", 8, "larger than the limit (64 KiB)", "frame_too_large"),
    ("compressed", 13, "flag is 0x01", "invalid_grpc_web"),
    ("garbage", 13, "starts with 0x42", "invalid_grpc_web"),
    ("not-a-protobuf", 13, "not hold a GetTokenRequest", "invalid_grpc_web"),
    ("text-message", 13, "a text message", "invalid_grpc_web"),
    ("after-half-close", 3, "Signature is required", "missing_sig"),
]


@pytest.mark.parametrize(("case", "status", "says", "outcome"), IN_CALL, ids=[c[0] for c in IN_CALL])
async def test_hostile_input_in_the_call(server, case, status, says, outcome):
    user = PrivateKey.generate()
    call = await Call.open(base(server))
    await call.send(metadata_block(), *_in_call(str(user.public))[case])
    ended = await call.end()
    assert ended.close_code == 1000
    code, message = ended.status
    assert code == status, message
    assert says in message
    audited = row(server, str(user.public)) if case in ("text-message", "after-half-close") else None
    if audited is None:  # the key never got through: the row is the call's, found by its detail
        found = server.rows(
            "SELECT outcome, upstream_status, api_key FROM challenges_challengeattempt"
            " WHERE transport = 'grpc-web' AND detail = ? ORDER BY id DESC LIMIT 1",
            (message[:200],),
        )
        assert found == [(outcome, Status(status).name, API_KEY)]
    else:
        assert audited[:4] == (outcome, Status(status).name, "grpc-web", API_KEY)


async def test_a_text_frame_that_is_not_utf8_ends_the_call_audited_as_such(server):
    """The server's WebSocket layer refuses it before the endpoint sees it and closes with 1007
    (uvicorn's own; daphne's through challenges.daphneguard). Before the metadata block it is
    a refusal counted per address; in the call, the call's row says invalid_utf8, not that
    the caller cancelled."""
    before = refusals(server, "invalid_utf8")
    call = await Call.open(base(server))
    await call.ws.send(b"\xff\xfe", text=True)
    assert (await call.end()).close_code == 1007
    assert wait_for_count(server, "invalid_utf8", before + 1) == before + 1

    user = PrivateKey.generate()
    call = await Call.open(base(server))
    await call.send(metadata_block(), key_message(str(user.public)))
    await call.challenge()
    await call.ws.send(b"sig\xc0", text=True)
    assert (await call.end()).close_code == 1007
    assert row(server, str(user.public))[:4] == ("invalid_utf8", "INTERNAL", "grpc-web", API_KEY)

    after = PrivateKey.generate()  # and the next caller is served
    call = await Call.open(base(server))
    await call.send(metadata_block(), key_message(str(after.public)))
    await call.send(signature_message(after.sign(await call.challenge())), HALF_CLOSE)
    assert (await call.end()).status == (0, "")


async def test_a_call_with_no_request_or_a_half_close_only_is_the_hubs(server):
    for first in (HALF_CLOSE, data(b"")):  # the half-close, or a request with neither field
        call = await Call.open(base(server))
        await call.send(metadata_block(), first)
        assert (await call.end()).status == (3, "Key is required")


async def test_a_foreign_origin_is_refused_like_on_ws_token(server):
    before = refusals(server, "origin_not_allowed")
    call = await Call.open(base(server), origin="https://evil.example")
    await call.send(metadata_block())
    ended = await call.end()
    assert ended.status[0] == 7
    assert "is not allowed to get tokens here" in ended.status[1]
    assert wait_for_count(server, "origin_not_allowed", before + 1) == before + 1


@pytest.mark.parametrize(
    ("path", "subprotocols"),
    [
        ("/threads.pb.API/GetToken", None),
        ("/threads.pb.API/GetToken", ["grpc-web"]),
        ("/threads.pb.API/GetTokens", ["grpc-websockets"]),
        ("/threads.pb.API/Other", ["grpc-websockets"]),
        ("/ws/elsewhere", ["grpc-websockets"]),
    ],
)
async def test_the_handshake_is_refused_without_the_subprotocol_or_off_the_path(server, path, subprotocols):
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(base(server) + path, subprotocols=subprotocols, open_timeout=10)
    assert refused.value.response.status_code == 403


def test_grpc_is_not_loaded_on_the_grpc_web_path():
    code = (
        "import sys, django; django.setup();"
        "import tokensite.asgi, challenges.grpcweb_consumer, challenges.hub, challenges.hubstatus;"
        "print(sorted(m for m in sys.modules if m == 'grpc' or m.startswith('grpc.')))"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tokensite.settings"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=servers.ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- limits and shutdown -----------------------------------------------------------------------


async def test_the_rate_limit_and_the_stream_cap(tmp_path):
    env = endpoint_env(tmp_path, RATE_LIMIT_PER_MINUTE="1", RATE_LIMIT_BURST="2", AUTHORITY_MAX_STREAMS="1")
    with servers.running(tmp_path, kind="daphne", env=env) as srv:
        holder, other = PrivateKey.generate(), PrivateKey.generate()
        held = await Call.open(base(srv))
        await held.send(metadata_block(), key_message(str(holder.public)))
        await held.challenge()  # holds the one stream
        busy = await Call.open(base(srv))
        await busy.send(metadata_block(), key_message(str(other.public)))
        assert (await busy.end()).status == (8, "too many concurrent GetToken calls; retry shortly")
        assert row(srv, str(other.public))[:4] == (
            "too_many_pending",
            "RESOURCE_EXHAUSTED",
            "grpc-web",
            API_KEY,
        )
        await held.ws.close()
        limited = await Call.open(base(srv))  # the burst of 2 is spent
        await limited.send(metadata_block())
        code, message = (await limited.end()).status
        assert (code, message.startswith("too many requests from this address; retry in")) == (8, True)
        rows = srv.rows(
            "SELECT outcome, upstream_status, transport, api_key FROM challenges_challengeattempt"
            " WHERE outcome = ?",
            ("rate_limited",),
        )
        assert rows == [("rate_limited", "RESOURCE_EXHAUSTED", "grpc-web", API_KEY)]
    assert "Traceback" not in srv.log()


@pytest.mark.parametrize("kind", KINDS)
async def test_sigterm_ends_a_call_in_progress_with_unavailable(tmp_path, kind):
    server = servers.start(tmp_path, kind=kind, env=endpoint_env(tmp_path, AUTHORITY_CHALLENGE_DEADLINE="60"))
    user = PrivateKey.generate()
    try:
        call = await Call.open(base(server))
        await call.send(metadata_block(), key_message(str(user.public)))
        await call.challenge()
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        ended = await call.end()
        assert ended.close_code == 1000
        assert ended.status == (14, "the server is shutting down; retry")
        assert [flag for flag, _ in ended.blocks] == [0x80, 0x00, 0x80]
        while server.process.poll() is None and time.monotonic() - started < 10:
            await asyncio.sleep(0.05)
        assert server.process.poll() is not None, "the server did not exit within 10 s of SIGTERM"
    finally:
        server.stop()
    assert row(server, str(user.public))[:3] == ("server_shutdown", "UNAVAILABLE", "grpc-web")
    assert "Traceback" not in server.log()


def test_the_jwks_publishes_the_key_grpc_web_tokens_are_signed_with(server):
    with urllib.request.urlopen(f"{server.http}/.well-known/jwks.json", timeout=5) as response:
        keys = json.load(response)["keys"]
    assert [key["kid"] for key in keys] == [tokens.jwk(SIGNER.public)["kid"]]
