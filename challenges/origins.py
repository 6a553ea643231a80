"""Who a connection comes from: client address, Origin policy, and the audience.

The audience bound into challenges is ``TOKEN_AUDIENCE`` or, when unset, the
origin the client connected to, built from a Host header that must be one of
``ALLOWED_HOSTS`` (as Django checks for HTTP). A browser's Origin must be in
``ALLOWED_ORIGINS`` or, when that is empty, be this service's own origin
(same scheme, host and port); clients that send no Origin (not browsers) are
allowed. Behind proxies, ``CLIENT_IP_HEADER`` names the header whose entry
added by the nearest of ``TRUSTED_PROXIES`` proxies is the client address:
entries further left are written by the client and never trusted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import split_domain_port, validate_host

from .errors import ChallengeError
from .flows import ClientInfo


class ConnectionRefused(ChallengeError):
    code = "origin_not_allowed"


def client_info(scope: Mapping[str, Any], *, validate: bool = True, transport: str = "ws") -> ClientInfo:
    """The audit's view of an ASGI scope; raises :class:`ConnectionRefused`."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    origin = headers.get("origin", "")
    host = headers.get("host", "")
    secure = scope.get("scheme") in ("https", "wss")
    audience = settings.TOKEN_AUDIENCE
    if validate:
        domain, _port = split_domain_port(host)
        if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
            raise ConnectionRefused("the Host header is not an allowed host", code="invalid_host")
        if origin and not origin_allowed(origin, own=own_origin(secure, host)):
            raise ConnectionRefused(f"the Origin {origin[:100]!r} is not allowed to get tokens here")
    if not audience:
        audience = own_origin(secure, host)
    return ClientInfo(
        ip=client_ip(scope, headers),
        origin=origin[:200],
        user_agent=headers.get("user-agent", "")[:200],
        audience=audience,
        transport=transport,
    )


def own_origin(secure: bool, host: str) -> str:
    return f"{'https' if secure else 'http'}://{host.lower()}"


def origin_allowed(origin: str, *, own: str) -> bool:
    """``ALLOWED_ORIGINS`` if set, else only the service's own origin (scheme, host, port)."""
    if settings.ALLOWED_ORIGINS:
        return "*" in settings.ALLOWED_ORIGINS or origin in settings.ALLOWED_ORIGINS
    return _normal(origin) == _normal(own)


def _normal(origin: str) -> str:
    parts = urlsplit(origin.lower())
    default = {"http": 80, "https": 443}.get(parts.scheme)
    try:
        port = parts.port
    except ValueError:
        return ""
    return f"{parts.scheme}://{parts.hostname}:{port or default}"


def client_ip(scope: Mapping[str, Any], headers: Mapping[str, str]) -> str | None:
    candidate = None
    if settings.CLIENT_IP_HEADER:
        entries = [e.strip() for e in headers.get(settings.CLIENT_IP_HEADER.lower(), "").split(",")]
        entries = [e for e in entries if e]
        # Each proxy appends the address it saw: count from the right, past our own proxies.
        if len(entries) >= settings.TRUSTED_PROXIES:
            candidate = entries[-settings.TRUSTED_PROXIES]
    if candidate is None and scope.get("client"):
        candidate = scope["client"][0]
    try:
        return str(ipaddress.ip_address(candidate)) if candidate else None
    except ValueError:
        return None
