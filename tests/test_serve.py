"""``make serve``: refuses to start without each production setting, one clear line each,
and serves token flows with two worker processes on one port and a Redis of the test's own."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from challenges.client import get_token_async
from challenges.identity import PrivateKey, encode_buffer
from challenges.tokens import jwk, verify_token
from tests import servers
from tests.grpcwebutil import Call, key_message, metadata_block
from tests.rpcutil import authority

pytestmark = [pytest.mark.server, pytest.mark.once]
AUTHORITY = PrivateKey.generate()


def production_env(tmp: Path, **overrides: str) -> dict[str, str]:
    env = servers.base_env(
        tmp,
        SECRET_KEY="a-long-random-test-secret-" + "x" * 30,
        AUTHORITY_PRIVATE_KEY=str(AUTHORITY),
        ALLOWED_HOSTS="127.0.0.1,localhost",
        REDIS_URL="",
        # As behind the README's nginx: TLS ends at the proxy, which says so (see post()).
        SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto",
        METRICS_ALLOWED_IPS="127.0.0.1",
        # The tests' clients reach the worker itself over plain ws:// on loopback, where make
        # serve refuses a plain socket (test_tls_only keeps it on).
        SECURE_SSL_REDIRECT="false",
    )
    env.pop("DEBUG")  # make serve sets it
    env.update(overrides)
    return env


#: What an outer make (``make test``) exports to its children: without them, the make under
#: test runs and prints as it would from a shell (``make:``, not ``make[1]:``).
OUTER_MAKE = ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")


def make_serve(env: dict[str, str], port: int, workers: int = 1) -> tuple[subprocess.Popen[bytes], Path]:
    return servers.launch(
        ["make", "--no-print-directory", "serve", f"PORT={port}", f"WORKERS={workers}"],
        env={key: value for key, value in env.items() if key not in OUTER_MAKE},
        log_path=Path(env["VAR_DIR"]).parent / f"serve-{port}.log",
        new_session=True,  # so the whole group (make, manage.py, workers) gets the signal
    )


@pytest.mark.parametrize(
    ("unset", "says"),
    [
        ({"SECRET_KEY": ""}, "serve: SECRET_KEY is not set"),
        ({"AUTHORITY_PRIVATE_KEY": ""}, "serve: AUTHORITY_PRIVATE_KEY is not set"),
        ({"ALLOWED_HOSTS": ""}, "serve: ALLOWED_HOSTS is not set"),
    ],
)
def test_serve_refuses_without_each_production_setting(tmp_path, unset, says):
    env = production_env(tmp_path, **unset)
    out = subprocess.run(
        ["make", "--no-print-directory", "serve", f"PORT={servers.free_port()}"],
        cwd=servers.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    refusals = [line for line in out.stderr.splitlines() if line.startswith("serve: ")]
    assert refusals == [next(line for line in refusals if line.startswith(says))], out.stderr
    assert AUTHORITY.seed.hex() not in out.stdout + out.stderr


def test_serve_refuses_several_workers_without_redis(tmp_path):
    out = subprocess.run(
        ["make", "--no-print-directory", "serve", f"PORT={servers.free_port()}", "WORKERS=2"],
        cwd=servers.ROOT,
        env=production_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "serve: WORKERS=2 needs REDIS_URL" in out.stderr


def test_serve_takes_empty_variables_as_their_defaults(tmp_path):
    """HOST= bound every interface, WORKERS= was a traceback, SERVE_LOOP= reached uvicorn."""
    port = servers.free_port()
    env = production_env(
        tmp_path, HOST="", WORKERS="", SERVE_LOOP="", SERVE_HTTP="", PORT=str(port), DEBUG="false"
    )
    process, log_path = servers.launch(
        [sys.executable, "manage.py", "serve"], env=env, log_path=tmp_path / "serve.log"
    )
    try:
        servers.wait_ready(process, log_path, lambda: _health(port), timeout=60, what="manage.py serve")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
    log = log_path.read_text()
    assert f"serving on http://127.0.0.1:{port} with 1 worker(s)" in log
    assert "Traceback" not in log


def post(port: int, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "x-forwarded-proto": "https"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # a new connection each time
        return json.load(response)


def test_a_relay_serves_with_the_upstreams_public_key_alone(tmp_path):
    """A production relay holds no private key: ``UPSTREAM_PUBLIC_KEY`` checks the relayed
    tokens (verify, JWKS). serve refused to start without AUTHORITY_PRIVATE_KEY, and check's
    E011 asked for it too: a relay had to hold the authority's private key, or a made-up one
    it then published in its key set."""
    # A private network's authority that takes calls without an API key (runauthority with
    # DEBUG on and none configured), so the relay has no API key of its own either.
    hub_env = servers.base_env(tmp_path / "hub", AUTHORITY_PRIVATE_KEY=str(AUTHORITY), DEBUG="true")
    with authority(tmp_path / "hub", env=hub_env) as hub:
        port = servers.free_port()
        env = production_env(
            tmp_path,
            AUTHORITY_PRIVATE_KEY="",
            TOKEN_UPSTREAM=f"grpc://{hub.target}",
            UPSTREAM_PUBLIC_KEY=str(AUTHORITY.public),
        )
        check = subprocess.run(
            [sys.executable, "manage.py", "check", "--fail-level", "ERROR"],
            cwd=servers.ROOT, env=dict(env, DEBUG="false"), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert check.returncode == 0, check.stderr
        process, log_path = make_serve(env, port)
        try:
            servers.wait_ready(process, log_path, lambda: _health(port), timeout=60, what="make serve")
            user = PrivateKey.generate()
            ws = f"ws://127.0.0.1:{port}/ws/token"
            token = asyncio.run(get_token_async(ws, user, accept_raw=True, timeout=10))
            assert verify_token(token, issuer=AUTHORITY.public)["sub"] == str(user.public)
            assert post(port, "/api/token/verify", {"token": token})["active"] is True
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/.well-known/jwks.json", headers={"x-forwarded-proto": "https"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                published = json.load(response)["keys"]
            assert [key["x"] for key in published] == [jwk(AUTHORITY.public)["x"]]

            async def grpc_web() -> tuple[int, str]:  # GetToken over gRPC-Web mints: not here
                opened = await Call.open(f"ws://127.0.0.1:{port}")
                await opened.send(metadata_block(), key_message(str(user.public)))
                return (await opened.end()).status

            for _ in range(3):
                assert asyncio.run(grpc_web()) == (12, "GetToken is not configured on this server")
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(15)
    log = log_path.read_text()
    assert "Traceback" not in log
    # Why, said once (each caller could repeat it), and nothing about API keys it never reads.
    assert log.count("GetToken over gRPC-Web is not configured") == 1, log
    assert "no API keys are configured" not in log


def test_make_serve_runs_two_workers_on_one_port(tmp_path):
    with servers.redis_server(tmp_path / "redis") as redis:
        # 63 flows from one address: past the default request rate's burst.
        env = production_env(tmp_path, REDIS_URL=redis.url, RATE_LIMIT_PER_MINUTE="0")
        port = servers.free_port()
        process, log_path = make_serve(env, port, workers=2)
        try:
            servers.wait_ready(
                process,
                log_path,
                lambda: 200 if workers_started(log_path) == 2 and _health(port) == 200 else None,
                timeout=60,
                what="make serve",
            )

            def flow(_: int) -> str:  # each step on a new connection: answers cross workers
                user = PrivateKey.generate()
                challenge = post(port, "/api/token/challenge", {"pub": str(user.public)})
                signature = encode_buffer(user.sign(bytes(challenge["value"]["data"])))
                token = post(port, "/api/token", {"id": challenge["id"], "sig": signature})
                assert token["type"] == "token", token
                assert verify_token(token["value"], issuer=AUTHORITY.public)["sub"] == str(user.public)
                return str(challenge["id"][:8])

            # Six clients at once, as a port's load comes: one after another, every connection
            # could go to whichever idle worker the kernel woke first (a fresh clone's run
            # once had all 30 on one), where a busy worker leaves the next to the other.
            with ThreadPoolExecutor(6) as clients:
                owners = set(clients.map(flow, range(30), timeout=60))
            assert len(owners) == 2, "both workers should have issued challenges"
            for _ in range(3):  # and WebSocket flows, with no access log lines of their own
                user = PrivateKey.generate()
                token = asyncio.run(get_token_async(f"ws://127.0.0.1:{port}/ws/token", user, timeout=10))
                assert verify_token(token, issuer=AUTHORITY.public)["sub"] == str(user.public)
            with pytest.raises(InvalidStatus):  # a refused handshake
                connect(f"ws://127.0.0.1:{port}/ws/elsewhere", open_timeout=10).close()
            rows = servers.query(
                env["DATABASE_URL"],
                "SELECT DISTINCT worker FROM challenges_challengeattempt WHERE outcome = 'success'",
            )
            assert len(rows) == 2
        finally:
            started = time.monotonic()
            os.killpg(process.pid, signal.SIGTERM)  # as systemd does: every process of the group
            process.wait(15)
            assert servers.wait_for(lambda: not _group_alive(process.pid), timeout=12), (
                "workers outlived 12 s"
            )
            assert time.monotonic() - started < 12
    log = log_path.read_text()
    assert "Traceback" not in log
    assert "WARNING" not in log
    assert "serving on http://127.0.0.1" in log
    # No access log: uvicorn's lines for each WebSocket go with it (the flow's own line stays).
    assert log.count("transport=ws") == 3, log
    for line in ('"WebSocket /ws/', "connection open", "connection closed", "connection rejected"):
        assert line not in log, line
    assert "Uvicorn running on" in log  # uvicorn's other lines stay


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def workers_started(log_path: Path) -> int:
    """Workers whose startup is complete (until then, the other one takes every connection)."""
    return log_path.read_text().count("Application startup complete.")


def _health(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
            return response.status
    except OSError:
        return None


def test_a_worker_keeps_its_start_up_objects_out_of_full_collections(tmp_path):
    """What a worker imports and builds to start lives as long as it does: the ASGI module
    freezes it (challenges.lifecycle.freeze_startup_heap), so a full collection under load
    walks only what was made since, not the ~94,000 objects of Django, Channels and gRPC."""
    code = "import gc, tokensite.asgi; print(gc.get_freeze_count(), len(gc.get_objects()))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=servers.ROOT,
        env=servers.base_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    frozen, tracked = map(int, out.stdout.split())
    assert frozen > 50_000, out.stdout
    assert tracked < frozen // 20, out.stdout  # what a full pass still walks
