"""Each worker reports its pending challenges and connections to the database, every few
seconds, on the audit writer's own thread; the runtime starts and stops the reporter."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from challenges import runtime
from challenges.audit import AuditWriter
from challenges.clock import LoopClock
from challenges.models import WorkerStatus
from challenges.workerstatus import FORGET_AFTER, StatusReporter
from tests import wsutil

pytestmark = pytest.mark.django_db(transaction=True)


@database_sync_to_async
def rows() -> list[WorkerStatus]:
    return list(WorkerStatus.objects.order_by("tag"))


async def wait_for(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.02)


async def test_the_reporter_upserts_one_row_and_forgets_long_gone_workers():
    old = timezone.now() - FORGET_AFTER - timedelta(hours=1)
    await database_sync_to_async(WorkerStatus.objects.create)(
        tag="deadbeef", worker="gone:1", started_at=old, last_seen=old
    )
    await database_sync_to_async(WorkerStatus.objects.create)(
        tag="cafecafe", worker="recent:1", started_at=old, last_seen=timezone.now() - timedelta(hours=1)
    )
    numbers = [3, 7]
    audit = AuditWriter()
    reporter = StatusReporter(
        audit=audit,
        clock=LoopClock(),
        tag="a1b2c3d4",
        worker="host:42",
        numbers=lambda: tuple(numbers),
        every=0.05,
    )
    reporter.start()
    try:

        async def reported(pending: int) -> bool:
            return any(r.tag == "a1b2c3d4" and r.pending == pending for r in await rows())

        await wait_for(lambda: reported(3))
        numbers[:] = [1, 2]
        await wait_for(lambda: reported(1))
    finally:
        await reporter.stop()
        await audit.close()
    found = {r.tag: r for r in await rows()}
    assert set(found) == {"a1b2c3d4", "cafecafe"}  # the week-old row is gone, the recent one kept
    mine = found["a1b2c3d4"]
    assert (mine.worker, mine.pending, mine.connections) == ("host:42", 1, 2)
    assert mine.started_at <= mine.last_seen <= timezone.now()


async def test_a_failing_database_costs_one_warning_and_no_crash(caplog, monkeypatch):
    calls = []

    def broken(*args):
        calls.append(args)
        raise RuntimeError("no database")

    monkeypatch.setattr("challenges.workerstatus.record_worker_status", broken)
    audit = AuditWriter()
    reporter = StatusReporter(
        audit=audit, clock=LoopClock(), tag="a1b2c3d4", worker="w", numbers=lambda: (0, 0), every=0.01
    )
    with caplog.at_level(logging.WARNING, logger="challenges.workerstatus"):
        reporter.start()
        async with asyncio.timeout(5):
            while len(calls) < 5:
                await asyncio.sleep(0.01)
        await reporter.stop()
        await audit.close()
    warnings = [r for r in caplog.records if r.name == "challenges.workerstatus"]
    assert len(warnings) == 1
    assert "RuntimeError" in warnings[0].getMessage()
    assert warnings[0].exc_info is None


async def test_the_runtime_reports_its_pending_challenges_and_connections(user_key):
    comm = await wsutil.connect()
    try:
        await wsutil.challenge(comm, user_key)
        current = await runtime.get()
        await current.status.report()
        (row,) = await rows()
        assert row.tag == current.tag
        assert row.worker == current.config.worker
        assert (row.pending, row.connections) == (1, 1)
    finally:
        await comm.disconnect()
    await current.status.report()
    (row,) = await rows()
    assert row.connections == 0
    await runtime.stop()
    assert current.status._task is None  # stopped with the runtime
