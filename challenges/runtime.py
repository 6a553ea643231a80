"""The composition root: everything the token flow runs with, built once per process.

:class:`Runtime` builds, from one :class:`~challenges.config.RuntimeConfig`
(the settings, read once), the upstream, the metrics, the audit writer and its
refusal counts, the caps and the rate limits, the blocklist, the flow service, the
liveness registry, the router and the step pipeline, with everything
injected, and starts and stops them.

One runtime serves a process (one event loop). :mod:`challenges.lifecycle`
starts it when the server starts (the ASGI lifespan under uvicorn, the
reactor's start under daphne and ``manage.py runserver``) and drains and
stops it when the server stops; :func:`get` starts one on first use where
no server announced itself (Django's test clients, a shell).
"""

from __future__ import annotations

import asyncio
import logging
from functools import cached_property
from typing import Any

from . import metrics, selectors
from .audit import AuditWriter
from .clock import Clock, LoopClock
from .config import RuntimeConfig
from .flows import FlowService
from .gettoken import AUTHORITY, AuthorityConfig, StreamCap
from .hub import ApiKeyCheck, GetTokenService
from .identity import PrivateKey
from .keys import AuthorityKeys
from .limits import Limits
from .liveness import PROCESS_WORKERS, Liveness, LocalLiveness, RedisLiveness
from .outcomes import Outcomes
from .owner import new_tag
from .pipeline import Pipeline
from .ratelimit import LocalBuckets, Rate, RateLimiter, RedisBuckets, Refusal, refused, sign_ins_refused
from .refusals import Refusals
from .revocation import Blocklist
from .routing import Router
from .upstream import LocalUpstream, Upstream
from .workerstatus import StatusReporter

log = logging.getLogger(__name__)


class HubUnavailable(Exception):
    """GetToken over gRPC-Web cannot be served here (no authority key, unreadable API keys)."""


