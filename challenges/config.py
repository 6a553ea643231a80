"""Every setting the token flow runs with, read from ``django.conf.settings`` in one place.

:meth:`RuntimeConfig.from_settings` is the only reader below the edges; the
composition root (:mod:`challenges.runtime`) builds everything from it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .access import MetricsAccess
from .apikeys import configured_api_keys
from .clients import ClientInfo, ClientPolicy, daphne_forwarded_header
from .http import DJANGO_UPLOAD_LIMIT, BodyLimits, HttpsPolicy
from .identity import PrivateKey
from .keys import load_authority_key
from .limits import Caps
from .ratelimit import Rate
from .redisconf import RedisTarget


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
    #: A PEM bundle the grpcs relay trusts (empty: the system's roots).
    token_upstream_ca: str = ""
    redis: RedisTarget = field(default_factory=RedisTarget)
    caps: Caps = field(default_factory=Caps)
    clients: ClientPolicy = field(default_factory=ClientPolicy)
    max_errors_per_connection: int = 20
    relay_resume_grace: float = 5.0
    route_check_every: float = 1.0
    #: ``clients.ip_header`` was not configured but implied by daphne's ``--proxy-headers``.
    implied_ip_header: bool = False
    #: Request bodies: bytes by path, and seconds to arrive (challenges.httpguard).
    http: BodyLimits = field(default_factory=BodyLimits)
    #: The https redirect and HSTS of what is answered outside Django (the two-step).
    https: HttpsPolicy = field(default_factory=HttpsPolicy)
    rate: Rate = field(default_factory=Rate)
    #: Sign-in attempts on the admin, per address (challenges.httpguard).
    login_rate: Rate = field(default_factory=lambda: Rate(per_minute=5, burst=10))
    rate_redis_grace: float = 30.0
    #: The bearer token introspection callers present (empty: introspection refuses everyone).
    introspection_token: str = field(default="", repr=False)
    #: Public key strings of rotated-out authority keys, still verifiable until their tokens expire.
    previous_keys: tuple[str, ...] = ()
    #: With a grpc upstream: the public key string of the authority that signs its tokens.
    upstream_public_key: str = ""
    #: ``GetToken`` served here (gRPC-Web) and by ``runauthority``: the accepted API keys
    #: (``key:secret,...``), the seconds a challenge waits for its signature, the calls at once.
    authority_api_keys: str = field(default="", repr=False)
    authority_challenge_deadline: float = 60.0
    authority_max_streams: int = 1000
    #: Who may read /metrics (challenges.access).
    metrics: MetricsAccess = field(default_factory=MetricsAccess)

    def load_authority_key(self) -> PrivateKey:
        """The authority's signing key (:mod:`challenges.keys`)."""
        return load_authority_key(
            configured=self.authority_private_key, debug=self.debug, dev_key_file=self.dev_key_file
        )

    def api_keys(self) -> dict[str, str]:
        """The API keys ``GetToken`` accepts (key -> secret, "" for none): ``AUTHORITY_API_KEYS``,
        else ``USER_API_KEY``/``USER_API_SECRET``. Raises :class:`ValueError` (never quoting a
        secret) when malformed."""
        return configured_api_keys(
            self.authority_api_keys, user_api_key=self.user_api_key, user_api_secret=self.user_api_secret
        )

    def admit_socket(self, client: ClientInfo, scope: Mapping[str, Any]) -> None:
        """Raise :class:`~challenges.errors.RefusedError` for a WebSocket refused by policy:
        its Host, then its transport (a plain ``ws://`` where plain http is redirected), then
        its Origin (a page behind a TLS proxy that does not say so is on the wrong transport,
        not a foreign origin)."""
        domain = self.clients.check_host(client)
        self.https.refuse_plain_socket(secure=client.secure, scope=scope)
        self.clients.check_origin(client, domain)

    @classmethod
    def from_settings(cls) -> RuntimeConfig:
        from django.conf import settings

        # daphne --proxy-headers trusts the leftmost entry, which the client writes: read the
        # one the nearest proxy appended instead, as CLIENT_IP_HEADER would (a warning says so).
        implied = "" if settings.CLIENT_IP_HEADER else daphne_forwarded_header(sys.argv)
        ssl_header, ssl_value = settings.SECURE_PROXY_SSL_HEADER or ("", "https")
        try:
            metrics = MetricsAccess.build(settings.METRICS_ALLOWED_IPS, settings.METRICS_TOKEN)
        except ValueError as exc:  # the system check says so first (challenges.E015)
            from django.core.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured(f"METRICS_ALLOWED_IPS: {exc}") from exc
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
            token_upstream_ca=settings.TOKEN_UPSTREAM_CA,
            redis=settings.REDIS,
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
            rate=Rate(per_minute=settings.RATE_LIMIT_PER_MINUTE, burst=settings.RATE_LIMIT_BURST),
            login_rate=Rate(per_minute=settings.ADMIN_LOGIN_PER_MINUTE, burst=settings.ADMIN_LOGIN_BURST),
            rate_redis_grace=settings.RATE_LIMIT_REDIS_GRACE,
            introspection_token=settings.INTROSPECTION_TOKEN,
            previous_keys=tuple(settings.AUTHORITY_PREVIOUS_KEYS),
            upstream_public_key=settings.UPSTREAM_PUBLIC_KEY,
            implied_ip_header=bool(implied),
            metrics=metrics,
            http=BodyLimits(
                other=settings.DATA_UPLOAD_MAX_MEMORY_SIZE or DJANGO_UPLOAD_LIMIT,
                timeout=settings.HTTP_BODY_TIMEOUT,
            ),
            https=HttpsPolicy.from_settings(settings),
            authority_api_keys=settings.AUTHORITY_API_KEYS,
            authority_challenge_deadline=settings.AUTHORITY_CHALLENGE_DEADLINE,
            authority_max_streams=settings.AUTHORITY_MAX_STREAMS,
        )
