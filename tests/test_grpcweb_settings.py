"""The gRPC-Web endpoint in-process (Channels' communicator), under the settings that change
who may call: no API key in DEBUG (everyone) and in production (no one, as the Hub refused an
unknown key), ``USER_API_KEY`` as the fallback key, a blocked public key, and API keys that
cannot be read.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from challenges import runtime, tokens
from challenges.identity import PrivateKey
from challenges.models import ChallengeAttempt
from challenges.revocation import block_key
from tests.grpcwebutil import HALF_CLOSE, blocks, header_lines, key_message, metadata_block, signature_message
from tests.rpcutil import API_KEY, API_SECRET, parse_reply
from tokensite.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def keys(settings: Any) -> Any:
    """No API key configured anywhere, unless a test sets one."""
    settings.AUTHORITY_API_KEYS = ""
    settings.USER_API_KEY = ""
    settings.USER_API_SECRET = ""
    return settings


async def open_call() -> WebsocketCommunicator:
    comm = WebsocketCommunicator(
        application,
        "/threads.pb.API/GetToken",
        headers=[(b"host", b"127.0.0.1:8000")],
        subprotocols=["grpc-websockets"],
    )
    comm.scope["client"] = ("127.0.0.7", 5000)
    connected, subprotocol = await comm.connect()
    assert (connected, subprotocol) == (True, "grpc-websockets")
    return comm


async def until_closed(comm: WebsocketCommunicator) -> list[bytes]:
    """Every message the server sent, up to its close (1000)."""
    messages = []
    while True:
        output = await comm.receive_output(5)
        if output["type"] == "websocket.close":
            assert output.get("code") == 1000
            await comm.disconnect()
            return messages
        messages.append(output["bytes"])


def status(messages: list[bytes]) -> tuple[int, str]:
    [(flag, payload)] = blocks(messages[-1])
    assert flag == 0x80
    trailers = header_lines(payload)
    return int(trailers["grpc-status"]), urllib.parse.unquote(trailers.get("grpc-message", ""))


async def token_flow(
    user: PrivateKey, metadata: bytes, *, meanwhile: Callable[[], Awaitable[None]] | None = None
) -> tuple[tuple[int, str], list[bytes]]:
    """The call, with ``meanwhile`` run between the challenge and the signature."""
    comm = await open_call()
    await comm.send_to(bytes_data=metadata)
    await comm.send_to(bytes_data=key_message(str(user.public)))
    first = await comm.receive_output(5)
    [(_, payload)] = blocks(first["bytes"])
    if "grpc-status" not in header_lines(payload):  # the headers: a challenge follows
        challenge_message = await comm.receive_from(5)
        [(_, payload)] = blocks(challenge_message)
        kind, challenge = parse_reply(payload)
        assert kind == "challenge"
        if meanwhile is not None:
            await meanwhile()
        await comm.send_to(bytes_data=signature_message(user.sign(challenge)))
        await comm.send_to(bytes_data=HALF_CLOSE)
        messages = [first["bytes"], challenge_message, *await until_closed(comm)]
    else:
        messages = [first["bytes"], *await until_closed(comm)]
    return status(messages), messages


@database_sync_to_async
def rows(pub: str) -> list[tuple[str, str, str]]:
    return list(
        ChallengeAttempt.objects.filter(public_key=pub).values_list("outcome", "upstream_status", "api_key")
    )


async def test_no_api_key_in_debug_accepts_every_caller(keys, user_key, authority_signer):
    keys.DEBUG = True
    (code, _), messages = await token_flow(user_key, metadata_block(key=None))
    assert code == 0
    [(_, payload)] = blocks(messages[2])
    kind, token = parse_reply(payload)
    assert kind == "token"
    assert tokens.verify_token(token.decode(), issuer=authority_signer.public)["sub"] == str(user_key.public)
    assert await rows(str(user_key.public)) == [("success", "OK", "")]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (None, (16, "Session or API key required")),
        (API_KEY, (5, "API key not found or is invalid")),
    ],
)
async def test_no_api_key_in_production_refuses_every_caller_as_the_hub(keys, user_key, key, expected):
    keys.DEBUG = False
    assert (await token_flow(user_key, metadata_block(key=key)))[0] == expected


async def test_user_api_key_is_the_fallback_key_and_its_secret_is_checked(keys, user_key):
    keys.DEBUG = False
    keys.USER_API_KEY, keys.USER_API_SECRET = API_KEY, API_SECRET
    assert (await token_flow(user_key, metadata_block()))[0] == (0, "")
    other = PrivateKey.generate()
    assert (await token_flow(other, metadata_block(secret=None)))[0] == (16, "API key signature required")
    assert await rows(str(other.public)) == [("api_sig_required", "UNAUTHENTICATED", API_KEY)]


async def test_a_blocked_public_key_gets_no_token(keys, user_key):
    keys.AUTHORITY_API_KEYS = f"{API_KEY}:{API_SECRET}"
    await database_sync_to_async(block_key)(public_key=str(user_key.public), actor="test")
    (code, message), messages = await token_flow(user_key, metadata_block())
    assert (code, message) == (7, "this public key is blocked")
    assert len(messages) == 1  # no challenge was sent
    assert await rows(str(user_key.public)) == [("key_blocked", "PERMISSION_DENIED", API_KEY)]


async def test_a_key_blocked_while_the_call_waits_for_its_signature_gets_no_token(keys, user_key):
    keys.AUTHORITY_API_KEYS = f"{API_KEY}:{API_SECRET}"

    async def block() -> None:
        await database_sync_to_async(block_key)(public_key=str(user_key.public), actor="test")
        await (await runtime.get()).blocklist.refresh()  # what the worker's poll does within a second

    (code, message), messages = await token_flow(user_key, metadata_block(), meanwhile=block)
    assert (code, message) == (7, "this public key is blocked")
    assert len(messages) == 3  # the headers, the challenge, the trailers: no token
    assert await rows(str(user_key.public)) == [("key_blocked", "PERMISSION_DENIED", API_KEY)]


async def test_api_keys_that_cannot_be_read_make_the_endpoint_unavailable_not_broken(keys, user_key, caplog):
    keys.AUTHORITY_API_KEYS = f"not a key:{API_SECRET}"
    assert (await token_flow(user_key, metadata_block()))[0] == (
        12,
        "GetToken is not configured on this server",
    )
    assert "API key entry 1 has a malformed key" in caplog.text
    assert API_SECRET not in caplog.text
    # Every caller is refused so, but the log says it once (any client could repeat it).
    assert (await token_flow(user_key, metadata_block()))[0][0] == 12
    assert caplog.text.count("GetToken over gRPC-Web is not configured") == 1
