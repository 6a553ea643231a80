"""``/metrics`` on real processes: ``make serve`` with two workers and a Redis of the test's
own, flows of several outcomes spread over both, and the scraped totals checked against the
audit; the access rule (an address not allowed, a wrong bearer token); and the single-process
path (daphne, relaying to ``runauthority``, whose gRPC statuses are counted)."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from challenges.identity import PrivateKey, encode_buffer
from tests import rpcutil, servers
from tests.rpcutil import API_KEY, API_SECRET
from tests.test_serve import _group_alive, _health, make_serve, production_env, workers_started

pytestmark = pytest.mark.server
TOKEN = "metrics-bearer-" + "k" * 32
ALLOWED, OTHER, FLOOD = "127.0.0.1", "127.0.0.2", "127.0.0.9"
#: Where the flows come from: loopback addresses of their own, so no rate limit or cap of
#: one address decides their outcome (the flood's address is rate-limited on purpose).
SOURCES = [f"127.0.1.{i}" for i in range(1, 9)]


def request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    source: str = ALLOWED,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """One request on a new connection from ``source`` (as behind the README's TLS proxy)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15, source_address=(source, 0))
    try:
        data = None if body is None else json.dumps(body).encode()
        base = {"content-type": "application/json", "x-forwarded-proto": "https"}
        conn.request(method, path, body=data, headers={**base, **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def scrape(port: int, **kwargs: Any) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The exposition as {sample name: [(labels, value)]}; fails unless it is a 200."""
    status, body = request(port, "GET", "/metrics", **kwargs)
    assert status == 200, body
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: dict[str, Any], name: str, **match: str) -> float:
    return sum(v for labels, v in samples.get(name, []) if all(labels.get(k) == m for k, m in match.items()))


def by_label(samples: dict[str, Any], name: str, label: str) -> dict[str, float]:
    counts: Counter[str] = Counter()
    for labels, value in samples.get(name, []):
        counts[labels[label]] += value
    return {k: v for k, v in counts.items() if v}


async def ws_flow(port: int, source: str, *, good: bool = True) -> dict[str, Any]:
    user = PrivateKey.generate()
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws/token", local_addr=(source, 0)) as sock:
        await sock.send(json.dumps({"type": "token", "pub": str(user.public)}))
        challenge = json.loads(await asyncio.wait_for(sock.recv(), 10))
        signer = user if good else PrivateKey.generate()
        sig = encode_buffer(signer.sign(bytes(challenge["value"]["data"])))
        await sock.send(json.dumps({"type": "challenge", "sig": sig}))
        return dict(json.loads(await asyncio.wait_for(sock.recv(), 10)))


def http_flow(port: int, source: str) -> dict[str, Any]:
    """The two steps, each on a new connection: about half of them cross workers."""
    user = PrivateKey.generate()
    _, body = request(port, "POST", "/api/token/challenge", {"pub": str(user.public)}, source=source)
    challenge = json.loads(body)
    sig = encode_buffer(user.sign(bytes(challenge["value"]["data"])))
    _, body = request(port, "POST", "/api/token", {"id": challenge["id"], "sig": sig}, source=source)
    return dict(json.loads(body))


def http_flows_until_one_crosses(port: int) -> int:
    """HTTP flows, five at a time, until one's answer crossed workers (the kernel picks each
    connection's worker): returns how many there were."""
    done = 0
    while done < 40:
        flows = [asyncio.to_thread(http_flow, port, SOURCES[6 + i % 2]) for i in range(5)]
        replies = asyncio.run(_gather(flows))
        assert [r["type"] for r in replies] == ["token"] * 5, replies
        done += 5
        if total(scrape(port), "tokenprovider_routed_answer_seconds_count"):
            return done
    raise AssertionError(f"none of {done} HTTP answers crossed workers")


async def _gather(awaitables: list[Any]) -> list[Any]:
    return list(await asyncio.gather(*awaitables))


def settle(check: Callable[[], list[str]], *, timeout: float) -> list[str]:
    """Poll ``check`` (the differences it finds) until it finds none or time is up."""
    deadline = time.monotonic() + timeout
    problems = check()
    while problems and time.monotonic() < deadline:
        time.sleep(0.25)
        problems = check()
    return problems


async def run_flows(port: int) -> None:
    ws_good = [ws_flow(port, SOURCES[i % 4]) for i in range(12)]
    ws_bad = [ws_flow(port, SOURCES[4 + i % 2], good=False) for i in range(4)]
    replies = await asyncio.gather(*ws_good, *ws_bad)
    assert [r["type"] for r in replies] == ["token"] * 12 + ["error"] * 4, replies
    assert {r.get("code") for r in replies[12:]} == {"bad_signature"}
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws/token", local_addr=(SOURCES[5], 0)) as sock:
        for _ in range(6):  # refusals of no flow: aggregated in the audit (its count column)
            await sock.send("{nope")
            assert json.loads(await asyncio.wait_for(sock.recv(), 10))["code"] == "invalid_json"
    unknown = {"id": "ffffffff" + "A" * 24, "sig": encode_buffer(bytes(64))}
    for _ in range(3):  # an owner no worker is: a routing failure, unknown_challenge
        status, _ = await asyncio.to_thread(request, port, "POST", "/api/token", unknown, source=SOURCES[3])
        assert status == 404


async def hold_challenges(port: int, count: int, scraped: Callable[[], None]) -> None:
    """``count`` sockets each wait on a challenge while ``scraped`` looks at the gauges; then
    each hears its challenge expire."""
    async with _sockets(port, count) as socks:
        for sock in socks:
            await sock.send(json.dumps({"type": "token", "pub": str(PrivateKey.generate().public)}))
            assert json.loads(await asyncio.wait_for(sock.recv(), 10))["type"] == "challenge"
        await asyncio.to_thread(scraped)
        for sock in socks:
            assert json.loads(await asyncio.wait_for(sock.recv(), 15))["code"] == "challenge_timeout"


class _sockets:
    def __init__(self, port: int, count: int) -> None:
        self.port, self.count = port, count
        self.socks: list[Any] = []

    async def __aenter__(self) -> list[Any]:
        url = f"ws://127.0.0.1:{self.port}/ws/token"
        for i in range(self.count):
            self.socks.append(await websockets.connect(url, local_addr=(SOURCES[i % 8], 0)))
        return self.socks

    async def __aexit__(self, *exc: Any) -> None:
        await asyncio.gather(*(sock.close() for sock in self.socks))


def test_metrics_add_up_across_two_workers(tmp_path: Path) -> None:
    with servers.redis_server(tmp_path / "redis") as redis:
        env = production_env(
            tmp_path,
            REDIS_URL=redis.url,
            METRICS_ALLOWED_IPS=f"{ALLOWED}/32",
            METRICS_TOKEN=TOKEN,
            CHALLENGE_TIMEOUT="3",
            RATE_LIMIT_PER_MINUTE="600",
            RATE_LIMIT_BURST="40",
            LOG_FORMAT="json",
        )
        port = servers.free_port()
        process, log_path = make_serve(env, port, workers=2)
        try:
            ready = lambda: _health(port) if workers_started(log_path) == 2 else None  # noqa: E731
            servers.wait_ready(process, log_path, ready, timeout=60, what="make serve")
            https = _scenario(port, env)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(15)
            assert servers.wait_for(lambda: not _group_alive(process.pid), timeout=12)
    # Each stopping worker took its gauges out (their totals would count it as alive); its
    # counters stay, as they should.
    files = sorted(os.listdir(Path(env["VAR_DIR"]) / "metrics" / str(port)))
    assert not [name for name in files if name.startswith("gauge_livesum_")], files
    assert len([name for name in files if name.startswith("counter_")]) == 2, files
    log = log_path.read_text()
    assert "Traceback" not in log
    # Every line one JSON object (uvicorn's, in the parent and both workers, too), except what
    # make and serve print themselves, which are no log records.
    own = re.compile(r"DEBUG=false |serving on |make(\[\d+\])?: ")
    lines = [line for line in log.splitlines() if not own.match(line)]
    records = [json.loads(line) for line in lines]
    loggers = {r["logger"] for r in records}
    assert {"uvicorn.error", "challenges.runtime", "challenges.flows.outcome"} <= loggers
    outcomes = [r for r in records if r["logger"] == "challenges.flows.outcome"]
    successes = [r for r in outcomes if r["outcome"] == "success"]
    assert len(successes) == 12 + https
    assert {r["worker"] for r in successes} == set(_workers(env))


def _workers(env: dict[str, str]) -> list[str]:
    rows = servers.query(env["DATABASE_URL"], "SELECT DISTINCT worker FROM challenges_challengeattempt")
    return [w for (w,) in rows]


def _scenario(port: int, env: dict[str, str]) -> int:
    """The flows and the checks of the scrapes; returns how many HTTP flows got a token."""
    # Who may read: the allowed address, or anyone with the token; no one else.
    assert request(port, "GET", "/metrics", source=OTHER)[0] == 403
    wrong = {"authorization": f"Bearer {TOKEN[:-1]}x"}
    assert request(port, "GET", "/metrics", source=OTHER, headers=wrong)[0] == 403
    assert request(port, "GET", "/metrics", source=OTHER, headers={"authorization": TOKEN})[0] == 403
    assert scrape(port, source=OTHER, headers={"authorization": f"Bearer {TOKEN}"})
    assert "tokenprovider_flows_finished_total" not in scrape(port)  # nothing happened yet

    asyncio.run(run_flows(port))
    https = http_flows_until_one_crosses(port)
    # A refused scraper that insists is rate-limited like any client.
    flood = [request(port, "GET", "/metrics", source=FLOOD)[0] for _ in range(80)]
    assert set(flood) == {403, 429}
    assert flood.count(429) >= 10, flood

    def gauges(pending: int, sockets: int) -> Callable[[], list[str]]:
        def check() -> list[str]:
            seen = scrape(port)
            found = (
                total(seen, "tokenprovider_pending_challenges"),
                total(seen, "tokenprovider_websocket_connections"),
            )
            return [] if found == (pending, sockets) else [f"pending, sockets: {found}"]

        return check

    assert settle(gauges(0, 0), timeout=10) == []
    asyncio.run(hold_challenges(port, 4, lambda: _assert_settled(gauges(4, 4))))
    assert settle(gauges(0, 0), timeout=10) == []

    # Two workers wrote the audit, and each its own files of metrics.
    assert len(_workers(env)) == 2
    files = os.listdir(Path(env["VAR_DIR"]) / "metrics" / str(port))
    assert (
        len({re.sub(r"^\D+_(\d+)\.db$", r"\1", name) for name in files if name.startswith("counter_")}) == 2
    )

    def against_audit() -> list[str]:
        seen = scrape(port)
        rows = servers.query(
            env["DATABASE_URL"],
            "SELECT outcome, SUM(count) FROM challenges_challengeattempt GROUP BY outcome",
        )
        audit = {outcome: float(n) for outcome, n in rows}
        finished = by_label(seen, "tokenprovider_flows_finished_total", "outcome")
        return [] if finished == audit else [f"metrics {finished} != audit {audit}"]

    assert settle(against_audit, timeout=10) == []
    seen = scrape(port)
    finished = by_label(seen, "tokenprovider_flows_finished_total", "outcome")
    assert finished.keys() == {
        "success",
        "bad_signature",
        "invalid_json",
        "unknown_challenge",
        "challenge_timeout",
        "rate_limited",
    }
    assert finished["success"] == 12 + https
    assert (finished["bad_signature"], finished["challenge_timeout"]) == (4, 4)
    assert (finished["invalid_json"], finished["unknown_challenge"]) == (6, 3)
    assert by_label(seen, "tokenprovider_flows_finished_total", "transport") == {
        "ws": 12 + 4 + 6 + 4,
        "http": https + 3 + finished["rate_limited"],
    }
    assert by_label(seen, "tokenprovider_flows_started_total", "transport") == {"ws": 20, "http": https}
    latency = by_label(seen, "tokenprovider_flow_latency_seconds_count", "outcome_class")
    assert latency == {"success": 12 + https, "rejected": 4, "timeout": 4}
    assert total(seen, "tokenprovider_flow_latency_seconds_bucket", le="+Inf", outcome_class="success") == (
        12 + https
    )
    assert by_label(seen, "tokenprovider_refusals_total", "kind") == {
        "rate_limited": finished["rate_limited"]
    }
    assert by_label(seen, "tokenprovider_routing_failures_total", "code") == {"unknown_challenge": 3}
    routed = by_label(seen, "tokenprovider_routed_answer_seconds_count", "result")
    assert routed.keys() == {"token"}, routed
    assert 1 <= routed["token"] <= https, routed  # the HTTP answers that crossed workers
    return https
    (rows,) = servers.query(env["DATABASE_URL"], "SELECT COUNT(*) FROM challenges_challengeattempt")
    assert total(seen, "tokenprovider_audit_batch_rows_sum") == rows[0]  # every row, once
    assert total(seen, "tokenprovider_audit_commit_seconds_count") == total(
        seen, "tokenprovider_audit_batch_rows_count"
    )
    assert total(seen, "tokenprovider_audit_failed_batches_total") == 0


def _assert_settled(check: Callable[[], list[str]]) -> None:
    assert settle(check, timeout=10) == []


async def relay_flows(port: int) -> None:
    """A token, a bad signature and an expired challenge, relayed to the authority."""
    assert (await ws_flow(port, ALLOWED))["type"] == "token"
    assert (await ws_flow(port, ALLOWED, good=False))["code"] == "upstream_bad_signature"
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws/token") as sock:
        await sock.send(json.dumps({"type": "token", "pub": str(PrivateKey.generate().public)}))
        assert json.loads(await asyncio.wait_for(sock.recv(), 10))["type"] == "challenge"
        assert json.loads(await asyncio.wait_for(sock.recv(), 10))["code"] == "challenge_timeout"


def test_one_daphne_process_serves_its_own_metrics_with_the_upstream_statuses(tmp_path: Path) -> None:
    """make run's path: daphne, DEBUG, nothing configured for /metrics (loopback may look), a
    relay to runauthority whose calls are counted by the status they ended with."""
    hub_env = servers.base_env(tmp_path / "hub", AUTHORITY_API_KEYS=f"{API_KEY}:{API_SECRET}")
    with rpcutil.authority(tmp_path / "hub", env=hub_env) as hub:
        env = servers.base_env(
            tmp_path / "relay",
            TOKEN_UPSTREAM=f"grpc://{hub.target}",
            USER_API_KEY=API_KEY,
            USER_API_SECRET=API_SECRET,
            CHALLENGE_TIMEOUT="1",
        )
        with servers.running(tmp_path / "relay", kind="daphne", env=env) as relay:
            asyncio.run(relay_flows(relay.port))
            seen = scrape(relay.port)
            assert scrape(relay.port, source=OTHER)  # all of loopback, with DEBUG
    upstream = f"grpc://{hub.target}"
    assert by_label(seen, "tokenprovider_upstream_status_total", "status") == {
        "OK": 1,
        "UNKNOWN": 1,  # the authority's answer to a bad signature
        "CANCELLED": 1,  # the expired challenge's stream
    }
    assert by_label(seen, "tokenprovider_flows_finished_total", "outcome") == {
        "success": 1,
        "upstream_bad_signature": 1,
        "challenge_timeout": 1,
    }
    assert by_label(seen, "tokenprovider_flows_finished_total", "upstream") == {upstream: 3}
    assert total(seen, "tokenprovider_flows_started_total", transport="ws", upstream=upstream) == 3
    assert by_label(seen, "tokenprovider_flow_latency_seconds_count", "outcome_class") == {
        "success": 1,
        "rejected": 1,  # the authority refused the signature: the client's answer
        "timeout": 1,
    }
    assert total(seen, "tokenprovider_pending_challenges") == 0
    assert total(seen, "tokenprovider_websocket_connections") == 0
    assert "process_cpu_seconds_total" in seen  # the process's own registry
    assert not (Path(env["VAR_DIR"]) / "metrics").exists()
