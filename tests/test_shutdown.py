"""Graceful shutdown under each real server: SIGTERM ends every pending challenge with
``server_shutdown`` (an error frame to the socket that waits, an audit row), cancels a
relayed challenge's upstream stream, and the process exits within 10 s."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import websockets

from challenges.identity import PrivateKey
from tests import servers
from tests.rpcutil import API_KEY, API_SECRET, start_authority

pytestmark = [pytest.mark.server, pytest.mark.once]
KINDS = ["daphne", "uvicorn"]


async def hold_challenges(server: servers.Server, count: int) -> tuple[list[Any], list[str]]:
    sockets, ids = [], []
    for _ in range(count):
        ws = await websockets.connect(server.ws)
        await ws.send(json.dumps({"type": "token", "pub": str(PrivateKey.generate().public)}))
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert frame["type"] == "challenge", frame
        sockets.append(ws)
        ids.append(frame["id"])
    return sockets, ids


async def terminate_and_hear(server: servers.Server, sockets: list[Any]) -> list[dict[str, Any]]:
    """SIGTERM the server; what each waiting socket hears; the process gone within 10 s."""
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    heard = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for ws in sockets]
    for ws in sockets:
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
    while server.process.poll() is None and time.monotonic() - started < 10:
        await asyncio.sleep(0.05)
    assert server.process.poll() is not None, "the server did not exit within 10 s of SIGTERM"
    return heard


def outcomes(server: servers.Server, ids: list[str]) -> list[tuple[Any, ...]]:
    marks = ",".join("?" * len(ids))
    return server.rows(
        f"SELECT outcome, transport, upstream_status FROM challenges_challengeattempt"
        f" WHERE challenge_id IN ({marks}) ORDER BY id",
        tuple(ids),
    )


@pytest.mark.parametrize("kind", KINDS)
async def test_sigterm_tells_every_waiting_socket_and_audits_it(tmp_path: Path, kind: str) -> None:
    server = servers.start(tmp_path, kind=kind)
    try:
        sockets, ids = await hold_challenges(server, 3)
        heard = await terminate_and_hear(server, sockets)
    finally:
        server.stop()
    assert [(f["type"], f["code"]) for f in heard] == [("error", "server_shutdown")] * 3
    assert outcomes(server, ids) == [("server_shutdown", "ws", "cancelled")] * 3
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("kind", KINDS)
async def test_sigterm_cancels_a_relayed_challenges_upstream_stream(tmp_path: Path, kind: str) -> None:
    signer = PrivateKey.generate()
    common = {"AUTHORITY_PRIVATE_KEY": str(signer)}
    hub = start_authority(
        tmp_path, env=servers.base_env(tmp_path, AUTHORITY_API_KEYS=f"{API_KEY}:{API_SECRET}", **common)
    )
    provider_env = servers.base_env(
        tmp_path,
        TOKEN_UPSTREAM=f"grpc://{hub.target}",
        USER_API_KEY=API_KEY,
        USER_API_SECRET=API_SECRET,
        **common,
    )
    provider = servers.start(tmp_path, kind=kind, env=provider_env, migrate_db=False)
    try:
        [ws], [flow_id] = await hold_challenges(provider, 1)
        [frame] = await terminate_and_hear(provider, [ws])
        assert (frame["type"], frame["code"]) == ("error", "server_shutdown")
        # The authority saw its stream cancelled (and audited it so), not left open.
        assert servers.wait_for(
            lambda: (
                ("grpc", "missing_sig", "CANCELLED")
                in hub.rows("SELECT transport, outcome, upstream_status FROM challenges_challengeattempt")
            ),
            timeout=5,
        )
    finally:
        provider.stop()
        hub.stop()
    assert outcomes(provider, [flow_id]) == [("server_shutdown", "ws", "CANCELLED")]
    assert "Traceback" not in provider.log()
