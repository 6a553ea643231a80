"""The audit writer: rows from concurrent flows committed together, on one kept connection.

:class:`AuditWriter` collects rows from concurrent flows and commits them
together in one transaction (group commit), so a flow waits for at most one
batch and the database sees one commit per batch instead of one per row (the
writer lets the loop run one turn before it takes a batch, so the rows of flows
finishing in that turn join it). A token is released only after the batch
holding its row has committed. The queue is bounded: past ``max_queue`` rows,
new records fail fast with ``internal_error`` instead of piling up.

The writes run in the writer's own thread, which keeps one database
connection for the writer's lifetime (SQLite's pragmas run once, PostgreSQL's
session is reused): opening and closing a connection per batch cost a third
of a busy worker's CPU. A connection that fails is closed, and the next
batch opens a new one.

On SQLite the writer's own commits never checkpoint the WAL: a commit that
crossed SQLite's automatic checkpoint threshold copied the WAL into the
database file and synced it before returning, and every flow waiting on that
batch waited for it (the slowest 1 % of flows at 16 clients). A second thread,
with its own connection, runs a passive checkpoint every
``checkpoint_every`` seconds after rows were written; WAL mode lets it run
beside the writer.

Each batch's size and commit time, and each failed batch, are counted
(:mod:`challenges.metrics`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from django.db import DatabaseError, connection

from .errors import ChallengeError, InternalError
from .metrics import DEFAULT, Metrics
from .services import AuditRecord, audit_write_batch

log = logging.getLogger(__name__)
T = TypeVar("T")


class AuditWriter:
    """Group commit of audit records, one writer task per event loop.

    The queue is bounded: when the database falls behind by ``max_queue``
    rows, new records fail fast with ``internal_error`` instead of piling up.
    """

    def __init__(
        self,
        *,
        max_queue: int = 10_000,
        max_batch: int = 200,
        checkpoint_every: float = 1.0,
        metrics: Metrics = DEFAULT,
    ) -> None:
        self.metrics = metrics
        self._queue: asyncio.Queue[tuple[AuditRecord, asyncio.Future[int]]] = asyncio.Queue(max_queue)
        self._max_batch = max_batch
        self._task: asyncio.Task[None] | None = None
        self._thread: ThreadPoolExecutor | None = None
        self.checkpoint_every = checkpoint_every
        #: Rows committed since the last checkpoint (SQLite only).
        self._unsynced = 0
        self._checkpointer: asyncio.Task[None] | None = None
        #: Checkpoints run, and the last one's (busy, WAL frames, frames copied).
        self.checkpoints = 0
        self.last_checkpoint: tuple[int, int, int] | None = None
        self._checkpoint_thread: ThreadPoolExecutor | None = None

    async def call(self, write: Callable[..., T], *args: Any) -> T:
        """Run ``write`` in the writer's own thread, on the connection it keeps."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="audit-writer")
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, _on_kept_connection, write, args
        )

    async def record(self, record: AuditRecord) -> int:
        """Queue ``record`` and wait until its batch is committed; returns its row id."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((record, future))
        except asyncio.QueueFull:
            log.error("audit queue full; refusing a flow")
            raise InternalError("the audit log is overloaded; retry shortly") from None
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="audit-writer")
            if connection.vendor == "sqlite" and self._checkpointer is None:
                self._checkpointer = asyncio.create_task(self._checkpoints(), name="audit-checkpoint")
        return await asyncio.shield(future)

    async def record_quietly(self, record: AuditRecord) -> int | None:
        """:meth:`record` for outcomes that are already decided: a failure to write
        the row is logged, not raised (nothing waits on it)."""
        try:
            return await self.record(record)
        except ChallengeError:
            log.warning("could not audit a %s outcome", record.outcome)
            return None

    async def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (for at most ``timeout`` seconds), then stop the writer and
        close its connection."""
        if self._task is None and self._thread is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._queue.join()
        except TimeoutError:
            log.error("audit: %d rows were not written before shutdown", self._queue.qsize())
        for task in (self._task, self._checkpointer):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._checkpointer = None
        if self._checkpoint_thread is not None:
            await asyncio.get_running_loop().run_in_executor(self._checkpoint_thread, _close_kept_connection)
            self._checkpoint_thread.shutdown(wait=False)
            self._checkpoint_thread = None
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, _close_kept_connection)
            self._thread.shutdown(wait=False)
            self._thread = None

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            # One turn of the loop first: the flows it runs queue their rows into this batch
            # (at 16 clients, 2.4 -> 4-6 rows a commit, 12 % less CPU a flow, no wait added).
            await asyncio.sleep(0)
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            started = time.monotonic()
            try:
                ids = await self.call(audit_write_batch, [r for r, _ in batch])
            except Exception:
                self.metrics.audit_failed()
                if len(batch) == 1:
                    self._settle(batch, None)
                    continue
                # One bad row must not sink its neighbours: retry each on its own.
                log.warning("audit batch of %d rows failed; writing them one by one", len(batch))
                for item in batch:
                    try:
                        one = await self.call(audit_write_batch, [item[0]])
                    except Exception:
                        one = None
                    self._settle([item], one)
            else:
                self.metrics.audit_batch(len(batch), time.monotonic() - started)
                self._unsynced += len(batch)
                self._settle(batch, ids)

    async def _checkpoints(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.checkpoint_every)
            if not self._unsynced:
                continue
            self._unsynced = 0
            if self._checkpoint_thread is None:
                self._checkpoint_thread = ThreadPoolExecutor(1, thread_name_prefix="audit-checkpoint")
            try:
                self.last_checkpoint = await loop.run_in_executor(
                    self._checkpoint_thread, _on_kept_connection, _checkpoint, ()
                )
                self.checkpoints += 1
            except DatabaseError as exc:
                log.warning("audit: WAL checkpoint failed (%s); next one in %s s", exc, self.checkpoint_every)

    def _settle(self, items: list[tuple[AuditRecord, asyncio.Future[int]]], ids: list[int] | None) -> None:
        if ids is None:
            log.exception("audit row (%s) could not be written", items[0][0].outcome)
        for position, (_, fut) in enumerate(items):
            self._queue.task_done()
            if fut.done():
                continue
            if ids is None:
                fut.set_exception(InternalError("the audit log could not be written; retry shortly"))
            else:
                fut.set_result(ids[position])


def _on_kept_connection(write: Callable[..., T], args: tuple[Any, ...]) -> T:
    try:
        if connection.vendor == "sqlite":
            _without_autocheckpoint()
        return write(*args)
    except DatabaseError:
        connection.close()  # broken, or mid-transaction: the next batch reconnects
        raise


def _close_kept_connection() -> None:
    connection.close()  # this thread's own: ``connection`` is looked up in the thread that runs it


def _without_autocheckpoint() -> None:
    """This thread's SQLite connection leaves WAL checkpoints to :func:`_checkpoint`."""
    connection.ensure_connection()
    raw = connection.connection
    if getattr(connection, "_autocheckpoint_off", None) is not raw:
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        connection._autocheckpoint_off = raw  # type: ignore[attr-defined]


def _checkpoint() -> tuple[int, int, int]:
    """A passive checkpoint: (busy, WAL frames, frames copied into the database file)."""
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
        busy, frames, copied = cursor.fetchone()
    return int(busy), int(frames), int(copied)
