"""Writes: the audit, group-committed.

:class:`AuditWriter` collects rows from concurrent flows and commits them
together in one transaction (group commit), so a flow waits for at most one
batch and the database sees one commit per batch instead of one per row. A
token is released only after the batch holding its row has committed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime

from channels.db import database_sync_to_async
from django.db import transaction

from .errors import ChallengeError, InternalError
from .models import ChallengeAttempt, IssuedToken
from .tokens import MintedToken

log = logging.getLogger(__name__)


@dataclass(slots=True)
class AuditRecord:
    """One attempt row, and the token row when the attempt succeeded."""

    outcome: str
    created_at: datetime
    finished_at: datetime
    public_key: str = ""
    challenge_id: str = ""
    detail: str = ""
    client_ip: str | None = None
    origin: str = ""
    user_agent: str = ""
    transport: str = "ws"
    worker: str = ""
    upstream: str = ""
    upstream_status: str = ""
    latency_ms: float | None = None
    challenged_at: datetime | None = None
    answered_at: datetime | None = None
    api_key: str = ""
    count: int = 1
    token: MintedToken | None = field(default=None, repr=False)


#: What no text column takes from client input, replaced by U+FFFD: control characters
#: (NUL above all: PostgreSQL refuses it in text) and lone surrogates (a JSON "\ud800"
#: escape decodes to one; no UTF-8 encoder accepts it, on SQLite or PostgreSQL).
_UNSTORABLE = dict.fromkeys([*range(0x20), 0x7F, *range(0xD800, 0xE000)], "\ufffd")


def _clean(text: str, limit: int) -> str:
    """Any Python string as one every database stores: one bad row never sinks a batch."""
    return text[:limit].translate(_UNSTORABLE)


def audit_write_batch(records: list[AuditRecord]) -> None:
    """Write a batch of audit records in one transaction."""
    with transaction.atomic():
        attempts = ChallengeAttempt.objects.bulk_create(
            [
                ChallengeAttempt(
                    outcome=r.outcome,
                    created_at=r.created_at,
                    finished_at=r.finished_at,
                    public_key=_clean(r.public_key, 128),
                    challenge_id=_clean(r.challenge_id, 64),
                    detail=_clean(r.detail, 200),
                    client_ip=r.client_ip,
                    origin=_clean(r.origin, 200),
                    user_agent=_clean(r.user_agent, 200),
                    transport=r.transport,
                    worker=_clean(r.worker, 100),
                    upstream=_clean(r.upstream, 100),
                    upstream_status=_clean(r.upstream_status, 40),
                    latency_ms=r.latency_ms,
                    challenged_at=r.challenged_at,
                    answered_at=r.answered_at,
                    api_key=_clean(r.api_key, 64),
                    count=r.count,
                )
                for r in records
            ]
        )
        IssuedToken.objects.bulk_create(
            [
                IssuedToken(
                    attempt=attempt,
                    jti=r.token.jti,
                    token_sha256=r.token.sha256,
                    public_key=r.token.subject,
                    issuer=r.token.issuer,
                    audience=r.token.audience,
                    issued_at=r.token.issued_at,
                    expires_at=r.token.expires_at,
                )
                for r, attempt in zip(records, attempts, strict=True)
                if r.token is not None
            ],
            # A relay sharing its database with the authority it relays to (runauthority)
            # releases the very token the authority already recorded: one row is enough.
            ignore_conflicts=True,
        )


class AuditWriter:
    """Group commit of audit records, one writer task per event loop.

    The queue is bounded: when the database falls behind by ``max_queue``
    rows, new records fail fast with ``internal_error`` instead of piling up.
    """

    def __init__(self, *, max_queue: int = 10_000, max_batch: int = 200) -> None:
        self._queue: asyncio.Queue[tuple[AuditRecord, asyncio.Future[None]]] = asyncio.Queue(max_queue)
        self._max_batch = max_batch
        self._task: asyncio.Task[None] | None = None

    async def record(self, record: AuditRecord) -> None:
        """Queue ``record`` and wait until its batch is committed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((record, future))
        except asyncio.QueueFull:
            log.error("audit queue full; refusing a flow")
            raise InternalError("the audit log is overloaded; retry shortly") from None
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="audit-writer")
        await asyncio.shield(future)

    async def record_quietly(self, record: AuditRecord) -> None:
        """:meth:`record` for outcomes that are already decided: a failure to write
        the row is logged, not raised (nothing waits on it)."""
        try:
            await self.record(record)
        except ChallengeError:
            log.warning("could not audit a %s outcome", record.outcome)

    async def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (for at most ``timeout`` seconds), then stop the writer."""
        if self._task is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._queue.join()
        except TimeoutError:
            log.error("audit: %d rows were not written before shutdown", self._queue.qsize())
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await database_sync_to_async(audit_write_batch)([r for r, _ in batch])
            except Exception:
                if len(batch) == 1:
                    self._settle(batch, failed=True)
                    continue
                # One bad row must not sink its neighbours: retry each on its own.
                log.warning("audit batch of %d rows failed; writing them one by one", len(batch))
                for item in batch:
                    try:
                        await database_sync_to_async(audit_write_batch)([item[0]])
                    except Exception:
                        self._settle([item], failed=True)
                    else:
                        self._settle([item], failed=False)
            else:
                self._settle(batch, failed=False)

    def _settle(self, items: list[tuple[AuditRecord, asyncio.Future[None]]], *, failed: bool) -> None:
        if failed:
            log.exception("audit row (%s) could not be written", items[0][0].outcome)
        for _, fut in items:
            self._queue.task_done()
            if fut.done():
                continue
            if failed:
                fut.set_exception(InternalError("the audit log could not be written; retry shortly"))
            else:
                fut.set_result(None)
