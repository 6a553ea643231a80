"""The WebSocket consumer, in-process, for the happy path and every bad-input row.

Each error test checks the frame's ``code`` and the audit row it left.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.testing import WebsocketCommunicator

from challenges import authority, runtime
from challenges.identity import PrivateKey, encode_buffer
from challenges.models import SUCCESS
from challenges.tokens import token_sha256, verify_token
from tests.wsutil import AUDIENCE, attempts, challenge, connect, receive, send, sign_frame, tokens

pytestmark = pytest.mark.django_db(transaction=True)


async def expect_error(comm: WebsocketCommunicator, code: str, frame: dict | None = None) -> dict:
    got = await receive(comm) if frame is None else frame
    assert got["type"] == "error", got
    assert got["code"] == code, got
    assert isinstance(got["value"], str)
    assert got["value"]
    return got


async def last_row():
    rows = await attempts()
    assert rows, "no audit row was written"
    return rows[-1]


async def test_full_flow_issues_a_verifiable_token_and_audits_it(user_key, authority_signer):
    comm = await connect(origin=AUDIENCE)
    frame = await challenge(comm, user_key)
    assert set(frame) >= {"type", "value", "id", "expires_at"}
    assert frame["value"]["type"] == "Buffer"
    text = authority.check_challenge_text(
        bytes(frame["value"]["data"]), audience=AUDIENCE, key=user_key.public
    )
    assert text.expires > text.issued
    reply = await send(comm, sign_frame(user_key, frame))
    assert reply["type"] == "token"
    claims = verify_token(reply["value"], issuer=authority_signer.public)
    assert claims["sub"] == str(user_key.public)
    [row] = await attempts()
    assert row.outcome == SUCCESS
    assert row.public_key == str(user_key.public)
    assert row.challenge_id == frame["id"]
    assert row.client_ip == "127.0.0.9"
    assert row.origin == AUDIENCE
    assert row.user_agent == "pytest"
    assert row.upstream == "local"
    assert row.latency_ms is not None
    assert row.latency_ms >= 0
    [token] = await tokens()
    assert token.attempt_id == row.id
    assert token.jti == claims["jti"]
    assert token.token_sha256 == token_sha256(reply["value"])
    assert reply["value"] not in json.dumps([vars(row), vars(token)], default=str)
    await comm.disconnect()


async def test_two_flows_in_a_row_on_one_socket(user_key):
    comm = await connect()
    for _ in range(2):
        frame = await challenge(comm, user_key)
        assert (await send(comm, sign_frame(user_key, frame)))["type"] == "token"
    assert [r.outcome for r in await attempts()] == [SUCCESS, SUCCESS]
    await comm.disconnect()


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{not json", "invalid_json"),
        ("[1, 2, 3]", "invalid_frame"),
        ('"token"', "invalid_frame"),
        ('{"pub": "x"}', "missing_type"),
        ('{"type": "hello"}', "unknown_type"),
        ('{"type": "token"}', "missing_pub"),
        ('{"type": "token", "pub": ""}', "missing_pub"),
    ],
)
async def test_unusable_frames(text, code):
    comm = await connect()
    await comm.send_to(text_data=text)
    await expect_error(comm, code)
    row = await last_row()
    assert row.outcome == code
    assert row.client_ip == "127.0.0.9"
    await comm.disconnect()


@pytest.mark.parametrize(
    "pub",
    [
        "zbaareigxlkmadavrbk35ks762pewibz2b3qxf462uyrsllycdjupob2rdi",  # wrong multibase
        "bbaareigxlkmadavrbk35ks762pewibz2b3qxf462uyrsllycdjupob2rd",  # short
        "BBAAREIGXLKMADAVRBK35KS762PEWIBZ2B3QXF462UYRSLLYCDJUPOB2RDI",  # upper case
        "bbaqreigxlkmadavrbk35ks762pewibz2b3qxf462uyrsllycdjupob2rdi",  # another key type
        12345,
    ],
)
async def test_malformed_public_key_is_refused_and_audited_with_the_key(pub):
    comm = await connect()
    frame = await send(comm, {"type": "token", "pub": pub})
    await expect_error(comm, "invalid_pub", frame)
    row = await last_row()
    assert row.outcome == "invalid_pub"
    assert row.public_key == (pub if isinstance(pub, str) else "")
    await comm.disconnect()


async def test_second_token_while_pending(user_key):
    comm = await connect()
    first = await challenge(comm, user_key)
    await expect_error(
        comm, "already_pending", await send(comm, {"type": "token", "pub": str(user_key.public)})
    )
    row = await last_row()
    assert (row.outcome, row.public_key) == ("already_pending", str(user_key.public))
    # The first challenge is still good.
    assert (await send(comm, sign_frame(user_key, first)))["type"] == "token"
    await comm.disconnect()


async def test_challenge_before_token(user_key):
    comm = await connect()
    # Well-formed or not, an answer with nothing to answer says so (not what is wrong in it).
    for sig in (encode_buffer(bytes(64)), "AAAA", None):
        answer = {"type": "challenge"} if sig is None else {"type": "challenge", "sig": sig}
        await expect_error(comm, "no_challenge", await send(comm, answer))
    # Refusals of one address, code and minute share one row (its count is added later):
    # a row of any other code would mean one of the three was audited as something else.
    assert [row.outcome for row in await attempts()] == ["no_challenge"]
    await comm.disconnect()


@pytest.mark.parametrize(
    ("sig", "code"),
    [
        (None, "missing_sig"),
        ({"type": "Buffer", "data": [1, 2, 300]}, "invalid_sig_encoding"),
        ({"type": "Uint8Array", "data": [1]}, "invalid_sig_encoding"),
        ("not*base64!", "invalid_sig_encoding"),
        (3.14, "invalid_sig_encoding"),
        ([True] * 64, "invalid_sig_encoding"),
        ({"type": "Buffer", "data": [0] * 63}, "invalid_sig_length"),
        ([0] * 65, "invalid_sig_length"),
    ],
)
async def test_bad_sig_spends_the_challenge_and_is_audited_with_it(user_key, sig, code):
    comm = await connect()
    first = await challenge(comm, user_key)
    answer = {"type": "challenge"} if sig is None else {"type": "challenge", "sig": sig}
    await expect_error(comm, code, await send(comm, answer))
    row = await last_row()
    assert (row.outcome, row.public_key, row.challenge_id) == (code, str(user_key.public), first["id"])
    # One attempt per challenge: the good signature now finds nothing.
    await expect_error(comm, "no_challenge", await send(comm, sign_frame(user_key, first)))
    await comm.disconnect()


@pytest.mark.parametrize("encoding", ["buffer", "array", "base64", "base64url"])
async def test_signature_encodings_accepted(user_key, encoding):
    import base64

    comm = await connect()
    frame = await challenge(comm, user_key)
    sig = user_key.sign(bytes(frame["value"]["data"]))
    sig_value = {
        "buffer": encode_buffer(sig),
        "array": list(sig),
        "base64": base64.b64encode(sig).decode(),
        "base64url": base64.urlsafe_b64encode(sig).decode().rstrip("="),
    }[encoding]
    assert (await send(comm, {"type": "challenge", "sig": sig_value}))["type"] == "token"
    await comm.disconnect()


async def test_signature_that_does_not_verify(user_key):
    comm = await connect()
    frame = await challenge(comm, user_key)
    other = PrivateKey.generate()
    await expect_error(comm, "bad_signature", await send(comm, sign_frame(other, frame)))
    row = await last_row()
    assert (row.outcome, row.public_key, row.challenge_id) == (
        "bad_signature",
        str(user_key.public),
        frame["id"],
    )
    assert row.upstream_status == "bad_signature"
    assert await tokens() == []
    await comm.disconnect()


async def test_timeout_is_reported_and_the_socket_stays_usable(user_key, settings):
    settings.CHALLENGE_TIMEOUT = 0.3
    comm = await connect()
    first = await challenge(comm, user_key)
    err = await expect_error(comm, "challenge_timeout", await receive(comm, timeout=3))
    assert "0.3" in err["value"]
    row = await last_row()
    assert (row.outcome, row.challenge_id) == ("challenge_timeout", first["id"])
    # A late answer to the dead challenge is refused, and a new flow works.
    await expect_error(comm, "no_challenge", await send(comm, sign_frame(user_key, first)))
    frame = await challenge(comm, user_key)
    assert (await send(comm, sign_frame(user_key, frame)))["type"] == "token"
    await comm.disconnect()


async def test_binary_frame():
    comm = await connect()
    await comm.send_to(bytes_data=b'{"type": "token"}')
    await expect_error(comm, "binary_frame")
    assert (await last_row()).outcome == "binary_frame"
    await comm.disconnect()


async def test_oversized_frame_is_refused_before_parsing_and_closed():
    comm = await connect()
    await comm.send_to(text_data='{"type": "token", "pub": "' + "a" * 70_000 + '"}')
    await expect_error(comm, "frame_too_large")
    out = await comm.receive_output(2)
    assert out == {"type": "websocket.close", "code": 4009}
    row = await last_row()
    assert (row.outcome, row.public_key) == ("frame_too_large", "")


async def test_too_many_bad_frames_close_the_connection(settings):
    settings.MAX_ERRORS_PER_CONNECTION = 3
    comm = await connect()
    for _ in range(3):
        await comm.send_to(text_data="nope")
        await expect_error(comm, "invalid_json")
    await expect_error(comm, "too_many_errors")
    assert (await comm.receive_output(2))["code"] == 4008


async def test_frames_after_the_close_are_dropped_unanswered_and_unaudited(settings, user_key):
    """A client's frames the server received before its close reached the client are still
    in the queue: the consumer reads them (the disconnect comes after them) and drops them.
    Its challenge ending then (here: expiring) sends nothing either."""
    settings.MAX_ERRORS_PER_CONNECTION = 1
    settings.CHALLENGE_TIMEOUT = 0.3
    comm = await connect()
    await challenge(comm, user_key)
    await comm.send_to(text_data="nope")
    await expect_error(comm, "invalid_json")
    await expect_error(comm, "too_many_errors")
    assert (await comm.receive_output(2))["code"] == 4008
    for _ in range(3):
        await comm.send_to(text_data="nope")
    assert await comm.receive_nothing(0.8)  # past the challenge's timeout
    await (await runtime.get()).refusals.flush()
    assert sorted((row.outcome, row.count) for row in await attempts()) == [
        ("challenge_timeout", 1),
        ("invalid_json", 1),
        ("too_many_errors", 1),
    ]


async def test_foreign_origin_is_refused(user_key):
    comm = await connect(origin="https://evil.example")
    await expect_error(comm, "origin_not_allowed")
    assert (await comm.receive_output(2))["code"] == 4008
    row = await last_row()
    assert (row.outcome, row.origin) == ("origin_not_allowed", "https://evil.example")


async def test_unknown_host_is_refused():
    comm = await connect(host="evil.example:8000")
    await expect_error(comm, "invalid_host")
    assert (await comm.receive_output(2))["code"] == 4008


async def test_configured_origins_and_audience(user_key, settings, authority_signer):
    settings.ALLOWED_ORIGINS = ["https://app.example"]
    settings.TOKEN_AUDIENCE = "https://app.example"
    comm = await connect(origin="https://app.example")
    frame = await challenge(comm, user_key)
    text = authority.parse_challenge_text(bytes(frame["value"]["data"]))
    assert text.audience == "https://app.example"
    reply = await send(comm, sign_frame(user_key, frame))
    claims = verify_token(
        reply["value"],
        issuer=authority_signer.public,
        audience="https://app.example",
    )
    assert claims["aud"] == "https://app.example"
    await comm.disconnect()


async def test_pending_per_key_cap(user_key, settings):
    settings.MAX_PENDING_PER_KEY = 2
    socks = [await connect() for _ in range(3)]
    await challenge(socks[0], user_key)
    await challenge(socks[1], user_key)
    await expect_error(
        socks[2], "too_many_pending", await send(socks[2], {"type": "token", "pub": str(user_key.public)})
    )
    row = await last_row()
    assert (row.outcome, row.public_key) == ("too_many_pending", str(user_key.public))
    # Another key is unaffected.
    other = PrivateKey.generate()
    frame = await challenge(socks[2], other)
    assert (await send(socks[2], sign_frame(other, frame)))["type"] == "token"
    for s in socks:
        await s.disconnect()


async def test_connections_per_ip_cap(settings):
    settings.MAX_CONNECTIONS_PER_IP = 2
    a, b = await connect(), await connect()
    c = await connect()
    await expect_error(c, "too_many_connections")
    assert (await c.receive_output(2))["code"] == 4008
    await a.disconnect()
    d = await connect()
    await d.send_to(text_data="[]")
    await expect_error(d, "invalid_frame")  # admitted, so it parses frames
    await b.disconnect()
    await d.disconnect()


async def test_a_bad_client_does_not_disturb_another_flow(user_key):
    good, bad = await connect(), await connect(client=("127.0.0.10", 1))
    frame = await challenge(good, user_key)
    for junk in ["{", "[]", '{"type":"challenge"}', '{"type":"token","pub":"b"}']:
        await bad.send_to(text_data=junk)
        assert (await receive(bad))["type"] == "error"
    assert (await send(good, sign_frame(user_key, frame)))["type"] == "token"
    await good.disconnect()
    await bad.disconnect()


async def test_disconnect_leaves_the_challenge_resumable_until_expiry(user_key, settings):
    settings.CHALLENGE_TIMEOUT = 0.5
    first = await connect()
    frame = await challenge(first, user_key)
    await first.disconnect()
    service = (await runtime.get()).service
    assert service.pending(frame["id"])
    second = await connect()
    reply = await send(second, sign_frame(user_key, frame, id=frame["id"]))
    assert reply["type"] == "token"
    assert not service.pending(frame["id"])
    # Expired challenges leave the registry (no unbounded growth).
    third = await connect()
    frame = await challenge(third, user_key)
    await third.disconnect()
    await asyncio.sleep(0.8)
    assert not service.pending(frame["id"])
    assert service.pending_count == 0
    await second.disconnect()


async def test_database_down_means_no_token_and_a_clear_error(user_key, monkeypatch):
    """A token is released only after its audit row commits: with the database failing, the
    client gets internal_error and no token."""
    from django.db import OperationalError

    from challenges import audit

    def broken(records):
        raise OperationalError("database is down")

    comm = await connect()
    frame = await challenge(comm, user_key)
    monkeypatch.setattr(audit, "audit_write_batch", broken)
    reply = await send(comm, sign_frame(user_key, frame))
    assert (reply["type"], reply["code"]) == ("error", "internal_error")
    monkeypatch.undo()
    assert await tokens() == []
    # The database is back: the next flow works.
    frame = await challenge(comm, user_key)
    assert (await send(comm, sign_frame(user_key, frame)))["type"] == "token"
    await comm.disconnect()


async def test_pending_per_address_cap(settings):
    """Fresh keys do not let one address fill the process's registry."""
    settings.MAX_PENDING_PER_IP = 3
    socks = [await connect() for _ in range(4)]
    for sock in socks[:3]:
        await challenge(sock, PrivateKey.generate())
    other = PrivateKey.generate()
    reply = await send(socks[3], {"type": "token", "pub": str(other.public)})
    await expect_error(socks[3], "too_many_pending", reply)
    elsewhere = await connect(client=("127.0.0.77", 1))
    frame = await challenge(elsewhere, other)
    assert (await send(elsewhere, sign_frame(other, frame)))["type"] == "token"
    for sock in [*socks, elsewhere]:
        await sock.disconnect()


