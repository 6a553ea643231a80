"""A real ``manage.py runauthority`` for the tests, and a hand-made GetToken client.

:func:`authority` starts the command as a subprocess on ``127.0.0.1:0`` with
its own SQLite audit and reads the bound port from its ``listening on`` line.

The hand-made client does not use the generated stubs: it frames requests per
docs/PROTOCOL.md "Vectors" (``0a <len> key``, ``12 40 signature``) over grpc's generic
``stream_stream`` with no serializers, and parses replies byte by byte.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import re
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from tests import servers

METHOD = "/threads.pb.API/GetToken"
TWIN = "/threads.net.pb.API/GetToken"
#: A fixed Hub-format API key and the vectors' secret (bytes 00..17).
API_KEY = "bqgtbbn4yk5lmpqlgxcfbhq7gdq"
API_SECRET = "baaaqeayeaudaocajbifqydiob4ibceqtcqkrmfy"
OPEN_KEY = "bopenkeyneedsnosignature"


@dataclass
class Authority(servers.Server):
    """A ``manage.py runauthority`` process (its log, audit and stop as a server's)."""

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        return super().stop(sig, timeout)


def start_authority(
    tmp: Path,
    *args: str,
    env: dict[str, str] | None = None,
    migrate: bool = True,
    address: str = "127.0.0.1:0",
) -> Authority:
    tmp.mkdir(parents=True, exist_ok=True)
    env = env or servers.base_env(tmp)
    if migrate:
        servers.migrate(env)
    process, log_path = servers.launch(
        [sys.executable, "manage.py", "runauthority", "--address", address, *args],
        env=env,
        log_path=tmp / f"authority-{time.monotonic_ns()}.log",
    )

    def listening() -> int | None:
        match = re.search(r"^listening on 127\.0\.0\.1:(\d+)$", log_path.read_text(), re.MULTILINE)
        return int(match.group(1)) if match else None

    port = servers.wait_ready(process, log_path, listening, timeout=30, what="runauthority")
    return Authority(process=process, port=port, env=env, log_path=log_path)


@contextlib.contextmanager
def authority(tmp: Path, *args: str, **kwargs: Any) -> Iterator[Authority]:
    server = start_authority(tmp, *args, **kwargs)
    try:
        yield server
    finally:
        server.stop()


# -- the hand-made client ----------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def key_frame(key: str) -> bytes:
    data = key.encode()
    return b"\x0a" + varint(len(data)) + data


def signature_frame(sig: bytes) -> bytes:
    return b"\x12" + varint(len(sig)) + sig


def parse_reply(data: bytes) -> tuple[str, bytes]:
    """One GetTokenReply: ``("challenge", bytes)`` or ``("token", bytes)``."""
    tag, pos, length, shift = data[0], 1, 0, 0
    while True:
        byte = data[pos]
        length |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            break
    assert len(data) == pos + length, data
    return {0x0A: "challenge", 0x12: "token"}[tag], data[pos:]


def api_sig(secret: str, msg: str) -> str:
    body = secret[1:].upper()
    raw = base64.b32decode(body + "=" * (-len(body) % 8))
    mac = hmac.new(raw, msg.encode(), hashlib.sha256).digest()
    return "b" + base64.b32encode(mac).decode().lower().rstrip("=")


def api_metadata(
    key: str = API_KEY, secret: str | None = API_SECRET, ahead: timedelta = timedelta(minutes=5)
) -> list[tuple[str, str]]:
    entries = [("x-textile-api-key", key)]
    if secret:
        msg = (datetime.now(UTC) + ahead).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        entries += [("x-textile-api-sig-msg", msg), ("x-textile-api-sig", api_sig(secret, msg))]
    return entries


class RawCall:
    """One GetToken stream of raw bytes."""

    def __init__(self, channel: grpc.aio.Channel, metadata: list[tuple[str, str]], method: str = METHOD):
        multi = channel.stream_stream(method, request_serializer=None, response_deserializer=None)
        self.call: Any = multi(metadata=metadata, timeout=20)

    async def send(self, frame: bytes) -> None:
        await self.call.write(frame)

    async def reply(self) -> tuple[str, bytes] | None:
        data = await self.call.read()
        return None if data is grpc.aio.EOF else parse_reply(data)

    async def reply_or_error(self) -> tuple[str, bytes] | None:
        """The next reply, or None when the stream ended (with any status)."""
        try:
            return await self.reply()
        except grpc.aio.AioRpcError:
            return None

    async def status(self) -> tuple[grpc.StatusCode, str]:
        return await self.call.code(), await self.call.details()
