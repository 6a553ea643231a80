"""The channel layer of settings.py (challenges.pubsub) against a real redis-server that is
away when the first subscription is made: the subscription is made again once it is back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis

from challenges.pubsub import PubSubChannelLayer
from tests import servers

pytestmark = pytest.mark.server


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