async def test_control_characters_are_audited_cleanly_and_harm_no_one(user_key):
    """A NUL in a key once made PostgreSQL refuse the whole group-committed batch, so other
    users' tokens were withheld. Now it is stored escaped, and neighbours are unharmed."""
    good, bad = await connect(), await connect(client=("127.0.0.11", 1))
    frame = await challenge(good, user_key)
    await bad.send_to(text_data=json.dumps({"type": "token", "pub": "x\u0000y\u0007"}))
    await comm_send(good, sign_frame(user_key, frame))
    await expect_error(bad, "invalid_pub")
    assert (await receive(good))["type"] == "token"
    rows = {r.outcome: r for r in await attempts()}
    assert rows["invalid_pub"].public_key == "x\ufffdy\ufffd"
    assert SUCCESS in rows
    await good.disconnect()
    await bad.disconnect()


async def comm_send(comm, frame):
    await comm.send_to(text_data=json.dumps(frame))


async def test_a_malformed_id_does_not_spend_the_connections_challenge(user_key):
    comm = await connect()
    frame = await challenge(comm, user_key)
    reply = await send(comm, sign_frame(user_key, frame, id="!"))
    await expect_error(comm, "unknown_challenge", reply)
    assert (await send(comm, sign_frame(user_key, frame)))["type"] == "token"
    await comm.disconnect()


