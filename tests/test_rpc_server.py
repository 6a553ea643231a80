"""``manage.py runauthority`` as a real process, driven by a hand-made client.

The client frames docs/PROTOCOL.md "Vectors" bytes itself (``tests.rpcutil``), so these
tests check the wire, not the generated stubs. Each failure has the Hub's
status code and message, and each flow outcome leaves an audit row.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import grpc.aio
import pytest

from challenges import tokens
from challenges.identity import PrivateKey
from tests import servers
from tests.conftest import VECTOR_PUBLIC
from tests.rpcutil import (
    API_KEY,
    API_SECRET,
    METHOD,
    OPEN_KEY,
    TWIN,
    Authority,
    RawCall,
    api_metadata,
    api_sig,
    key_frame,
    signature_frame,
    start_authority,
)

pytestmark = [pytest.mark.server, pytest.mark.once]
SIGNER = PrivateKey.generate()
DEADLINE = 1.0


def authority_env(tmp: Path) -> dict[str, str]:
    return servers.base_env(
        tmp,
        AUTHORITY_PRIVATE_KEY=str(SIGNER),
        AUTHORITY_API_KEYS=f"{API_KEY}:{API_SECRET},{OPEN_KEY}",
        TOKEN_TTL="600",
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Authority]:
    tmp = tmp_path_factory.mktemp("authority")
    process = start_authority(tmp, "--challenge-deadline", str(DEADLINE), env=authority_env(tmp))
    yield process
    assert process.stop() == 0, process.log()
    for secret_thing in (API_SECRET, api_sig(API_SECRET, "x")[:12]):
        assert secret_thing not in process.log()
    # No TLS configured: plaintext, and the log says so once.
    assert len(re.findall(r"^.*served in plaintext.*$", process.log(), re.MULTILINE)) == 1


@pytest.fixture
async def channel(server: Authority) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.target) as ch:
        yield ch


def outcome(server: Authority, key: str) -> tuple[str, str, str, str]:
    [row] = server.rows(
        "SELECT outcome, upstream_status, transport, upstream FROM challenges_challengeattempt"
        " WHERE public_key = ?",
        (key,),
    )
    return row


async def expect_status(call: RawCall, code: grpc.StatusCode, details: str) -> None:
    got = await call.status()
    assert got == (code, details)


@pytest.mark.parametrize("method", [METHOD, TWIN])
async def test_a_signed_challenge_gets_a_token(server, channel, vector_key, method):
    call = RawCall(channel, api_metadata(), method)
    await call.send(key_frame(VECTOR_PUBLIC))
    kind, challenge = await call.reply()
    assert kind == "challenge"
    assert len(challenge) == 32
    await call.send(signature_frame(vector_key.sign(challenge)))
    await call.call.done_writing()
    kind, token = await call.reply()
    assert kind == "token"
    assert await call.reply() is None
    await expect_status(call, grpc.StatusCode.OK, "")
    claims = tokens.verify_token(token.decode(), issuer=SIGNER.public)
    assert claims["sub"] == VECTOR_PUBLIC
    rows = server.rows(
        "SELECT a.outcome, a.transport, a.upstream, a.upstream_status, t.jti, t.token_sha256"
        " FROM challenges_challengeattempt a JOIN challenges_issuedtoken t ON t.attempt_id = a.id"
        " WHERE t.jti = ?",
        (claims["jti"],),
    )
    assert rows == [
        ("success", "grpc", "authority", "OK", claims["jti"], tokens.token_sha256(token.decode()))
    ]


async def test_a_key_without_secret_needs_no_signature(channel, user_key):
    call = RawCall(channel, api_metadata(OPEN_KEY, secret=None))
    await call.send(key_frame(str(user_key.public)))
    _, challenge = await call.reply()
    await call.send(signature_frame(user_key.sign(challenge)))
    assert (await call.reply())[0] == "token"


def wrong_secret_metadata() -> list[tuple[str, str]]:
    other = "b" + "a" * 39
    return [*api_metadata(secret=other)[:2], ("x-textile-api-sig", api_sig(other, "x"))]


@pytest.mark.parametrize(
    ("make_metadata", "code", "details"),
    [
        (lambda: [], grpc.StatusCode.UNAUTHENTICATED, "Session or API key required"),
        (lambda: api_metadata("bnosuchkey"), grpc.StatusCode.NOT_FOUND, "API key not found or is invalid"),
        (
            lambda: api_metadata(API_KEY, secret=None),
            grpc.StatusCode.UNAUTHENTICATED,
            "API key signature required",
        ),
        (lambda: api_metadata()[:2], grpc.StatusCode.UNAUTHENTICATED, "API key signature required"),
        (
            lambda: api_metadata(API_KEY, secret="b" + "a" * 39),
            grpc.StatusCode.UNAUTHENTICATED,
            "Bad API key signature",
        ),
        (
            lambda: api_metadata(ahead=timedelta(minutes=-1)),
            grpc.StatusCode.UNAUTHENTICATED,
            "Bad API key signature",
        ),
        (
            lambda: api_metadata(ahead=timedelta(hours=1, minutes=5)),
            grpc.StatusCode.UNAUTHENTICATED,
            "Bad API key signature",
        ),
        (wrong_secret_metadata, grpc.StatusCode.UNAUTHENTICATED, "Bad API key signature"),
    ],
    ids=[
        "no-key",
        "unknown-key",
        "no-sig",
        "no-sig-header",
        "bad-sig",
        "expired-sig",
        "far-sig",
        "sig-of-other",
    ],
)
async def test_api_key_refusals(server, channel, user_key, make_metadata, code, details):
    """Metadata is made when the test runs (a signature message dated at collection would
    expire while a slow run gets to it)."""
    call = RawCall(channel, make_metadata())
    with contextlib.suppress(grpc.aio.AioRpcError):  # refused before the first message: see the status
        await call.send(key_frame(str(user_key.public)))
    assert await call.reply_or_error() is None
    await expect_status(call, code, details)
    # Audited too (before the status is sent), with the Hub's status and nothing secret.
    [(outcome, status, detail)] = server.rows(
        "SELECT outcome, upstream_status, detail FROM challenges_challengeattempt WHERE public_key = ?",
        (str(user_key.public),),
    )
    assert outcome.startswith("api_")
    assert (status, detail) == (code.name, details)
    assert API_SECRET not in repr(server.rows("SELECT * FROM challenges_challengeattempt"))


async def test_first_message_not_a_key(server, channel, user_key):
    call = RawCall(channel, api_metadata())
    await call.send(signature_frame(bytes(64)))
    assert await call.reply_or_error() is None
    await expect_status(call, grpc.StatusCode.INVALID_ARGUMENT, "Key is required")


async def test_no_message_at_all(channel):
    call = RawCall(channel, api_metadata())
    await call.call.done_writing()
    assert await call.reply_or_error() is None
    await expect_status(call, grpc.StatusCode.INVALID_ARGUMENT, "Key is required")


@pytest.mark.parametrize(
    "bad", ["bnotakey", VECTOR_PUBLIC + "a", "z" + VECTOR_PUBLIC[1:], "", "bbaareigxlkm"]
)
async def test_bad_key_string_is_unknown(server, channel, bad):
    call = RawCall(channel, api_metadata())
    await call.send(key_frame(bad))
    assert await call.reply_or_error() is None
    code, details = await call.status()
    # As go-threads: an unparsable key (even an empty one, which is still a set oneof) is UNKNOWN.
    assert code == grpc.StatusCode.UNKNOWN
    assert details
    if bad:
        assert outcome(server, bad)[:2] == ("invalid_pub", "UNKNOWN")


async def test_second_message_not_a_signature(server, channel, user_key):
    call = RawCall(channel, api_metadata())
    await call.send(key_frame(str(user_key.public)))
    assert (await call.reply())[0] == "challenge"
    await call.send(key_frame(str(user_key.public)))
    assert await call.reply_or_error() is None
    await expect_status(call, grpc.StatusCode.INVALID_ARGUMENT, "Signature is required")
    assert outcome(server, str(user_key.public)) == ("missing_sig", "INVALID_ARGUMENT", "grpc", "authority")


async def test_half_close_instead_of_a_signature(server, channel, user_key):
    call = RawCall(channel, api_metadata())
    await call.send(key_frame(str(user_key.public)))
    assert (await call.reply())[0] == "challenge"
    await call.call.done_writing()
    assert await call.reply_or_error() is None
    await expect_status(call, grpc.StatusCode.INVALID_ARGUMENT, "Signature is required")


@pytest.mark.parametrize("length", [64, 10])
async def test_bad_signature(server, channel, user_key, length):
    call = RawCall(channel, api_metadata())
    await call.send(key_frame(str(user_key.public)))
    _, challenge = await call.reply()
    await call.send(signature_frame(user_key.sign(challenge + b"!")[:length]))
    assert await call.reply_or_error() is None
    await expect_status(call, grpc.StatusCode.UNKNOWN, "bad signature")
    assert outcome(server, str(user_key.public))[1:] == ("UNKNOWN", "grpc", "authority")


async def test_challenge_deadline(server, channel, user_key):
    call = RawCall(channel, api_metadata())
    await call.send(key_frame(str(user_key.public)))
    assert (await call.reply())[0] == "challenge"
    started = asyncio.get_running_loop().time()
    assert await call.reply_or_error() is None
    assert DEADLINE - 0.1 <= asyncio.get_running_loop().time() - started < DEADLINE + 2
    await expect_status(call, grpc.StatusCode.DEADLINE_EXCEEDED, "Challenge deadline exceeded")
    assert outcome(server, str(user_key.public))[:2] == ("challenge_timeout", "DEADLINE_EXCEEDED")


async def test_sigterm_lets_in_flight_streams_finish(tmp_path, user_key):
    server = start_authority(tmp_path, "--grace", "10", env=authority_env(tmp_path))
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            call = RawCall(channel, api_metadata())
            await call.send(key_frame(str(user_key.public)))
            _, challenge = await call.reply()
            server.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            late = RawCall(channel, api_metadata())
            assert await late.reply_or_error() is None
            assert (await late.status())[0] == grpc.StatusCode.UNAVAILABLE
            await call.send(signature_frame(user_key.sign(challenge)))
            assert (await call.reply())[0] == "token"
            await expect_status(call, grpc.StatusCode.OK, "")
        assert server.process.wait(10) == 0
        assert outcome(server, str(user_key.public))[0] == "success"
    finally:
        server.stop()


# -- the API key in every row of a call ----------------------------------------------


async def _finish(call: RawCall, key: PrivateKey, challenge: bytes) -> bytes:
    await call.send(signature_frame(key.sign(challenge)))
    await call.call.done_writing()
    kind, token = await call.reply()
    assert kind == "token"
    assert await call.status() == (grpc.StatusCode.OK, "")
    return token


async def _success(channel, key, metadata):
    call = RawCall(channel, metadata)
    await call.send(key_frame(str(key.public)))
    _, challenge = await call.reply()
    await _finish(call, key, challenge)


async def _bad_signature(channel, key, metadata):
    call = RawCall(channel, metadata)
    await call.send(key_frame(str(key.public)))
    _, challenge = await call.reply()
    await call.send(signature_frame(key.sign(challenge + b"!")))
    assert await call.reply_or_error() is None


async def _no_signature_in_time(channel, key, metadata):
    call = RawCall(channel, metadata)
    await call.send(key_frame(str(key.public)))
    await call.reply()
    assert await call.reply_or_error() is None  # the deadline (DEADLINE s) ends it


async def _second_message_not_a_signature(channel, key, metadata):
    call = RawCall(channel, metadata)
    await call.send(key_frame(str(key.public)))
    await call.reply()
    await call.send(key_frame(str(key.public)))
    assert await call.reply_or_error() is None


async def _cancelled(channel, key, metadata):
    call = RawCall(channel, metadata)
    await call.send(key_frame(str(key.public)))
    await call.reply()
    call.call.cancel()


async def _refused(channel, key, metadata):
    call = RawCall(channel, metadata)
    with contextlib.suppress(grpc.aio.AioRpcError):
        await call.send(key_frame(str(key.public)))
    assert await call.reply_or_error() is None


def _fingerprint(sent: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(sent.encode()).hexdigest()[:16]


UNKNOWN_HUB_KEY = "b" + "q" * 26  # well formed, not configured


@pytest.mark.parametrize(
    ("scenario", "make_metadata", "outcome_status", "api_key"),
    [
        (_success, api_metadata, ("success", "OK"), API_KEY),
        (_success, lambda: api_metadata(OPEN_KEY, secret=None), ("success", "OK"), OPEN_KEY),
        (_bad_signature, api_metadata, ("bad_signature", "UNKNOWN"), API_KEY),
        (_no_signature_in_time, api_metadata, ("challenge_timeout", "DEADLINE_EXCEEDED"), API_KEY),
        (
            _second_message_not_a_signature,
            api_metadata,
            ("missing_sig", "INVALID_ARGUMENT"),
            API_KEY,
        ),
        (_cancelled, api_metadata, ("missing_sig", "CANCELLED"), API_KEY),
        (
            _refused,
            lambda: api_metadata(API_KEY, secret=None),
            ("api_sig_required", "UNAUTHENTICATED"),
            API_KEY,
        ),
        (_refused, wrong_secret_metadata, ("api_sig_bad", "UNAUTHENTICATED"), API_KEY),
        (
            _refused,
            lambda: api_metadata(UNKNOWN_HUB_KEY),
            ("api_key_not_found", "NOT_FOUND"),
            UNKNOWN_HUB_KEY,
        ),
        # A secret pasted after its key, or sent in its place: only a fingerprint is kept.
        (
            _refused,
            lambda: [("x-textile-api-key", f"{API_KEY}:{API_SECRET}")],
            ("api_key_not_found", "NOT_FOUND"),
            _fingerprint(f"{API_KEY}:{API_SECRET}"),
        ),
        (
            _refused,
            lambda: [("x-textile-api-key", API_SECRET)],
            ("api_key_not_found", "NOT_FOUND"),
            _fingerprint(API_SECRET),
        ),
        # A repeated header: the key the check read (the first) is the key audited.
        (
            _success,
            lambda: [*api_metadata(), ("x-textile-api-key", UNKNOWN_HUB_KEY)],
            ("success", "OK"),
            API_KEY,
        ),
        (
            _refused,
            lambda: [*api_metadata(UNKNOWN_HUB_KEY), *api_metadata()],
            ("api_key_not_found", "NOT_FOUND"),
            UNKNOWN_HUB_KEY,
        ),
    ],
    ids=[
        "success",
        "success-open-key",
        "bad-signature",
        "deadline",
        "missing-sig",
        "cancelled",
        "api-sig-required",
        "api-sig-bad",
        "unknown-key",
        "key-and-secret-pasted",
        "secret-as-key",
        "repeated-header-accepted",
        "repeated-header-refused",
    ],
)
async def test_every_row_names_the_api_key_and_nothing_secret(
    server, channel, user_key, scenario, make_metadata, outcome_status, api_key
):
    metadata = make_metadata()  # now: a signature message made at collection could have expired
    await scenario(channel, user_key, metadata)
    query = "SELECT * FROM challenges_challengeattempt WHERE public_key = ?"
    rows = []
    for _ in range(100):  # a cancelled call's row is written after the caller has gone
        rows = server.rows(query, (str(user_key.public),))
        if rows:
            break
        await asyncio.sleep(0.05)
    [(outcome, status, audited)] = server.rows(
        "SELECT outcome, upstream_status, api_key FROM challenges_challengeattempt WHERE public_key = ?",
        (str(user_key.public),),
    )
    assert (outcome, status) == outcome_status
    assert audited == api_key
    secrets = [API_SECRET, *(value for name, value in metadata if name != "x-textile-api-key")]
    assert not [s for s in secrets if s in repr(rows)]


# -- the stream cap ------------------------------------------------------------------


async def test_calls_past_the_stream_cap_are_refused_at_once_and_audited(tmp_path):
    capped = start_authority(tmp_path, "--max-streams", "2", env=authority_env(tmp_path))
    try:
        async with grpc.aio.insecure_channel(capped.target) as channel:
            held = []
            for _ in range(2):  # hold both slots: each has its challenge, unanswered
                key = PrivateKey.generate()
                call = RawCall(channel, api_metadata())
                await call.send(key_frame(str(key.public)))
                held.append((call, key, (await call.reply())[1]))
            over_key = PrivateKey.generate()
            over = RawCall(channel, api_metadata())
            started = time.monotonic()
            with contextlib.suppress(grpc.aio.AioRpcError):
                await over.send(key_frame(str(over_key.public)))
            assert await over.reply_or_error() is None
            assert await over.status() == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "too many concurrent GetToken calls; retry shortly",
            )
            # At once: no waiting for a slot (the row's key shows the refusal came on the key).
            assert time.monotonic() - started < 3.0
            assert capped.rows(
                "SELECT outcome, upstream_status, api_key, transport FROM challenges_challengeattempt"
                " WHERE public_key = ?",
                (str(over_key.public),),
            ) == [("too_many_pending", "RESOURCE_EXHAUSTED", API_KEY, "grpc")]
            # One held call ends (with its token): its slot serves a new call.
            call, key, challenge = held.pop(0)
            await _finish(call, key, challenge)
            await _success(channel, PrivateKey.generate(), api_metadata())
            call, key, challenge = held.pop()
            await _finish(call, key, challenge)  # the other held call was never disturbed
        assert capped.stop() == 0, capped.log()
        assert re.search(r"at most 2 streams\)", capped.log())
    finally:
        capped.stop()


async def test_a_blocked_key_gets_no_challenge_and_unblocked_gets_one(server, channel, user_key):
    """``manage.py tokens block`` on the authority's database: within its blocklist's poll
    (a second), the key's calls are refused before any challenge, and audited."""

    def command(*args: str) -> None:
        subprocess.run(
            [sys.executable, "manage.py", "tokens", *args, str(user_key.public)],
            cwd=servers.ROOT, env=server.env, check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    async def attempt() -> tuple[str, bytes] | None:
        call = RawCall(channel, api_metadata())
        await call.send(key_frame(str(user_key.public)))
        reply = await call.reply_or_error()
        if reply is None:
            assert await call.status() == (grpc.StatusCode.PERMISSION_DENIED, "this public key is blocked")
        else:
            call.call.cancel()
        return reply

    await asyncio.to_thread(command, "block")
    for _ in range(40):  # the poll is every second: 4 s at most
        if await attempt() is None:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the blocked key still got challenges after 4 s")
    rows = server.rows(
        "SELECT outcome, upstream_status FROM challenges_challengeattempt WHERE public_key = ?"
        " AND outcome = 'key_blocked'",
        (str(user_key.public),),
    )
    assert rows[-1:] == [("key_blocked", "PERMISSION_DENIED")]
    await asyncio.to_thread(command, "unblock")
    assert await _eventually(attempt, lambda reply: reply is not None and reply[0] == "challenge")


async def _eventually(make, ok, tries: int = 40) -> bool:
    for _ in range(tries):
        if ok(await make()):
            return True
        await asyncio.sleep(0.1)
    return False
