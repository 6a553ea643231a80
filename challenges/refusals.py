"""Refusals that belong to no flow, aggregated in the audit: one row per address, code,
transport and minute.

A flood of bad requests (malformed frames, unknown challenges, rate-limited
requests) must not grow the audit table one row per request, nor crowd the
group-commit queue that real outcomes wait on. So the first refusal of an
(address scope, code, transport, minute) is written as a row with ``count = 1`` (the
caller waits for it, like any audit row), and the ones after it only count:
every ``every`` seconds the counts are added to their rows in one
transaction, off the commit queue. Real outcomes (a token, a bad signature
for a pending challenge) never come here: they are one row each.

At most ``max_keys`` such groups are open at once; past that, refusals count
on one row per code, transport and minute with no address.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from datetime import datetime

from .audit import AuditWriter
from .clock import Clock
from .limits import address_scope
from .services import AuditRecord, audit_add_counts

log = logging.getLogger(__name__)

#: (address scope, outcome, transport, minute)
Key = tuple[str, str, str, datetime]


@dataclass
class _Group:
    row_id: int | None = None
    pending: int = 0
    last: datetime | None = None


class Refusals:
    def __init__(
        self, *, audit: AuditWriter, clock: Clock, every: float = 1.0, max_keys: int = 10_000
    ) -> None:
        self.audit = audit
        self.clock = clock
        self.every = every
        self.max_keys = max_keys
        self._groups: dict[Key, _Group] = {}
        self._task: asyncio.Task[None] | None = None

    async def add(self, record: AuditRecord) -> None:
        """Count a refusal; the first of its group is written now (and waited for)."""
        minute = record.created_at.replace(second=0, microsecond=0)
        key: Key = (address_scope(record.client_ip), record.outcome, record.transport, minute)
        if key not in self._groups and len(self._groups) >= self.max_keys:
            key = ("*", record.outcome, record.transport, minute)
            record = replace(record, client_ip=None)
        group = self._groups.get(key)
        if group is not None:
            group.pending += 1
            group.last = record.finished_at
            return
        self._groups[key] = group = _Group()
        group.row_id = await self.audit.record_quietly(record)
        if group.row_id is None:  # not written: neither are the counts that would follow
            self._groups.pop(key, None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="refusal-counts")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()

    async def flush(self) -> None:
        """Add the counts waiting to their rows, and close the groups of past minutes."""
        current = self.clock.now().replace(second=0, microsecond=0)
        counts = []
        for key, group in list(self._groups.items()):
            if group.row_id is not None and group.pending and group.last is not None:
                counts.append((group.row_id, group.pending, group.last))
                group.pending = 0
            if key[3] < current and group.row_id is not None:
                del self._groups[key]
        if counts:
            try:
                await self.audit.call(audit_add_counts, counts)
            except Exception:
                log.exception("could not add %d refusal counts to the audit", sum(n for _, n, _ in counts))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            await self.flush()
