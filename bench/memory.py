"""Memory per idle socket: RSS growth of a fresh server while it holds N idle WebSockets.

Each server is started fresh (so earlier load has not pre-grown its heap),
warmed up with a few flows, and read (``VmRSS``) before the sockets open,
while they are held, and after they have closed again; once with a client
that offers permessage-deflate as browsers do, once with one that does not.
``make serve``'s server holds them ``hold`` seconds, and every socket must
still be open and answer a ping at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from websockets.asyncio.client import ClientConnection

from challenges.identity import PrivateKey

from . import procs
from .loadgen import classify, open_socket
from .servers import Server

OPEN_AT_ONCE = 50
#: Seconds RSS is left to settle before each reading (before, held, closed).
SETTLE_SECONDS = 2.0


@dataclass
class IdleMemory:
    server: str
    sockets: int
    #: Whether the client offered permessage-deflate (daphne never accepts it).
    compression: bool = True
    before_kib: int = 0
    held_kib: int = 0
    closed_kib: int = 0
    held_seconds: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def failures(self) -> int:
        return sum(self.errors.values()) + (0 if self.sockets else 1)

    @property
    def per_socket_kib(self) -> float:
        return (self.held_kib - self.before_kib) / self.sockets if self.sockets else 0.0


async def _hold(
    server: Server, count: int, result: IdleMemory, hold: float = 0.0, settle: float = SETTLE_SECONDS
) -> None:
    gate = asyncio.Semaphore(OPEN_AT_ONCE)
    pid = server.process.pid

    async def one() -> ClientConnection | None:
        async with gate:
            try:
                ws: ClientConnection = await open_socket(
                    server.ws, timeout=20, compression=result.compression
                )
                return ws
            except Exception as exc:
                result.errors[f"open_{classify(exc)}"] += 1
                return None

    await asyncio.sleep(settle)
    result.before_kib = await asyncio.to_thread(procs.rss_kib, pid)
    socks: list[ClientConnection] = []
    try:
        async with asyncio.timeout(120):
            socks = [ws for ws in await asyncio.gather(*(one() for _ in range(count))) if ws is not None]
        result.sockets = len(socks)
        await asyncio.sleep(settle)
        result.held_kib = await asyncio.to_thread(procs.rss_kib, pid)
        if hold:
            await asyncio.sleep(hold)
            result.held_seconds = hold
            pongs = await asyncio.gather(*(_ping(ws) for ws in socks))
            result.errors.update(p for p in pongs if p)
        for ws in socks:
            if ws.close_code is not None:
                result.errors[f"closed_{ws.close_code}"] += 1
    finally:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(60):
                await asyncio.gather(*(ws.close() for ws in socks), return_exceptions=True)
    await asyncio.sleep(settle)
    result.closed_kib = await asyncio.to_thread(procs.rss_kib, pid)


async def _ping(ws: ClientConnection) -> str | None:
    try:
        async with asyncio.timeout(30):
            await (await ws.ping())
    except Exception as exc:
        return f"ping_{classify(exc)}"
    return None


def measure(
    tmp: Path, *, authority: PrivateKey, count: int, hold: float = 0.0, settle: float = SETTLE_SECONDS
) -> list[IdleMemory]:
    from .run import Target, drive

    results: list[IdleMemory] = []
    for kind, compression in itertools.product(("floor", "daphne", "serve"), (True, False)):
        where = tmp / f"{kind}-{'deflate' if compression else 'plain'}"
        extra = {"MAX_CONNECTIONS_PER_IP": str(count * 2)} if kind != "floor" else {}
        server = procs.start_config(where, kind, authority=authority, **extra)
        try:
            target = Target(kind, [server.ws], [server.process.pid], [server.log_path])
            warm = drive(target, concurrency=4, flows=40, cpu=None, issuer=str(authority.public))
            result = IdleMemory(server=kind, sockets=0, compression=compression)
            result.errors.update({f"warm-up {k}": v for k, v in warm.errors.items()})
            held = (
                hold if kind == "serve" and not compression else 0.0
            )  # the long hold: make serve's own setup
            asyncio.run(_hold(server, count, result, held, settle))
            if server.process.poll() is not None:
                result.errors["server_exited"] += 1
            results.append(result)
        finally:
            server.stop()
    return results
