"""Who may read ``/metrics``: configured addresses or networks, or a bearer token.

:class:`MetricsAccess` allows a request whose client address (as
:class:`~challenges.clients.ClientPolicy` sees it: behind your proxies, the
address they report) is in one of ``METRICS_ALLOWED_IPS``, or that presents
``Authorization: Bearer <METRICS_TOKEN>``. With neither configured it allows
no one. An IPv4-mapped IPv6 address counts as its IPv4 address.

Pure module: no Django, Channels, grpc or prometheus import.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """Addresses (``10.0.0.5``, ``::1``) and networks (``10.0.0.0/8``); raises ValueError
    naming the first entry that is neither."""
    networks = []
    for entry in entries:
        text = entry.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"{text[:60]!r} is not an address or a network") from None
    return tuple(networks)


@dataclass(frozen=True, slots=True)
class MetricsAccess:
    networks: tuple[Network, ...] = ()
    #: The bearer token a scraper may present instead (empty: none is accepted).
    token: str = field(default="", repr=False)

    @classmethod
    def build(cls, allowed: Iterable[str], token: str = "") -> MetricsAccess:
        return cls(networks=parse_networks(allowed), token=token.strip())

    @property
    def open_to_anyone(self) -> bool:
        """Some address or a token can get in (False: everyone is refused)."""
        return bool(self.networks or self.token)

    def allows(self, ip: str | None, authorization: str = "") -> bool:
        """May a request from ``ip`` with this ``Authorization`` header read the metrics?"""
        return self.address_allowed(ip) or self.token_presented(authorization)

    def address_allowed(self, ip: str | None) -> bool:
        if not ip or not self.networks:
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def token_presented(self, authorization: str) -> bool:
        scheme, _, presented = authorization.strip().partition(" ")
        if not self.token or scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(presented.strip().encode(), self.token.encode())
