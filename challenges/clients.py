"""Who is asking: one client record for both transports, and the policy that admits it.

:meth:`ClientPolicy.describe` builds the audit's :class:`ClientInfo` from an
ASGI scope (a WebSocket's, or the one behind a Django ``HttpRequest``):
the client address, Origin, user agent, Host and scheme, and the audience
its challenges will name. :meth:`ClientPolicy.check_host` refuses a Host outside
``ALLOWED_HOSTS`` (``invalid_host``), :meth:`ClientPolicy.check_origin` a
browser Origin outside ``ALLOWED_ORIGINS`` (``origin_not_allowed``; empty: only the service's own
origin, same scheme, host and port). Clients that send no Origin (not
browsers) are admitted. Without a fixed audience (``TOKEN_AUDIENCE``), the
Host names the challenges' audience, so it must match ``ALLOWED_HOSTS``
exactly, not through a wildcard.

Behind proxies, ``CLIENT_IP_HEADER`` names the header whose entry added by the
nearest of ``TRUSTED_PROXIES`` proxies is the client address: entries further
left are written by the client and never trusted. A TLS-terminating proxy's
header (``SECURE_PROXY_SSL_HEADER``) makes the connection's own origin https.

Every client address is kept as :func:`storable_ip` gives it: an IPv6 zone id
(``fe80::1%eth0``) names an interface of the host that saw the address, means
nothing anywhere else, and PostgreSQL's ``inet`` refuses it: it is dropped.

Pure module: no Django settings (the policy is built by the composition
root), no Channels or grpc.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
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

    def to_wire(self) -> dict[str, Any]:
        """What a routed request carries of its client (for the owner's audit)."""
        return {"ip": self.ip, "transport": self.transport, "origin": self.origin}

    @classmethod
    def from_wire(cls, raw: Any) -> ClientInfo:
        """:meth:`to_wire` read back, whatever another process sent."""
        fields = raw if isinstance(raw, dict) else {}
        ip, transport, origin = fields.get("ip"), fields.get("transport"), fields.get("origin")
        return cls(
            ip=storable_ip(ip),
            transport=transport[:8] if isinstance(transport, str) else "routed",
            origin=origin[:200] if isinstance(origin, str) else "",
        )


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    allowed_hosts: Sequence[str] = ()
    allowed_origins: Sequence[str] = ()
    #: Bound into every challenge; empty: the origin the client connected to.
    audience: str = ""
    ip_header: str = ""
    trusted_proxies: int = 1
    #: A TLS-terminating proxy's header (e.g. ``x-forwarded-proto``) and the value that
    #: means https (Django's ``SECURE_PROXY_SSL_HEADER``); empty: the connection's scheme.
    ssl_header: str = ""
    ssl_value: str = "https"

    def describe(self, scope: Mapping[str, Any], *, transport: str) -> ClientInfo:
        """The client record of an ASGI scope. Never raises: refusals are :meth:`check_host`'s
        and :meth:`check_origin`'s."""
        headers = _headers(scope)
        host = headers.get("host", "")[:_FIELD]
        secure = scope.get("scheme") in ("https", "wss") or self._proxied_tls(headers)
        return ClientInfo(
            ip=self.client_ip(scope, headers),
            origin=headers.get("origin", "")[:_FIELD],
            user_agent=headers.get("user-agent", "")[:_FIELD],
            audience=self.audience or own_origin(secure=secure, host=host),
            transport=transport,
            host=host,
            secure=secure,
        )

    def check_host(self, client: ClientInfo) -> str:
        """The Host's domain; raises :class:`~challenges.errors.RefusedError` (``invalid_host``)
        when ``ALLOWED_HOSTS`` does not allow it, as Django would."""
        from django.http.request import split_domain_port, validate_host

        domain, _port = split_domain_port(client.host)
        if not domain or not validate_host(domain, list(self.allowed_hosts)):
            raise RefusedError("the Host header is not an allowed host", code=Code.INVALID_HOST)
        return domain

    def check_origin(self, client: ClientInfo, domain: str) -> None:
        """Once :meth:`check_host` gave ``domain``: raise :class:`~challenges.errors.RefusedError`
        unless the Host may name the challenges' audience and the Origin is allowed."""
        from django.http.request import validate_host

        if not self.audience and not validate_host(domain, _exact(self.allowed_hosts)):
            # The audience would come from a Host the client chose: challenges for any site.
            raise RefusedError(
                "the Host header matches ALLOWED_HOSTS only through a wildcard, and TOKEN_AUDIENCE"
                " is not set: it cannot name the challenge's audience",
                code=Code.INVALID_HOST,
            )
        if client.origin and not self.origin_allowed(client.origin, own=client.own_origin):
            raise RefusedError(f"the Origin {client.origin[:100]!r} is not allowed to get tokens here")

    def origin_allowed(self, origin: str, *, own: str) -> bool:
        """``ALLOWED_ORIGINS`` if set, else only the service's own origin (scheme, host, port)."""
        if self.allowed_origins:
            return "*" in self.allowed_origins or origin in self.allowed_origins
        return _normal(origin) == _normal(own)

    def _proxied_tls(self, headers: Mapping[str, str]) -> bool:
        """The proxy says the client's connection is https (the first value, as Django reads it)."""
        value = headers.get(self.ssl_header.lower()) if self.ssl_header else None
        return value is not None and value.split(",", 1)[0].strip() == self.ssl_value

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
        return storable_ip(candidate)


def storable_ip(text: object) -> str | None:
    """``text`` as an address every database's address column takes, or None if it is none.

    An IPv6 zone id (``fe80::1%eth0``) is dropped: it names an interface of the host that
    saw the address, and PostgreSQL's ``inet`` refuses it (SQLite would keep it, so one
    client would count as many addresses, one per zone it made up).
    """
    if not isinstance(text, str):
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        address = ipaddress.IPv6Address(int(address))
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # As Django writes it (and Python from 3.13): the admin's filters, through the ORM,
        # compare this text on SQLite, and Python 3.11 wrote ``::ffff:102:304``.
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def answered_elsewhere(client_ip: str | None, answer_ip: str | None) -> str | None:
    """The address an answer came from, when it is not the one that asked."""
    return answer_ip if answer_ip and answer_ip != client_ip else None


def daphne_forwarded_header(argv: Sequence[str]) -> str:
    """The header daphne takes the client address from when this process is daphne run with
    ``--proxy-headers`` (its leftmost entry, which the client writes), else ``""``."""
    program = PurePath(argv[0]) if argv else PurePath()
    if "daphne" not in (program.name, program.parent.name) or "--proxy-headers" not in argv[1:]:
        return ""
    header = "X-Forwarded-For"
    for arg, following in zip(argv[1:], [*argv[2:], ""], strict=True):
        if arg == "--proxy-headers-host" and following:
            header = following
        elif arg.startswith("--proxy-headers-host="):
            header = arg.partition("=")[2]
    return header


def wildcard_hosts(allowed_hosts: Sequence[str]) -> list[str]:
    """The ``ALLOWED_HOSTS`` entries that match more than one host: ``*`` and ``.domain``."""
    return [host for host in allowed_hosts if _wildcard(host)]


def _exact(allowed_hosts: Sequence[str]) -> list[str]:
    return [host for host in allowed_hosts if not _wildcard(host)]


def _wildcard(host: str) -> bool:
    return host == "*" or host.startswith(".")


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
