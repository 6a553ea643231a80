"""No one can lock a key out, tested as an attacker would, on real servers.

The attacker at 127.0.0.3 asks for challenges for the victim's key as fast as it is
allowed, over both transports, leaves some pending and spends others with bad
signatures; the victim at 127.0.0.2 gets a token every time. On one worker, and on
two workers sharing a Redis (whose rate limits they share, and which fail closed)."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from typing import Any

import pytest
import redis as redis_py
import websockets

from challenges.identity import PrivateKey, encode_buffer
from challenges.tokens import verify_token
from tests import servers

pytestmark = [pytest.mark.server, pytest.mark.once]
AUTHORITY = PrivateKey.generate()
ATTACKER, VICTIM = "127.0.0.3", "127.0.0.2"


def env(tmp, **extra: str) -> dict[str, str]:
    return servers.base_env(
        tmp, AUTHORITY_PRIVATE_KEY=str(AUTHORITY), RATE_LIMIT_BURST="20", RATE_LIMIT_PER_MINUTE="120", **extra
    )


def post(
    server: servers.Server, path: str, body: dict[str, Any], *, source: str
) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15, source_address=(source, 0))
    try:
        conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


async def ws_flow(
    server: servers.Server, key: PrivateKey, *, source: str, sign_with: PrivateKey
) -> dict[str, Any]:
    try:
        async with websockets.connect(server.ws, local_addr=(source, 0)) as sock:
            await sock.send(json.dumps({"type": "token", "pub": str(key.public)}))
            frame = json.loads(await asyncio.wait_for(sock.recv(), 10))
            if frame["type"] != "challenge":
                return frame
            sig = encode_buffer(sign_with.sign(bytes(frame["value"]["data"])))
            await sock.send(json.dumps({"type": "challenge", "sig": sig}))
            return json.loads(await asyncio.wait_for(sock.recv(), 10))
    except websockets.ConnectionClosed as closed:
        # Refused at the door (its error frame came before our first frame could go).
        return {"type": "error", "code": f"closed {closed.rcvd.code if closed.rcvd else None}"}


async def http_flow(
    ask: servers.Server, answer: servers.Server, key: PrivateKey, *, source: str
) -> dict[str, Any]:
    status, frame = await asyncio.to_thread(
        post, ask, "/api/token/challenge", {"pub": str(key.public)}, source=source
    )
    if status != 200:
        return frame
    sig = encode_buffer(key.sign(bytes(frame["value"]["data"])))
    return (
        await asyncio.to_thread(post, answer, "/api/token", {"id": frame["id"], "sig": sig}, source=source)
    )[1]


async def attack(workers: list[servers.Server], victim: PrivateKey, *, rounds: int) -> dict[str, int]:
    """As fast as allowed: pending HTTP challenges for the victim's key, and WebSocket
    challenges spent with a bad signature. Returns what the attacker was told, by code."""
    told: dict[str, int] = {}
    forger = PrivateKey.generate()
    for i in range(rounds):
        server = workers[i % len(workers)]
        _, frame = await asyncio.to_thread(
            post, server, "/api/token/challenge", {"pub": str(victim.public)}, source=ATTACKER
        )
        told[frame.get("code", frame["type"])] = told.get(frame.get("code", frame["type"]), 0) + 1
        reply = await ws_flow(server, victim, source=ATTACKER, sign_with=forger)
        told[reply.get("code", reply["type"])] = told.get(reply.get("code", reply["type"]), 0) + 1
    return told


async def victim_flows(
    workers: list[servers.Server], victim: PrivateKey, *, rounds: int
) -> list[dict[str, Any]]:
    results = []
    for i in range(rounds):
        here, there = workers[i % len(workers)], workers[(i + 1) % len(workers)]
        results.append(await ws_flow(here, victim, source=VICTIM, sign_with=victim))
        results.append(await http_flow(here, there, victim, source=VICTIM))  # may cross workers
    return results


def check(results: list[dict[str, Any]], victim: PrivateKey) -> None:
    assert [r["type"] for r in results] == ["token"] * len(results), results
    for r in results:
        assert verify_token(r["value"], issuer=AUTHORITY.public)["sub"] == str(victim.public)


async def test_the_victim_gets_a_token_every_time_on_one_worker(tmp_path):
    server = servers.start(tmp_path, kind="daphne", env=env(tmp_path))
    victim = PrivateKey.generate()
    try:
        told, results = await asyncio.gather(
            attack([server], victim, rounds=12), victim_flows([server], victim, rounds=4)
        )
    finally:
        server.stop()
    check(results, victim)
    assert told.get("rate_limited", 0) > 0  # the attacker ran into its limit
    assert told.get("too_many_pending", 0) > 0  # and into the key's cap, for its own address only
    rows = server.rows(
        "SELECT DISTINCT client_ip FROM challenges_challengeattempt WHERE outcome = 'rate_limited'"
    )
    assert rows == [(ATTACKER,)]


@pytest.fixture
def cluster(tmp_path):
    with servers.redis_server(tmp_path / "redis") as redis:
        common = env(tmp_path, REDIS_URL=redis.url, RATE_LIMIT_REDIS_GRACE="1")
        a = servers.start(tmp_path / "a", kind="daphne", env=dict(common, WORKER_ID="A"))
        b = servers.start(tmp_path / "b", kind="uvicorn", env=dict(common, WORKER_ID="B"), migrate_db=False)
        try:
            yield redis, a, b
        finally:
            a.stop()
            b.stop()
    for server in (a, b):
        assert "Traceback" not in server.log()


async def test_the_victim_gets_a_token_every_time_across_two_workers(cluster):
    _, a, b = cluster
    victim = PrivateKey.generate()
    told, results = await asyncio.gather(
        attack([a, b], victim, rounds=12), victim_flows([a, b], victim, rounds=4)
    )
    check(results, victim)
    assert told.get("rate_limited", 0) > 0


async def test_both_workers_draw_on_one_bucket_per_address_and_fail_closed_without_redis(cluster):
    redis, a, b = cluster
    key = str(PrivateKey.generate().public)
    codes = []
    for i in range(24):  # a new key each time: the key's own cap (5 per address) stays out of it
        body = {"pub": str(PrivateKey.generate().public)}
        status, reply = await asyncio.to_thread(
            post, (a, b)[i % 2], "/api/token/challenge", body, source="127.0.0.4"
        )
        codes.append(reply.get("code", status))
    assert codes == [200] * 20 + ["rate_limited"] * 4  # the burst, shared: not 20 per worker
    redis.stop()
    # For the grace (1 s here) each worker counts by itself; then new requests are refused.
    first, _ = await asyncio.to_thread(post, a, "/api/token/challenge", {"pub": key}, source="127.0.0.7")
    assert first == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status, body = await asyncio.to_thread(
            post, a, "/api/token/challenge", {"pub": key}, source="127.0.0.8"
        )
        if status != 200:
            break
        await asyncio.sleep(0.2)
    assert (status, body["code"]) == (503, "limits_unavailable")
    redis.start()
    assert servers.wait_for(
        lambda: post(a, "/api/token/challenge", {"pub": key}, source="127.0.0.9")[0] == 200, timeout=10
    )


async def test_an_id_of_no_live_worker_is_refused_at_once_and_leaves_nothing_in_redis(cluster):
    redis, _, b = cluster
    client = redis_py.Redis.from_url(redis.url)
    try:
        # A Redis that just started has no heartbeats yet: for one beat, a missing one means
        # "wait". Once every worker has beaten, a tag of no worker is refused at once.
        assert servers.wait_for(lambda: not client.exists("tokenflow:settling"), timeout=5)
        made_up = "deadbeef" + "A" * 24
        started = time.monotonic()
        status, body = await asyncio.to_thread(
            post, b, "/api/token", {"id": made_up, "sig": [0] * 64}, source="127.0.0.5"
        )
        assert (status, body["code"]) == (404, "unknown_challenge")
        assert time.monotonic() - started < 0.5
        assert [k for k in client.scan_iter(match="*deadbeef*")] == []
    finally:
        client.close()
