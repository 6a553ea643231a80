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
        if threading.current_thread().name.startswith("audit-writer"):  # not its checkpoints' thread
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


WAL_SCRIPT = """
import asyncio, json
from datetime import UTC, datetime
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from challenges.audit import AuditWriter
from challenges.models import ChallengeAttempt
from challenges.services import AuditRecord

def row(n):
    now = datetime.now(UTC)
    return AuditRecord(outcome="invalid_json", created_at=now, finished_at=now, detail=f"row {n}")

def autocheckpoint():
    from django.db import connection
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA wal_autocheckpoint")
        return cursor.fetchone()[0]

async def main():
    writer = AuditWriter(checkpoint_every=0.2)
    for burst in range(10):
        await asyncio.gather(*(writer.record(row(burst * 300 + n)) for n in range(300)))
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.6)
    pragma = await writer.call(autocheckpoint)
    await writer.close()
    print(json.dumps({"autocheckpoint": pragma, "checkpoints": writer.checkpoints,
                      "last": writer.last_checkpoint, "rows": await ChallengeAttempt.objects.acount()}))

asyncio.run(main())
"""


@pytest.mark.server
def test_on_sqlite_the_writer_never_checkpoints_in_a_commit_and_its_checkpointer_keeps_up(tmp_path):
    """A real SQLite file in WAL mode (the tests' own database is in memory, without a WAL):
    the writer's connection has automatic checkpoints off, and the checkpointer's passive
    checkpoints copy every frame of the WAL into the database file."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="tokensite.settings", DATABASE_URL=f"sqlite:///{tmp_path / 'audit.sqlite3'}"
    )
    run = subprocess.run(
        [sys.executable, "-c", WAL_SCRIPT], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found["rows"] == 3_000
    assert found["autocheckpoint"] == 0
    assert found["checkpoints"] >= 2
    busy, frames, copied = found["last"]
    assert busy == 0, found
    assert frames > 0, found
    assert copied == frames, found


async def test_every_column_of_a_batch_lands_as_given_and_each_id_is_its_own_row():
    """On PostgreSQL the attempts go in by COPY with ids drawn first; on SQLite by one INSERT:
    either way each caller's id must name its own row, with every value as written."""
    from asgiref.sync import sync_to_async

    from challenges.identity import PrivateKey
    from challenges.models import ChallengeAttempt, IssuedToken
    from challenges.tokens import mint_token

    signer, user = PrivateKey.generate(), PrivateKey.generate()
    start = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    records = []
    for n in range(60):
        token = mint_token(signer=signer, subject=user.public, ttl=60) if n % 3 == 0 else None
        records.append(
            AuditRecord(
                outcome="success" if token else "bad_signature", created_at=start, finished_at=start,
                detail=f"row {n} \\N back\\slash 'quote' \"dq\" é 😀 \x00", public_key=str(user.public),
                challenge_id=f"id-{n}", client_ip=None if n % 4 == 0 else ("::1" if n % 2 else "10.0.0.7"),
                origin="https://app.example", user_agent="agent, with | pipes", transport="grpc",
                worker="w", upstream="local", upstream_status="OK" if token else "", latency_ms=n / 7,
                challenged_at=None if n % 5 == 0 else start, answered_at=start, api_key="k" * 64, count=n + 1,
                token=token,
            )
        )  # fmt: skip
    writer = AuditWriter(max_batch=200)
    try:
        ids = await asyncio.gather(*(writer.record(r) for r in records))
    finally:
        await writer.close()

    rows = await sync_to_async(lambda: {a.pk: a for a in ChallengeAttempt.objects.filter(pk__in=ids)})()
    tokens = await sync_to_async(
        lambda: {t.attempt_id: t for t in IssuedToken.objects.filter(attempt_id__in=ids)}
    )()
    assert len(rows) == 60
    for written, row_id in zip(records, ids, strict=True):
        row = rows[row_id]
        assert (row.outcome, row.challenge_id, row.public_key) == (
            written.outcome, written.challenge_id, written.public_key,
        )  # fmt: skip
        assert (row.origin, row.worker, row.upstream) == (written.origin, written.worker, written.upstream)
        assert (row.finished_at, row.answered_at) == (start, start)
        assert row.detail == written.detail.replace("\x00", "\ufffd")
        assert row.client_ip == written.client_ip
        assert (row.latency_ms, row.count, row.api_key) == (
            written.latency_ms,
            written.count,
            written.api_key,
        )
        assert (row.created_at, row.challenged_at) == (start, written.challenged_at)
        assert (row.user_agent, row.transport, row.upstream_status) == (
            written.user_agent, written.transport, written.upstream_status,
        )  # fmt: skip
        if written.token is None:
            assert row_id not in tokens
        else:
            token, minted = tokens[row_id], written.token
            assert (token.jti, token.token_sha256, token.public_key, token.issuer, token.audience) == (
                minted.jti, minted.sha256, minted.subject, minted.issuer, minted.audience,
            )  # fmt: skip
            assert (token.issued_at, token.expires_at) == (minted.issued_at, minted.expires_at)


