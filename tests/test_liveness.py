"""RedisLiveness against a Redis that goes away and comes back (a failover), in memory.

After a failover the heartbeat keys written before it may have expired on the new master
while every worker was cut off: for a TTL after this process last failed to reach Redis,
a missing heartbeat means "not yet", not "dead"."""

from __future__ import annotations

import asyncio
import logging

import pytest

from challenges.errors import RoutingUnavailable
from challenges.liveness import EPOCH, RedisLiveness


class FakeRedis:
    """What RedisLiveness reads; ``down`` makes each call raise as a lost Redis does."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("Redis is out of reach")

    async def mget(self, *keys: str) -> list[bytes | None]:
        self._check()
        return [self.data.get(key) for key in keys]


def liveness(redis: FakeRedis) -> RedisLiveness:
    return RedisLiveness(redis=redis, tag="bbbbbbbb", ttl=0.4, every=0.1, cache=0.0)


async def test_a_missing_heartbeat_is_dead_when_redis_never_went_away() -> None:
    redis = FakeRedis()
    redis.data[EPOCH] = b"1"
    started = asyncio.get_running_loop().time()
    assert await liveness(redis).alive("aaaaaaaa") is False
    assert asyncio.get_running_loop().time() - started < 0.05


async def test_after_a_failover_a_lapsed_heartbeat_is_waited_for(caplog: pytest.LogCaptureFixture) -> None:
    redis = FakeRedis()
    redis.data[EPOCH] = b"1"  # replicated to the new master; the heartbeats expired there
    checker = liveness(redis)
    redis.down = True
    with caplog.at_level(logging.DEBUG, logger="challenges.liveness"):
        for _ in range(5):
            with pytest.raises(RoutingUnavailable):
                await checker.alive("aaaaaaaa")
        redis.down = False

        async def owner_beats_again() -> None:
            await asyncio.sleep(0.1)
            redis.data[RedisLiveness.key("aaaaaaaa")] = b"1"

        beat = asyncio.ensure_future(owner_beats_again())
        assert await checker.alive("aaaaaaaa") is True  # not "dead": it beat again
        await beat
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings  # one warning for the outage, not one per request
    assert any("reach Redis again" in r.getMessage() for r in caplog.records)
    # Once a TTL and a beat have passed, a missing heartbeat is a dead worker again, at once.
    await asyncio.sleep(0.55)
    started = asyncio.get_running_loop().time()
    assert await checker.alive("cccccccc") is False
    assert asyncio.get_running_loop().time() - started < 0.05


async def test_a_worker_that_died_during_the_failover_is_dead_after_a_few_beats() -> None:
    redis = FakeRedis()
    redis.data[EPOCH] = b"1"
    checker = liveness(redis)
    redis.down = True
    with pytest.raises(RoutingUnavailable):
        await checker.alive("aaaaaaaa")
    redis.down = False
    started = asyncio.get_running_loop().time()
    assert await checker.alive("aaaaaaaa") is False  # it never beat again
    assert asyncio.get_running_loop().time() - started < 3 * 0.15 + 0.1
