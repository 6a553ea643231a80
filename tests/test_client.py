"""The Python client against a hostile server.

The server here is a deliberate fake (a few lines of `websockets`): a hostile or
broken token server cannot be made from the real one, which never names the
wrong key or audience.
"""

from __future__ import annotations

import json

import pytest
import websockets

from challenges import authority
from challenges.client import TokenClientError, get_token_async, origin_of
from challenges.identity import PrivateKey, encode_buffer


def test_origin_of():
    assert origin_of("ws://127.0.0.1:8000/ws/token") == "http://127.0.0.1:8000"
    assert origin_of("wss://tokens.example/ws/token") == "https://tokens.example"


async def serve(script):
    """Start a fake server whose handler is ``script(frame) -> reply frame``; returns (server, url)."""
    signed = []

    async def handler(sock):
        async for text in sock:
            frame = json.loads(text)
            if frame["type"] == "challenge":
                signed.append(frame)
            reply = script(frame)
            if reply is None:
                return
            await sock.send(reply if isinstance(reply, str) else json.dumps(reply))

    server = await websockets.serve(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"ws://127.0.0.1:{port}/ws/token", signed


def challenge_for(key, audience):
    ch = authority.make_challenge(audience=audience, key=key, timeout=60)
    return {"type": "challenge", "value": encode_buffer(ch.value), "id": ch.id, "raw": False}


@pytest.mark.parametrize("who", ["other_key", "other_audience"])
async def test_refuses_to_sign_for_another_key_or_audience(who):
    me = PrivateKey.generate()

    def script(frame):
        if frame["type"] == "token":
            if who == "other_key":
                return challenge_for(PrivateKey.generate().public, origin)
            return challenge_for(me.public, "https://evil.example")
        return {"type": "token", "value": "should-never-get-here"}

    server, url, signed = await serve(script)
    origin = origin_of(url)
    async with server:
        with pytest.raises(TokenClientError) as info:
            await get_token_async(url, me, timeout=5)
    assert info.value.code == "challenge_refused"
    assert signed == []


async def test_raw_challenges_need_explicit_consent():
    me = PrivateKey.generate()
    raw = bytes(range(32))

    def script(frame):
        if frame["type"] == "token":
            return {"type": "challenge", "value": encode_buffer(raw), "id": "r" * 24, "raw": True}
        return {"type": "token", "value": "hub-token"}

    server, url, signed = await serve(script)
    async with server:
        with pytest.raises(TokenClientError) as info:
            await get_token_async(url, me, timeout=5)
        assert info.value.code == "challenge_refused"
        assert signed == []
        assert await get_token_async(url, me, timeout=5, accept_raw=True) == "hub-token"
    me.public.verify(raw, bytes(signed[0]["sig"]["data"]))
    assert signed[0]["id"] == "r" * 24


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        ("not json", "protocol_error"),
        ({"type": "error", "value": "nope", "code": "rate_limited"}, "rate_limited"),
        ({"type": "error", "value": "tutorial server: no code"}, "error"),
        ({"type": "token", "value": "too early"}, "protocol_error"),
        ({"type": "challenge", "value": "not bytes"}, "protocol_error"),
        ([1], "protocol_error"),
    ],
)
async def test_bad_replies_raise_typed_errors(reply, code):
    server, url, _ = await serve(lambda frame: reply)
    async with server:
        with pytest.raises(TokenClientError) as info:
            await get_token_async(url, PrivateKey.generate(), timeout=5)
    assert info.value.code == code


async def test_server_that_closes_is_a_connection_error():
    server, url, _ = await serve(lambda frame: None)  # the handler returns: the socket closes
    async with server:
        with pytest.raises(TokenClientError) as info:
            await get_token_async(url, PrivateKey.generate(), timeout=5)
    assert info.value.code == "connection_closed"


async def test_silent_server_times_out():
    async def handler(sock):
        await sock.recv()
        await sock.wait_closed()  # never answers; the client gives up first

    async with websockets.serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(TokenClientError) as info:
            await get_token_async(f"ws://127.0.0.1:{port}/ws/token", PrivateKey.generate(), timeout=0.5)
    assert info.value.code == "timeout"
