"""End to end over real processes: a WebSocket client, daphne relaying with
``TOKEN_UPSTREAM=grpc://...``, and ``manage.py runauthority``, sharing one
SQLite audit. The token verifies against the authority's key; an authority
that stops, stalls (SIGSTOP) or comes back is handled within the timeout.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from challenges import tokens
from challenges.client import TokenClientError, get_token_async
from challenges.identity import PrivateKey
from challenges.rpc import sched
from tests import servers
from tests.rpcutil import API_KEY, API_SECRET, Authority, start_authority

pytestmark = [pytest.mark.server, pytest.mark.once]
SIGNER = PrivateKey.generate()
TIMEOUT = 2.0


@dataclass
class Setup:
    tmp: Path
    hub: Authority
    provider: servers.Server

    def restart_hub(self) -> None:
        self.hub = start_authority(self.tmp, env=self.hub.env, migrate=False, address=self.hub.target)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("e2e")
    common = {"AUTHORITY_PRIVATE_KEY": str(SIGNER), "TOKEN_TTL": "600"}
    hub_env = servers.base_env(tmp, AUTHORITY_API_KEYS=f"{API_KEY}:{API_SECRET}", **common)
    hub = start_authority(tmp, env=hub_env)
    provider_env = servers.base_env(
        tmp,
        TOKEN_UPSTREAM=f"grpc://{hub.target}",
        USER_API_KEY=API_KEY,
        USER_API_SECRET=API_SECRET,
        CHALLENGE_TIMEOUT=str(TIMEOUT),
        **common,
    )
    provider = servers.start(tmp, kind="daphne", env=provider_env)
    state = Setup(tmp, hub, provider)
    try:
        yield state
    finally:
        provider.stop()
        state.hub.stop()
    for log in (provider.log(), state.hub.log()):
        assert API_SECRET not in log


async def flow(setup: Setup, key: PrivateKey, **options: object) -> str:
    return await get_token_async(setup.provider.ws, key, accept_raw=True, timeout=10, **options)  # type: ignore[arg-type]


async def expect_code(setup: Setup, key: PrivateKey, code: str) -> str:
    """Run a flow that must fail with ``code`` in time; returns the audited upstream status."""
    started = time.monotonic()
    with pytest.raises(TokenClientError) as info:
        await flow(setup, key)
    assert info.value.code == code, info.value
    assert time.monotonic() - started < TIMEOUT + 1
    [(status,)] = setup.provider.rows(
        "SELECT upstream_status FROM challenges_challengeattempt WHERE public_key = ? AND transport = 'ws'",
        (str(key.public),),
    )
    return status


async def test_a_relayed_token_verifies_against_the_authority(setup, user_key):
    token = await flow(setup, user_key)
    claims = tokens.verify_token(token, issuer=SIGNER.public)
    assert claims["sub"] == str(user_key.public)
    rows = setup.provider.rows(
        "SELECT transport, upstream, outcome, upstream_status FROM challenges_challengeattempt"
        " WHERE public_key = ? ORDER BY transport",
        (str(user_key.public),),
    )
    assert rows == [
        ("grpc", "authority", "success", "OK"),
        ("ws", f"grpc://{setup.hub.target}", "success", "OK"),
    ]
    # One database, one token row: the authority's.
    assert setup.provider.rows(
        "SELECT count(*) FROM challenges_issuedtoken WHERE token_sha256 = ?", (tokens.token_sha256(token),)
    ) == [(1,)]


async def test_the_raw_challenge_is_marked(setup, user_key):
    with pytest.raises(TokenClientError) as info:
        await get_token_async(setup.provider.ws, user_key, timeout=10)
    assert info.value.code == "challenge_refused"
    # The client went away: the relay cancelled its stream, and the authority saw it.
    for _ in range(50):
        rows = setup.provider.rows(
            "SELECT transport, outcome, upstream_status FROM challenges_challengeattempt"
            " WHERE public_key = ? ORDER BY transport",
            (str(user_key.public),),
        )
        if len(rows) == 2:
            break
        await asyncio.sleep(0.05)
    assert rows == [("grpc", "missing_sig", "CANCELLED"), ("ws", "challenge_timeout", "CANCELLED")]


async def test_authority_stalled(setup, user_key):
    # The authority shares the SQLite file: stop it only once it has committed its
    # rows (a finished flow's token is released after its row), or it holds the lock.
    await flow(setup, PrivateKey.generate())
    setup.hub.process.send_signal(signal.SIGSTOP)
    try:
        assert await expect_code(setup, user_key, "upstream_deadline") == "DEADLINE_EXCEEDED"
    finally:
        setup.hub.process.send_signal(signal.SIGCONT)


async def test_authority_down_then_back(setup, user_key):
    setup.hub.stop()
    assert await expect_code(setup, user_key, "upstream_unavailable") == "UNAVAILABLE"
    setup.restart_hub()
    token, codes = "", []
    for _ in range(60):  # the provider's channel reconnects by itself (backoff at most 5 s)
        try:
            token = await flow(setup, PrivateKey.generate())
            break
        except TokenClientError as exc:
            codes.append(exc.code)
            await asyncio.sleep(0.25)
    assert set(codes) <= {"upstream_unavailable"}
    tokens.verify_token(token, issuer=SIGNER.public)


def _policies(pid: int) -> dict[int, tuple[str, int]]:
    """Each thread of ``pid``: its name and scheduling policy (field 41 of its stat)."""
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        found[int(tid)] = (name, int(fields[38]))
    return found


@pytest.mark.parametrize("side", ["provider", "hub"])
async def test_grpcs_threads_do_not_preempt_the_event_loop(setup, user_key, side):
    """Once the relay's channel is up (the provider) or the server listens (runauthority),
    gRPC's threads (I/O, timer, poller) run SCHED_BATCH and never preempt the event loop;
    the loop's thread and the process's own threads keep the normal policy."""
    await flow(setup, user_key)
    pid = getattr(setup, side).process.pid
    threads = _policies(pid)
    assert threads[pid][1] == os.SCHED_OTHER  # the loop's
    grpc = [policy for name, policy in threads.values() if name.startswith(("event_engine", "grpc_"))]
    assert len(grpc) >= 2, threads
    assert set(grpc) == {os.SCHED_BATCH}, threads
    batch = [name for name, policy in threads.values() if policy == os.SCHED_BATCH]
    assert len(batch) < len(threads) - 1, threads  # not every thread: the process's own keep theirs


def test_not_preempting_sets_the_threads_given_but_never_the_main_or_the_callers():
    ready, done = threading.Event(), threading.Event()
    worker = threading.Thread(target=lambda: (ready.set(), done.wait(5)))
    worker.start()
    try:
        ready.wait(5)
        assert worker.native_id in sched.thread_ids()
        assert sched.not_preempting({worker.native_id, threading.get_native_id()}) == 1
        assert os.sched_getscheduler(worker.native_id) == os.SCHED_BATCH
        assert os.sched_getscheduler(threading.get_native_id()) == os.SCHED_OTHER
    finally:
        done.set()
        worker.join(5)
