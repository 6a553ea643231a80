"""What the audit records of one ``GetToken`` call, whether the servicer or the API-key check ends it."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import grpc.aio

from ..services import AuditRecord
from ..tokens import MintedToken


class Attempt:
    """What the audit records of one call."""

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any], worker: str) -> None:
        self.created = datetime.now(UTC)
        self.started: float | None = None
        self.key = ""
        self.worker = worker
        metadata = dict(context.invocation_metadata() or ())
        self.user_agent = str(metadata.get("user-agent", ""))[:200]
        self.ip = _peer_ip(context.peer())

    def challenged(self) -> None:
        self.started = time.monotonic()

    def record(
        self, outcome: str, *, status: str, detail: str = "", token: MintedToken | None = None
    ) -> AuditRecord:
        return AuditRecord(
            outcome=outcome,
            created_at=self.created,
            finished_at=datetime.now(UTC),
            public_key=self.key,
            detail=detail,
            client_ip=self.ip,
            user_agent=self.user_agent,
            transport="grpc",
            worker=self.worker,
            upstream="authority",
            upstream_status=status,
            latency_ms=None if self.started is None else (time.monotonic() - self.started) * 1000,
            token=token,
        )


def _peer_ip(peer: str) -> str | None:
    # "ipv4:127.0.0.1:5000" / "ipv6:[::1]:5000"
    kind, _, rest = (peer or "").partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or None
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]") or None
    return None
