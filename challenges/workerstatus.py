"""Each worker's own numbers in the database, for operators: its pending challenges and open
connections, every few seconds.

Workers are separate processes, possibly on several hosts; the dashboard reads them all from
one table (:class:`~challenges.models.WorkerStatus`, one row per runtime, upserted). A row
not refreshed for a while (``reports.GONE_AFTER``) is a worker that stopped or died. The
writes run on the audit writer's own thread and connection (``AuditWriter.call``): the
flows' group commit is never waited on, and a failing database costs one warning, not a
flow.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from .audit import AuditWriter
from .clock import Clock
from .services import record_worker_status

log = logging.getLogger(__name__)

#: Rows of workers not seen for this long are deleted when a worker starts.
FORGET_AFTER = timedelta(days=7)


class StatusReporter:
    def __init__(
        self,
        *,
        audit: AuditWriter,
        clock: Clock,
        tag: str,
        worker: str,
        numbers: Callable[[], tuple[int, int]],
        every: float = 5.0,
    ) -> None:
        """``numbers()``: this worker's pending challenges and open connections, now."""
        self.audit, self.clock, self.tag, self.worker = audit, clock, tag, worker
        self.numbers, self.every = numbers, every
        self.started_at: datetime | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.started_at = self.clock.now()
        self._task = asyncio.create_task(self._run(), name="worker-status")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def report(self, *, forget: bool = False) -> None:
        """Write this worker's row now (and, with ``forget``, drop long-gone workers' rows)."""
        pending, connections = self.numbers()
        now = self.clock.now()
        await self.audit.call(
            record_worker_status,
            self.tag,
            self.worker,
            pending,
            connections,
            self.started_at or now,
            now,
            now - FORGET_AFTER if forget else None,
        )

    async def _run(self) -> None:
        failing, first = False, True
        while True:
            try:
                await self.report(forget=first)
            except Exception as exc:
                if not failing:  # once per outage, without the row's contents
                    log.warning("cannot record this worker's status: %s", type(exc).__name__)
                failing = True
            else:
                failing, first = False, False
            await asyncio.sleep(self.every)
