"""gRPC-Web ``GetToken`` calls in ``/metrics``, on a real daphne process: a token, calls
ended in the call (a bad signature, the deadline, a caller that went away) and calls
refused before their challenge (a cap, the API key, oversized messages, the Origin), each
counted as ``/ws/token``'s outcomes are, under the transport and upstream their audit rows
name, and the totals checked against the audit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from challenges.identity import PrivateKey
from tests import servers
from tests.grpcwebutil import HALF_CLOSE, Call, data, key_message, metadata_block, signature_message
from tests.test_grpcweb_endpoint import endpoint_env, row
from tests.test_metrics import ALLOWED, by_label, scrape, settle, total

pytestmark = pytest.mark.server
#: Each call from an address of its own: no rate limit or connection cap decides its outcome.
SOURCES = iter(f"127.0.5.{i}" for i in range(1, 100))
FOREIGN = "https://evil.example"


async def call(server: servers.Server, *messages: bytes, origin: str | None = None) -> Call:
    opened = await Call.open(f"ws://127.0.0.1:{server.port}", local_addr=(next(SOURCES), 0), origin=origin)
    await opened.send(*messages)
    return opened


async def calls(server: servers.Server) -> None:
    """One call of each outcome, in turn (the stream cap is 1)."""
    user = PrivateKey.generate()
    ok = await call(server, metadata_block(), key_message(str(user.public)))
    await ok.send(signature_message(user.sign(await ok.challenge())), HALF_CLOSE)
    assert (await ok.end()).status == (0, "")

    wrong = await call(server, metadata_block(), key_message(str(PrivateKey.generate().public)))
    await wrong.send(signature_message(PrivateKey.generate().sign(await wrong.challenge())), HALF_CLOSE)
    assert (await wrong.end()).status == (2, "bad signature")

    late = await call(server, metadata_block(), key_message(str(PrivateKey.generate().public)))
    await late.challenge()
    assert (await late.end()).status == (4, "Challenge deadline exceeded")  # 2 s

    unknown_key = metadata_block(key="b" + "q" * 26)
    refused = await call(server, unknown_key, key_message(str(PrivateKey.generate().public)))
    assert (await refused.end()).status == (5, "API key not found or is invalid")

    big_metadata = await call(server, b"a: " + b"x" * 70_000)
    assert (await big_metadata.end()).status[0] == 8  # frame_too_large, before the call began
    big_request = await call(server, metadata_block(), data(bytes(70_000)))
    assert (await big_request.end()).status[0] == 8  # frame_too_large, before the challenge

    foreign = await call(server, metadata_block(), origin=FOREIGN)
    assert (await foreign.end()).status[0] == 7  # origin_not_allowed, at admission

    holder = PrivateKey.generate()
    held = await call(server, metadata_block(), key_message(str(holder.public)))
    await held.challenge()  # holds the one stream
    # Its socket is an open WebSocket like /ws/token's (the refused ones never were).
    assert total(scrape(server.port), "tokenprovider_websocket_connections") == 1
    busy = await call(server, metadata_block(), key_message(str(PrivateKey.generate().public)))
    assert (await busy.end()).status == (8, "too many concurrent GetToken calls; retry shortly")
    await held.ws.close()  # the caller goes away mid-call
    assert row(server, str(holder.public))[:3] == ("missing_sig", "CANCELLED", "grpc-web")


def test_grpc_web_calls_are_counted_as_every_other_transports(tmp_path: Path) -> None:
    env = endpoint_env(tmp_path, METRICS_ALLOWED_IPS=ALLOWED, AUTHORITY_MAX_STREAMS="1")
    with servers.running(tmp_path, kind="daphne", env=env) as server:
        asyncio.run(calls(server))

        def against_audit() -> list[str]:
            rows = server.rows(
                "SELECT outcome, SUM(count) FROM challenges_challengeattempt"
                " WHERE transport = 'grpc-web' GROUP BY outcome"
            )
            audit = {outcome: float(n) for outcome, n in rows}
            samples = scrape(server.port)
            finished = by_label(samples, "tokenprovider_flows_finished_total", "outcome")
            sockets = total(samples, "tokenprovider_websocket_connections")
            return [
                *([] if finished == audit else [f"metrics {finished} != audit {audit}"]),
                *([] if sockets == 0 else [f"{sockets} sockets still counted open"]),
            ]

        assert settle(against_audit, timeout=10) == []
        seen = scrape(server.port)
    log = server.log()
    assert "Traceback" not in log
    # And each flow's outcome line (INFO), as /ws/token's and the two-step's flows have theirs.
    lines = [line for line in log.splitlines() if " transport=grpc-web " in line and "flow " in line]
    assert sorted(line.split("flow ", 1)[1].split()[0] for line in lines) == [
        "bad_signature", "challenge_timeout", "missing_sig", "success",
    ], lines  # fmt: skip
    finished = by_label(seen, "tokenprovider_flows_finished_total", "outcome")
    assert finished == {
        "success": 1,
        "bad_signature": 1,
        "challenge_timeout": 1,
        "missing_sig": 1,  # the caller that went away: CANCELLED in the audit
        "api_key_not_found": 1,
        "frame_too_large": 2,
        "origin_not_allowed": 1,
        "too_many_pending": 1,
    }
    # The transport and the upstream its audit rows name: the embedded authority mints.
    assert by_label(seen, "tokenprovider_flows_finished_total", "transport") == {"grpc-web": 9}
    assert by_label(seen, "tokenprovider_flows_finished_total", "upstream") == {"authority": 9}
    # Started: each call whose key was read, as /ws/token counts each valid 'token' frame.
    started = [(labels, value) for labels, value in seen["tokenprovider_flows_started_total"] if value]
    assert started == [({"transport": "grpc-web", "upstream": "authority"}, 4)]
    latency = by_label(seen, "tokenprovider_flow_latency_seconds_count", "outcome_class")
    assert latency == {"success": 1, "rejected": 2, "timeout": 1}
    assert by_label(seen, "tokenprovider_flow_latency_seconds_count", "transport") == {"grpc-web": 4}
    # The refusals before a challenge, by a limit: one by one, as the audit's counts.
    assert total(seen, "tokenprovider_websocket_connections") == 0  # every call's socket closed
    assert by_label(seen, "tokenprovider_refusals_total", "kind") == {
        "frame_too_large": 2,
        "too_many_pending": 1,
    }