class Runtime:
    """Everything one process runs the token flow with, built from one config."""

    def __init__(self, config: RuntimeConfig, *, layer: Any, clock: Clock | None = None) -> None:
        self.config = config
        self.layer = layer
        self.clock = clock or LoopClock()
        self.tag = new_tag()
        self.redis = config.redis.client() if config.redis.configured else None
        self.upstream = self._upstream()
        self.metrics = metrics.Metrics(self.upstream.name)
        #: gRPC-Web ``GetToken``'s: the embedded authority mints, whatever the upstream.
        self.authority_metrics = metrics.Metrics(AUTHORITY)
        self.audit = AuditWriter(metrics=self.metrics)
        self.refusals = Refusals(audit=self.audit, clock=self.clock)
        self.blocklist = Blocklist(version=selectors.revocation_version, load=selectors.blocked_keys)
        self.limiter = self._limiter(config.rate)
        #: Sign-in attempts on the admin, per address (challenges.httpguard).
        self.login_limiter = self._limiter(config.login_rate, refusal=sign_ins_refused)
        #: The caps: pending challenges (the service's) and connections per address (the edges').
        self.limits = Limits(config.caps, on_pending=self.metrics.pending)
        self.service = FlowService(
            upstream=self.upstream,
            outcomes=Outcomes(
                audit=self.audit,
                refusals=self.refusals,
                clock=self.clock,
                worker=config.worker,
                upstream=self.upstream.name,
                metrics=self.metrics,
            ),
            limits=self.limits,
            clock=self.clock,
            timeout=config.challenge_timeout,
            worker=config.worker,
            tag=self.tag,
            blocked=self.blocklist,
        )
        self.router = Router(
            service=self.service,
            layer=layer,
            liveness=self._liveness(),
            clock=self.clock,
            timeout=config.challenge_timeout + 5,
            check_every=config.route_check_every,
            metrics=self.metrics,
        )
        self.pipeline = Pipeline(service=self.service, router=self.router, limiter=self.limiter)
        self.status = StatusReporter(
            audit=self.audit,
            clock=self.clock,
            tag=self.tag,
            worker=config.worker,
            numbers=lambda: (self.service.pending_count, self.service.limits.open_connections),
        )
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

    @cached_property
    def keys(self) -> AuthorityKeys:
        """Every key a token of ours may be signed with: the current one, the rotated-out
        ones, and a relayed authority's."""
        return AuthorityKeys.build(
            signer=self._optional_signer(),
            previous=self.config.previous_keys,
            upstream=self.config.upstream_public_key,
        )

    @property
    def hub(self) -> GetTokenService:
        """``GetToken`` for the gRPC-Web endpoint: the embedded authority's key, ``TOKEN_TTL``,
        ``TOKEN_AUDIENCE``, the API keys and one stream cap, as ``runauthority`` serves it.
        Raises :class:`HubUnavailable` when the authority key or the API keys cannot be read
        (a relay holding only ``UPSTREAM_PUBLIC_KEY`` mints nothing)."""
        built = self._hub
        if isinstance(built, HubUnavailable):
            raise built
        return built

    @cached_property
    def _hub(self) -> GetTokenService | HubUnavailable:
        """Built once, its failure too: every caller would otherwise rebuild it and log why."""
        try:
            return self._build_hub()
        except Exception as exc:  # no authority key in production, malformed API keys
            log.error("GetToken over gRPC-Web is not configured: %s", exc)
            return HubUnavailable(str(exc))

    def _build_hub(self) -> GetTokenService:
        config = self.config
        signer = self.authority_key  # first: a server that cannot mint needs no word on API keys
        keys = config.api_keys()
        if not keys:
            log.warning(
                "GetToken over gRPC-Web: no API keys are configured (AUTHORITY_API_KEYS): %s",
                "every caller is accepted (DEBUG)" if config.debug else "every call is refused",
            )
        return GetTokenService(
            authority=AuthorityConfig(
                signer=signer,
                ttl=config.token_ttl,
                audience=config.token_audience,
                challenge_deadline=config.authority_challenge_deadline,
                worker=config.worker,
            ),
            audit=self.audit,
            keys=ApiKeyCheck(keys, accept_all=not keys and config.debug),
            cap=StreamCap(config.authority_max_streams),
            blocked=self.blocklist,
            metrics=self.authority_metrics,
        )

    async def start(self) -> None:
        """Start routing (once; concurrent callers wait for the same start)."""
        if self._started is None:
            self.loop = asyncio.get_running_loop()
            self._started = self.loop.create_task(self._start())
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        await self.router.start()
        await self.blocklist.start()
        self.refusals.start()
        self.status.start()
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
        (each told to whoever waits, audited, its upstream stream cancelled), and every
        gRPC-Web ``GetToken`` call in progress likewise."""
        ended = await self.service.shutdown()
        built = self.__dict__.get("_hub")
        if isinstance(built, GetTokenService):  # built: gRPC-Web calls may be in progress
            ended += await built.drain()
        if ended:
            log.info("shutting down: ended %d pending challenges", ended)
        return ended

    async def stop(self) -> None:
        """Drain, stop routing, write the audit out, close the upstream, and take this
        process's gauges out of the metrics. Idempotent."""
        if self.stopped:
            return
        self.stopped = True
        await self.drain()
        await self.router.stop()
        await self.blocklist.stop()
        await self.refusals.stop()
        await self.status.stop()
        await self.audit.close()
        await self.upstream.close()
        if self.redis is not None:
            await self.redis.aclose()
        metrics.process_stopped()

    def _limiter(self, rate: Rate, *, refusal: Refusal = refused) -> RateLimiter:
        if self.redis is not None:
            grace = self.config.rate_redis_grace
            return RedisBuckets(rate, redis=self.redis, clock=self.clock, grace=grace, refusal=refusal)
        return LocalBuckets(rate, clock=self.clock, refusal=refusal)

    def _optional_signer(self) -> PrivateKey | None:
        if self.config.token_upstream == "local" or self.config.authority_private_key or self.config.debug:
            return self.authority_key
        return None

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

        from .rpc.channel import parse_target  # grpc only when relaying
        from .rpc.client import GrpcUpstream
        from .rpc.tls import load_ca

        try:
            target, secure = parse_target(spec)  # the system checks say so first
            roots = load_ca(self.config.token_upstream_ca) if secure else None
        except ValueError as exc:
            raise ImproperlyConfigured(str(exc)) from exc
        if self.config.token_upstream_ca and not secure:
            log.warning("TOKEN_UPSTREAM_CA is ignored: %s is plaintext (grpc://, not grpcs://)", spec)
        return GrpcUpstream(
            target=target,
            secure=secure,
            api_key=self.config.user_api_key,
            api_secret=self.config.user_api_secret,
            root_certificates=roots,
            on_status=metrics.upstream_status,
        )

    def _liveness(self) -> Liveness:
        if self.redis is None:
            return LocalLiveness(tag=self.tag, registry=PROCESS_WORKERS)
        return RedisLiveness(redis=self.redis, tag=self.tag)


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
