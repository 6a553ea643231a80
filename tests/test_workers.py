"""Several real workers behind no sticky sessions, with a Redis of the test's own.

Two server processes share one database and one redis-server started by the
test on a free port. A challenge issued by worker A is answered on worker B;
faults (Redis restarted or down, the owning worker killed) must give clear
codes promptly and leave the audit whole.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest
import websockets

from bench import procs
from challenges import authority
from challenges.client import get_token_async
from challenges.identity import PrivateKey, encode_buffer
from challenges.tokens import verify_token
from tests import servers

pytestmark = pytest.mark.server
AUTHORITY = PrivateKey.generate()


def worker_env(tmp, redis, **extra):
    return servers.base_env(
        tmp,
        AUTHORITY_PRIVATE_KEY=str(AUTHORITY),
        REDIS_URL=redis.url,
        # The load test's 500 clients share one address: lift its caps and its rate limit,
        # as a deployment behind many addresses would see.
        MAX_CONNECTIONS_PER_IP="2000",
        MAX_PENDING_PER_IP="2000",
        RATE_LIMIT_PER_MINUTE="0",
        **extra,
    )


@pytest.fixture
def cluster(tmp_path):
    """Redis + worker A (daphne) + worker B (uvicorn), one shared SQLite audit."""
    with servers.redis_server(tmp_path / "redis") as redis:
        env = worker_env(tmp_path, redis, CHALLENGE_TIMEOUT="10")
        a = servers.start(tmp_path / "a", kind="daphne", env=dict(env, WORKER_ID="A"))
        b = servers.start(tmp_path / "b", kind="uvicorn", env=dict(env, WORKER_ID="B"), migrate_db=False)
        try:
            yield redis, a, b
        finally:
            a.stop()
            b.stop()
    for srv in (a, b):
        assert "Traceback" not in srv.log(), srv.log()


async def recv(sock, timeout=10.0) -> dict:
    return json.loads(await asyncio.wait_for(sock.recv(), timeout))


async def ask(url: str, key: PrivateKey) -> dict:
    async with websockets.connect(url) as sock:
        await sock.send(json.dumps({"type": "token", "pub": str(key.public)}))
        frame = await recv(sock)
    assert frame["type"] == "challenge", frame
    return frame


async def answer(url: str, key: PrivateKey, frame: dict) -> dict:
    sig = encode_buffer(key.sign(bytes(frame["value"]["data"])))
    async with websockets.connect(url) as sock:
        await sock.send(json.dumps({"type": "challenge", "sig": sig, "id": frame["id"]}))
        return await recv(sock)


def subject_of(token: str) -> str:
    return str(verify_token(token, issuer=AUTHORITY.public)["sub"])


def post(server, path, body) -> tuple[int, dict]:
    request = urllib.request.Request(
        server.http + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def audit(server, challenge_id):
    attempts = server.rows(
        "SELECT outcome, worker FROM challenges_challengeattempt WHERE challenge_id = ? ORDER BY id",
        (challenge_id,),
    )
    tokens = server.rows(
        "SELECT t.jti FROM challenges_issuedtoken t JOIN challenges_challengeattempt a ON a.id = t.attempt_id"
        " WHERE a.challenge_id = ?",
        (challenge_id,),
    )
    return attempts, tokens


async def test_challenge_from_a_signature_to_b(cluster):
    _, a, b = cluster
    user = PrivateKey.generate()
    frame = await ask(a.ws, user)
    reply = await answer(b.ws, user, frame)
    assert reply["type"] == "token", reply
    claims = verify_token(reply["value"], issuer=AUTHORITY.public)
    assert claims["sub"] == str(user.public)
    attempts, tokens = audit(a, frame["id"])
    assert attempts == [("success", "A")]
    assert tokens == [(claims["jti"],)]


async def test_original_socket_also_gets_the_token(cluster):
    _, a, b = cluster
    user = PrivateKey.generate()
    async with websockets.connect(a.ws) as sock:
        await sock.send(json.dumps({"type": "token", "pub": str(user.public)}))
        frame = await recv(sock)
        reply = await answer(b.ws, user, frame)
        assert reply["type"] == "token"
        assert await recv(sock) == reply


async def test_http_two_step_across_workers(cluster):
    _, a, b = cluster
    user = PrivateKey.generate()
    status, ch = post(a, "/api/token/challenge", {"pub": str(user.public)})
    assert status == 200
    authority.check_challenge_text(bytes(ch["value"]["data"]), audience=a.http, key=user.public)
    sig = list(user.sign(bytes(ch["value"]["data"])))
    status, body = post(b, "/api/token", {"id": ch["id"], "sig": sig})
    assert status == 200, body
    assert verify_token(body["value"], issuer=AUTHORITY.public)["sub"] == str(user.public)
    attempts, tokens = audit(a, ch["id"])
    assert attempts == [("success", "A")]
    assert len(tokens) == 1
    # The same id again, on either worker: already used.
    for srv in (a, b):
        status, body = post(srv, "/api/token", {"id": ch["id"], "sig": sig})
        assert (status, body["code"]) == (404, "unknown_challenge")


async def test_unknown_and_forged_ids_get_an_error_within_seconds(cluster):
    _, a, b = cluster
    user = PrivateKey.generate()
    frame = await ask(a.ws, user)
    for forged in ["00000000" + frame["id"][8:], frame["id"][:8] + "A" * 24]:
        started = time.monotonic()
        reply = await answer(b.ws, user, dict(frame, id=forged))
        assert (reply["type"], reply["code"]) == ("error", "unknown_challenge")
        assert time.monotonic() - started < 3.5


async def test_a_malformed_answer_on_another_worker_spends_the_challenge(cluster):
    """One answer per challenge, malformed or not, on whatever worker: a malformed answer on B
    to A's challenge ends it on A (audited there), and the good signature after it is refused."""
    _, a, b = cluster
    user = PrivateKey.generate()
    frame = await ask(a.ws, user)
    async with websockets.connect(b.ws) as sock:
        await sock.send(json.dumps({"type": "challenge", "sig": "AAAA", "id": frame["id"]}))
        refused = await recv(sock)
    assert (refused["type"], refused["code"]) == ("error", "invalid_sig_length"), refused
    late = await answer(b.ws, user, frame)
    assert (late["type"], late["code"]) == ("error", "unknown_challenge"), late
    # A may still be committing the spend's row when it refuses the late answer (that refusal
    # is a row of its own, aggregated, written when its minute's batch is).
    assert servers.wait_for(lambda: audit(a, frame["id"])[0], timeout=5)
    attempts, tokens = audit(a, frame["id"])
    assert ([row for row in attempts if row[0] != "unknown_challenge"], tokens) == (
        [("invalid_sig_length", "A")],
        [],
    )


