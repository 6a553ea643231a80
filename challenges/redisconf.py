"""Where Redis is: one URL, or a master that Redis Sentinel names. The channel layer, the
workers' heartbeats and the shared rate limits all reach it through this one description.

* ``REDIS_URL=redis://host:6379/0``: one server;
* ``REDIS_SENTINELS=host1:26379,host2:26379,host3:26379`` and
  ``REDIS_SENTINEL_MASTER=name``: ask the sentinels for the master, and ask them
  again when it goes away (a failover). ``REDIS_URL``, if set too, gives the
  database number and the password.

The channel layer is channels-redis's pub/sub layer: a routed signature and
its answer are one ``PUBLISH`` each, pushed to the owner's subscription
(the list-based layer took ten commands and a blocking pop per message, and
its reads queued behind one another). Nothing is stored in Redis: a message
published while its owner is away is lost, which the router's liveness and
deadline handle.

Pure module (no Django); ``tokensite/settings.py`` builds the layer's
configuration with it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

#: Seconds: longer than the channel layer's pub/sub poll (0.1 s) and than a heartbeat's
#: blocking command, so only a dead connection times out.
SOCKET_TIMEOUT = 10
#: A pool as large as this: redis-py's default of 100 ran dry under load.
MAX_CONNECTIONS = 1000


@dataclass(frozen=True)
class RedisTarget:
    url: str = ""
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""

    @property
    def configured(self) -> bool:
        return bool(self.url or self.sentinels)

    def layer_host(self) -> dict[str, Any]:
        """One ``hosts`` entry of the channels-redis layer's configuration."""
        options: dict[str, Any] = {"socket_timeout": SOCKET_TIMEOUT, "max_connections": MAX_CONNECTIONS}
        if not self.sentinels:
            return {"address": self.url, **options}
        return {
            "sentinels": list(self.sentinels),
            "master_name": self.master,
            **self._db_options(),
            **options,
        }

    def client(self) -> Any:
        """An asyncio redis-py client (the heartbeats, the rate limits): one retry on a dead
        connection, which a restarted Redis or a failed-over master leaves in the pool."""
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.asyncio.sentinel import Sentinel
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError

        options: dict[str, Any] = {
            "socket_timeout": 5,
            "socket_connect_timeout": 2,
            "max_connections": MAX_CONNECTIONS,
            "retry": Retry(NoBackoff(), 1),
            "retry_on_error": [ConnectionError],
        }
        if not self.sentinels:
            return redis.asyncio.Redis.from_url(self.url, **options)
        sentinel = Sentinel(list(self.sentinels), socket_timeout=2, socket_connect_timeout=2)  # type: ignore[no-untyped-call]
        return sentinel.master_for(self.master, **self._db_options(), **options)

    def _db_options(self) -> dict[str, Any]:
        if not self.url:
            return {}
        parts = urlsplit(self.url)
        options: dict[str, Any] = {}
        if parts.path.strip("/").isdigit():
            options["db"] = int(parts.path.strip("/"))
        if parts.password:
            options["password"] = parts.password
        return options


def parse_sentinels(text: str | list[str]) -> tuple[tuple[str, int], ...]:
    """``host:port,host:port`` (or a list of them); raises :class:`ValueError`."""
    entries = text if isinstance(text, list) else text.split(",")
    sentinels = []
    for entry in filter(None, (e.strip() for e in entries)):
        host, sep, port = entry.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"a sentinel is host:port, not {entry!r}")
        sentinels.append((host.strip("[]"), int(port)))
    return tuple(sentinels)


class QuietReconnects(logging.Filter):
    """channels-redis's pub/sub reader logs every failed read with a traceback, once a
    second while Redis is away. Expected during a restart or a failover: make each a
    warning line without the traceback, at most one per ``every`` seconds."""

    def __init__(self, every: float = 30.0) -> None:
        super().__init__()
        self.every = every
        self._last = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and "receive task" in record.getMessage():
            error = record.exc_info[1]
            now = time.monotonic()
            if now - self._last < self.every:
                return False
            self._last = now
            record.msg, record.args = (
                "the channel layer lost Redis (%s); reconnecting",
                (type(error).__name__,),
            )
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True