async def test_origin_must_match_scheme_host_and_port():
    for origin in ["http://127.0.0.1:9999", "https://127.0.0.1:8000", "http://localhost:8000"]:
        comm = await connect(origin=origin)
        await expect_error(comm, "origin_not_allowed")
        await comm.receive_output(2)


async def test_a_cancelled_consumer_releases_its_connection_slot(settings):
    """daphne cancels an application still busy after its client left; disconnect() never runs
    then, and the per-address count must not leak."""
    settings.MAX_CONNECTIONS_PER_IP = 1
    first = await connect()
    first.future.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first.future
    second = await connect()
    await second.send_to(text_data="[]")
    await expect_error(second, "invalid_frame")  # admitted: the slot was released
    await second.disconnect()


async def test_deeply_nested_json_is_invalid_json_not_a_crash(user_key):
    comm = await connect()
    for text in ['{"type":"token","pub":' + "[" * 5000, "[" * 5000 + "]" * 5000]:
        await comm.send_to(text_data=text)
        await expect_error(comm, "invalid_json")
        assert (await last_row()).outcome == "invalid_json"
    frame = await challenge(comm, user_key)  # the socket still serves
    assert (await send(comm, sign_frame(user_key, frame)))["type"] == "token"
    await comm.disconnect()


@pytest.mark.parametrize("bad", ["\ud800", "a\udfffb\x00", "\U0001f600\ud83d"])
async def test_lone_surrogates_are_audited_and_harm_no_neighbour(user_key, bad, caplog):
    """A lone surrogate (a JSON escape) cannot be encoded as UTF-8: the audit batch holding
    it once failed, was retried row by row, and lost the row. Now it is stored replaced."""
    good, bad_sock = await connect(), await connect(client=("127.0.0.12", 1))
    frame = await challenge(good, user_key)
    await bad_sock.send_to(text_data=json.dumps({"type": "token", "pub": bad}))  # \\ud800 escapes
    await comm_send(good, sign_frame(user_key, frame))
    await expect_error(bad_sock, "invalid_pub")
    assert (await receive(good))["type"] == "token"
    rows = {r.outcome: r for r in await attempts()}
    stored = rows["invalid_pub"].public_key
    assert stored == "".join("\ufffd" if "\ud800" <= c <= "\udfff" or c < " " else c for c in bad)
    assert rows["invalid_pub"].client_ip == "127.0.0.12"
    assert SUCCESS in rows
    assert "audit batch" not in caplog.text
    assert "could not be written" not in caplog.text
    await good.disconnect()
    await bad_sock.disconnect()


