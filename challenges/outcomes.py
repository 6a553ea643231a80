"""Where every outcome of the token flow is recorded: one place for the audit row.

:class:`Outcomes` turns a flow that ended (a token, or the error that ended
it) and a refusal that belongs to no flow into audit records for the
group-committed :class:`~challenges.services.AuditWriter`. A token's row is
awaited (the token leaves only once it is committed); an error's row is
written quietly (its outcome is decided whether or not the row lands).
Refusals are aggregated per address, code and minute
(:mod:`challenges.refusals`); the outcomes of flows are one row each.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from .audit import AuditWriter
from .clients import ClientInfo
from .clock import Clock
from .errors import ChallengeError, UpstreamError
from .models import SUCCESS
from .refusals import Refusals
from .services import AuditRecord
from .tokens import MintedToken

if TYPE_CHECKING:
    from .flows import Flow


class Outcomes:
    def __init__(
        self, *, audit: AuditWriter, refusals: Refusals, clock: Clock, worker: str, upstream: str
    ) -> None:
        self.audit = audit
        self.refusals = refusals
        self.clock = clock
        self.worker = worker
        self.upstream = upstream

    async def issued(self, flow: Flow, token: MintedToken) -> None:
        """A token for ``flow``: returns once its row is committed (raises ``internal_error`` if not)."""
        await self.audit.record(self._of_flow(flow, SUCCESS, token=token))

    async def ended(self, flow: Flow, error: ChallengeError) -> None:
        """``flow`` ended with ``error``."""
        await self.audit.record_quietly(self._of_flow(flow, error.code, detail=error.message))

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
        await self.refusals.add(
            AuditRecord(
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
        )

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
