"""The router: a signature goes to the process that owns its challenge, the answer comes back.

A challenge lives in the process that issued it (its local state, or its open
gRPC stream); its id starts with that process's *tag*, and every process
reads one channel of the channel layer, its inbox ``tokenflow.<tag>``. The
walk of a signature that arrives on worker B for a challenge of worker A goes
one way::

    edge on B ─▶ Router.finish (B) ─▶ _exchange: liveness.alive(A)? ─▶ layer.send(tokenflow.A)
        ─▶ Router._read (A) ─▶ Owner.serve (A) ─▶ FlowService.finish (A): verify, audit, token
        ─▶ layer.send(tokenflow.B) ─▶ Router._read (B) ─▶ the waiting _exchange ─▶ edge on B

Two channel-layer messages per routed signature, and no channel-layer group
or channel per connection. Before sending, the owner's liveness
(:mod:`challenges.liveness`) is asked: a tag that belongs to no live worker
is ``unknown_challenge`` at once, with nothing sent. While waiting, it is
asked again every ``check_every`` seconds: a busy owner is waited for while
it lives, a dead one is dropped within its heartbeat's TTL. A layer that
cannot be reached is ``routing_unavailable``. Routing errors are audited
here; an error the owner answered was audited by the owner. Waiting
requests and running handlers are capped. Each answer's wait, and each
failure by its code, is counted (:mod:`challenges.metrics`).

The layer delivers at most once (a pub/sub message published while its
reader is away is lost), so a request unanswered after ``resend_after`` s is
sent again with the same request id; the owner answers a repeat with the
answer it gave (or nothing, while still working), so a challenge is finished once.

A malformed answer (:meth:`Router.spend`) spends the challenge it names wherever
it lives: to another worker it goes one way (``flow.spend``, no reply, not sent
again), and the owner ends the challenge and audits it as it would a malformed
answer on its own connection (or, the challenge gone, audits the refusal).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any

from .clients import ClientInfo
from .clock import Clock
from .errors import ChallengeError, Code, LimitError, RoutingUnavailable, StateError, UpstreamError
from .flows import FlowService
from .liveness import Liveness
from .metrics import DEFAULT, Metrics
from .owner import PREFIX, Owner, tag_of
from .pending import Watcher
from .tasks import TaskSet

log = logging.getLogger(__name__)


class Router:
    def __init__(
        self,
        *,
        service: FlowService,
        layer: Any,
        liveness: Liveness,
        clock: Clock,
        timeout: float,
        send_timeout: float = 2.0,
        check_every: float = 1.0,
        resend_after: float = 2.0,
        max_waiting: int = 10_000,
        max_handlers: int = 2_000,
        metrics: Metrics = DEFAULT,
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.layer = layer
        self.liveness = liveness
        self.clock = clock
        self.timeout = timeout
        self.send_timeout = send_timeout
        self.check_every = check_every
        self.resend_after = resend_after
        self.max_waiting = max_waiting
        self.tag = service.tag
        self.inbox = PREFIX + self.tag
        self.healthy = True
        #: True from a failed send to the next good one: one warning per outage, not per request.
        self._sends_failing = False
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._handlers = TaskSet(limit=max_handlers)
        self.owner = Owner(service=service, send=self._send, inbox=self.inbox, max_answered=max_waiting)
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.liveness.start()
        self._reader = asyncio.create_task(self._read(), name=f"inbox-{self.tag}")

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        await self._handlers.cancel()
        await self.liveness.stop()

    async def finish(
        self, *, flow_id: str, signature: bytes, client: ClientInfo, finisher: Watcher | None = None
    ) -> str:
        """The token for ``signature``, wherever its challenge lives; raises a coded error (audited)."""
        if tag_of(flow_id) == self.tag:
            token = await self.service.finish(
                flow_id=flow_id, signature=signature, client=client, finisher=finisher
            )
            return token.token
        started = self.clock.monotonic()
        try:
            reply = await self._exchange(flow_id, signature, client)
        except ChallengeError as error:
            self.metrics.routing_failed(error.code)
            await self.service.refuse(error, client=client, challenge_id=flow_id)
            raise
        ok = bool(reply.get("ok")) and isinstance(reply.get("token"), str)
        self.metrics.routed("token" if ok else "refused", self.clock.monotonic() - started)
        if ok:
            return str(reply["token"])
        # The owner's refusal, audited by the owner.
        code = Code.lookup(reply.get("code")) or Code.INTERNAL_ERROR
        raise ChallengeError(str(reply.get("message") or code.meaning)[:200], code=code)

    async def spend(
        self, flow_id: str, error: ChallengeError, *, client: ClientInfo, finisher: Watcher | None = None
    ) -> bool:
        """A malformed answer from ``client`` names ``flow_id``: end that challenge with
        ``error`` wherever it lives. True when it is ended here or handed to its live owner
        (who audits it); False when it is nowhere to be ended (the caller audits the refusal)."""
        if tag_of(flow_id) == self.tag:
            return await self.service.fail(flow_id, error, client=client, finisher=finisher)
        owner = tag_of(flow_id)
        message = {
            "type": "flow.spend",
            "id": flow_id,
            "code": str(error.code),
            "message": error.message,
            "client": client.to_wire(),
        }
        try:
            if not await self.liveness.alive(owner):
                return False
            await self._send(PREFIX + owner, message)
        except Exception as exc:
            log.debug("a malformed answer could not be sent to its owner: %s", type(exc).__name__)
            return False
        return True

    async def _exchange(self, flow_id: str, signature: bytes, client: ClientInfo) -> dict[str, Any]:
        owner = tag_of(flow_id)
        if len(self._waiting) >= self.max_waiting:
            raise LimitError(
                "too many signatures are being routed; retry shortly", code=Code.TOO_MANY_PENDING
            )
        if not await self.liveness.alive(owner):
            raise _owner_gone()
        request_id = secrets.token_hex(8)
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = reply
        try:
            message = {
                "type": "flow.request",
                "request": request_id,
                "reply_to": self.inbox,
                "id": flow_id,
                "sig": signature,
                "client": client.to_wire(),
            }
            try:
                await self._send(PREFIX + owner, message)
            except Exception as exc:
                if not self._sends_failing:
                    log.warning(
                        "cannot route to worker %s: %s (said once until routing works again)",
                        owner,
                        type(exc).__name__,
                    )
                self._sends_failing = True
                raise RoutingUnavailable(
                    "the challenge belongs to another worker and the channel layer is unreachable;"
                    " retry shortly"
                ) from exc
            if self._sends_failing:
                log.info("routing reaches the channel layer again")
                self._sends_failing = False
            deadline = sent = self.clock.monotonic()
            deadline += self.timeout
            while not reply.done():
                left = deadline - self.clock.monotonic()
                if left <= 0:
                    raise UpstreamError(
                        "the worker holding the challenge did not answer in time", code=Code.UPSTREAM_DEADLINE
                    )
                await self._settled(reply, min(self.check_every, left))
                if reply.done():
                    break
                if not await self.liveness.alive(owner):
                    raise _owner_gone()
                if self.clock.monotonic() - sent >= self.resend_after:  # lost on the way?
                    sent = self.clock.monotonic()
                    with contextlib.suppress(Exception):
                        await self._send(PREFIX + owner, message)
            return reply.result()
        finally:
            self._waiting.pop(request_id, None)

    async def _settled(self, reply: asyncio.Future[dict[str, Any]], delay: float) -> None:
        """Until ``reply`` is done or ``delay`` has passed (a callback and a timer, no task)."""
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done(_: object = None) -> None:
            if not wake.done():
                wake.set_result(None)

        reply.add_done_callback(done)
        timer = self.clock.call_later(delay, done)
        try:
            await wake
        finally:
            timer.cancel()
            reply.remove_done_callback(done)

    async def _send(self, channel: str, message: dict[str, Any]) -> None:
        """Send once more if the first try fails at once: after a Redis restart, the
        layer's pool hands out a dead connection first."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(self.send_timeout):
                await self.layer.send(channel, message)
            return
        except TimeoutError:
            raise
        except Exception as exc:
            log.debug("routing send failed (%s); once more", type(exc).__name__)
        left = self.send_timeout - (loop.time() - started)
        async with asyncio.timeout(max(left, 0.1)):
            await self.layer.send(channel, message)

    # -- the inbox -------------------------------------------------------------

    async def _read(self) -> None:
        backoff = 0.05
        while True:
            try:
                message = await self.layer.receive(self.inbox)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.healthy:
                    log.warning("inbox %s cannot read the channel layer: %s", self.inbox, type(exc).__name__)
                self.healthy = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if not self.healthy:
                log.info("inbox %s reads the channel layer again", self.inbox)
            self.healthy, backoff = True, 0.05
            self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind in ("flow.request", "flow.spend"):
            if self._handlers.full():
                log.warning("inbox %s overloaded; dropping a request", self.inbox)
                self.metrics.routing_failed("inbox_full")
                return  # its sender times out, or hears the owner is gone; a spend: the challenge expires
            self._handlers.spawn(
                self.owner.serve(message) if kind == "flow.request" else self.owner.spend(message)
            )
        elif kind == "flow.reply":
            waiting = self._waiting.get(str(message.get("request", "")))
            if waiting is not None and not waiting.done():
                waiting.set_result(message)


def _owner_gone() -> StateError:
    return StateError(
        "the challenge id is unknown, expired or already used (its worker is gone)",
        code=Code.UNKNOWN_CHALLENGE,
    )
