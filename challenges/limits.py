"""The caps of one process: connections per address, and pending challenges per key,
per address and in all: nothing a client sends can grow without a bound.

Pure module: no Django, Channels or grpc import.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TypeVar

from .errors import Code, LimitError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Caps:
    pending_per_key: int = 5
    pending_per_ip: int = 100
    pending_total: int = 10_000
    connections_per_ip: int = 256


class Limits:
    """Counts what each cap bounds; every ``reserve``/``open`` has its ``release``/``close``."""

    def __init__(self, caps: Caps) -> None:
        self.caps = caps
        self._pending: Counter[tuple[str, object]] = Counter()
        self._connections: Counter[str] = Counter()

    def open_connection(self, ip: str | None) -> None:
        """Count a connection; raises ``too_many_connections`` over the cap."""
        if self._connections[ip or "?"] >= self.caps.connections_per_ip:
            raise LimitError(
                f"at most {self.caps.connections_per_ip} connections per address",
                code=Code.TOO_MANY_CONNECTIONS,
            )
        self._connections[ip or "?"] += 1

    def close_connection(self, ip: str | None) -> None:
        _decrement(self._connections, ip or "?")

    def reserve(self, *, key: bytes, ip: str | None) -> None:
        """Hold a pending slot for ``key`` from ``ip``; raises ``too_many_pending``."""
        if self._pending["all", None] >= self.caps.pending_total:
            raise LimitError("the server has too many pending challenges", code=Code.TOO_MANY_PENDING)
        if self._pending["key", key] >= self.caps.pending_per_key:
            raise LimitError(
                f"at most {self.caps.pending_per_key} challenges may be pending for one key",
                code=Code.TOO_MANY_PENDING,
            )
        if self._pending["ip", ip] >= self.caps.pending_per_ip:
            raise LimitError(
                f"at most {self.caps.pending_per_ip} challenges may be pending for one address",
                code=Code.TOO_MANY_PENDING,
            )
        for slot in (("all", None), ("key", key), ("ip", ip)):
            self._pending[slot] += 1

    def release(self, *, key: bytes, ip: str | None) -> None:
        for slot in (("all", None), ("key", key), ("ip", ip)):
            _decrement(self._pending, slot)


def _decrement(counter: Counter[T], slot: T) -> None:
    counter[slot] -= 1
    if counter[slot] <= 0:
        del counter[slot]
