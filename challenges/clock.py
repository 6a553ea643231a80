"""Time, injected: what the flow service and the router read the time from and
schedule on, so tests step it by hand instead of sleeping.

:class:`LoopClock` is the real one (wall time for the audit and the
challenges' expiry, the event loop's monotonic clock for timers); tests pass
a clock they advance themselves (``tests/fakeclock.py``).

Pure module: no Django, Channels or grpc import.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> datetime:
        """Wall time (UTC), for challenges, tokens and the audit."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, for latencies and deadlines."""

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Run ``callback(*args)`` after ``delay`` seconds."""

    async def sleep(self, delay: float) -> None:
        """Wait ``delay`` seconds."""


class LoopClock:
    """The running event loop's clock, and the system's wall time."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        return asyncio.get_running_loop().call_later(max(delay, 0.0), callback, *args)

    async def sleep(self, delay: float) -> None:
        await asyncio.sleep(delay)
