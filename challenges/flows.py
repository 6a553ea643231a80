"""The flow service: pending challenges of this process, and their outcomes.

:class:`FlowService` owns every challenge this process issued (the registry),
keyed by an unguessable id. A pending challenge outlives the socket that asked
for it until it expires, so its signature can come back on any connection. It
enforces the caps (pending per key and per process, connections per IP),
finishes each challenge at most once, and audits every outcome through the
group-committed :class:`~challenges.services.AuditWriter` before a token is
released.

Challenge ids start with this process's tag; a signature for another tag is
routed to its owner through the channel layer (:mod:`challenges.inbox`), and
the owner answers. Whoever watches a flow (the connection that asked for it)
hears its end: the token, or the error.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings

from . import inbox, protocol, upstream
from .authority import IssuedToken
from .errors import ChallengeError, InternalError, StateError, UpstreamError
from .identity import PublicKey
from .limits import Caps, Limits
from .protocol import FrameContext
from .services import AuditRecord, AuditWriter

log = logging.getLogger(__name__)

#: Told how a watched flow ended: its id, and the token or the error.
Notify = Callable[[str, IssuedToken | ChallengeError], Awaitable[None]]


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
    grace: asyncio.TimerHandle | None = None
    watchers: list[Notify] = field(default_factory=list)

    def frame(self) -> dict[str, Any]:
        """The challenge frame (WebSocket) or body (HTTP) for this flow."""
        challenge = self.pending.challenge
        return protocol.challenge_frame(
            value=challenge.value, challenge_id=self.id, expires_at=challenge.expires_at, raw=challenge.raw
        )


class FlowService:
    """The per-process registry of pending challenges and the audit of outcomes."""

    def __init__(
        self,
        *,
        upstream: upstream.Upstream,
        audit: AuditWriter,
        timeout: float,
        caps: Caps,
        worker: str,
        layer: Any = None,
    ) -> None:
        self.upstream = upstream
        self.audit = audit
        self.timeout = timeout
        self.limits = Limits(caps)
        self.worker = worker
        self._flows: dict[str, Flow] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.tag = inbox.new_tag()
        self.inbox = (
            inbox.Inbox(
                layer=layer,
                tag=self.tag,
                handler=self._serve_remote,
                ack_timeout=settings.ROUTE_ACK_TIMEOUT,
                liveness=inbox.Liveness(url=settings.REDIS_URL, tag=self.tag) if settings.REDIS_URL else None,
            )
            if layer
            else None
        )
        if self.inbox is not None:
            self.inbox.start()

    # -- connections -----------------------------------------------------

    def connection_opened(self, ip: str | None) -> None:
        """Count a connection; raises ``too_many_connections`` over the cap."""
        self.limits.open_connection(ip)

    def connection_closed(self, ip: str | None) -> None:
        self.limits.close_connection(ip)

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
            self.limits.reserve(key=key.raw, ip=client.ip)  # before awaiting the upstream
            try:
                pending = await asyncio.wait_for(
                    self.upstream.begin(key=key, audience=client.audience, timeout=self.timeout),
                    self.timeout,
                )
            except BaseException:
                self.limits.release(key=key.raw, ip=client.ip)
                raise
        except TimeoutError:
            error = UpstreamError("the token authority did not answer in time", code="upstream_deadline")
            await self.record_error(error, client=client, key=str(key), created=created)
            raise error from None
        except ChallengeError as error:
            await self.record_error(error, client=client, key=str(key), created=created)
            raise
        flow = Flow(
            id=self.tag + pending.challenge.id,
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

    async def finish(
        self, *, flow_id: str, signature: bytes, client: ClientInfo, finisher: Notify | None = None
    ) -> str:
        """Finish a challenge with a signature, once, wherever it lives; returns the token.

        The challenge is consumed whatever the outcome. A local token is
        returned only after its audit row is committed; the flow's other
        watchers (the connection that asked for it) get it too.
        """
        if inbox.tag_of(flow_id) != self.tag and self.inbox is not None:
            return await self._finish_remote(flow_id, signature, client)
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
        except asyncio.CancelledError:
            # The connection was torn down mid-check: the challenge is spent, say so in the audit.
            gone = ChallengeError(
                "the client went away while its signature was checked", code="internal_error"
            )
            self._spawn(self._close_flow(flow, gone))
            raise
        except Exception as exc:
            error = self._coded(exc)
            await self._close_flow(flow, error, exclude=finisher)
            if error is exc:
                raise
            raise error from exc
        await self.audit.record(self._record(flow, "success", token=token))
        await self._notify(flow, token, exclude=finisher)
        return token.token

    async def _finish_remote(self, flow_id: str, signature: bytes, client: ClientInfo) -> str:
        assert self.inbox is not None
        try:
            reply = await self.inbox.request(
                inbox.tag_of(flow_id),
                {"id": flow_id, "sig": signature},
                timeout=self.timeout + 5,
            )
        except TimeoutError:
            error: ChallengeError = UpstreamError(
                "the worker holding the challenge did not answer in time", code="upstream_deadline"
            )
        except ChallengeError as exc:
            error = exc
        else:
            return inbox.raise_reply(reply)
        await self.record_error(error, client=client, challenge_id=flow_id)
        raise error

    async def _serve_remote(self, message: dict[str, Any]) -> dict[str, Any]:
        """An inbox request: finish one of our challenges for another worker."""
        flow_id, sig = message.get("id"), message.get("sig")
        if not isinstance(flow_id, str) or not isinstance(sig, bytes) or inbox.tag_of(flow_id) != self.tag:
            return inbox.error_reply(StateError("malformed routed request", code="unknown_challenge"))
        flow = self._flows.get(flow_id)
        client = flow.client if flow is not None else ClientInfo(ip=None, transport="routed")
        try:
            token = await self.finish(flow_id=flow_id, signature=sig, client=client)
        except ChallengeError as error:
            return inbox.error_reply(error)
        return {"ok": True, "token": token}

    async def reject(
        self,
        error: ChallengeError,
        *,
        client: ClientInfo,
        context: FrameContext,
        finisher: Notify | None = None,
    ) -> None:
        """Audit a refused request once; a malformed answer spends the challenge it names."""
        if error.audited:
            return
        if context.type == "challenge" and context.challenge_id and self.is_pending(context.challenge_id):
            await self.fail(context.challenge_id, error, finisher=finisher)
        else:
            await self.record_error(
                error, client=client, key=context.pub or "", challenge_id=context.challenge_id or ""
            )

    async def fail(self, flow_id: str, error: ChallengeError, *, finisher: Notify | None = None) -> None:
        """End a pending challenge with ``error`` (a malformed answer consumes it)."""
        flow = self._take(flow_id)
        if flow is not None:
            await self._close_flow(flow, error, exclude=finisher)

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
        if self.inbox is not None:
            await self.inbox.stop()
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
            for timer in (flow.timer, flow.grace):
                if timer is not None:
                    timer.cancel()
            self.limits.release(key=flow.key.raw, ip=flow.client.ip)
        return flow

    def abandoned(self, flow_id: str | None, *, grace: float) -> None:
        """The connection that asked for ``flow_id`` is gone. A challenge whose upstream
        holds a stream open for it (a relayed Hub challenge) is cancelled after ``grace``
        seconds unless answered by then (a reconnect may still resume it); one that
        costs nothing to keep waits for its expiry."""
        flow = self.flow(flow_id)
        if flow is None or flow.watchers or not getattr(flow.pending, "cancel_on_disconnect", False):
            return
        if flow.grace is not None:
            flow.grace.cancel()
        flow.grace = asyncio.get_running_loop().call_later(grace, self._give_up, flow.id)

    def _give_up(self, flow_id: str) -> None:
        flow = self._flows.get(flow_id)
        if flow is None or flow.watchers:
            return
        self._take(flow_id)
        error = ChallengeError(
            "the client disconnected before answering; the upstream stream was cancelled",
            code="challenge_timeout",
        )
        self._spawn(self._close_flow(flow, error))

    def _expire(self, flow_id: str) -> None:
        flow = self._take(flow_id)
        if flow is None:
            return
        error = ChallengeError(
            f"the challenge was not answered within {self.timeout:g} s; ask for a new one",
            code="challenge_timeout",
        )
        self._spawn(self._close_flow(flow, error))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close_flow(self, flow: Flow, error: ChallengeError, *, exclude: Notify | None = None) -> None:
        try:
            await flow.pending.cancel()
        except Exception:
            log.exception("cancelling an upstream challenge failed")
        error.audited = True
        await self._audit_quietly(self._record(flow, error.code, detail=error.message))
        await self._notify(flow, error, exclude=exclude)

    async def _notify(
        self, flow: Flow, event: IssuedToken | ChallengeError, *, exclude: Notify | None
    ) -> None:
        for watcher in flow.watchers:
            if watcher == exclude:
                continue
            try:
                await watcher(flow.id, event)
            except Exception:
                log.debug("a watcher of a challenge failed", exc_info=True)

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
            caps=Caps(
                pending_per_key=settings.MAX_PENDING_PER_KEY,
                pending_per_ip=settings.MAX_PENDING_PER_IP,
                pending_total=settings.MAX_PENDING_PER_PROCESS,
                connections_per_ip=settings.MAX_CONNECTIONS_PER_IP,
            ),
            worker=settings.WORKER_ID,
            layer=get_channel_layer(),
        )
    return service
