"""A client that sends a burst of frames in one write, without reading, on real daphne and
uvicorn processes: the server closes on policy (too many bad frames, 4008; a frame too large,
4009) with frames of the burst still in its queue. Those are dropped quietly: not answered,
not audited, no traceback in the log; and the next client is served."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from challenges import tokens
from challenges.client import get_token_async
from challenges.identity import PrivateKey
from tests import servers

pytestmark = [pytest.mark.server, pytest.mark.once]
MAX_ERRORS = 5
#: Seconds a client takes to read what the server answered to its burst.
READ_LATER = 0.2


def burst(server: servers.Server, frames: list[bytes]) -> tuple[list[dict[str, Any]], int]:
    """Open ``/ws/token``, send ``frames`` (text) in one write, and read only a moment later
    (the server has dealt with the whole burst by then, the close still unanswered), until the
    server closes: the frames it answered, and its close code."""
    client = ClientProtocol(parse_uri(server.ws), max_size=None)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        client.send_request(client.connect())
        sock.sendall(b"".join(client.data_to_send()))
        while client.handshake_exc is None and client.state.name == "CONNECTING":
            client.receive_data(sock.recv(65536))
        assert client.handshake_exc is None, client.handshake_exc
        for frame in frames:
            client.send_text(frame)
        sock.sendall(b"".join(client.data_to_send()))
        time.sleep(READ_LATER)
        answered: list[dict[str, Any]] = []
        while client.close_rcvd is None and (data := sock.recv(65536)):  # bounded by the timeout
            client.receive_data(data)
            for event in client.events_received():
                if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                    answered.append(json.loads(event.data))
        assert client.close_rcvd is not None, answered
        # Our half of the closing handshake; autobahn (daphne) aborts a socket whose client
        # was slow to answer its close (its timeout is about a second, but batched).
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(b"".join(client.data_to_send()))
            while sock.recv(65536):
                pass
    return answered, client.close_rcvd.code


def codes(answered: list[dict[str, Any]]) -> list[str]:
    assert all(frame["type"] == "error" for frame in answered), answered
    return [frame["code"] for frame in answered]


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
def test_frames_queued_behind_a_policy_close_are_dropped_quietly(tmp_path: Path, kind: str) -> None:
    authority = PrivateKey.generate()
    env = servers.base_env(
        tmp_path,
        AUTHORITY_PRIVATE_KEY=str(authority),
        MAX_ERRORS_PER_CONNECTION=str(MAX_ERRORS),
        RATE_LIMIT_PER_MINUTE="0",
    )
    user = PrivateKey.generate()
    with servers.running(tmp_path, kind=kind, env=env) as server:
        answered, code = burst(server, [b"x"] * 30)
        assert (codes(answered), code) == (["invalid_json"] * MAX_ERRORS + ["too_many_errors"], 4008)
        # Over the application's frame limit (64 KiB), under the WebSocket layer's (128 KiB).
        answered, code = burst(server, [b"x" * 70_000, b"x", b"x", b"x"])
        assert (codes(answered), code) == (["frame_too_large"], 4009)
        token = asyncio.run(get_token_async(server.ws, user, timeout=10))
        # daphne logs an application's exception when it reaps its connection, once a second.
        servers.wait_for(lambda: "Traceback" in server.log(), timeout=2.5)
        server.stop()  # writes the audit out
        log = server.log()
    assert tokens.verify_token(token, issuer=authority.public)["sub"] == str(user.public)
    assert "Traceback" not in log, log
    assert " ERROR " not in log, log
    audited = server.rows("SELECT outcome, SUM(count) FROM challenges_challengeattempt GROUP BY outcome")
    assert dict(audited) == {
        "invalid_json": MAX_ERRORS,
        "too_many_errors": 1,
        "frame_too_large": 1,
        "success": 1,
    }