async def test_one_batch_with_hostile_strings_commits_whole(caplog):
    """Rows queued together are written in one batch: surrogates, NULs and control
    characters in any field must not make it fail (and fall back to one row at a time)."""
    from django.utils import timezone

    from challenges.audit import AuditWriter
    from challenges.services import AuditRecord

    writer = AuditWriter()
    now = timezone.now()
    hostile = "x\ud800\udc00\x00\x1b[31m\u202e\udfff"
    records = [
        AuditRecord(outcome="invalid_pub", created_at=now, finished_at=now, public_key=hostile,
                    detail=hostile, origin=hostile, user_agent=hostile, challenge_id=hostile),
        AuditRecord(outcome="invalid_json", created_at=now, finished_at=now, user_agent="neighbour"),
    ]  # fmt: skip
    await asyncio.gather(*(writer.record(r) for r in records))
    await writer.close()
    rows = await attempts()
    assert [r.outcome for r in rows] == ["invalid_pub", "invalid_json"]
    assert rows[0].public_key == "x\ufffd\ufffd\ufffd\ufffd[31m\u202e\ufffd"
    assert rows[1].user_agent == "neighbour"
    assert "audit batch" not in caplog.text


async def test_a_wildcard_host_does_not_choose_the_audience(settings, user_key):
    """ALLOWED_HOSTS=['*'] without TOKEN_AUDIENCE would let the Host header name the audience
    of the challenge (an attacker's site): such a Host is refused."""
    settings.ALLOWED_HOSTS = ["*"]
    settings.TOKEN_AUDIENCE = ""
    comm = await connect(host="evil.example")
    await expect_error(comm, "invalid_host")
    assert (await comm.receive_output(2))["code"] == 4008
    assert (await last_row()).outcome == "invalid_host"
    await runtime.stop()
    settings.ALLOWED_HOSTS = [".example.com"]
    comm = await connect(host="tokens.example.com")
    await expect_error(comm, "invalid_host")
    await comm.receive_output(2)
    await runtime.stop()
    settings.TOKEN_AUDIENCE = "https://app.example"  # the audience no longer comes from Host
    comm = await connect(host="tokens.example.com")
    frame = await challenge(comm, user_key)
    assert authority.parse_challenge_text(bytes(frame["value"]["data"])).audience == "https://app.example"
    await comm.disconnect()


async def test_a_whole_flow_makes_no_thread_hop(user_key, monkeypatch):
    """Connect, token, challenge, token, close: no ``sync_to_async`` (Channels' own
    consumer closes old database connections through one before each message and on
    disconnect; this consumer never touches the database, the audit writer has its thread)."""
    from asgiref.sync import SyncToAsync

    hops = []
    original = SyncToAsync.__call__

    async def counted(self, *args, **kwargs):
        hops.append(getattr(self.func, "__qualname__", repr(self.func)))
        return await original(self, *args, **kwargs)

    comm = await connect()
    monkeypatch.setattr(SyncToAsync, "__call__", counted)
    frame = await challenge(comm, user_key)
    reply = await send(comm, sign_frame(user_key, frame))
    assert reply["type"] == "token"
    await comm.disconnect()
    monkeypatch.undo()
    assert hops == []
