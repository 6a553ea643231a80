"""Who is asking: one client record for both transports, and the policy that admits it.

:meth:`ClientPolicy.describe` builds the audit's :class:`ClientInfo` from an
ASGI scope (a WebSocket's, or the one behind a Django ``HttpRequest``):
the client address, Origin, user agent, Host and scheme, and the audience
its challenges will name. :meth:`ClientPolicy.admit` refuses a Host outside
``ALLOWED_HOSTS`` (``invalid_host``) and a browser Origin outside
``ALLOWED_ORIGINS`` (``origin_not_allowed``; empty: only the service's own
origin, same scheme, host and port). Clients that send no Origin (not
browsers) are admitted.

Behind proxies, ``CLIENT_IP_HEADER`` names the header whose entry added by the
nearest of ``TRUSTED_PROXIES`` proxies is the client address: entries further
left are written by the client and never trusted.

Pure module: no Django settings (the policy is built by the composition
root), no Channels or grpc.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .errors import Code, RefusedError

_FIELD = 200


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who is asking, as the audit records it."""

    ip: str | None
    origin: str = ""
    user_agent: str = ""
    audience: str = ""
    transport: str = "ws"
    host: str = ""
    secure: bool = False

    @property
    def own_origin(self) -> str:
        """The origin this client connected to."""
        return own_origin(secure=self.secure, host=self.host)


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    allowed_hosts: Sequence[str] = ()
    allowed_origins: Sequence[str] = ()
    #: Bound into every challenge; empty: the origin the client connected to.
    audience: str = ""
    ip_header: str = ""
    trusted_proxies: int = 1

    def describe(self, scope: Mapping[str, Any], *, transport: str) -> ClientInfo:
        """The client record of an ASGI scope. Never raises: refusals are :meth:`admit`'s."""
        headers = _headers(scope)
        host = headers.get("host", "")[:_FIELD]
        secure = scope.get("scheme") in ("https", "wss")
        return ClientInfo(
            ip=self.client_ip(scope, headers),
            origin=headers.get("origin", "")[:_FIELD],
            user_agent=headers.get("user-agent", "")[:_FIELD],
            audience=self.audience or own_origin(secure=secure, host=host),
            transport=transport,
            host=host,
            secure=secure,
        )

    def admit(self, client: ClientInfo) -> None:
        """Raise :class:`~challenges.errors.RefusedError` unless Host and Origin are allowed."""
        from django.http.request import split_domain_port, validate_host

        domain, _port = split_domain_port(client.host)
        if not domain or not validate_host(domain, list(self.allowed_hosts)):
            raise RefusedError("the Host header is not an allowed host", code=Code.INVALID_HOST)
        if client.origin and not self.origin_allowed(client.origin, own=client.own_origin):
            raise RefusedError(f"the Origin {client.origin[:100]!r} is not allowed to get tokens here")

    def origin_allowed(self, origin: str, *, own: str) -> bool:
        """``ALLOWED_ORIGINS`` if set, else only the service's own origin (scheme, host, port)."""
        if self.allowed_origins:
            return "*" in self.allowed_origins or origin in self.allowed_origins
        return _normal(origin) == _normal(own)

    def client_ip(self, scope: Mapping[str, Any], headers: Mapping[str, str]) -> str | None:
        candidate = None
        if self.ip_header:
            entries = [e.strip() for e in headers.get(self.ip_header.lower(), "").split(",")]
            entries = [e for e in entries if e]
            # Each proxy appends the address it saw: count from the right, past our own proxies.
            if len(entries) >= self.trusted_proxies:
                candidate = entries[-self.trusted_proxies]
        if candidate is None and scope.get("client"):
            candidate = scope["client"][0]
        try:
            return str(ipaddress.ip_address(candidate)) if candidate else None
        except ValueError:
            return None


def _headers(scope: Mapping[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def own_origin(*, secure: bool, host: str) -> str:
    return f"{'https' if secure else 'http'}://{host.lower()}"


def _normal(origin: str) -> str:
    parts = urlsplit(origin.lower())
    default = {"http": 80, "https": 443}.get(parts.scheme)
    try:
        port = parts.port
    except ValueError:
        return ""
    return f"{parts.scheme}://{parts.hostname}:{port or default}"
