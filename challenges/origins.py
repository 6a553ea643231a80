"""Who a connection comes from: client address, Origin policy, and the audience.

The audience bound into challenges is ``TOKEN_AUDIENCE`` or, when unset, the
origin the client connected to, built from a Host header that must be one of
``ALLOWED_HOSTS`` (as Django checks for HTTP). A browser's Origin must be in
``ALLOWED_ORIGINS`` or, when that is empty, be one of ``ALLOWED_HOSTS``; clients
that send no Origin (not browsers) are allowed.
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
        if origin and not origin_allowed(origin):
            raise ConnectionRefused(f"the Origin {origin[:100]!r} is not allowed to get tokens here")
        domain, _port = split_domain_port(host)
        if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
            raise ConnectionRefused("the Host header is not an allowed host", code="invalid_host")
    if not audience:
        audience = f"{'https' if secure else 'http'}://{host}"
    return ClientInfo(
        ip=client_ip(scope, headers),
        origin=origin[:200],
        user_agent=headers.get("user-agent", "")[:200],
        audience=audience,
        transport=transport,
    )


def origin_allowed(origin: str) -> bool:
    if settings.ALLOWED_ORIGINS:
        return "*" in settings.ALLOWED_ORIGINS or origin in settings.ALLOWED_ORIGINS
    parts = urlsplit(origin)
    return bool(parts.hostname) and validate_host(parts.hostname or "", settings.ALLOWED_HOSTS)


def client_ip(scope: Mapping[str, Any], headers: Mapping[str, str]) -> str | None:
    candidate = None
    if settings.CLIENT_IP_HEADER:
        forwarded = headers.get(settings.CLIENT_IP_HEADER.lower(), "")
        candidate = forwarded.split(",")[0].strip() or None
    if candidate is None and scope.get("client"):
        candidate = scope["client"][0]
    try:
        return str(ipaddress.ip_address(candidate)) if candidate else None
    except ValueError:
        return None
