"""The flow service: pending challenges of this process, and their outcomes.

:class:`FlowService` owns every challenge this process issued (the registry),
keyed by an unguessable id. A pending challenge outlives the socket that asked
for it until it expires, so its signature can come back on any connection. It
enforces the caps (pending per key and per process, connections per IP),
finishes each challenge at most once, and audits every outcome through the
group-committed :class:`~challenges.services.AuditWriter` before a token is
released.

:class:`TokenSession` is one WebSocket connection's view of the flow: it turns
parsed frames into service calls and errors into error frames, so the consumer
only moves bytes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.conf import settings

from . import protocol, upstream
from .authority import IssuedToken
from .errors import ChallengeError, InternalError, LimitError, StateError, UpstreamError
from .identity import PublicKey
from .protocol import ChallengeResponse, FrameContext, TokenRequest
from .services import AuditRecord, AuditWriter

log = logging.getLogger(__name__)

Notify = Callable[[ChallengeError], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who is asking, as the audit records it."""

    ip: str | None
    origin: str = ""
    user_agent: str = ""
    audience: str = ""
    transport: str = "ws"


@dataclass(eq=False)
class Flow:
    id: str
    key: PublicKey
    pending: upstream.PendingChallenge
    client: ClientInfo
    created_at: datetime
    started: float
    timer: asyncio.TimerHandle | None = None
    watchers: list[Notify] = field(default_factory=list)


