"""This process's inbox on the channel layer: how a signature reaches its challenge.

A challenge lives in the process that issued it (its local state, or its open
gRPC stream). Its id starts with that process's *tag*, and every process reads
one channel, ``tokenflow.<tag>``. A process that receives a signature for
another tag sends a ``flow.request`` to that inbox with its own inbox as
``reply_to``; the owner answers with ``flow.reply`` (the token or a coded
error) when the flow is finished. With Redis, workers keep heartbeats
(:class:`Liveness`), which tell a slow owner from a dead one; without them
(the in-memory layer, one process) the owner also sends a ``flow.ack`` at once.

This improves on one channel-layer group per challenge: no ``group_add`` /
``group_discard`` per flow (two Redis round trips each, and the stale members
a failed discard leaves), and no channel per connection: two messages per routed
signature. No sign of life within ``ack_timeout`` and no heartbeat means the
owner is gone (``unknown_challenge``); a layer that cannot be reached is
``routing_unavailable``. Waiting requests and running handlers are capped.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import ChallengeError, LimitError, StateError, UpstreamError

log = logging.getLogger(__name__)

TAG_LENGTH = 8
PREFIX = "tokenflow."

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def new_tag() -> str:
    return secrets.token_hex(TAG_LENGTH // 2)


def tag_of(challenge_id: str) -> str:
    return challenge_id[:TAG_LENGTH]


class RoutingUnavailable(UpstreamError):
    code = "routing_unavailable"


class Inbox:
    def __init__(
        self,
        *,
        layer: Any,
        tag: str,
        handler: Handler,
        ack_timeout: float = 2.0,
        max_waiting: int = 10_000,
        max_handlers: int = 2_000,
        liveness: Liveness | None = None,
    ) -> None:
        self.liveness = liveness
        self.layer = layer
        self.tag = tag
        self.name = PREFIX + tag
        self._handler = handler
        self.ack_timeout = ack_timeout
        self.max_waiting = max_waiting
        self.max_handlers = max_handlers
        self._waiting: dict[str, tuple[asyncio.Future[None], asyncio.Future[dict[str, Any]]]] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self._reader: asyncio.Task[None] | None = None
        self.healthy = True

    def start(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read(), name=f"inbox-{self.tag}")
        if self.liveness is not None:
            self.liveness.start()

    async def stop(self) -> None:
        tasks = [t for t in [self._reader, *self._handlers] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.liveness is not None:
            await self.liveness.stop()

    async def request(self, tag: str, message: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        """Send ``message`` to the owner ``tag`` and return its ``flow.reply``.

        Raises :class:`RoutingUnavailable` when the layer is unreachable,
        ``unknown_challenge`` when no owner acknowledges in time.
        """
        if len(self._waiting) >= self.max_waiting:
            raise LimitError("too many signatures are being routed; retry shortly", code="too_many_pending")
        self.start()
        request_id = secrets.token_hex(8)
        loop = asyncio.get_running_loop()
        ack: asyncio.Future[None] = loop.create_future()
        reply: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._waiting[request_id] = (ack, reply)
        try:
            try:
                await asyncio.wait_for(
                    self.layer.send(
                        PREFIX + tag,
                        {
                            **message,
                            "type": "flow.request",
                            "request": request_id,
                            "reply_to": self.name,
                            "want_ack": self.liveness is None,
                        },
                    ),
                    self.ack_timeout,
                )
            except Exception as exc:
                log.warning("cannot route to worker %s: %s", tag, type(exc).__name__)
                raise RoutingUnavailable(
                    "the challenge belongs to another worker and the channel layer is unreachable;"
                    " retry shortly"
                ) from exc
            deadline = loop.time() + timeout
            # With heartbeats the reply itself shows the owner is alive; without, an ack does.
            await self._await_owner(tag, reply if self.liveness else ack, deadline=deadline)
            return await asyncio.wait_for(reply, max(deadline - loop.time(), 0.001))
        finally:
            self._waiting.pop(request_id, None)

    async def _await_owner(self, tag: str, sign: asyncio.Future[Any], *, deadline: float) -> None:
        """Wait for a sign of life from the owner (its ack, or with heartbeats its reply).

        The owner is gone when no sign came within ``ack_timeout`` and (with a liveness
        registry) its heartbeat has lapsed too: a busy owner under load is waited for while
        it beats, a dead one is dropped within its TTL. Past ``deadline``: TimeoutError.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(sign), 0.5)
                return
            except TimeoutError:
                now = loop.time()
                if now > deadline:
                    raise
                if now - started < self.ack_timeout:
                    continue
                if self.liveness is None or not await self.liveness.alive(tag):
                    raise _owner_gone() from None

    async def _read(self) -> None:
        backoff = 0.05
        while True:
            try:
                message = await self.layer.receive(self.name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.healthy:
                    log.warning("inbox %s cannot read the channel layer: %s", self.name, type(exc).__name__)
                self.healthy = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if not self.healthy:
                log.info("inbox %s reads the channel layer again", self.name)
            self.healthy, backoff = True, 0.05
            self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind, request_id = message.get("type"), str(message.get("request", ""))
        if kind == "flow.request":
            if len(self._handlers) >= self.max_handlers:
                log.warning("inbox %s overloaded; dropping a request", self.name)
                return  # the sender sees no ack and reports it
            task = asyncio.create_task(self._serve(message))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
            return
        waiting = self._waiting.get(request_id)
        if waiting is None:
            return  # a late answer to a request that already gave up
        ack, reply = waiting
        if not ack.done():
            ack.set_result(None)
        if kind == "flow.reply" and not reply.done():
            reply.set_result(message)

    async def _serve(self, message: dict[str, Any]) -> None:
        reply_to, request_id = message.get("reply_to"), message.get("request")
        if not isinstance(reply_to, str) or not reply_to.startswith(PREFIX) or not request_id:
            return
        try:
            if message.get("want_ack"):
                await self.layer.send(reply_to, {"type": "flow.ack", "request": request_id})
            answer = await self._handler(message)
            await self.layer.send(reply_to, {**answer, "type": "flow.reply", "request": request_id})
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("inbox %s could not answer a routed request", self.name, exc_info=True)


def _owner_gone() -> StateError:
    return StateError(
        "the challenge id is unknown, expired or already used (its worker is gone)",
        code="unknown_challenge",
    )


class Liveness:
    """Which workers are alive: each refreshes ``tokenflow:alive:<tag>`` in Redis every
    ``every`` seconds with a ``ttl``; a worker killed outright drops out after ``ttl``,
    one stopped cleanly at once. Needed because under load an owner's ack can take
    longer than a fixed timeout, while a dead owner must be detected promptly."""

    def __init__(self, *, url: str, tag: str, ttl: float = 4.0, every: float = 1.0) -> None:
        import redis.asyncio

        # A pool as large as the layer's: redis-py's default of 100 ran dry under load
        # (FIELD-NOTES trap 2).
        self._redis = redis.asyncio.Redis.from_url(
            url, socket_timeout=5, socket_connect_timeout=2, max_connections=1000
        )
        self.tag, self.ttl, self.every = tag, ttl, every
        self._task: asyncio.Task[None] | None = None
        #: tag -> (checked at, lookup): one Redis call per tag and half second, however many wait.
        self._seen: dict[str, tuple[float, asyncio.Future[bool]]] = {}

    @staticmethod
    def key(tag: str) -> str:
        return f"tokenflow:alive:{tag}"

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._beat(), name=f"heartbeat-{self.tag}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self._redis.delete(self.key(self.tag))
        except Exception:
            log.debug("could not remove the heartbeat", exc_info=True)
        await self._redis.aclose()

    async def alive(self, tag: str) -> bool:
        loop = asyncio.get_running_loop()
        seen = self._seen.get(tag)
        if seen is None or loop.time() - seen[0] > 0.5:
            if len(self._seen) > 1000:
                self._seen.clear()
            seen = self._seen[tag] = (loop.time(), asyncio.ensure_future(self._exists(tag)))
        return await asyncio.shield(seen[1])

    async def _exists(self, tag: str) -> bool:
        try:
            return bool(await self._redis.exists(self.key(tag)))
        except Exception as exc:
            log.warning("cannot read worker heartbeats: %s", type(exc).__name__)
            raise RoutingUnavailable(
                "the challenge belongs to another worker and the channel layer is unreachable; retry shortly"
            ) from exc

    async def _beat(self) -> None:
        while True:
            try:
                await self._redis.set(self.key(self.tag), b"1", px=int(self.ttl * 1000))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.debug("heartbeat failed", exc_info=True)
            await asyncio.sleep(self.every)


def error_reply(error: ChallengeError) -> dict[str, Any]:
    return {"ok": False, "code": error.code, "message": error.message}


def raise_reply(reply: dict[str, Any]) -> str:
    """The token of a ``flow.reply``, or the owner's error re-raised (already audited)."""
    if reply.get("ok"):
        return str(reply["token"])
    error = ChallengeError(
        str(reply.get("message", "the owning worker refused")), code=str(reply.get("code"))
    )
    error.audited = True
    raise error
