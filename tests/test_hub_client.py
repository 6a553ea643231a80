"""The real ``@textile/hub`` 6.3.4 client, as an app server built on the Textile tutorial uses
it, against this service under daphne and uvicorn: ``Client.withKeyInfo({key, secret},
<service>)`` then ``getTokenChallenge(publicKey, callback)`` (``tests/node/hub-client.mjs``),
its WebSocket transport on the ``ws`` 7.5.14 a fresh install of the package resolves (an
override in ``tests/node/package.json``; this folder's own ``ws`` is 8).

The token verifies against the service's published key set (``/.well-known/jwks.json``, by
its ``kid``) and with ``challenges.tokens.verify_token``. Each failure gets the message the
Hub gave, within the time the Hub took, and an audit row. The same client also gets tokens
from ``manage.py runserver`` and, 50 calls at once, from ``make serve`` with two workers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from challenges import tokens
from tests import servers
from tests.grpcwebutil import check_against_the_key_set
from tests.rpcutil import API_KEY, API_SECRET
from tests.test_serve import AUTHORITY, _group_alive, _health, make_serve, production_env

pytestmark = [pytest.mark.server, pytest.mark.once]
NODE_DIR = servers.ROOT / "tests" / "node"
AUDIENCE = "https://app.example"
DEADLINE = 2.0


def node_ready() -> None:
    if not shutil.which("node") or not (NODE_DIR / "node_modules" / "@textile" / "hub").is_dir():
        raise RuntimeError("node and tests/node/node_modules are needed: run `make node-deps` (npm ci)")


@pytest.fixture(scope="module", params=["daphne", "uvicorn"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[servers.Server]:
    node_ready()
    tmp = tmp_path_factory.mktemp(f"hub-{request.param}")
    env = servers.base_env(
        tmp,
        AUTHORITY_API_KEYS=f"{API_KEY}:{API_SECRET}",
        AUTHORITY_CHALLENGE_DEADLINE=str(DEADLINE),
        TOKEN_AUDIENCE=AUDIENCE,
        TOKEN_TTL="3600",
    )
    with servers.running(tmp, kind=request.param, env=env) as running:
        yield running
    log = running.log()
    assert "Traceback" not in log
    assert API_SECRET not in log


def hub_client(
    server: servers.Server, scenario: str, *, key: str = API_KEY, secret: str = API_SECRET, count: int = 1
) -> dict[str, Any]:
    out = subprocess.run(
        ["node", "hub-client.mjs", scenario, server.http, key, secret, str(count)],
        cwd=NODE_DIR, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.stdout, out.stderr
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def audited(server: servers.Server, pub: str) -> tuple[Any, ...]:
    query = (
        "SELECT outcome, upstream_status, transport, api_key, detail FROM challenges_challengeattempt"
        " WHERE public_key = ?"
    )
    assert servers.wait_for(lambda: server.rows(query, (pub,)), timeout=5), f"no audit row for {pub}"
    [row] = server.rows(query, (pub,))
    return row


def test_the_hub_client_gets_a_token_the_key_set_verifies(server):
    result = hub_client(server, "token")
    assert "token" in result, result
    claims = check_against_the_key_set(server, result["token"], result["pub"], audience=AUDIENCE)
    assert set(claims) == {"iat", "iss", "sub", "exp", "jti", "aud"}
    assert claims["exp"] - claims["iat"] == 3600
    assert audited(server, result["pub"]) == ("success", "OK", "grpc-web", API_KEY, "")
    [(jti,)] = server.rows("SELECT jti FROM challenges_issuedtoken WHERE public_key = ?", (result["pub"],))
    assert jti == claims["jti"]


UNKNOWN_KEY = "b" + "z" * 26


@pytest.mark.parametrize(
    ("scenario", "key", "message", "row"),
    [
        ("wrong-signature", API_KEY, "bad signature", ("bad_signature", "UNKNOWN", API_KEY)),
        ("no-key", API_KEY, "Session or API key required", ("api_key_required", "UNAUTHENTICATED", "")),
        (
            "token",
            UNKNOWN_KEY,
            "API key not found or is invalid",
            ("api_key_not_found", "NOT_FOUND", UNKNOWN_KEY),
        ),
        ("expired-signature", API_KEY, "Bad API key signature", ("api_sig_bad", "UNAUTHENTICATED", API_KEY)),
        # The app's own error reaches it; the Hub's answer to the empty request is in the audit.
        (
            "callback-throws",
            API_KEY,
            "the user declined to sign",
            ("missing_sig", "INVALID_ARGUMENT", API_KEY),
        ),
    ],
    ids=["wrong-signature", "missing-api-key", "wrong-api-key", "expired-api-signature", "callback-throws"],
)
def test_each_failure_is_the_hubs_at_once(server, scenario, key, message, row):
    result = hub_client(server, scenario, key=key)
    assert result.get("error") == message, result
    assert result["ms"] < 1500
    outcome, status, transport, api_key, detail = audited(server, result["pub"])
    assert (outcome, status, api_key) == row
    assert transport == "grpc-web"
    # The audit keeps the reason (the caller sees only the Hub's fixed message).
    reasons = {"callback-throws": "Signature is required", "wrong-signature": "the signature does not verify"}
    assert detail == reasons.get(scenario, message)


def test_a_challenge_left_unanswered_ends_at_the_deadline(server):
    result = hub_client(server, "unanswered")
    assert result.get("error") == "Challenge deadline exceeded", result
    assert DEADLINE * 1000 - 100 <= result["ms"] < DEADLINE * 1000 + 1500
    assert audited(server, result["pub"])[:3] == ("challenge_timeout", "DEADLINE_EXCEEDED", "grpc-web")


def test_fifty_concurrent_hub_clients_under_make_serve_with_two_workers(tmp_path, capsys):
    """``make serve`` (uvicorn, DEBUG off) with two workers and a Redis of the test's own."""
    node_ready()
    with servers.redis_server(tmp_path / "redis") as redis:
        env = production_env(tmp_path, REDIS_URL=redis.url, AUTHORITY_API_KEYS=f"{API_KEY}:{API_SECRET}")
        port = servers.free_port()
        process, log_path = make_serve(env, port, workers=2)
        try:
            servers.wait_ready(
                process,
                log_path,
                lambda: 200 if _health(port) == 200 else None,
                timeout=60,
                what="make serve",
            )
            serve = servers.Server(process=process, port=port, env=env, log_path=log_path)
            result = hub_client(serve, "concurrent", count=50)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(15)
            assert servers.wait_for(lambda: not _group_alive(process.pid), timeout=12)
    assert result["errors"] == []
    assert len(result["tokens"]) == 50
    for item in result["tokens"]:
        assert tokens.verify_token(item["token"], issuer=AUTHORITY.public)["sub"] == item["pub"]
    rows = servers.query(
        env["DATABASE_URL"],
        "SELECT worker, COUNT(*) FROM challenges_challengeattempt"
        " WHERE transport = 'grpc-web' AND outcome = 'success' GROUP BY worker",
    )
    assert sum(count for _, count in rows) == 50
    assert len(rows) == 2, f"both workers should have served calls: {rows}"
    with capsys.disabled():
        print(
            f"\n50 concurrent @textile/hub calls under make serve (2 workers): {result['seconds']:.2f} s,"
            f" {50 / result['seconds']:.1f} flows/s; per worker {sorted(count for _, count in rows)}"
        )
    log = log_path.read_text()
    assert "Traceback" not in log
    assert API_SECRET not in log


def test_the_hub_client_gets_a_token_from_manage_py_runserver(tmp_path):
    """``make run``'s server: daphne's ``runserver``, on the same port as ``/ws/token``."""
    node_ready()
    env = servers.base_env(tmp_path, AUTHORITY_API_KEYS=f"{API_KEY}:{API_SECRET}")
    runserver = servers.start(tmp_path, kind="runserver", env=env)
    try:
        result = hub_client(runserver, "token")
    finally:
        runserver.stop()
    assert "token" in result, result
    assert audited(runserver, result["pub"])[:4] == ("success", "OK", "grpc-web", API_KEY)
    assert "Traceback" not in runserver.log()
