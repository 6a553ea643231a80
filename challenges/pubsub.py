"""channels-redis's pub/sub channel layer, with a failed subscription leaving nothing behind.

channels-redis 4.3 records a channel's local queue before it sends ``SUBSCRIBE``.
When the ``SUBSCRIBE`` fails (Redis restarting, a failover in progress) the queue
stays, and every later ``receive`` on that channel waits on it without subscribing
again: nothing ever arrives. The router reads its inbox with ``receive`` from the
worker's start, so a worker that started while Redis was out of reach never got a
routed signature, even once Redis was back (and its health probe, a new channel
each time, said ok). Here a subscription that fails, or is cancelled, is forgotten,
so the next ``receive`` subscribes again.

Everything else is channels-redis's: the layer's own reconnects (the subscriber
connection asks the sentinels for the master again and subscribes again after a
failover) and its configuration.
"""

from __future__ import annotations

import asyncio
from typing import Any

from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer
from channels_redis.utils import _wrap_close


class _LoopLayer(RedisPubSubLoopLayer):  # type: ignore[misc]
    async def _subscribe_to_channel(self, channel: str) -> None:
        try:
            await super()._subscribe_to_channel(channel)
        except BaseException:
            self.channels.pop(channel, None)
            raise


class PubSubChannelLayer(RedisPubSubChannelLayer):  # type: ignore[misc]
    """``CHANNEL_LAYERS`` backend ``challenges.pubsub.PubSubChannelLayer``."""

    def _get_layer(self) -> Any:
        loop = asyncio.get_running_loop()
        layer = self._layers.get(loop)
        if layer is None:
            layer = self._layers[loop] = _LoopLayer(*self._args, **self._kwargs, channel_layer=self)
            _wrap_close(self, loop)
        return layer