async def test_an_answer_routed_from_another_address_is_audited_as_the_answerers(tmp_path):
    """Behind a proxy (``CLIENT_IP_HEADER``), a user asks worker A for a challenge; answers
    reach worker B from other addresses and are routed to A. The owner's row keeps who asked
    (``client_ip``) and who answered (``answer_ip``): a stranger's forged answer, and the
    user's own from another network."""
    with servers.redis_server(tmp_path / "redis") as redis:
        env = worker_env(tmp_path, redis, CLIENT_IP_HEADER="X-Forwarded-For")
        a = servers.start(tmp_path / "a", kind="daphne", env=dict(env, WORKER_ID="A"))
        b = servers.start(tmp_path / "b", kind="uvicorn", env=dict(env, WORKER_ID="B"), migrate_db=False)
        try:

            async def exchange(url: str, address: str, frame: dict) -> dict:
                headers = {"X-Forwarded-For": address}
                async with websockets.connect(url, additional_headers=headers) as sock:
                    await sock.send(json.dumps(frame))
                    return await recv(sock)

            async def answer_from(address: str, signer: PrivateKey, challenge: dict) -> dict:
                sig = encode_buffer(signer.sign(bytes(challenge["value"]["data"])))
                return await exchange(b.ws, address, {"type": "challenge", "sig": sig, "id": challenge["id"]})

            def two_step(server: servers.Server, address: str, path: str, body: dict) -> tuple[int, dict]:
                headers = {"content-type": "application/json", "X-Forwarded-For": address}
                request = urllib.request.Request(server.http + path, json.dumps(body).encode(), headers)
                with urllib.request.urlopen(request, timeout=15) as response:
                    return response.status, json.load(response)

            user, stranger = PrivateKey.generate(), PrivateKey.generate()
            ask_frame = {"type": "token", "pub": str(user.public)}
            asked = [await exchange(a.ws, "203.0.113.7", ask_frame) for _ in range(2)]
            refused = await answer_from("198.51.100.9", stranger, asked[0])
            issued = await answer_from("2001:db8::5", user, asked[1])
            assert (refused["type"], refused["code"]) == ("error", "bad_signature"), refused
            assert issued["type"] == "token", issued
            # The two-step: asked of A from one address, answered on B from another.
            _, posted = two_step(a, "203.0.113.7", "/api/token/challenge", {"pub": str(user.public)})
            sig = list(user.sign(bytes(posted["value"]["data"])))
            assert two_step(b, "192.0.2.44", "/api/token", {"id": posted["id"], "sig": sig})[0] == 200
            rows = a.rows(
                "SELECT challenge_id, outcome, worker, transport, client_ip, answer_ip"
                " FROM challenges_challengeattempt WHERE challenge_id != '' ORDER BY id"
            )
            assert [tuple(map(str, row)) for row in rows] == [
                (asked[0]["id"], "bad_signature", "A", "ws", "203.0.113.7", "198.51.100.9"),
                (asked[1]["id"], "success", "A", "ws", "203.0.113.7", "2001:db8::5"),
                (posted["id"], "success", "A", "http", "203.0.113.7", "192.0.2.44"),
            ]
        finally:
            a.stop()
            b.stop()
    for srv in (a, b):
        assert "Traceback" not in srv.log(), srv.log()


