"""Where every outcome of the token flow is recorded: one place for the audit row.

:class:`Outcomes` turns a flow that ended (a token, or the error that ended
it) and a refusal that belongs to no flow into audit records for the
group-committed :class:`~challenges.services.AuditWriter`. A token's row is
awaited (the token leaves only once it is committed); an error's row is
written quietly (its outcome is decided whether or not the row lands).
Refusals are aggregated per address, code and minute
(:mod:`challenges.refusals`); the outcomes of flows are one row each.

Every outcome is also counted (:mod:`challenges.metrics`, refusals one by
one) and logged (:func:`challenges.logs.outcome`): flows at INFO, refusals
at DEBUG, since a flood of them would flood the log (the audit and the
metrics count them).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from . import logs
from .audit import AuditWriter
from .clients import ClientInfo
from .clock import Clock
from .errors import ChallengeError, UpstreamError
from .metrics import DEFAULT, Metrics
from .models import SUCCESS
from .pending import Flow
from .refusals import Refusals
from .services import AuditRecord
from .tokens import MintedToken


class Outcomes:
    def __init__(
        self,
        *,
        audit: AuditWriter,
        refusals: Refusals,
        clock: Clock,
        worker: str,
        upstream: str,
        metrics: Metrics = DEFAULT,
    ) -> None:
        self.audit = audit
        self.refusals = refusals
        self.clock = clock
        self.worker = worker
        self.upstream = upstream
        self.metrics = metrics

    def started(self, client: ClientInfo) -> None:
        """A challenge was asked for (whatever comes of it)."""
        self.metrics.started(client.transport)

    async def issued(self, flow: Flow, token: MintedToken) -> None:
        """A token for ``flow``: returns once its row is committed (raises ``internal_error`` if not)."""
        await record_issued(self.audit, self.metrics, self._of_flow(flow, SUCCESS, token=token))

    async def ended(self, flow: Flow, error: ChallengeError) -> None:
        """``flow`` ended with ``error``."""
        record = self._of_flow(flow, error.code, detail=error.message)
        self._observe(record, logging.INFO)
        await self.audit.record_quietly(record)

    async def refused(
        self,
        error: ChallengeError,
        *,
        client: ClientInfo,
        key: str = "",
        challenge_id: str = "",
        created: datetime | None = None,
    ) -> None:
        """A refusal that belongs to no pending challenge."""
        now = self.clock.now()
        record = AuditRecord(
            outcome=error.code,
            created_at=created or now,
            finished_at=now,
            public_key=key,
            challenge_id=challenge_id,
            detail=error.message,
            upstream=self.upstream,
            upstream_status=error.upstream_status if isinstance(error, UpstreamError) else "",
            **self._client_fields(client),
        )
        self._observe(record, logging.DEBUG)
        await self.refusals.add(record)

    def _observe(self, record: AuditRecord, level: int) -> None:
        observe(self.metrics, record, level)

    def _of_flow(
        self, flow: Flow, outcome: str, *, detail: str = "", token: MintedToken | None = None
    ) -> AuditRecord:
        return AuditRecord(
            outcome=outcome,
            created_at=flow.created_at,
            finished_at=self.clock.now(),
            public_key=str(flow.key),
            challenge_id=flow.id,
            detail=detail,
            upstream=self.upstream,
            upstream_status=flow.pending.status,
            latency_ms=(self.clock.monotonic() - flow.started) * 1000,
            challenged_at=flow.challenged_at,
            answered_at=flow.answered_at,
            answer_ip=flow.answer_ip,
            token=token,
            **self._client_fields(flow.client),
        )

    def _client_fields(self, client: ClientInfo) -> dict[str, Any]:
        return {
            "client_ip": client.ip,
            "origin": client.origin,
            "user_agent": client.user_agent,
            "transport": client.transport,
            "worker": self.worker,
        }


def observe(metrics: Metrics, record: AuditRecord, level: int | None = None) -> None:
    """Count an audited outcome and log its line: a refusal has no latency (``latency_ms``
    None) and is logged at DEBUG, a flow's outcome at INFO, unless ``level`` says."""
    latency = record.latency_ms
    metrics.finished(record.outcome, record.transport, None if latency is None else latency / 1000)
    logs.outcome(
        level if level is not None else logging.DEBUG if latency is None else logging.INFO,
        outcome=record.outcome,
        challenge_id=record.challenge_id,
        key=record.public_key,
        transport=record.transport,
        upstream=record.upstream,
        latency_ms=latency or 0.0,
        client=record.client_ip,
        worker=record.worker,
        answered_from=record.answer_ip,
    )


async def record_issued(audit: AuditWriter, metrics: Metrics, record: AuditRecord) -> None:
    """Write a token's row and count it, for every transport: returns once the row is
    committed, or raises the error the caller is then told (no row, no token: the record
    then says that error). Counted also when the caller went away meanwhile: the row is
    written all the same."""
    level = logging.INFO
    try:
        await audit.record(record)
    except ChallengeError as error:
        record.outcome, record.token, level = error.code, None, logging.WARNING
        raise
    finally:
        observe(metrics, record, level)
