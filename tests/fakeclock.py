"""A clock the tests step by hand (the ``challenges.clock.Clock`` interface): nothing sleeps."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any


@dataclass
class _Timer:
    when: float
    seq: int
    callback: Callable[..., Any]
    args: tuple[Any, ...]
    cancelled: bool = field(default=False)

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    def __init__(self, start: datetime = datetime(2030, 1, 1, tzinfo=UTC)) -> None:
        self._start = start
        self._mono = 0.0
        self._timers: list[_Timer] = []
        self._seq = itertools.count()

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._mono)

    def monotonic(self) -> float:
        return self._mono

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> _Timer:
        timer = _Timer(self._mono + max(delay, 0.0), next(self._seq), callback, args)
        self._timers.append(timer)
        return timer

    async def sleep(self, delay: float) -> None:
        done = asyncio.get_running_loop().create_future()
        self.call_later(delay, lambda: done.done() or done.set_result(None))
        await done

    @property
    def waiting(self) -> int:
        """Timers (and sleeps) not yet fired nor cancelled."""
        return sum(not t.cancelled for t in self._timers)

    async def advance(self, seconds: float) -> None:
        """Move time forward, firing every timer that falls due, in order, and letting
        the tasks they wake run before the next one."""
        target = self._mono + seconds
        while True:
            await settle()
            due = [t for t in self._timers if not t.cancelled and t.when <= target]
            if not due:
                break
            timer = min(due, key=lambda t: (t.when, t.seq))
            self._timers.remove(timer)
            self._mono = max(self._mono, timer.when)
            timer.callback(*timer.args)
        self._mono = target
        await settle()


async def settle(turns: int = 50) -> None:
    """Let ready tasks run (no wall-clock time passes)."""
    for _ in range(turns):
        await asyncio.sleep(0)