class FlowService:
    """The per-process registry of pending challenges and the audit of outcomes."""

    def __init__(
        self,
        *,
        upstream: upstream.Upstream,
        audit: AuditWriter,
        timeout: float,
        max_per_key: int,
        max_total: int,
        max_connections_per_ip: int,
        worker: str,
    ) -> None:
        self.upstream = upstream
        self.audit = audit
        self.timeout = timeout
        self.max_per_key = max_per_key
        self.max_total = max_total
        self.max_connections_per_ip = max_connections_per_ip
        self.worker = worker
        self._flows: dict[str, Flow] = {}
        self._per_key: Counter[bytes] = Counter()
        self._connections: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- connections -----------------------------------------------------

    def connection_opened(self, ip: str | None) -> None:
        """Count a connection; raises ``too_many_connections`` over the cap."""
        key = ip or "?"
        if self._connections[key] >= self.max_connections_per_ip:
            raise LimitError(
                f"at most {self.max_connections_per_ip} connections per address",
                code="too_many_connections",
            )
        self._connections[key] += 1

    def connection_closed(self, ip: str | None) -> None:
        key = ip or "?"
        self._connections[key] -= 1
        if self._connections[key] <= 0:
            del self._connections[key]

    # -- flows -----------------------------------------------------------

    def is_pending(self, flow_id: str | None) -> bool:
        return flow_id is not None and flow_id in self._flows

    def flow(self, flow_id: str | None) -> Flow | None:
        return self._flows.get(flow_id or "")

    @property
    def pending_count(self) -> int:
        return len(self._flows)

    async def begin(self, *, key: PublicKey, client: ClientInfo, watcher: Notify | None = None) -> Flow:
        """Start a challenge for ``key``; raises a coded error (audited)."""
        created, started = datetime.now(UTC), time.monotonic()
        try:
            if len(self._flows) >= self.max_total:
                raise LimitError("the server has too many pending challenges", code="too_many_pending")
            if self._per_key[key.raw] >= self.max_per_key:
                raise LimitError(
                    f"at most {self.max_per_key} challenges may be pending for one key",
                    code="too_many_pending",
                )
            self._per_key[key.raw] += 1  # reserve before awaiting the upstream
            try:
                pending = await asyncio.wait_for(
                    self.upstream.begin(key=key, audience=client.audience, timeout=self.timeout),
                    self.timeout,
                )
            except BaseException:
                self._release_key(key)
                raise
        except TimeoutError:
            error = UpstreamError("the token authority did not answer in time", code="upstream_deadline")
            await self.record_error(error, client=client, key=str(key), created=created)
            raise error from None
        except ChallengeError as error:
            await self.record_error(error, client=client, key=str(key), created=created)
            raise
        flow = Flow(
            id=pending.challenge.id,
            key=key,
            pending=pending,
            client=client,
            created_at=created,
            started=started,
        )
        if watcher is not None:
            flow.watchers.append(watcher)
        remaining = (pending.challenge.expires_at - datetime.now(UTC)).total_seconds()
        flow.timer = asyncio.get_running_loop().call_later(max(remaining, 0), self._expire, flow.id)
        self._flows[flow.id] = flow
        return flow

    async def finish(self, *, flow_id: str, signature: bytes, client: ClientInfo) -> IssuedToken:
        """Finish a pending challenge with a signature, once.

        The challenge is consumed whatever the outcome. Returns the token only
        after its audit row is committed.
        """
        flow = self._take(flow_id)
        if flow is None:
            unknown = StateError(
                "the challenge id is unknown, expired or already used", code="unknown_challenge"
            )
            await self.record_error(unknown, client=client, challenge_id=flow_id)
            raise unknown
        remaining = (flow.pending.challenge.expires_at - datetime.now(UTC)).total_seconds()
        try:
            token = await asyncio.wait_for(flow.pending.finish(signature), max(remaining, 0.001) + 1)
        except Exception as exc:
            error = self._coded(exc)
            await self._close_flow(flow, error)
            if error is exc:
                raise
            raise error from exc
        await self.audit.record(self._record(flow, "success", token=token))
        return token

    async def fail(self, flow_id: str, error: ChallengeError) -> None:
        """End a pending challenge with ``error`` (a malformed answer consumes it)."""
        flow = self._take(flow_id)
        if flow is not None:
            await self._close_flow(flow, error)

    async def record_error(
        self,
        error: ChallengeError,
        *,
        client: ClientInfo,
        key: str = "",
        challenge_id: str = "",
        created: datetime | None = None,
    ) -> None:
        """Audit an error that belongs to no pending challenge."""
        now = datetime.now(UTC)
        record = AuditRecord(
            outcome=error.code,
            created_at=created or now,
            finished_at=now,
            public_key=key,
            challenge_id=challenge_id,
            detail=error.message,
            upstream=self.upstream.name,
            upstream_status=error.upstream_status if isinstance(error, UpstreamError) else "",
            **self._client_fields(client),
        )
        error.audited = True
        try:
            await self.audit.record(record)
        except ChallengeError:
            log.warning("could not audit a %s error", error.code)

    def unwatch(self, flow_id: str | None, watcher: Notify) -> None:
        flow = self._flows.get(flow_id or "")
        if flow is not None and watcher in flow.watchers:
            flow.watchers.remove(watcher)

    async def close(self) -> None:
        """Cancel every pending challenge (process shutdown)."""
        for flow_id in list(self._flows):
            await self.fail(flow_id, UpstreamError("the server is shutting down"))
        await self.upstream.close()

    # -- internals -------------------------------------------------------

    def _coded(self, exc: Exception) -> ChallengeError:
        if isinstance(exc, ChallengeError):
            return exc
        if isinstance(exc, TimeoutError):
            return UpstreamError("the token authority did not answer in time", code="upstream_deadline")
        log.error("upstream %s failed finishing a challenge", self.upstream.name, exc_info=exc)
        return InternalError("the server failed; retry with a new challenge")

    def _take(self, flow_id: str) -> Flow | None:
        flow = self._flows.pop(flow_id, None)
        if flow is not None:
            if flow.timer is not None:
                flow.timer.cancel()
            self._release_key(flow.key)
        return flow

    def _release_key(self, key: PublicKey) -> None:
        self._per_key[key.raw] -= 1
        if self._per_key[key.raw] <= 0:
            del self._per_key[key.raw]

    def _expire(self, flow_id: str) -> None:
        flow = self._take(flow_id)
        if flow is None:
            return
        error = ChallengeError(
            f"the challenge was not answered within {self.timeout:g} s; ask for a new one",
            code="challenge_timeout",
        )
        task = asyncio.create_task(self._close_flow(flow, error, notify=True))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close_flow(self, flow: Flow, error: ChallengeError, *, notify: bool = False) -> None:
        try:
            await flow.pending.cancel()
        except Exception:
            log.exception("cancelling an upstream challenge failed")
        error.audited = True
        await self._audit_quietly(self._record(flow, error.code, detail=error.message))
        if notify:
            for watcher in list(flow.watchers):
                try:
                    await watcher(error)
                except Exception:
                    log.debug("a watcher of challenge failed", exc_info=True)

    async def _audit_quietly(self, record: AuditRecord) -> None:
        try:
            await self.audit.record(record)
        except ChallengeError:
            log.warning("could not audit a %s outcome", record.outcome)

    def _record(
        self, flow: Flow, outcome: str, *, detail: str = "", token: IssuedToken | None = None
    ) -> AuditRecord:
        return AuditRecord(
            outcome=outcome,
            created_at=flow.created_at,
            finished_at=datetime.now(UTC),
            public_key=str(flow.key),
            challenge_id=flow.id,
            detail=detail,
            upstream=self.upstream.name,
            upstream_status=flow.pending.status,
            latency_ms=(time.monotonic() - flow.started) * 1000,
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


_services: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FlowService] = weakref.WeakKeyDictionary()


