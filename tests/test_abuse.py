"""Hostile clients, in-process: rate limits on both transports, refusals aggregated in the
audit so a flood neither grows the table nor starves real flows."""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.testing import HttpCommunicator

from challenges import runtime
from tests.wsutil import attempts, challenge, connect, send, sign_frame
from tokensite.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def strict(settings):
    settings.RATE_LIMIT_PER_MINUTE = 6  # one token every 10 s
    settings.RATE_LIMIT_BURST = 3


async def test_token_frames_are_rate_limited_with_retry_after(strict, user_key):
    comm = await connect(client=("127.0.0.5", 1))  # the connection took one token
    await challenge(comm, user_key)  # the second
    frame = await send(comm, {"type": "token", "pub": str(user_key.public)})
    assert frame["code"] == "already_pending"  # state is checked before the rate: not charged
    second = await connect(client=("127.0.0.5", 2))  # the third token
    limited = await send(second, {"type": "token", "pub": str(user_key.public)})
    assert (limited["type"], limited["code"]) == ("error", "rate_limited")
    assert limited["retry_after"] == 10
    other = await connect(client=("127.0.0.6", 1))  # another address has its own bucket
    assert (await send(other, {"type": "token", "pub": str(user_key.public)}))["type"] == "challenge"
    for c in (comm, second, other):
        await c.disconnect()


async def test_http_requests_are_rate_limited_with_a_retry_after_header(strict, user_key):
    """Any HTTP request takes a token (the demo page, the admin, the API): through the whole
    ASGI application, whose guard charges them before Django runs."""
    statuses, headers, body = [], {}, {}
    for path in ("/", "/api/token/challenge", "/api/token/challenge", "/api/token/challenge"):
        comm = HttpCommunicator(
            application,
            "POST" if path.startswith("/api") else "GET",
            path,
            body=json.dumps({"pub": str(user_key.public)}).encode(),
            headers=[(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json")],
        )
        response = await comm.get_response(timeout=10)
        await comm.wait(timeout=5)  # the application's own clean-up (Django closes the body file)
        statuses.append(response["status"])
        headers, body = dict(response["headers"]), response["body"]
    assert statuses == [200, 200, 200, 429]
    frame = json.loads(body)
    assert (frame["code"], frame["retry_after"], headers[b"retry-after"]) == ("rate_limited", 10, b"10")


async def test_a_flood_of_refusals_is_a_few_rows_and_real_flows_still_get_tokens(settings, user_key):
    settings.RATE_LIMIT_PER_MINUTE = 0
    settings.MAX_ERRORS_PER_CONNECTION = 10_000
    flood = await connect(client=("127.0.0.66", 1))
    good = await connect(client=("127.0.0.2", 1))

    async def spam() -> None:
        for _ in range(2_000):
            await flood.send_to(text_data="{not json")
            assert json.loads(await flood.receive_from(5))["code"] == "invalid_json"

    async def real_flows() -> int:
        issued = 0
        for _ in range(10):
            reply = await send(good, sign_frame(user_key, await challenge(good, user_key)))
            issued += reply["type"] == "token"
        return issued

    _, issued = await asyncio.gather(spam(), real_flows())
    assert issued == 10
    await (await runtime.get()).refusals.flush()
    rows = await attempts()
    refusals = [r for r in rows if r.outcome == "invalid_json"]
    assert sum(r.count for r in refusals) == 2_000
    assert len(refusals) <= 2  # one per minute (the flood may straddle a minute)
    assert {r.client_ip for r in refusals} == {"127.0.0.66"}
    assert [r.outcome for r in rows].count("success") == 10  # real outcomes: one row each
    await flood.disconnect()
    await good.disconnect()


async def test_refusals_on_each_transport_are_counted_on_rows_of_their_own(settings):
    """One address's refusals of one code, over a socket and over HTTP in the same minute:
    one row per transport (the row said the first refusal's transport for all of them)."""
    settings.RATE_LIMIT_PER_MINUTE = 0
    socket = await connect(client=("127.0.0.77", 1))
    for _ in range(3):
        await socket.send_to(text_data="{not json")
        assert json.loads(await socket.receive_from(5))["code"] == "invalid_json"
    for _ in range(2):
        comm = HttpCommunicator(
            application, "POST", "/api/token/challenge", body=b"{not json",
            headers=[(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json")],
        )  # fmt: skip
        comm.scope["client"] = ("127.0.0.77", 2)
        response = await comm.get_response(timeout=10)
        await comm.wait(timeout=5)
        assert json.loads(response["body"])["code"] == "invalid_json"
    await socket.disconnect()
    await (await runtime.get()).refusals.flush()
    counted: dict[str, int] = {}
    for row in await attempts():
        if row.outcome == "invalid_json":
            counted[row.transport] = counted.get(row.transport, 0) + row.count
    assert counted == {"ws": 3, "http": 2}