@pytest.mark.once  # Redis's part: nothing in it depends on the database backend
async def test_redis_restarted_between_challenge_and_signature(cluster):
    redis, a, b = cluster
    user = PrivateKey.generate()
    frame = await ask(a.ws, user)
    redis.stop()
    redis.start()
    # Both workers reconnect by themselves; the pending challenge lived in A all along.
    assert servers.wait_for(lambda: servers.health(a)[0] == 200 and servers.health(b)[0] == 200, timeout=10)
    started = time.monotonic()
    reply = await answer(b.ws, user, frame)
    assert reply["type"] == "token", reply
    assert time.monotonic() - started < 5
    assert audit(a, frame["id"])[0] == [("success", "A")]


@pytest.mark.once  # Redis's part: nothing in it depends on the database backend
async def test_redis_down_between_challenge_and_signature_then_back(cluster):
    redis, a, b = cluster
    user = PrivateKey.generate()
    frame = await ask(a.ws, user)
    redis.stop()
    started = time.monotonic()
    reply = await answer(b.ws, user, frame)
    assert (reply["type"], reply["code"]) == ("error", "routing_unavailable")
    assert time.monotonic() - started < 3.5
    status, body = servers.health(b)
    assert (status, body["status"], body["database"]) == (503, "degraded", "ok")
    assert body["channel_layer"] != "ok"
    redis.start()
    assert servers.wait_for(lambda: servers.health(a)[0] == 200, timeout=10)
    # The challenge is still pending in A (never spent by the failed routing): finish it now.
    reply = await answer(b.ws, user, frame)
    assert reply["type"] == "token", reply
    attempts, tokens = audit(a, frame["id"])
    assert attempts[-1] == ("success", "A")
    assert len(tokens) == 1
    # B recorded the routing failure; nothing half-written.
    assert ("routing_unavailable", "B") in attempts


@pytest.mark.once  # Redis's part: nothing in it depends on the database backend
async def test_redis_down_when_a_flow_starts(cluster):
    redis, a, b = cluster
    redis.stop()
    user = PrivateKey.generate()
    # A flow that stays on one worker needs no Redis.
    token = await get_token_async(a.ws, user, timeout=10)
    assert verify_token(token, issuer=AUTHORITY.public)
    # One that crosses workers is told promptly.
    frame = await ask(a.ws, user)
    started = time.monotonic()
    reply = await answer(b.ws, user, frame)
    assert reply["code"] == "routing_unavailable"
    assert time.monotonic() - started < 3.5
    redis.start()
    assert servers.wait_for(lambda: servers.health(a)[0] == 200 and servers.health(b)[0] == 200, timeout=10)
    other = PrivateKey.generate()
    reply = await answer(b.ws, other, await ask(a.ws, other))
    assert reply["type"] == "token", reply
    reply = await answer(a.ws, other, await ask(b.ws, other))
    assert reply["type"] == "token", reply


