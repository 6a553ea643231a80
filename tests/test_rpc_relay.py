"""The ``grpc`` upstream in-process: the WebSocket consumer relays to a real
``runauthority`` process (or, for a Hub that stalls, a fake), and every fault
surfaces its code within the timeout, leaves an audit row, and leaks no stream
(``GrpcUpstream.open_calls``) and no task (``asyncio.all_tasks()``).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from challenges import runtime
from challenges.identity import PrivateKey
from challenges.models import SUCCESS
from challenges.rpc.client import GrpcUpstream
from challenges.tokens import token_sha256, verify_token
from tests import servers
from tests.rpcutil import API_KEY, API_SECRET, METHOD, Authority, parse_reply, start_authority
from tests.wsutil import attempts, challenge, connect, receive, send, sign_frame, tokens

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.server]
SIGNER = PrivateKey.generate()
TIMEOUT = 2.0


def authority_env(tmp: Path) -> dict[str, str]:
    return servers.base_env(
        tmp, AUTHORITY_PRIVATE_KEY=str(SIGNER), AUTHORITY_API_KEYS=f"{API_KEY}:{API_SECRET}"
    )


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Authority]:
    tmp = tmp_path_factory.mktemp("hub")
    process = start_authority(tmp, env=authority_env(tmp))
    yield process
    assert process.stop() == 0, process.log()
    assert API_SECRET not in process.log()


@pytest.fixture
def relay(settings: Any) -> Any:
    """Point the in-process provider at ``target`` (call it), with the API key."""

    def point(target: str, *, secret: str = API_SECRET, timeout: float = TIMEOUT) -> None:
        settings.TOKEN_UPSTREAM = f"grpc://{target}"
        settings.USER_API_KEY = API_KEY
        settings.USER_API_SECRET = secret
        settings.CHALLENGE_TIMEOUT = timeout

    return point


async def no_leaks() -> None:
    """No open stream, and once the runtime is stopped, no task left at all."""
    rt = await runtime.get()
    assert isinstance(rt.upstream, GrpcUpstream)
    assert rt.upstream.open_calls == 0
    assert rt.service.pending_count == 0
    await rt.stop()
    await asyncio.sleep(0.05)
    left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert left == []


async def last_row() -> Any:
    rows = await attempts()
    assert rows, "no audit row"
    return rows[-1]


async def expect_error(comm: Any, code: str, *, within: float, frame: dict | None = None) -> None:
    started = time.monotonic()
    got = frame or await receive(comm, timeout=within + 1)
    assert got["type"] == "error", got
    assert got["code"] == code, got
    assert time.monotonic() - started <= within + 1
    assert API_SECRET not in got["value"]


async def test_relay_gets_a_token_that_verifies_against_the_authority(hub, relay, user_key):
    relay(hub.target)
    comm = await connect()
    frame = await challenge(comm, user_key)
    assert frame["raw"] is True
    assert len(frame["value"]["data"]) == 32
    assert (await runtime.get()).upstream.open_calls == 1
    reply = await send(comm, sign_frame(user_key, frame))
    assert reply["type"] == "token", reply
    claims = verify_token(reply["value"], issuer=SIGNER.public)
    assert claims["sub"] == str(user_key.public)
    row = await last_row()
    assert (row.outcome, row.upstream, row.upstream_status) == (SUCCESS, f"grpc://{hub.target}", "OK")
    [token] = await tokens()
    assert token.jti == claims["jti"]
    assert token.token_sha256 == token_sha256(reply["value"])
    # The same channel serves the next flow.
    channel = (await runtime.get()).upstream._channel
    frame = await challenge(comm, user_key)
    assert (await send(comm, sign_frame(user_key, frame)))["type"] == "token"
    assert (await runtime.get()).upstream._channel is channel
    await comm.disconnect()
    await no_leaks()


async def test_bad_signature(hub, relay, user_key):
    relay(hub.target)
    comm = await connect()
    frame = await challenge(comm, user_key)
    frame["value"]["data"][0] ^= 1
    await expect_error(
        comm, "upstream_bad_signature", within=TIMEOUT, frame=await send(comm, sign_frame(user_key, frame))
    )
    row = await last_row()
    assert (row.outcome, row.upstream_status) == ("upstream_bad_signature", "UNKNOWN")
    await comm.disconnect()
    await no_leaks()


async def test_wrong_api_secret(hub, relay, user_key):
    relay(hub.target, secret="b" + "a" * 39)
    comm = await connect()
    await comm.send_json_to({"type": "token", "pub": str(user_key.public)})
    await expect_error(comm, "upstream_api_key", within=TIMEOUT)
    row = await last_row()
    assert (row.outcome, row.upstream_status) == ("upstream_api_key", "UNAUTHENTICATED")
    assert API_SECRET not in repr(vars(row))
    await comm.disconnect()
    await no_leaks()


async def test_authority_not_running(relay, user_key):
    relay(f"127.0.0.1:{servers.free_port()}")
    comm = await connect()
    await comm.send_json_to({"type": "token", "pub": str(user_key.public)})
    await expect_error(comm, "upstream_unavailable", within=TIMEOUT)
    row = await last_row()
    assert (row.outcome, row.upstream_status) == ("upstream_unavailable", "UNAVAILABLE")
    await comm.disconnect()
    await no_leaks()


async def test_authority_killed_between_challenge_and_signature(tmp_path, relay, user_key):
    hub = start_authority(tmp_path, env=authority_env(tmp_path))
    try:
        relay(hub.target)
        comm = await connect()
        frame = await challenge(comm, user_key)
        hub.process.send_signal(signal.SIGKILL)
        hub.process.wait(5)
        reply = await send(comm, sign_frame(user_key, frame))
        await expect_error(comm, "upstream_unavailable", within=TIMEOUT, frame=reply)
        row = await last_row()
        assert (row.outcome, row.upstream_status) == ("upstream_unavailable", "UNAVAILABLE")
        await comm.disconnect()
        await no_leaks()
    finally:
        hub.stop()


class StallingHub:
    """A fake standing in for a Hub that stalls (no real Hub can be made to):
    it answers ``GetToken`` only up to ``stage`` ("key": never sends the
    challenge; "signature": takes the signature and never answers), then
    waits until the caller gives up. It records how many calls it saw end."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.ended = 0

    async def get_token(self, requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        try:
            await anext(requests)
            if self.stage == "signature":
                yield b"\x0a\x20" + bytes(32)  # GetTokenReply{challenge}, hand-encoded
                await anext(requests)
            await asyncio.sleep(60)
        finally:
            self.ended += 1


class Stalling:
    """Starts :class:`StallingHub` servers in the test's loop; ``stop()`` ends them."""

    def __init__(self) -> None:
        self.servers: list[grpc.aio.Server] = []

    async def start(self, stage: str) -> tuple[StallingHub, str]:
        fake = StallingHub(stage)
        server = grpc.aio.server()
        handler = grpc.stream_stream_rpc_method_handler(fake.get_token)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(METHOD.split("/")[1], {"GetToken": handler}),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self.servers.append(server)
        return fake, f"127.0.0.1:{port}"

    async def stop(self) -> None:
        while self.servers:
            await self.servers.pop().stop(None)


@pytest.fixture
async def stalling() -> AsyncIterator[Stalling]:
    fakes = Stalling()
    yield fakes
    await fakes.stop()


async def test_hub_too_slow_to_send_the_challenge(stalling, relay, user_key):
    fake, target = await stalling.start("key")
    relay(target)
    comm = await connect()
    started = time.monotonic()
    await comm.send_json_to({"type": "token", "pub": str(user_key.public)})
    await expect_error(comm, "upstream_deadline", within=TIMEOUT)
    assert time.monotonic() - started <= TIMEOUT + 0.5
    row = await last_row()
    assert (row.outcome, row.upstream_status) == ("upstream_deadline", "DEADLINE_EXCEEDED")
    await comm.disconnect()
    await asyncio.sleep(0.1)
    assert fake.ended == 1  # the stream was cancelled on the Hub's side too
    await stalling.stop()
    await no_leaks()


async def test_hub_too_slow_to_send_the_token(stalling, relay, user_key):
    fake, target = await stalling.start("signature")
    relay(target)
    comm = await connect()
    frame = await challenge(comm, user_key)
    assert parse_reply(b"\x0a\x20" + bytes(frame["value"]["data"])) == ("challenge", bytes(32))
    started = time.monotonic()
    await comm.send_json_to(sign_frame(user_key, frame))
    await expect_error(comm, "upstream_deadline", within=TIMEOUT)
    assert time.monotonic() - started <= TIMEOUT + 1
    row = await last_row()
    assert (row.outcome, row.upstream_status) == ("upstream_deadline", "DEADLINE_EXCEEDED")
    await comm.disconnect()
    await asyncio.sleep(0.1)
    assert fake.ended == 1
    await stalling.stop()
    await no_leaks()


async def test_client_disconnect_cancels_the_stream_after_the_resume_grace(
    stalling, relay, user_key, settings
):
    settings.RELAY_RESUME_GRACE = 0.3
    fake, target = await stalling.start("signature")
    relay(target, timeout=30)
    comm = await connect()
    await challenge(comm, user_key)
    assert (await runtime.get()).upstream.open_calls == 1
    await comm.disconnect()
    await asyncio.sleep(0.1)
    assert (await runtime.get()).upstream.open_calls == 1  # a reconnect could still resume it
    await asyncio.sleep(0.4)
    row = await last_row()
    assert (row.outcome, row.upstream_status) == ("challenge_timeout", "CANCELLED")
    assert fake.ended == 1
    await stalling.stop()
    await no_leaks()


async def test_client_timeout_cancels_the_stream(hub, relay, user_key):
    relay(hub.target, timeout=0.5)
    comm = await connect()
    await challenge(comm, user_key)
    await expect_error(comm, "challenge_timeout", within=0.5)
    row = await last_row()
    assert (row.outcome, row.upstream_status) == ("challenge_timeout", "CANCELLED")
    await comm.disconnect()
    await no_leaks()
