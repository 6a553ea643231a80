"""The caps of one process: nothing a client sends can grow without a bound, and no
client can use a cap against another.

Every count is by *address scope*: an IPv4 address, or an IPv6 /64 (one
subscriber's whole allocation; an IPv4-mapped address counts as its IPv4).

* connections per scope;
* pending challenges per scope, and per key **within** a scope: requests from
  one scope can never stop the same key at another scope (the account-lockout
  trap: a per-key count across all addresses lets anyone lock any key out);
* pending challenges in all: the process's bound. A many-address attack can
  fill it; each scope can hold at most ``pending_per_ip`` of it, and the
  request rate limit (:mod:`challenges.ratelimit`) slows every scope.

``on_pending`` hears the process's count of pending challenges whenever it
changes (the metrics' gauge).

Pure module: no Django, Channels or grpc import.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

from .errors import Code, LimitError

T = TypeVar("T")
_ALL: tuple[str, object] = ("all", None)


@dataclass(frozen=True, slots=True)
class Caps:
    #: Pending challenges for one key from one address scope.
    pending_per_key: int = 5
    pending_per_ip: int = 100
    pending_total: int = 10_000
    connections_per_ip: int = 256


@lru_cache(maxsize=4096)
def address_scope(ip: str | None) -> str:
    """What the caps count an address as: IPv4 as is, IPv6 by its /64."""
    if not ip:
        return "?"
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return "?"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class Limits:
    """Counts what each cap bounds; every ``reserve``/``open`` has its ``release``/``close``."""

    def __init__(self, caps: Caps, *, on_pending: Callable[[int], None] | None = None) -> None:
        self.caps = caps
        self.on_pending = on_pending
        self._pending: Counter[tuple[str, object]] = Counter()
        self._connections: Counter[str] = Counter()

    def open_connection(self, ip: str | None) -> None:
        """Count a connection; raises ``too_many_connections`` over the cap."""
        scope = address_scope(ip)
        if self._connections[scope] >= self.caps.connections_per_ip:
            raise LimitError(
                f"at most {self.caps.connections_per_ip} connections per address",
                code=Code.TOO_MANY_CONNECTIONS,
            )
        self._connections[scope] += 1

    def close_connection(self, ip: str | None) -> None:
        _decrement(self._connections, address_scope(ip))

    @property
    def open_connections(self) -> int:
        """Connections open now, from every address."""
        return sum(self._connections.values())

    def reserve(self, *, key: bytes, ip: str | None) -> None:
        """Hold a pending slot for ``key`` from ``ip``; raises ``too_many_pending``."""
        slots = self._slots(key, ip)
        if self._pending[slots[0]] >= self.caps.pending_per_key:
            raise LimitError(
                f"at most {self.caps.pending_per_key} challenges may be pending for one key from one address",
                code=Code.TOO_MANY_PENDING,
            )
        if self._pending[slots[1]] >= self.caps.pending_per_ip:
            raise LimitError(
                f"at most {self.caps.pending_per_ip} challenges may be pending for one address",
                code=Code.TOO_MANY_PENDING,
            )
        if self._pending[slots[2]] >= self.caps.pending_total:
            raise LimitError("the server has too many pending challenges", code=Code.TOO_MANY_PENDING)
        for slot in slots:
            self._pending[slot] += 1
        self._pending_changed()

    def release(self, *, key: bytes, ip: str | None) -> None:
        for slot in self._slots(key, ip):
            _decrement(self._pending, slot)
        self._pending_changed()

    @property
    def pending(self) -> int:
        """Challenges pending in this process (reserved: issued, or being issued)."""
        return self._pending[_ALL]

    def _pending_changed(self) -> None:
        if self.on_pending is not None:
            self.on_pending(self._pending[_ALL])

    @staticmethod
    def _slots(key: bytes, ip: str | None) -> tuple[tuple[str, object], ...]:
        scope = address_scope(ip)
        return (("key", (key, scope)), ("ip", scope), _ALL)


def _decrement(counter: Counter[T], slot: T) -> None:
    counter[slot] -= 1
    if counter[slot] <= 0:
        del counter[slot]
