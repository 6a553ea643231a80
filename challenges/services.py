"""Writes: audit rows, a batch per transaction (the group commit of
:class:`~challenges.audit.AuditWriter` calls these in its own thread).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection, models, transaction
from django.db.models import F

from .clients import storable_ip
from .models import ChallengeAttempt, IssuedToken, WorkerStatus
from .tokens import MintedToken


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
    answer_ip: str | None = None
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


def audit_write_batch(records: list[AuditRecord]) -> list[int]:
    """Write a batch of audit records in one transaction; returns their row ids.

    A client's address (who asked, who answered) is stored as
    :func:`~challenges.clients.storable_ip` gives it (no IPv6 zone id; none at all if it is
    no address), whoever built the record: one bad address never sinks a batch.

    A fixed number of statements, whatever the batch's size. The attempts: on SQLite one
    multi-row ``INSERT ... RETURNING id``; on PostgreSQL their ids drawn from the sequence,
    then one ``COPY`` (:func:`_copy_attempts`). Their tokens: one multi-row ``INSERT``. The
    ORM's ``bulk_create`` built a model instance and compiled its SQL per row: most of the
    writer's time at a few thousand rows a second.
    """
    ops = connection.ops
    when, ip = ops.adapt_datetimefield_value, ops.adapt_ipaddressfield_value
    attempts = [
        (
            r.outcome[:32], when(r.created_at), when(r.finished_at), _clean(r.detail, 200),
            _clean(r.public_key, 128), _clean(r.challenge_id, 64), ip(storable_ip(r.client_ip)),
            _clean(r.origin, 200), _clean(r.user_agent, 200), r.transport[:8], _clean(r.worker, 100),
            _clean(r.upstream, 100),
            _clean(r.upstream_status, 40), r.latency_ms, when(r.challenged_at), when(r.answered_at),
            ip(storable_ip(r.answer_ip)), _clean(r.api_key, 64), r.count,
        )
        for r in records
    ]  # fmt: skip
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            ids = _copy_attempts(cursor, attempts)
        else:
            ids = _insert(cursor, ChallengeAttempt, _ATTEMPT_COLUMNS, attempts, returning=True)
        tokens = [
            (
                attempt_id, r.token.jti, r.token.sha256, r.token.subject, r.token.issuer,
                r.token.audience, when(r.token.issued_at), when(r.token.expires_at),
            )
            for r, attempt_id in zip(records, ids, strict=True)
            if r.token is not None
        ]  # fmt: skip
        if tokens:
            # A relay sharing its database with the authority it relays to (runauthority)
            # releases the very token the authority already recorded: one row is enough.
            _insert(cursor, IssuedToken, _TOKEN_COLUMNS, tokens, returning=False)
    return ids


_ATTEMPT_COLUMNS = (
    "outcome", "created_at", "finished_at", "detail", "public_key", "challenge_id", "client_ip", "origin",
    "user_agent", "transport", "worker", "upstream", "upstream_status", "latency_ms", "challenged_at",
    "answered_at", "answer_ip", "api_key", "count",
)  # fmt: skip
_TOKEN_COLUMNS = (
    "attempt_id", "jti", "token_sha256", "public_key", "issuer", "audience", "issued_at", "expires_at",
)  # fmt: skip


def _copy_attempts(cursor: Any, rows: list[tuple[Any, ...]]) -> list[int]:
    """PostgreSQL: the attempts' ids drawn from their sequence, then the rows in one ``COPY``.

    psycopg formats a ``COPY`` row in C, where the arrays of an ``INSERT ... unnest`` were
    dumped value by value in Python: about half of the writer thread's samples.
    """
    cursor.execute(
        "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
        [ChallengeAttempt._meta.db_table, len(rows)],
    )
    ids = [row[0] for row in cursor.fetchall()]
    target = _target(ChallengeAttempt, ("id", *_ATTEMPT_COLUMNS))
    # Django's wrapper does not see the COPY: its errors become Django's here, as an
    # execute()'s do, so the writer handles them alike (a broken connection is dropped).
    with connection.wrap_database_errors, cursor.cursor.copy(f"COPY {target} FROM STDIN") as copy:
        for row_id, row in zip(ids, rows, strict=True):
            copy.write_row((row_id, *row))
    return ids


def _target(model: type[models.Model], columns: tuple[str, ...]) -> str:
    """``"table" ("column", ...)``, quoted: what an INSERT or a COPY names."""
    quote = connection.ops.quote_name
    return f"{quote(model._meta.db_table)} ({', '.join(quote(c) for c in columns)})"


def _insert(
    cursor: Any,
    model: type[models.Model],
    columns: tuple[str, ...],
    rows: list[tuple[Any, ...]],
    *,
    returning: bool,
) -> list[int]:
    target = _target(model, columns)
    tail = " RETURNING id" if returning else " ON CONFLICT DO NOTHING"
    # Only identifiers of ours, casts of our fields and placeholders are formatted in; every
    # value is a parameter.
    if connection.vendor == "postgresql":
        # One array per column, whatever the batch's size: one statement text to parse,
        # where a row of placeholders per row made psycopg split and quote thousands of
        # parameters per batch (its client-side binding, Django's default).
        casts = [model._meta.get_field(c).db_type(connection) for c in columns]
        arrays = ", ".join(f"%s::{cast}[]" for cast in casts)
        sql = f"INSERT INTO {target} SELECT * FROM unnest({arrays})" + tail  # noqa: S608
        cursor.execute(sql, [list(column) for column in zip(*rows, strict=True)])
    else:
        one = "(" + ", ".join(["%s"] * len(columns)) + ")"
        sql = f"INSERT INTO {target} VALUES {', '.join([one] * len(rows))}" + tail  # noqa: S608
        cursor.execute(sql, [value for row in rows for value in row])
    return [row[0] for row in cursor.fetchall()] if returning else []


def audit_add_counts(counts: list[tuple[int, int, datetime]]) -> None:
    """Add ``n`` refusals to each aggregated row ``(id, n, last seen)``, in one transaction."""
    with transaction.atomic():
        for row_id, n, last in counts:
            ChallengeAttempt.objects.filter(pk=row_id).update(count=F("count") + n, finished_at=last)


def record_worker_status(
    tag: str,
    worker: str,
    pending: int,
    connections: int,
    started_at: datetime,
    seen: datetime,
    forget_before: datetime | None = None,
) -> None:
    """Upsert a worker's row (one statement); with ``forget_before``, delete the rows of
    workers last seen before it."""
    WorkerStatus.objects.bulk_create(
        [
            WorkerStatus(
                tag=tag[:16],
                worker=_clean(worker, 100),
                pending=max(pending, 0),
                connections=max(connections, 0),
                started_at=started_at,
                last_seen=seen,
            )
        ],
        update_conflicts=True,
        unique_fields=["tag"],
        update_fields=["worker", "pending", "connections", "started_at", "last_seen"],
    )
    if forget_before is not None:
        WorkerStatus.objects.filter(last_seen__lt=forget_before).delete()
