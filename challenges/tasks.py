"""Background tasks that must not be lost: spawned, kept alive, cancelled together.

asyncio keeps only a weak reference to a task; a task nobody holds may be
collected mid-flight. :class:`TaskSet` holds them until they finish and
cancels the rest on :meth:`TaskSet.cancel` (a process shutting down).

Pure module: no Django, Channels or grpc import.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class TaskSet:
    def __init__(self, *, limit: int | None = None) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self.limit = limit

    def __len__(self) -> int:
        return len(self._tasks)

    def full(self) -> bool:
        return self.limit is not None and len(self._tasks) >= self.limit

    def spawn(self, work: Coroutine[Any, Any, Any], *, name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def wait(self, timeout: float | None = None) -> None:
        """Wait for the tasks running now (at most ``timeout`` seconds)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def cancel(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
