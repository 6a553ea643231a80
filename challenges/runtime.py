"""The composition root: settings are read here, once, and everything is built from them.

:class:`RuntimeConfig` is every setting the flow needs, read from
``django.conf.settings`` by :meth:`RuntimeConfig.from_settings`;
:class:`Runtime` builds the upstream, the audit writer, the limits, the flow
service, the liveness registry, the router and the step pipeline from it,
with everything injected, and starts and stops them.

One runtime serves a process (one event loop). :mod:`challenges.lifecycle`
starts it when the server starts (the ASGI lifespan under uvicorn, the
reactor's start under daphne and ``manage.py runserver``) and drains and
stops it when the server stops; :func:`get` starts one on first use where
no server announced itself (Django's test clients, a shell).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .clients import ClientPolicy, daphne_forwarded_header
from .clock import Clock, LoopClock
from .flows import FlowService
from .http import DJANGO_UPLOAD_LIMIT, BodyLimits
from .identity import PrivateKey
from .keys import load_authority_key
from .limits import Caps, Limits
from .liveness import PROCESS_WORKERS, Liveness, LocalLiveness, RedisLiveness
from .pipeline import Pipeline
from .routing import Router, new_tag
from .services import AuditWriter
from .upstream import LocalUpstream, Upstream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeConfig:
    """What the token flow is configured with (the settings of the README's table)."""

    debug: bool = True
    worker: str = ""
    token_upstream: str = "local"
    authority_private_key: str = field(default="", repr=False)
    dev_key_file: Path = Path("var/dev-authority.key")
    token_ttl: float = 86400
    token_audience: str = ""
    challenge_timeout: float = 60.0
    user_api_key: str = ""
    user_api_secret: str = field(default="", repr=False)
    redis_url: str = ""
    caps: Caps = field(default_factory=Caps)
    clients: ClientPolicy = field(default_factory=ClientPolicy)
    max_errors_per_connection: int = 20
    relay_resume_grace: float = 5.0
    route_check_every: float = 1.0
    #: ``clients.ip_header`` was not configured but implied by daphne's ``--proxy-headers``.
    implied_ip_header: bool = False
    #: Request bodies: bytes by path, and seconds to arrive (challenges.httpguard).
    http: BodyLimits = field(default_factory=BodyLimits)

    def load_authority_key(self) -> PrivateKey:
        """The authority's signing key (:mod:`challenges.keys`)."""
        return load_authority_key(
            configured=self.authority_private_key, debug=self.debug, dev_key_file=self.dev_key_file
        )

    @classmethod
    def from_settings(cls) -> RuntimeConfig:
        from django.conf import settings

        # daphne --proxy-headers trusts the leftmost entry, which the client writes: read the
        # one the nearest proxy appended instead, as CLIENT_IP_HEADER would (a warning says so).
        implied = "" if settings.CLIENT_IP_HEADER else daphne_forwarded_header(sys.argv)
        ssl_header, ssl_value = settings.SECURE_PROXY_SSL_HEADER or ("", "https")
        return cls(
            debug=settings.DEBUG,
            worker=settings.WORKER_ID,
            token_upstream=settings.TOKEN_UPSTREAM,
            authority_private_key=settings.AUTHORITY_PRIVATE_KEY,
            dev_key_file=settings.AUTHORITY_KEY_FILE,
            token_ttl=settings.TOKEN_TTL,
            token_audience=settings.TOKEN_AUDIENCE,
            challenge_timeout=settings.CHALLENGE_TIMEOUT,
            user_api_key=settings.USER_API_KEY,
            user_api_secret=settings.USER_API_SECRET,
            redis_url=settings.REDIS_URL,
            caps=Caps(
                pending_per_key=settings.MAX_PENDING_PER_KEY,
                pending_per_ip=settings.MAX_PENDING_PER_IP,
                pending_total=settings.MAX_PENDING_PER_PROCESS,
                connections_per_ip=settings.MAX_CONNECTIONS_PER_IP,
            ),
            clients=ClientPolicy(
                allowed_hosts=tuple(settings.ALLOWED_HOSTS),
                allowed_origins=tuple(settings.ALLOWED_ORIGINS),
                audience=settings.TOKEN_AUDIENCE,
                ip_header=settings.CLIENT_IP_HEADER or implied,
                trusted_proxies=settings.TRUSTED_PROXIES,
                ssl_header=ssl_header.removeprefix("HTTP_").replace("_", "-").lower(),
                ssl_value=ssl_value,
            ),
            max_errors_per_connection=settings.MAX_ERRORS_PER_CONNECTION,
            relay_resume_grace=settings.RELAY_RESUME_GRACE,
            route_check_every=settings.ROUTE_LIVENESS_CHECK,
            implied_ip_header=bool(implied),
            http=BodyLimits(
                other=settings.DATA_UPLOAD_MAX_MEMORY_SIZE or DJANGO_UPLOAD_LIMIT,
                timeout=settings.HTTP_BODY_TIMEOUT,
            ),
        )


class Runtime:
    """Everything one process runs the token flow with, built from one config."""

    def __init__(self, config: RuntimeConfig, *, layer: Any, clock: Clock | None = None) -> None:
        self.config = config
        self.layer = layer
        self.clock = clock or LoopClock()
        self.tag = new_tag()
        self.upstream = self._upstream()
        self.audit = AuditWriter()
        self.service = FlowService(
            upstream=self.upstream,
            audit=self.audit,
            limits=Limits(config.caps),
            clock=self.clock,
            timeout=config.challenge_timeout,
            worker=config.worker,
            tag=self.tag,
        )
        self.router = Router(
            service=self.service,
            layer=layer,
            liveness=self._liveness(),
            clock=self.clock,
            timeout=config.challenge_timeout + 5,
            check_every=config.route_check_every,
        )
        self.pipeline = Pipeline(service=self.service, router=self.router)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopped = False
        self._started: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls) -> Runtime:
        from channels.layers import get_channel_layer

        return cls(RuntimeConfig.from_settings(), layer=get_channel_layer())

    @cached_property
    def authority_key(self) -> PrivateKey:
        """The signing key (the ``local`` upstream's, and the one tokens are verified against)."""
        return self.config.load_authority_key()

    async def start(self) -> None:
        """Start routing (once; concurrent callers wait for the same start)."""
        if self._started is None:
            self.loop = asyncio.get_running_loop()
            self._started = self.loop.create_task(self._start())
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        await self.router.start()
        if self.config.implied_ip_header:
            header = self.config.clients.ip_header
            log.warning(
                "daphne runs with --proxy-headers, which takes the leftmost %s entry (the client"
                " writes it): the client address is the entry your proxy appended instead;"
                " set CLIENT_IP_HEADER=%s (and TRUSTED_PROXIES) to say so",
                header,
                header,
            )
        log.info(
            "worker %s (tag %s) serving with upstream %s", self.config.worker, self.tag, self.upstream.name
        )

    async def drain(self) -> int:
        """Stop accepting flows and end every pending one with ``server_shutdown``
        (each told to whoever waits, audited, its upstream stream cancelled)."""
        ended = await self.service.shutdown()
        if ended:
            log.info("shutting down: ended %d pending challenges", ended)
        return ended

    async def stop(self) -> None:
        """Drain, stop routing, write the audit queue out and close the upstream. Idempotent."""
        if self.stopped:
            return
        self.stopped = True
        await self.drain()
        await self.router.stop()
        await self.audit.close()
        await self.upstream.close()

    def _upstream(self) -> Upstream:
        spec = self.config.token_upstream
        if spec == "local":
            return LocalUpstream(
                signer=self.authority_key,
                ttl=self.config.token_ttl,
                clock=self.clock,
                token_audience=self.config.token_audience,
            )
        from django.core.exceptions import ImproperlyConfigured

        from .rpc.client import GrpcUpstream, parse_target  # grpc only when relaying

        try:
            target, secure = parse_target(spec)  # the system checks say so first
        except ValueError as exc:
            raise ImproperlyConfigured(str(exc)) from exc
        return GrpcUpstream(
            target=target,
            secure=secure,
            api_key=self.config.user_api_key,
            api_secret=self.config.user_api_secret,
        )

    def _liveness(self) -> Liveness:
        if not self.config.redis_url:
            return LocalLiveness(tag=self.tag, registry=PROCESS_WORKERS)
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError

        # A pool as large as the layer's: redis-py's default of 100 ran dry under load. One
        # retry: after a Redis restart, the pool's first connection is a dead one.
        client = redis.asyncio.Redis.from_url(
            self.config.redis_url,
            socket_timeout=5,
            socket_connect_timeout=2,
            max_connections=1000,
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[ConnectionError],
        )
        return RedisLiveness(redis=client, tag=self.tag)


_current: Runtime | None = None


def current() -> Runtime | None:
    """The runtime started in this process, if any."""
    return _current


async def get() -> Runtime:
    """This process's runtime, started (on first use where no server started it)."""
    global _current
    runtime = _current
    if runtime is None or runtime.stopped or runtime.loop is not asyncio.get_running_loop():
        runtime = _current = Runtime.from_settings()
    await runtime.start()
    return runtime


async def stop() -> None:
    """Stop this process's runtime (the server is stopping)."""
    if _current is not None and _current.loop is asyncio.get_running_loop():
        await _current.stop()
