"""``GetToken`` as the Hub served it, for any transport: who may call, who called, and the
calls this process serves to the Hub's JavaScript client.

* :func:`first_values` and :func:`key_label`: the call's metadata as the API-key
  check reads it, and the API key as the audit and the log record it. A key
  the server accepts is recorded in full; a well-formed Hub key it does not
  know in full too (an old or mistyped key is worth seeing); anything else a
  caller put in the header (a secret pasted after its key, or in its place)
  only as a fingerprint, so no secret reaches the audit or the log. The
  signature and its message are never recorded.
* :class:`ApiKeyCheck`: the Hub's API-key check (``docs/PROTOCOL.md``, "API
  keys"), shared by ``runauthority``'s interceptor and the gRPC-Web endpoint.
* :class:`GetTokenService`: this process's ``GetToken`` for the gRPC-Web
  endpoint: the authority it mints with, the keys, one :class:`StreamCap`, the
  metrics its calls are counted in, and the calls in progress, which
  :meth:`GetTokenService.drain` ends when the server stops.

No grpc import (the gRPC-Web path never loads it) and no settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import re
from collections.abc import Callable, Collection, Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .apikeys import API_KEY_HEADER, API_SIG_HEADER, API_SIG_MSG_HEADER, check_api_key
from .audit import AuditWriter
from .errors import ApiKeyError
from .gettoken import AuthorityConfig, Caller, GetTokenCall, StreamCap
from .metrics import DEFAULT, Metrics
from .tasks import TaskSet

log = logging.getLogger("challenges.gettoken")

#: A Hub API key: multibase base32 of 16 bytes (a secret, 24 bytes, is longer).
_HUB_KEY = re.compile(r"b[a-z2-7]{26}")


def first_values(metadata: Iterable[tuple[str, Any]] | None) -> dict[str, Any]:
    """Call metadata as a mapping, keeping the first value of a repeated entry: the one the
    API-key check reads, so the audit names the key that was checked."""
    values: dict[str, Any] = {}
    for name, value in metadata or ():
        values.setdefault(name, value)
    return values


def key_label(sent: Any, known: Collection[str] = ()) -> str:
    """The API key as the audit and the log record it (see the module's docstring)."""
    if not isinstance(sent, str) or not sent:
        return ""
    if sent in known or _HUB_KEY.fullmatch(sent):
        return sent[:64]
    return "sha256:" + hashlib.sha256(sent.encode("utf-8", "replace")).hexdigest()[:16]


@dataclass(frozen=True)
class ApiKeyCheck:
    """The Hub's API-key check over ``keys`` (key -> secret, "" for a key that needs no
    signature). With ``accept_all`` (no key configured, ``DEBUG`` on) every caller passes;
    with no keys and not ``accept_all``, every caller is refused as the Hub refused an
    unknown key."""

    keys: Mapping[str, str] = field(default_factory=dict, repr=False)
    accept_all: bool = False

    def label(self, sent: Any) -> str:
        return key_label(sent, self.keys)

    def check(self, metadata: Mapping[str, Any]) -> None:
        """Raise :class:`~challenges.errors.ApiKeyError` (the Hub's message) unless the
        metadata carries an accepted key, signed when its key has a secret. The refusal's
        reason is logged with the key as :meth:`label` shows it; never the secret."""
        if self.accept_all:
            return
        key = _text(metadata.get(API_KEY_HEADER))
        try:
            check_api_key(
                self.keys,
                key=key,
                msg=_text(metadata.get(API_SIG_MSG_HEADER)),
                sig=_text(metadata.get(API_SIG_HEADER)),
            )
        except ApiKeyError as error:
            log.warning("GetToken refused: %s (key %s)", error.reason, self.label(key) or "-")
            raise


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class GetTokenService:
    """``GetToken`` in this process for the gRPC-Web endpoint (one per runtime).

    Each call is a :class:`~challenges.gettoken.GetTokenCall` (the state machine
    ``runauthority`` drives too), holding a slot of the one :class:`StreamCap`.
    A transport registers each connection with :meth:`track` and a hook that ends
    it; :meth:`drain` refuses new calls, calls every hook, and waits for them.
    """

    def __init__(
        self,
        *,
        authority: AuthorityConfig,
        audit: AuditWriter,
        keys: ApiKeyCheck,
        cap: StreamCap,
        blocked: Container[str] = frozenset(),
        metrics: Metrics = DEFAULT,
    ) -> None:
        self.authority = authority
        self.audit = audit
        self.keys = keys
        self.cap = cap
        self.blocked = blocked
        self.metrics = metrics
        #: False once the server drains: new calls are refused.
        self.accepting = True
        self._tasks = TaskSet()
        self._live: dict[int, Callable[[], None]] = {}
        self._ids = itertools.count()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def live(self) -> int:
        """Connections in progress."""
        return len(self._live)

    def call(self, caller: Caller) -> GetTokenCall:
        return GetTokenCall(
            config=self.authority,
            audit=self.audit,
            caller=caller,
            tasks=self._tasks,
            cap=self.cap,
            blocked=self.blocked,
            metrics=self.metrics,
        )

    def track(self, stop: Callable[[], None]) -> Callable[[], None]:
        """Register a connection and the hook that ends it when the server drains; returns
        the function that unregisters it."""
        token = next(self._ids)
        self._live[token] = stop
        self._idle.clear()

        def untrack() -> None:
            self._live.pop(token, None)
            if not self._live:
                self._idle.set()

        return untrack

    async def drain(self, timeout: float = 3.0) -> int:
        """Refuse new calls, end every call in progress (each ends with ``server_shutdown``,
        audited, told to its caller) and wait for them, at most ``timeout`` seconds.
        Returns how many were ended."""
        self.accepting = False
        stops = list(self._live.values())
        for stop in stops:
            stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        await self._tasks.wait(0.5)
        return len(stops)