async def test_owning_worker_killed_between_challenge_and_signature(cluster):
    _, a, b = cluster
    user = PrivateKey.generate()
    frame = await ask(a.ws, user)
    a.stop(signal.SIGKILL)
    started = time.monotonic()
    reply = await answer(b.ws, user, frame)
    assert (reply["type"], reply["code"]) == ("error", "unknown_challenge")
    # Its heartbeat lapses within its TTL (4 s), checked every ROUTE_LIVENESS_CHECK (1 s).
    assert time.monotonic() - started < 6
    attempts, tokens = audit(b, frame["id"])
    assert attempts == [("unknown_challenge", "B")]
    assert tokens == []
    # B keeps serving.
    other = PrivateKey.generate()
    assert (await answer(b.ws, other, await ask(b.ws, other)))["type"] == "token"


@pytest.mark.once  # Redis's part: nothing in it depends on the database backend
async def test_idle_sockets_survive_with_the_redis_layer(cluster):
    """redis-py 8's 5 s socket timeout once closed idle sockets with 1011 every few seconds
    (django/channels_redis#422). Hold sockets idle for three of those periods, then use them."""
    _, a, b = cluster
    user = PrivateKey.generate()
    socks = [await websockets.connect(srv.ws) for srv in (a, b) for _ in range(3)]
    try:
        await asyncio.sleep(16)
        for sock in socks:
            await sock.send(json.dumps({"type": "token", "pub": str(user.public)}))
            frame = await recv(sock)
            assert frame["type"] == "challenge"
            await sock.send(
                json.dumps({"type": "challenge", "sig": list(user.sign(bytes(frame["value"]["data"])))})
            )
            assert (await recv(sock))["type"] == "token"
    finally:
        for sock in socks:
            await sock.close()
    for srv in (a, b):
        assert "Timeout reading" not in srv.log()


async def test_load_500_concurrent_flows_half_resuming_on_the_other_worker(cluster):
    """Bounded: 500 flows, all started at once, within 120 s. Every flow ends in a token or a
    coded error; no handshake is answered with HTTP 500 and no socket is closed with 1011."""
    _, a, b = cluster
    outcomes: dict[str, int] = {}
    failures: list[str] = []

    async def one(i: int) -> None:
        user = PrivateKey.generate()
        first, other = (a, b) if i % 2 else (b, a)
        try:
            async with websockets.connect(first.ws, open_timeout=30) as sock:
                await sock.send(json.dumps({"type": "token", "pub": str(user.public)}))
                frame = await recv(sock, 60)
                if frame["type"] != "challenge":
                    outcomes[frame.get("code", "?")] = outcomes.get(frame.get("code", "?"), 0) + 1
                    return
                sig = list(user.sign(bytes(frame["value"]["data"])))
                if i % 4 < 2:  # half resume on the other worker
                    async with websockets.connect(other.ws, open_timeout=30) as second:
                        await second.send(json.dumps({"type": "challenge", "sig": sig, "id": frame["id"]}))
                        reply = await recv(second, 60)
                else:
                    await sock.send(json.dumps({"type": "challenge", "sig": sig}))
                    reply = await recv(sock, 60)
            key = "token" if reply["type"] == "token" else reply.get("code", "?")
            outcomes[key] = outcomes.get(key, 0) + 1
        except websockets.InvalidStatus as exc:
            failures.append(f"HTTP {exc.response.status_code}")
        except websockets.ConnectionClosed as exc:
            failures.append(f"close {exc.rcvd.code if exc.rcvd else None}")

    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(500))), 120)
    elapsed = time.monotonic() - started
    assert failures == [], failures
    assert sum(outcomes.values()) == 500
    print(outcomes)
    assert set(outcomes) <= {"token", "too_many_pending", "too_many_connections", "routing_unavailable"}, (
        outcomes
    )
    assert outcomes.get("token", 0) >= 490, outcomes
    tokens = a.rows("SELECT COUNT(*) FROM challenges_issuedtoken")[0][0]
    assert tokens == outcomes["token"]
    print(f"500 flows in {elapsed:.1f} s: {outcomes}")


