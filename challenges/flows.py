"""The flow service: this process's pending challenges, and the audit of their outcomes.

:class:`FlowService` owns every challenge this process issued (the registry),
keyed by an unguessable id that starts with the process's tag. A pending
challenge outlives the connection that asked for it until it expires, so its
signature may come back on another connection (here, or routed from another
worker by :mod:`challenges.routing`, which calls :meth:`FlowService.finish`).
It enforces the caps, finishes each challenge at most once, and audits every
outcome it decides (:mod:`challenges.outcomes`) before a token is released.

Whoever raises an error audits it: every :class:`~challenges.errors.ChallengeError`
that leaves this service has its audit row already. The edges audit their own
refusals through :meth:`FlowService.fail` (a malformed answer spends the pending
challenge it names) and :meth:`FlowService.refuse` (a refusal that belongs to no
flow). It knows nothing of settings, the channel layer or wire frames.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Container
from datetime import datetime

from .clients import ClientInfo
from .clock import Clock
from .errors import ChallengeError, Code, InternalError, RefusedError, StateError, UpstreamError, key_blocked
from .identity import PublicKey
from .limits import Limits
from .outcomes import Outcomes
from .pending import Flow, Watcher
from .tasks import TaskSet
from .tokens import MintedToken
from .upstream import Upstream

log = logging.getLogger(__name__)


class FlowService:
    """The per-process registry of pending challenges and the audit of outcomes."""

    def __init__(
        self,
        *,
        upstream: Upstream,
        outcomes: Outcomes,
        limits: Limits,
        clock: Clock,
        timeout: float,
        worker: str,
        tag: str,
        blocked: Container[str] = frozenset(),
    ) -> None:
        self.upstream = upstream
        self.outcomes = outcomes
        #: Keys an operator blocked: they may not start a flow, nor finish one they hold.
        self.blocked = blocked
        self.limits = limits
        self.clock = clock
        self.timeout = timeout
        self.worker = worker
        self.tag = tag
        #: False once the process is shutting down: new flows are refused.
        self.accepting = True
        self._flows: dict[str, Flow] = {}
        self._tasks = TaskSet()

    @property
    def pending_count(self) -> int:
        return len(self._flows)

    def pending(self, flow_id: str | None) -> Flow | None:
        """The flow ``flow_id`` if it is pending in this process."""
        return self._flows.get(flow_id or "")

    # -- the flow ----------------------------------------------------------

    async def begin(self, *, key: PublicKey, client: ClientInfo, watcher: Watcher | None = None) -> Flow:
        """Start a challenge for ``key``; raises a coded error (audited)."""
        created, started = self.clock.now(), self.clock.monotonic()
        self.outcomes.started(client)
        try:
            if not self.accepting:
                raise RefusedError("the server is shutting down; retry", code=Code.SERVER_SHUTDOWN)
            if str(key) in self.blocked:
                raise key_blocked()
            self.limits.reserve(key=key.raw, ip=client.ip)  # before awaiting the upstream
            try:
                async with asyncio.timeout(self.timeout):  # a scope, not a task per flow
                    pending = await self.upstream.begin(
                        key=key, audience=client.audience, timeout=self.timeout
                    )
            except BaseException:
                self.limits.release(key=key.raw, ip=client.ip)
                raise
        except TimeoutError:
            error = UpstreamError("the token authority did not answer in time", code=Code.UPSTREAM_DEADLINE)
            await self.refuse(error, client=client, key=str(key), created=created)
            raise error from None
        except ChallengeError as error:
            await self.refuse(error, client=client, key=str(key), created=created)
            raise
        flow = Flow(
            id=self.tag + pending.challenge.id,
            key=key,
            pending=pending,
            client=client,
            created_at=created,
            started=started,
            challenged_at=self.clock.now(),
        )
        if watcher is not None:
            flow.watchers.append(watcher)
        remaining = (pending.challenge.expires_at - self.clock.now()).total_seconds()
        flow.timer = self.clock.call_later(remaining, self._expire, flow.id)
        self._flows[flow.id] = flow
        return flow

    async def finish(
        self, *, flow_id: str, signature: bytes, client: ClientInfo, finisher: Watcher | None = None
    ) -> MintedToken:
        """Finish one of this process's challenges with a signature, once; raises a
        coded error (audited). The challenge is spent whatever the outcome; the token
        is returned only after its audit row is committed, and the flow's other
        watchers (the connection that asked for it) get it too."""
        flow = self._take(flow_id)
        if flow is None:
            unknown = StateError(
                "the challenge id is unknown, expired or already used", code=Code.UNKNOWN_CHALLENGE
            )
            await self.refuse(unknown, client=client, challenge_id=flow_id)
            raise unknown
        answered = self._answered(flow, client)
        if str(flow.key) in self.blocked:  # blocked while its challenge was pending
            blocked = key_blocked()
            await self._end(flow, blocked, exclude=finisher)
            raise blocked
        remaining = (flow.challenge.expires_at - answered).total_seconds()
        try:
            async with asyncio.timeout(max(remaining, 0.001) + 1):
                token = await flow.pending.finish(signature)
        except asyncio.CancelledError:
            # The connection was torn down mid-check: the challenge is spent, say so in the audit.
            gone = InternalError("the client went away while its signature was checked")
            self._tasks.spawn(self._end(flow, gone))
            raise
        except Exception as exc:
            error = self._coded(exc)
            await self._end(flow, error, exclude=finisher)
            if error is exc:
                raise
            raise error from exc
        await self.outcomes.issued(flow, token)
        await self._notify(flow, token, exclude=finisher)
        return token

    async def fail(
        self, flow_id: str, error: ChallengeError, *, client: ClientInfo, finisher: Watcher | None = None
    ) -> bool:
        """End the pending challenge ``flow_id`` with ``error`` and audit it (a malformed
        answer from ``client`` spends the challenge it names). False when no such challenge
        is pending."""
        flow = self._take(flow_id)
        if flow is None:
            return False
        self._answered(flow, client)
        await self._end(flow, error, exclude=finisher)
        return True

    async def refuse(
        self,
        error: ChallengeError,
        *,
        client: ClientInfo,
        key: str = "",
        challenge_id: str = "",
        created: datetime | None = None,
    ) -> None:
        """Audit a refusal that belongs to no pending challenge."""
        await self.outcomes.refused(error, client=client, key=key, challenge_id=challenge_id, created=created)

    # -- who watches a flow ------------------------------------------------------

    def unwatch(self, flow_id: str | None, watcher: Watcher) -> None:
        flow = self.pending(flow_id)
        if flow is not None and watcher in flow.watchers:
            flow.watchers.remove(watcher)

    def abandoned(self, flow_id: str | None, *, grace: float) -> None:
        """The connection that asked for ``flow_id`` is gone. A challenge that holds an
        upstream stream (a relayed Hub challenge) is cancelled after ``grace`` seconds
        unless answered by then (a reconnect may still resume it); one that costs
        nothing to keep waits for its expiry."""
        flow = self.pending(flow_id)
        if flow is None or flow.watchers or not flow.pending.holds_stream:
            return
        if flow.grace is not None:
            flow.grace.cancel()
        flow.grace = self.clock.call_later(grace, self._give_up, flow.id)

    # -- shutdown ----------------------------------------------------------------

    async def shutdown(self, *, timeout: float = 5.0) -> int:
        """Refuse new flows and end every pending one with ``server_shutdown``: an
        error to whoever waits for it, an audit row each, its upstream stream
        cancelled. Returns how many were ended."""
        self.accepting = False
        # Taken before the first await: a server may tear its connections down right
        # after asking us to stop, and their watchers must still hear why.
        flows = [flow for flow in map(self._take, list(self._flows)) if flow is not None]
        error = RefusedError("the server is shutting down; retry", code=Code.SERVER_SHUTDOWN)
        await asyncio.gather(*(self._end(flow, error) for flow in flows))
        await self._tasks.wait(timeout)
        await self._tasks.cancel()
        return len(flows)

    # -- internals -------------------------------------------------------

    def _coded(self, exc: Exception) -> ChallengeError:
        if isinstance(exc, ChallengeError):
            return exc
        if isinstance(exc, TimeoutError):
            return UpstreamError("the token authority did not answer in time", code=Code.UPSTREAM_DEADLINE)
        log.error("upstream %s failed finishing a challenge", self.upstream.name, exc_info=exc)
        return InternalError("the server failed; retry with a new challenge")

    def _answered(self, flow: Flow, client: ClientInfo) -> datetime:
        """The answer came now, from ``client`` (whatever connection, whatever worker)."""
        flow.answered_at, flow.answer_ip = self.clock.now(), client.ip
        return flow.answered_at

    def _take(self, flow_id: str) -> Flow | None:
        flow = self._flows.pop(flow_id, None)
        if flow is not None:
            for timer in (flow.timer, flow.grace):
                if timer is not None:
                    timer.cancel()
            self.limits.release(key=flow.key.raw, ip=flow.client.ip)
        return flow

    def _give_up(self, flow_id: str) -> None:
        flow = self.pending(flow_id)
        if flow is None or flow.watchers:
            return
        self._take(flow_id)
        error = ChallengeError(
            "the client disconnected before answering; the upstream stream was cancelled",
            code=Code.CHALLENGE_TIMEOUT,
        )
        self._tasks.spawn(self._end(flow, error))

    def _expire(self, flow_id: str) -> None:
        flow = self._take(flow_id)
        if flow is None:
            return
        error = ChallengeError(
            f"the challenge was not answered within {self.timeout:g} s; ask for a new one",
            code=Code.CHALLENGE_TIMEOUT,
        )
        self._tasks.spawn(self._end(flow, error))

    async def _end(self, flow: Flow, error: ChallengeError, *, exclude: Watcher | None = None) -> None:
        try:
            await flow.pending.cancel()
        except Exception:
            log.exception("cancelling an upstream challenge failed")
        await self.outcomes.ended(flow, error)
        await self._notify(flow, error, exclude=exclude)

    async def _notify(
        self, flow: Flow, event: MintedToken | ChallengeError, *, exclude: Watcher | None
    ) -> None:
        for watcher in flow.watchers:
            if watcher == exclude:
                continue
            try:
                await watcher(flow.id, event)
            except Exception:
                log.debug("a watcher of a challenge failed", exc_info=True)
