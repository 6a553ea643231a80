"""The audit writer: group commit on one kept connection, and a bounded queue."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime

import pytest
from django.db.backends.signals import connection_created

from challenges.audit import AuditWriter
from challenges.errors import ChallengeError
from challenges.services import AuditRecord
from tests.wsutil import attempts

pytestmark = pytest.mark.django_db(transaction=True)


def record(n: int) -> AuditRecord:
    now = datetime.now(UTC)
    return AuditRecord(outcome="invalid_json", created_at=now, finished_at=now, detail=f"row {n}")


async def test_a_thousand_rows_open_one_connection_and_commit_in_batches():
    opened: list[object] = []

    def count(sender: object, connection: object, **kwargs: object) -> None:
        opened.append(connection)

    connection_created.connect(count)
    writer = AuditWriter(max_batch=200)
    try:
        ids = await asyncio.gather(*(writer.record(record(n)) for n in range(1_000)))
    finally:
        await writer.close()
        connection_created.disconnect(count)
    assert len(set(ids)) == 1_000
    assert len(await attempts()) == 1_000
    assert len(opened) == 1  # the writer's own, kept for its lifetime


async def test_a_full_queue_refuses_at_once_instead_of_piling_up(monkeypatch):
    from challenges import audit

    release = threading.Event()
    real = audit.audit_write_batch

    def slow(records: list[AuditRecord]) -> list[int]:
        release.wait(10)  # the database is slow: the first batch holds the writer
        return real(records)

    monkeypatch.setattr(audit, "audit_write_batch", slow)
    writer = AuditWriter(max_queue=5)
    first = asyncio.ensure_future(writer.record(record(0)))
    await asyncio.sleep(0.05)  # the writer took it and waits on the database
    queued = [asyncio.ensure_future(writer.record(record(n))) for n in range(1, 6)]
    await asyncio.sleep(0)
    with pytest.raises(ChallengeError) as full:
        await writer.record(record(99))
    assert full.value.code == "internal_error"
    release.set()
    await asyncio.gather(first, *queued)
    await writer.close()
    assert len(await attempts()) == 6
