"""Writes: audit rows, a batch per transaction (the group commit of
:class:`~challenges.audit.AuditWriter` calls these in its own thread).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.db import transaction
from django.db.models import F

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
    """Write a batch of audit records in one transaction; returns their row ids."""
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
    return [attempt.pk for attempt in attempts]


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
