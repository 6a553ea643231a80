"""Request rates per address scope: token buckets, in this process or shared through Redis.

Each address scope (:func:`challenges.limits.address_scope`) has a bucket of
``burst`` tokens refilled at ``per_minute``; a request takes one, or is
refused with ``rate_limited`` and the seconds until one is there
(``retry_after``). What is charged: opening a WebSocket, each ``token`` frame
on it, and each HTTP request. A second, slower limiter counts the admin's
sign-in attempts; it refuses with ``too_many_sign_ins`` (its ``refusal``).

* :class:`LocalBuckets` (no ``REDIS_URL``): the buckets of this process, at
  most ``max_scopes`` of them (the least recently used full ones go first).
* :class:`RedisBuckets`: one Redis hash per scope, updated by one Lua script
  call (one command per request) on Redis's own clock, so every worker
  shares each address's rate. When Redis cannot be reached, it counts in
  this process for ``grace`` seconds (a failover is shorter than that), then
  refuses new requests with ``limits_unavailable``: it fails closed.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .clock import Clock
from .errors import Code, RateLimited, RefusedError, SignInLimited

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Rate:
    #: Tokens added per minute; 0 turns the rate limit off.
    per_minute: float = 300
    burst: int = 60

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0 and self.burst > 0


class RateLimiter(Protocol):
    async def take(self, scope: str) -> None:
        """Take one request's token; raises ``rate_limited`` (or ``limits_unavailable``)."""

    async def close(self) -> None: ...


def refused(wait: float) -> RateLimited:
    """The request rate's refusal: ``rate_limited``."""
    seconds = max(1, math.ceil(wait))
    return RateLimited(f"too many requests from this address; retry in {seconds} s", retry_after=seconds)


def sign_ins_refused(wait: float) -> RateLimited:
    """The admin's sign-in attempts' refusal: ``too_many_sign_ins``."""
    seconds = max(1, math.ceil(wait))
    message = f"too many sign-in attempts from this address; retry in {seconds} s"
    return SignInLimited(message, retry_after=seconds)


#: What a limiter raises when a bucket is empty, from the seconds until it is not.
Refusal = Callable[[float], RateLimited]


class LocalBuckets:
    def __init__(
        self, rate: Rate, *, clock: Clock, max_scopes: int = 100_000, refusal: Refusal = refused
    ) -> None:
        self.refusal = refusal
        self.rate = rate
        self.clock = clock
        self.max_scopes = max_scopes
        #: scope -> (tokens, when they were counted)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    async def take(self, scope: str) -> None:
        wait = self.wait(scope)
        if wait:
            raise self.refusal(wait)

    def wait(self, scope: str) -> float:
        """Take a token if there is one (0.0), else the seconds until there is one."""
        if not self.rate.enabled:
            return 0.0
        now, per_second = self.clock.monotonic(), self.rate.per_minute / 60
        tokens, then = self._buckets.pop(scope, (float(self.rate.burst), now))
        tokens = min(float(self.rate.burst), tokens + (now - then) * per_second)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / per_second
        self._buckets[scope] = (tokens - 1 if not wait else tokens, now)
        while len(self._buckets) > self.max_scopes:
            self._buckets.popitem(last=False)
        return wait

    async def close(self) -> None:
        self._buckets.clear()


#: KEYS[1]: the bucket, a string "tokens:ms"; ARGV: now (ms, the worker's wall clock), tokens
#: per ms, burst. Returns the wait in ms (0: taken). Two commands inside (GET, SET): a charge
#: is three in Redis's counts, which matters on a path that also routes an answer. A worker
#: whose clock runs behind another's sees no time pass (never negative), so clock skew
#: between workers gives at most that skew's worth of tokens, not a second refill.
_SCRIPT = """
local now, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local n, last = burst, now
local kept = redis.call('GET', KEYS[1])
if kept then
  local sep = string.find(kept, ':', 1, true)
  n, last = tonumber(string.sub(kept, 1, sep - 1)), tonumber(string.sub(kept, sep + 1))
end
n = math.min(burst, n + math.max(0, now - last) * rate)
local wait = 0
if n >= 1 then n = n - 1 else wait = math.ceil((1 - n) / rate) end
local state = tostring(n) .. ':' .. tostring(math.max(now, last))
redis.call('SET', KEYS[1], state, 'PX', math.ceil(burst / rate) + 1000)
return wait
"""


class RedisBuckets:
    PREFIX = "tokenflow:rate:"

    def __init__(
        self, rate: Rate, *, redis: Any, clock: Clock, grace: float = 30.0, refusal: Refusal = refused
    ) -> None:
        self.refusal = refusal
        self.rate = rate
        self.clock = clock
        self.grace = grace
        self._redis = redis
        self._script = redis.register_script(_SCRIPT)
        self._local = LocalBuckets(rate, clock=clock, refusal=refusal)
        self._down_since: float | None = None

    async def take(self, scope: str) -> None:
        if not self.rate.enabled:
            return
        try:
            wait_ms = await self._script(
                keys=[self.PREFIX + scope],
                args=[
                    int(self.clock.now().timestamp() * 1000),
                    self.rate.per_minute / 60_000,
                    self.rate.burst,
                ],
            )
        except Exception as exc:
            await self._fallback(scope, exc)
            return
        if self._down_since is not None:
            log.info("rate limits are shared through Redis again")
            self._down_since = None
        if wait_ms:
            raise self.refusal(int(wait_ms) / 1000)

    async def _fallback(self, scope: str, exc: Exception) -> None:
        now = self.clock.monotonic()
        if self._down_since is None:
            log.warning("rate limits cannot reach Redis (%s): counting in this process", type(exc).__name__)
            self._down_since = now
        if now - self._down_since > self.grace:
            raise RefusedError(
                "the shared rate limits cannot be reached; retry shortly", code=Code.LIMITS_UNAVAILABLE
            ) from exc
        await self._local.take(scope)

    async def close(self) -> None:
        await self._redis.aclose()
