"""Soak: idle WebSockets held on two workers with the Redis channel layer must survive.

A daphne worker and a uvicorn worker share a redis-server of their own. Each
holds ``sockets`` idle WebSockets for ``minutes`` (the client sends nothing,
not even pings; the servers' own pings are answered). Then every socket must
still be open and complete a token flow, a few flows must resume across the
workers, and the logs must hold no ``Timeout reading`` and no traceback
(redis-py 8's 5 s socket timeout once closed idle sockets
with 1011 every few seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

from challenges.identity import PrivateKey

from . import procs, report, servers
from .loadgen import FlowFailed, Identity, ask, classify, flow_on, open_socket, receive
from .servers import Server

CROSS_FLOWS = 10  # per direction


@dataclass
class SoakResult:
    minutes: float
    sockets: int
    opened: int = 0
    open_after: int = 0
    closes: Counter[str] = field(default_factory=Counter)
    first_close_s: float | None = None
    flows_ok: int = 0
    cross_ok: int = 0
    cross_total: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    logs: dict[str, int] = field(default_factory=dict)
    alive: bool = True
    rss_mib: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return (
            self.opened == self.sockets
            and self.open_after == self.sockets
            and self.flows_ok == self.sockets
            and self.cross_ok == self.cross_total
            and not self.failures
            and not any(self.logs.values())
            and self.alive
        )

    def line(self) -> str:
        closes = ", ".join(f"{k}: {v}" for k, v in sorted(self.closes.items())) or "none"
        failures = ", ".join(f"{k}: {v}" for k, v in sorted(self.failures.items())) or "none"
        rss = ", ".join(f"{k} {a:.1f}->{b:.1f} MiB" for k, (a, b) in self.rss_mib.items())
        return (
            f"soak {'PASS' if self.passed else 'FAIL'}: {self.minutes:g} min idle,"
            f" daphne + uvicorn + Redis layer; {self.open_after}/{self.sockets} sockets still open"
            f" (closes during the hold: {closes}); {self.flows_ok}/{self.sockets} flows on them ok,"
            f" {self.cross_ok}/{self.cross_total} cross-worker flows ok; failures: {failures};"
            f" 'Timeout reading': {self.logs.get('timeout_reading', 0)},"
            f" inbox read failures: {self.logs.get('inbox_read_failures', 0)},"
            f" tracebacks: {self.logs.get('tracebacks', 0)}; workers alive: {self.alive}; RSS {rss}"
        )


async def _open(url: str, count: int, result: SoakResult) -> list[ClientConnection]:
    socks: list[ClientConnection] = []
    for _ in range(count):
        try:
            socks.append(await open_socket(url, timeout=10))
        except Exception as exc:
            result.failures[f"open_{classify(exc)}"] += 1
    result.opened += len(socks)
    return socks


async def _hold(socks: list[ClientConnection], minutes: float, result: SoakResult) -> None:
    started = time.monotonic()
    deadline = started + minutes * 60
    seen: set[int] = set()
    next_progress = started + 60
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(2.0, left))
        for i, ws in enumerate(socks):
            if i not in seen and ws.state is not State.OPEN:
                seen.add(i)
                result.closes[f"close_{ws.close_code}"] += 1
                if result.first_close_s is None:
                    result.first_close_s = time.monotonic() - started
        if time.monotonic() >= next_progress:
            next_progress += 60
            elapsed = (time.monotonic() - started) / 60
            print(f"soak: {elapsed:.0f}/{minutes:g} min, {len(socks) - len(seen)} open", file=sys.stderr)
    result.open_after = sum(ws.state is State.OPEN for ws in socks)


async def _flow(ws: ClientConnection, result: SoakResult) -> None:
    try:
        async with asyncio.timeout(15):
            await flow_on(ws, Identity.generate())
    except Exception as exc:
        result.failures[f"flow_{classify(exc)}"] += 1
    else:
        result.flows_ok += 1


async def _cross(asker: ClientConnection, answerer: ClientConnection, result: SoakResult) -> None:
    """Challenge on one worker's socket, signature with its id on the other's; both get the token."""
    who = Identity.generate()
    result.cross_total += 1
    try:
        async with asyncio.timeout(15):
            challenge = await ask(asker, who)
            await answerer.send(who.answer(challenge, with_id=True))
            token = (await receive(answerer, "token"))["value"]
            if (await receive(asker, "token"))["value"] != token:
                raise FlowFailed("different_tokens")
    except Exception as exc:
        result.failures[f"cross_{classify(exc)}"] += 1
    else:
        result.cross_ok += 1


async def _soak(a: Server, b: Server, minutes: float, per_worker: int, result: SoakResult) -> None:
    socks_a = await _open(a.ws, per_worker, result)
    socks_b = await _open(b.ws, per_worker, result)
    socks = socks_a + socks_b
    rss = {"daphne": procs.rss_kib(a.process.pid), "uvicorn": procs.rss_kib(b.process.pid)}
    print(f"soak: {len(socks)} sockets open, holding {minutes:g} min", file=sys.stderr)
    try:
        await _hold(socks, minutes, result)
        await asyncio.gather(*(_flow(ws, result) for ws in socks if ws.state is State.OPEN))
        pairs = list(zip(socks_a, socks_b, strict=False))[:CROSS_FLOWS]
        await asyncio.gather(*(_cross(x, y, result) for x, y in pairs))
        await asyncio.gather(*(_cross(y, x, result) for x, y in pairs))
        after = {"daphne": procs.rss_kib(a.process.pid), "uvicorn": procs.rss_kib(b.process.pid)}
        result.rss_mib = {k: (rss[k] / 1024, after[k] / 1024) for k in rss}
    finally:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                await asyncio.gather(*(ws.close() for ws in socks), return_exceptions=True)


def soak(
    *, minutes: float, per_worker: int = 50, settings: str = "tokensite.settings", write_report: bool = True
) -> int:
    """Run the soak; print and (optionally) record its one-line result. Returns the exit status.

    ``settings`` is the workers' Django settings module (a production module, or one that
    re-creates a trap to show the soak catches it)."""
    procs.raise_fd_limit()
    result = SoakResult(minutes=minutes, sockets=2 * per_worker)
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as name:
        tmp = Path(name)
        try:
            with servers.redis_server(tmp / "redis") as redis:
                env = procs.bench_env(tmp, authority=PrivateKey.generate(), redis_url=redis.url)
                env["DJANGO_SETTINGS_MODULE"] = settings
                a = servers.start(tmp / "a", kind="daphne", env=dict(env, WORKER_ID="A"))
                try:
                    b = servers.start(
                        tmp / "b", kind="uvicorn", env=dict(env, WORKER_ID="B"), migrate_db=False
                    )
                    try:
                        asyncio.run(_soak(a, b, minutes, per_worker, result))
                        result.alive = a.process.poll() is None and b.process.poll() is None
                    finally:
                        b.stop()
                finally:
                    a.stop()
                result.logs = procs.log_counts(a.log_path, b.log_path)
        finally:
            servers.drop_server_databases()
    line = result.line()
    if settings != "tokensite.settings":
        line += f"; settings {settings}"
    print(line)
    if write_report:
        report.write_section("soak", f"## Soak\n\n{report.machine_facts()}\n\n`{line}`")
    return 0 if result.passed else 1
