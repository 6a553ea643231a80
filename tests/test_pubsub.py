"""The channel layer of settings.py (challenges.pubsub) against a real redis-server that is
away when the first subscription is made: the subscription is made again once it is back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from challenges.pubsub import PubSubChannelLayer
from tests import servers

pytestmark = [pytest.mark.server, pytest.mark.once]


async def test_an_inbox_whose_subscription_failed_subscribes_again_once_redis_is_back(tmp_path: Path) -> None:
    """A worker that starts while Redis is out of reach (restarted during a failover): its
    inbox's first SUBSCRIBE fails. channels-redis kept the channel as if subscribed, and the
    inbox never received anything; the layer of settings.py subscribes again."""
    with servers.redis_server(tmp_path) as server:
        server.stop()
        layer = PubSubChannelLayer(hosts=[{"address": server.url, "socket_connect_timeout": 2}])
        with pytest.raises(redis.ConnectionError):
            await layer.receive("tokenflow.deadbeef")  # the router's first read of its inbox
        with pytest.raises(redis.ConnectionError):
            await layer.new_channel("health.")  # a health probe's channel
        server.start()
        inbox = asyncio.ensure_future(layer.receive("tokenflow.deadbeef"))
        try:
            deadline = time.monotonic() + 5
            while not inbox.done() and time.monotonic() < deadline:  # sent until subscribed
                await layer.send("tokenflow.deadbeef", {"type": "flow.request"})
                await asyncio.wait({inbox}, timeout=0.2)
            assert inbox.done(), "the inbox never received a message sent after Redis came back"
            assert inbox.result() == {"type": "flow.request"}
            # The health probe's failed channel left nothing behind.
            assert list(layer._get_layer().channels) == ["tokenflow.deadbeef"]
        finally:
            inbox.cancel()
            await asyncio.gather(inbox, return_exceptions=True)
            await layer.flush()


async def test_concurrent_sends_travel_in_few_pipelines_and_each_arrives_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 routed messages sent at once: channels-redis alone sent them one PUBLISH and one
    round trip at a time; the layer of settings.py gathers them into pipelines (at most
    BATCH commands each). Every message arrives, once."""
    from redis.asyncio.client import Pipeline

    from challenges import pubsub

    pipelines: list[int] = []
    execute = Pipeline.execute

    async def counted(self: Pipeline, *args: object, **kwargs: object) -> object:
        pipelines.append(len(self.command_stack))
        return await execute(self, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "execute", counted)
    with servers.redis_server(tmp_path) as server:
        layer = PubSubChannelLayer(hosts=[{"address": server.url}])
        inbox = "tokenflow.cafef00d"
        async with _reading(layer, inbox) as received:
            received.clear()
            pipelines.clear()
            await asyncio.wait_for(
                asyncio.gather(*(layer.send(inbox, {"type": "flow.request", "n": n}) for n in range(200))), 10
            )
            deadline = time.monotonic() + 5
            while len(received) < 200 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert sorted(received) == list(range(200))
            assert sum(pipelines) == 200
            assert max(pipelines) <= pubsub.BATCH
            assert len(pipelines) <= 3, pipelines  # 1, then the 199 gathered while it was out
            stats = redis.Redis(port=server.port).info("commandstats")
            assert stats["cmdstat_publish"]["calls"] >= 200


async def test_a_send_while_redis_is_away_raises_and_the_next_one_after_it_is_back_arrives(
    tmp_path: Path,
) -> None:
    """Each sender hears its own pipeline's failure (the router answers routing_unavailable),
    and nothing is left queued behind it."""
    with servers.redis_server(tmp_path) as server:
        layer = PubSubChannelLayer(hosts=[{"address": server.url, "socket_connect_timeout": 2}])
        inbox = "tokenflow.0badc0de"
        async with _reading(layer, inbox) as received:
            server.stop()
            results = await asyncio.wait_for(
                asyncio.gather(
                    *(layer.send(inbox, {"type": "flow.request", "n": n}) for n in range(5)),
                    return_exceptions=True,
                ),
                10,
            )
            assert all(isinstance(result, redis.ConnectionError) for result in results), results
            assert not layer._get_layer()._shards[0]._batch
            server.start()
            received.clear()
            deadline = time.monotonic() + 10
            while 7 not in received and time.monotonic() < deadline:  # the reader resubscribes
                await asyncio.wait_for(layer.send(inbox, {"type": "flow.request", "n": 7}), 5)
                await asyncio.sleep(0.1)
            assert 7 in received


@contextlib.asynccontextmanager
async def _reading(layer: PubSubChannelLayer, inbox: str) -> AsyncIterator[list[int]]:
    """The ``n`` of each message ``inbox`` receives, in a list, once it is subscribed (empty
    then); the reader stops and the layer is flushed on the way out."""
    received: list[int] = []

    async def read() -> None:
        while True:
            received.append((await layer.receive(inbox))["n"])

    reader = asyncio.ensure_future(read())
    try:
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            await layer.send(inbox, {"type": "flow.request", "n": -1})
            await asyncio.sleep(0.05)
        assert received, "the inbox never subscribed"
        received.clear()
        yield received
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await layer.flush()
