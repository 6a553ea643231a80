"""The Python client against a hostile server.

The server here is a deliberate fake (a few lines of `websockets`): a hostile or
broken token server cannot be made from the real one, which never names the
wrong key or audience.
"""

from __future__ import annotations

import asyncio
import io
import json
import queue
import threading
from unittest import mock

import pytest
import websockets
from django.core.management import call_command
from django.core.management.base import CommandError

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


def _other_sites_text(me: PrivateKey) -> bytes:
    """The v1 challenge text another service would ask this key to sign (240 bytes)."""
    return authority.make_challenge(audience="https://bank.example", key=me.public, timeout=60).value


@pytest.mark.parametrize(
    "make",
    [
        lambda me: b"",
        lambda me: bytes(range(31)),
        lambda me: bytes(range(33)),
        lambda me: bytes(64),
        lambda me: b"I, the holder of this key, approve payment 4711 to bank.example.".ljust(200, b" "),
        _other_sites_text,
    ],
    ids=["0-bytes", "31-bytes", "33-bytes", "64-bytes", "200-byte-text", "another-sites-v1-text"],
)
async def test_raw_challenges_are_signed_only_when_32_bytes(make):
    """``accept_raw`` means "sign a Hub's 32 random bytes", never "sign anything labelled raw":
    a hostile relay could otherwise pass any message off as a Hub challenge."""
    me = PrivateKey.generate()
    value = make(me)

    def script(frame):
        if frame["type"] == "token":
            return {"type": "challenge", "value": encode_buffer(value), "id": "r" * 24, "raw": True}
        return {"type": "token", "value": "hub-token"}

    server, url, signed = await serve(script)
    async with server:
        with pytest.raises(TokenClientError) as info:
            await get_token_async(url, me, timeout=5, accept_raw=True)
    assert info.value.code == "challenge_refused"
    assert "32" in info.value.message
    assert signed == []


@pytest.mark.parametrize(("length", "refused"), [(200, True), (32, False)])
def test_gettoken_accept_raw_signs_only_32_bytes(length, refused, tmp_path):
    """``manage.py gettoken --accept-raw`` against a fake relay running in a thread."""
    me = PrivateKey.generate()
    key_file = tmp_path / "key"
    key_file.write_text(str(me))
    value = bytes(range(length)) if length == 32 else b"pay 4711 to bank.example".ljust(length)
    signed: list = []
    ready: queue.Queue = queue.Queue()

    def run() -> None:
        async def main() -> None:
            def script(frame):
                if frame["type"] == "token":
                    return {"type": "challenge", "value": encode_buffer(value), "raw": True}
                return {"type": "token", "value": "hub-token"}

            server, url, got = await serve(script)
            stop = asyncio.Event()
            ready.put((url, asyncio.get_running_loop(), stop))
            async with server:
                await stop.wait()
            signed.extend(got)

        asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    url, loop, stop = ready.get(timeout=10)
    out = io.StringIO()
    try:
        if refused:
            with pytest.raises(CommandError, match="challenge_refused"):
                call_command("gettoken", "--url", url, "--key-file", str(key_file), "--accept-raw",
                             "--timeout", "5", stdout=out, stderr=io.StringIO())  # fmt: skip
        else:
            call_command("gettoken", "--url", url, "--key-file", str(key_file), "--accept-raw",
                         "--timeout", "5", stdout=out, stderr=io.StringIO())  # fmt: skip
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
    assert not thread.is_alive()
    if refused:
        assert signed == []
        assert out.getvalue() == ""
    else:
        me.public.verify(value, bytes(signed[0]["sig"]["data"]))
        assert out.getvalue().strip() == "hub-token"


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


async def test_a_server_that_refuses_as_the_socket_opens_is_heard():
    """A server refusing at once (``insecure_transport``, ``origin_not_allowed``...) sends its
    error frame and closes: the client that sends after the close reports that error, not
    ``connection_closed`` (a race a fresh clone's run lost)."""

    async def handler(sock):
        await sock.send(json.dumps({"type": "error", "value": "use wss", "code": "insecure_transport"}))
        await sock.close(4008)

    real = websockets.connect

    class SendsLate:  # the client's first frame leaves only once the server has closed
        def __init__(self, *args, **kwargs):
            self.opening = real(*args, **kwargs)

        async def __aenter__(self):
            self.sock = await self.opening.__aenter__()
            send = self.sock.send

            async def late(message):
                await self.sock.wait_closed()
                await send(message)

            self.sock.send = late
            return self.sock

        async def __aexit__(self, *exc):
            return await self.opening.__aexit__(*exc)

    async with websockets.serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}/ws/token"
        with (
            mock.patch("challenges.client.websockets.connect", SendsLate),
            pytest.raises(TokenClientError) as info,
        ):
            await get_token_async(url, PrivateKey.generate(), timeout=5)
    assert (info.value.code, info.value.message) == ("insecure_transport", "use wss")


async def test_silent_server_times_out():
    async def handler(sock):
        await sock.recv()
        await sock.wait_closed()  # never answers; the client gives up first

    async with websockets.serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(TokenClientError) as info:
            await get_token_async(f"ws://127.0.0.1:{port}/ws/token", PrivateKey.generate(), timeout=0.5)
    assert info.value.code == "timeout"