async def test_grpc_upstream_across_workers(tmp_path):
    """The relayed challenge's Hub stream lives in worker A; the signature arrives at B (over a
    socket, then over HTTP) and is relayed through A's open stream."""
    from tests.rpcutil import API_KEY, API_SECRET, start_authority

    hub = start_authority(
        tmp_path / "hub",
        env=servers.base_env(tmp_path / "hub", AUTHORITY_PRIVATE_KEY=str(AUTHORITY),
                             AUTHORITY_API_KEYS=f"{API_KEY}:{API_SECRET}"),
    )  # fmt: skip
    try:
        with servers.redis_server(tmp_path / "redis") as redis:
            env = worker_env(
                tmp_path, redis, CHALLENGE_TIMEOUT="10", TOKEN_UPSTREAM=f"grpc://{hub.target}",
                USER_API_KEY=API_KEY, USER_API_SECRET=API_SECRET,
            )  # fmt: skip
            a = servers.start(tmp_path / "a", kind="daphne", env=dict(env, WORKER_ID="A"))
            b = servers.start(tmp_path / "b", kind="uvicorn", env=dict(env, WORKER_ID="B"), migrate_db=False)
            try:
                user = PrivateKey.generate()
                async with websockets.connect(a.ws) as sock:
                    await sock.send(json.dumps({"type": "token", "pub": str(user.public)}))
                    frame = await recv(sock)
                    assert frame["raw"] is True
                    assert len(frame["value"]["data"]) == 32  # the Hub's raw challenge
                    reply = await answer(b.ws, user, frame)
                assert reply["type"] == "token", reply
                assert verify_token(reply["value"], issuer=AUTHORITY.public)["sub"] == str(user.public)
                attempts, tokens = audit(a, frame["id"])
                assert attempts == [("success", "A")]
                assert len(tokens) == 1

                status, ch = post(a, "/api/token/challenge", {"pub": str(user.public)})
                assert (status, ch["raw"]) == (200, True)
                sig = list(user.sign(bytes(ch["value"]["data"])))
                status, body = post(b, "/api/token", {"id": ch["id"], "sig": sig})
                assert status == 200, body
                assert verify_token(body["value"], issuer=AUTHORITY.public)["sub"] == str(user.public)
                assert audit(a, ch["id"])[0] == [("success", "A")]
            finally:
                a.stop()
                b.stop()
    finally:
        hub.stop()
    for log in (a.log(), b.log(), hub.log()):
        assert "Traceback" not in log, log


@pytest.mark.once  # Redis's part: nothing in it depends on the database backend
async def test_a_routed_answer_costs_at_most_six_redis_commands(tmp_path):
    """Counted with ``INFO commandstats`` on the test's own Redis, with the rate limits on
    (their buckets are in Redis too; Redis counts the script and the two commands inside
    it). Answering on B a challenge that A owns costs at most 6: B's rate-limit charge for
    the answer's socket (3), at most one heartbeat lookup (cached for half a second) and one
    PUBLISH each way. The workers' heartbeats (a ``SET`` each a second) are left out: every
    other ``SET`` is a rate-limit script's, one per ``EVALSHA``."""
    with servers.redis_server(tmp_path / "redis") as redis:
        env = servers.base_env(
            tmp_path,
            AUTHORITY_PRIVATE_KEY=str(AUTHORITY),
            REDIS_URL=redis.url,
            RATE_LIMIT_PER_MINUTE="100000",
        )
        a = servers.start(tmp_path / "a", kind="uvicorn", env=dict(env, WORKER_ID="A"))
        b = servers.start(tmp_path / "b", kind="uvicorn", env=dict(env, WORKER_ID="B"), migrate_db=False)
        try:
            user, flows = PrivateKey.generate(), 40
            frame = await ask(a.ws, user)  # warm-up: subscriptions made, scripts loaded
            assert (await answer(b.ws, user, frame))["type"] == "token"
            asked: Counter[str] = Counter()
            answered: Counter[str] = Counter()
            before = Counter(procs.redis_commandstats(redis.port))
            for _ in range(flows):
                frame = await ask(a.ws, user)
                mid = Counter(procs.redis_commandstats(redis.port))
                reply = await answer(b.ws, user, frame)
                after = Counter(procs.redis_commandstats(redis.port))
                assert reply["type"] == "token", reply
                asked += _routing_commands(mid - before)
                answered += _routing_commands(after - mid)
                before = after
        finally:
            a.stop()
            b.stop()
    per_answer, per_flow = answered.total() / flows, (asked + answered).total() / flows
    print(f"Redis commands per routed answer {per_answer:.2f} {dict(answered)}, per flow {per_flow:.2f}")
    assert answered["publish"] == 2 * flows, answered
    assert per_answer <= 6, f"{per_answer:.2f} commands per routed answer: {dict(answered)}"


def _routing_commands(delta: Counter[str]) -> Counter[str]:
    """The commands of a flow: the heartbeats' ``SET`` left out (the rest are one per script)."""
    delta["set"] = min(delta["set"], delta["evalsha"])
    return +delta