def get_service() -> FlowService:
    """This process's flow service (one per event loop: timers belong to a loop)."""
    loop = asyncio.get_running_loop()
    service = _services.get(loop)
    if service is None:
        service = _services[loop] = FlowService(
            upstream=upstream.from_settings(),
            audit=AuditWriter(),
            timeout=settings.CHALLENGE_TIMEOUT,
            max_per_key=settings.MAX_PENDING_PER_KEY,
            max_total=settings.MAX_PENDING_PER_PROCESS,
            max_connections_per_ip=settings.MAX_CONNECTIONS_PER_IP,
            worker=settings.WORKER_ID,
        )
    return service


class TokenSession:
    """One connection's token flow: frames in, frames out, every error audited."""

    def __init__(
        self,
        *,
        service: FlowService,
        client: ClientInfo,
        send: Callable[[dict[str, Any]], Awaitable[None]],
        max_errors: int,
    ) -> None:
        self.service = service
        self.client = client
        self._send = send
        self.flow_id: str | None = None
        self.errors = 0
        self.max_errors = max_errors
        self.closed = False

    async def receive(self, *, text: str | None, data: bytes | None) -> bool:
        """Handle one frame. Returns False when the connection should close."""
        context = FrameContext()
        try:
            protocol.check_size(text=text, data=data)
            assert text is not None
            obj = protocol.decode(text)
            context = protocol.peek(obj)
            message = protocol.parse_message(obj)
            if isinstance(message, TokenRequest):
                await self._token(message)
            else:
                await self._challenge(message)
        except ChallengeError as error:
            await self._error(error, context)
            self.errors += 1
            if error.code == "frame_too_large":
                return False
            if self.errors >= self.max_errors:
                await self._error(LimitError("too many bad frames; closing", code="too_many_errors"), context)
                return False
        return True

    async def close(self) -> None:
        """The socket is gone: the pending challenge stays resumable until it expires,
        unless its upstream holds a stream for it (a relayed Hub challenge): that
        one is cancelled now."""
        self.closed = True
        self.service.unwatch(self.flow_id, self._expired)
        flow = self.service.flow(self.flow_id)
        if flow is not None and getattr(flow.pending, "cancel_on_disconnect", False) and not flow.watchers:
            self.flow_id = None
            gone = ChallengeError(
                "the client disconnected before answering; the upstream stream was cancelled",
                code="challenge_timeout",
            )
            await self.service.fail(flow.id, gone)

    async def _token(self, message: TokenRequest) -> None:
        if self.service.is_pending(self.flow_id):
            raise StateError(
                "a challenge is already pending on this connection; answer it first",
                code="already_pending",
            )
        flow = await self.service.begin(key=message.pub, client=self.client, watcher=self._expired)
        self.flow_id = flow.id
        challenge = flow.pending.challenge
        await self._send(
            protocol.challenge_frame(
                value=challenge.value,
                challenge_id=challenge.id,
                expires_at=challenge.expires_at,
                raw=challenge.raw,
            )
        )

    async def _challenge(self, message: ChallengeResponse) -> None:
        flow_id = message.challenge_id or self.flow_id
        if flow_id is None:
            raise StateError("no challenge is pending; send a 'token' frame first", code="no_challenge")
        if flow_id == self.flow_id:
            self.flow_id = None
        token = await self.service.finish(flow_id=flow_id, signature=message.sig, client=self.client)
        await self._send(protocol.token_frame(token.token))

    async def _error(self, error: ChallengeError, context: FrameContext) -> None:
        if not error.audited:
            flow_id = context.challenge_id or self.flow_id
            if context.type == "challenge" and self.service.is_pending(flow_id):
                # A malformed answer spends the challenge it names (one attempt each).
                if flow_id == self.flow_id:
                    self.flow_id = None
                await self.service.fail(flow_id, error)  # type: ignore[arg-type]
            else:
                await self.service.record_error(
                    error,
                    client=self.client,
                    key=context.pub or "",
                    challenge_id=context.challenge_id or "",
                )
        await self.send_error(error)

    async def send_error(self, error: ChallengeError) -> None:
        if not self.closed:
            await self._send(protocol.error_frame(error))

    async def _expired(self, error: ChallengeError) -> None:
        self.flow_id = None
        await self.send_error(error)