def test_a_batch_the_database_refuses_raises_djangos_error_and_the_next_batch_lands():
    """A row breaking a constraint (here count's CHECK >= 0) fails its batch with Django's
    IntegrityError on both databases (PostgreSQL's COPY included), so the writer treats it as
    any database error, and the connection takes the next batch."""
    from django.db import IntegrityError

    from challenges.models import ChallengeAttempt
    from challenges.services import audit_write_batch

    bad = record(1)
    bad.count = -1
    with pytest.raises(IntegrityError):
        audit_write_batch([record(0), bad])
    [row_id] = audit_write_batch([record(2)])
    assert list(ChallengeAttempt.objects.values_list("id", "detail")) == [(row_id, "row 2")]


def test_an_address_no_database_takes_is_stored_as_one_it_does():
    """Whoever built the record: a zone id is dropped, a non-address is none, and the batch
    lands (PostgreSQL's inet refused ``fe80::1%eth0``, and with it the whole batch)."""
    from challenges.models import ChallengeAttempt
    from challenges.services import audit_write_batch

    now = datetime.now(UTC)
    given = ["fe80::1%eth0", "2001:DB8::1%25x", "10.0.0.7%eth0", "not-an-ip", "10.0.0.7"]
    ids = audit_write_batch(
        [AuditRecord(outcome="bad_signature", created_at=now, finished_at=now, client_ip=ip) for ip in given]
    )
    stored = dict(ChallengeAttempt.objects.filter(pk__in=ids).values_list("pk", "client_ip"))
    assert [stored[i] for i in ids] == ["fe80::1", "2001:db8::1", None, None, "10.0.0.7"]


def test_an_ipv4_client_of_a_dual_stack_socket_is_found_by_the_admins_filters():
    """``::ffff:1.2.3.4``, as a server listening on ``::`` sees an IPv4 client: the writer's
    rows and the ORM's lookups (the admin's filters, the dashboard's links) write it alike,
    so the filter finds the row on SQLite too, where the text is compared."""
    from challenges import reports
    from challenges.models import ChallengeAttempt
    from challenges.services import audit_write_batch

    now = datetime.now(UTC)
    [row_id] = audit_write_batch(
        [AuditRecord(outcome="bad_signature", created_at=now, finished_at=now, client_ip="::ffff:1.2.3.4")]
    )
    assert list(ChallengeAttempt.objects.filter(client_ip="::ffff:1.2.3.4").values_list("id", flat=True)) == [
        row_id
    ]
    found = reports.from_address(ChallengeAttempt.objects.all(), "::ffff:1.2.3.4")
    assert list(found.values_list("id", flat=True)) == [row_id]
