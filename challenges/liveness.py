"""Which workers are alive: how the router tells a slow owner from a dead one.

One interface, two implementations:

* :class:`LocalLiveness`: the workers of this process (the in-memory channel
  layer reaches no other process), registered while they run;
* :class:`RedisLiveness`: every worker refreshes ``tokenflow:alive:<tag>``
  with a TTL; one killed outright drops out after the TTL, one stopped
  cleanly at once. Under load an owner's answer can take longer than any
  fixed timeout, while a dead owner must be noticed promptly: the heartbeat
  is what separates the two. A Redis that restarted has lost every
  heartbeat: the first worker to beat again marks that (``tokenflow:epoch``
  is gone; it sets it, and ``tokenflow:settling`` for one and a half beat
  periods), and while the mark lasts a missing heartbeat means "not yet",
  not "dead": the router waits for the next beat before it decides.
  A failover keeps the keys (the replica has them) but not the beats: a
  worker cut off from Redis for longer than the TTL finds the heartbeats it
  wrote before the failover expired on the new master. So for a TTL after
  this process last failed to reach Redis, a missing heartbeat also means
  "not yet", and the router waits for the next beat.

:meth:`Liveness.alive` raises :class:`~challenges.errors.RoutingUnavailable`
when it cannot tell (Redis is unreachable).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from .errors import RoutingUnavailable

log = logging.getLogger(__name__)


class Liveness(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def alive(self, tag: str) -> bool: ...


class LocalLiveness:
    """The workers of one process; ``registry`` is shared by the ones that see each other."""

    def __init__(self, *, tag: str, registry: set[str]) -> None:
        self.tag = tag
        self.registry = registry

    async def start(self) -> None:
        self.registry.add(self.tag)

    async def stop(self) -> None:
        self.registry.discard(self.tag)

    async def alive(self, tag: str) -> bool:
        return tag in self.registry


#: The workers of this process, for :class:`LocalLiveness` with the in-memory layer.
PROCESS_WORKERS: set[str] = set()
EPOCH = "tokenflow:epoch"
SETTLING = "tokenflow:settling"


class RedisLiveness:
    """Heartbeats in Redis: ``SET tokenflow:alive:<tag> PX ttl`` every ``every`` seconds."""

    def __init__(
        self, *, redis: Any, tag: str, ttl: float = 4.0, every: float = 1.0, cache: float = 0.5
    ) -> None:
        self._redis = redis
        self.tag, self.ttl, self.every, self.cache = tag, ttl, every, cache
        self._task: asyncio.Task[None] | None = None
        #: tag -> (checked at, lookup): one Redis call per tag and ``cache`` seconds, however many ask.
        self._seen: dict[str, tuple[float, asyncio.Future[bool]]] = {}
        #: Loop time this process last failed to reach Redis (a beat or a lookup).
        self._lost_at: float | None = None
        #: False from the first failure to the next success: one warning per outage.
        self._reachable = True

    @staticmethod
    def key(tag: str) -> str:
        return f"tokenflow:alive:{tag}"

    async def start(self) -> None:
        if self._task is None or self._task.done():
            await self._beat_once()
            self._task = asyncio.create_task(self._beat(), name=f"heartbeat-{self.tag}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await self._redis.delete(self.key(self.tag))
        except Exception:
            log.debug("could not remove the heartbeat", exc_info=True)

    async def alive(self, tag: str) -> bool:
        if tag == self.tag:
            return True
        loop = asyncio.get_running_loop()
        seen = self._seen.get(tag)
        if seen is None or loop.time() - seen[0] > self.cache:
            if len(self._seen) > 1000:
                self._seen.clear()
            seen = self._seen[tag] = (loop.time(), asyncio.ensure_future(self._lookup(tag)))
        return await asyncio.shield(seen[1])

    async def _lookup(self, tag: str) -> bool:
        try:
            for _ in range(3):
                owner, epoch, settling = await self._redis.mget(self.key(tag), EPOCH, SETTLING)
                self._reached()
                if owner is not None:
                    return True
                if epoch is not None and settling is None and not self._lapsed():
                    return False
                # Redis lost its heartbeats (a restart), or they lapsed while it was out of
                # reach (a failover): wait for every worker's next beat.
                await asyncio.sleep(self.every * 1.5)
            return False
        except Exception as exc:
            self._seen.pop(tag, None)  # a failure is not remembered: the next ask tries again
            self._lost(exc, "cannot read worker heartbeats")
            raise RoutingUnavailable(
                "the challenge belongs to another worker and the channel layer is unreachable; retry shortly"
            ) from exc

    def _lapsed(self) -> bool:
        """Whether heartbeats may have lapsed unseen: this process could not reach Redis
        within the last TTL and beat period (every worker beats again within a period of
        reaching Redis again)."""
        if self._lost_at is None:
            return False
        return asyncio.get_running_loop().time() - self._lost_at < self.ttl + self.every

    def _lost(self, exc: Exception, what: str) -> None:
        self._lost_at = asyncio.get_running_loop().time()
        if self._reachable:
            log.warning("%s: %s (said once until Redis is back)", what, type(exc).__name__)
        else:
            log.debug("%s: %s", what, type(exc).__name__)
        self._reachable = False

    def _reached(self) -> None:
        if not self._reachable:
            log.info("worker heartbeats reach Redis again")
        self._reachable = True

    async def _beat_once(self) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(self.key(self.tag), b"1", px=int(self.ttl * 1000))
                pipe.set(EPOCH, b"1", nx=True)
                _, fresh = await pipe.execute()
            if fresh:  # Redis had no heartbeats at all: give every worker a beat to come back
                await self._redis.set(SETTLING, b"1", px=int(self.every * 1500))
        except Exception as exc:
            self._lost(exc, "heartbeat failed")
        else:
            self._reached()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            await self._beat_once()
