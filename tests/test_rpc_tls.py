"""``runauthority`` over TLS, as real processes: a private CA made for the run signs the
authority's certificate (SAN ``IP:127.0.0.1``); clients that trust the CA get tokens,
plaintext and untrusting clients are refused, and a uvicorn provider relays
``grpcs://`` to it trusting the CA through ``TOKEN_UPSTREAM_CA``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import pytest

from challenges import tokens
from challenges.client import get_token_async
from challenges.errors import UpstreamError
from challenges.identity import PrivateKey
from challenges.rpc.client import GrpcUpstream
from challenges.runtime import Runtime, RuntimeConfig
from tests import servers
from tests.rpcutil import (
    API_KEY,
    API_SECRET,
    Authority,
    Pki,
    RawCall,
    api_metadata,
    key_frame,
    make_pki,
    signature_frame,
    start_authority,
)

pytestmark = [pytest.mark.server, pytest.mark.once]
SIGNER = PrivateKey.generate()


@dataclass
class Setup:
    tmp: Path
    pki: Pki
    hub: Authority


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("tls")
    pki = make_pki(tmp / "pki")
    env = servers.base_env(
        tmp,
        AUTHORITY_PRIVATE_KEY=str(SIGNER),
        AUTHORITY_API_KEYS=f"{API_KEY}:{API_SECRET}",
        AUTHORITY_TLS_CERT=str(pki.cert),
        AUTHORITY_TLS_KEY=str(pki.key),
        TOKEN_TTL="600",
    )
    hub = start_authority(tmp, env=env)
    try:
        yield Setup(tmp, pki, hub)
    finally:
        assert hub.stop() == 0, hub.log()
    log = hub.log()
    assert API_SECRET not in log
    assert pki.key_pem.decode().splitlines()[1] not in log  # no line of the TLS key
    assert "plaintext" not in log
    assert re.search(r"serving GetToken on 127\.0\.0\.1:\d+ \(TLS,", log), log


@pytest.fixture
async def trusting(setup: Setup) -> AsyncIterator[grpc.aio.Channel]:
    credentials = grpc.ssl_channel_credentials(root_certificates=setup.pki.ca_pem)
    async with grpc.aio.secure_channel(setup.hub.target, credentials) as channel:
        yield channel


def rows_of(setup: Setup, key: PrivateKey) -> list[tuple]:
    return setup.hub.rows(
        "SELECT transport, upstream, outcome, upstream_status, api_key FROM challenges_challengeattempt"
        " WHERE public_key = ? ORDER BY transport",
        (str(key.public),),
    )


async def test_a_client_trusting_the_ca_gets_a_token(setup, trusting, user_key):
    call = RawCall(trusting, api_metadata())
    await call.send(key_frame(str(user_key.public)))
    kind, challenge = await call.reply()
    assert (kind, len(challenge)) == ("challenge", 32)
    await call.send(signature_frame(user_key.sign(challenge)))
    await call.call.done_writing()
    kind, token = await call.reply()
    assert kind == "token"
    assert await call.status() == (grpc.StatusCode.OK, "")
    assert tokens.verify_token(token.decode(), issuer=SIGNER.public)["sub"] == str(user_key.public)
    assert rows_of(setup, user_key) == [("grpc", "authority", "success", "OK", API_KEY)]


async def refused_status(channel: grpc.aio.Channel, key: PrivateKey) -> grpc.StatusCode:
    call = RawCall(channel, api_metadata())
    with contextlib.suppress(grpc.aio.AioRpcError):
        await call.send(key_frame(str(key.public)))
    assert await call.reply_or_error() is None
    return (await call.status())[0]


async def test_a_plaintext_client_is_refused(setup, user_key):
    async with grpc.aio.insecure_channel(setup.hub.target) as channel:
        assert await refused_status(channel, user_key) == grpc.StatusCode.UNAVAILABLE
    assert rows_of(setup, user_key) == []  # it never reached GetToken


async def test_a_client_not_trusting_the_ca_is_refused(setup, user_key):
    # The system's bundle does not hold the test CA.
    async with grpc.aio.secure_channel(setup.hub.target, grpc.ssl_channel_credentials()) as channel:
        assert await refused_status(channel, user_key) == grpc.StatusCode.UNAVAILABLE
    assert rows_of(setup, user_key) == []


async def test_the_relay_trusts_only_the_configured_ca(setup, user_key, settings):
    target = setup.hub.target
    untrusting = GrpcUpstream(target=target, secure=True, api_key=API_KEY, api_secret=API_SECRET)
    try:
        with pytest.raises(UpstreamError) as info:
            await untrusting.begin(key=user_key.public, audience="", timeout=3)
        assert info.value.code == "upstream_unavailable"
    finally:
        await untrusting.close()
    # TOKEN_UPSTREAM_CA reaches the relay through the runtime's config.
    settings.TOKEN_UPSTREAM = f"grpcs://{target}"
    settings.TOKEN_UPSTREAM_CA = str(setup.pki.ca)
    settings.USER_API_KEY, settings.USER_API_SECRET = API_KEY, API_SECRET
    relay = Runtime(RuntimeConfig.from_settings(), layer=None).upstream
    assert isinstance(relay, GrpcUpstream)
    assert relay.root_certificates == setup.pki.ca_pem
    try:
        pending = await relay.begin(key=user_key.public, audience="", timeout=5)
        token = await pending.finish(user_key.sign(pending.challenge.value))
        assert tokens.verify_token(token.token, issuer=SIGNER.public)["sub"] == str(user_key.public)
        assert relay.open_calls == 0
    finally:
        await relay.close()


async def test_a_uvicorn_provider_relays_grpcs_to_the_tls_authority(setup, user_key):
    provider_env = servers.base_env(
        setup.tmp,
        TOKEN_UPSTREAM=f"grpcs://{setup.hub.target}",
        TOKEN_UPSTREAM_CA=str(setup.pki.ca),
        USER_API_KEY=API_KEY,
        USER_API_SECRET=API_SECRET,
        AUTHORITY_PRIVATE_KEY=str(SIGNER),
        CHALLENGE_TIMEOUT="5",
    )
    provider = servers.start(setup.tmp / "provider", kind="uvicorn", env=provider_env, migrate_db=False)
    try:
        token = await get_token_async(provider.ws, user_key, accept_raw=True, timeout=10)
    finally:
        provider.stop()  # uvicorn re-raises SIGTERM once it has shut down: not a 0 exit
    claims = tokens.verify_token(token, issuer=SIGNER.public)
    assert claims["sub"] == str(user_key.public)
    # One audit (a shared database): the authority's row and the provider's.
    assert rows_of(setup, user_key) == [
        ("grpc", "authority", "success", "OK", API_KEY),
        ("ws", f"grpcs://{setup.hub.target}", "success", "OK", ""),
    ]
    assert API_SECRET not in provider.log()
    assert "upstream grpcs://127.0.0.1:" in provider.log()
