"""Revocation: what operators take back, and which keys may not start a flow.

Operators revoke a token (by ``jti``) or block a public key (all its live
tokens, and every new flow for it gets ``key_blocked``, as does the answer to
a challenge it was given before) from the admin or
``manage.py tokens``; :func:`revoke_token`, :func:`block_key` and
:func:`unblock_key` write it, each with an event naming who did it.

Blocked keys are kept in this process's memory, reloaded from the database
when an operator acts: every ``every`` seconds one cheap query asks for the
newest revocation action, and only a new one reloads the set. So a block
reaches every worker within about a second, and a flow costs no query.
Introspection (``challenges.introspection``) asks the database itself, so a
revoked token or a blocked key's token is inactive at once, on every worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from django.db import transaction
from django.utils import timezone

from .identity import parse_public_key
from .models import BlockedKey, IssuedToken, RevocationEvent, RevokedToken

log = logging.getLogger(__name__)


class Blocklist:
    def __init__(
        self,
        *,
        version: Callable[[], Awaitable[int]],
        load: Callable[[], Awaitable[frozenset[str]]],
        every: float = 1.0,
    ) -> None:
        self._version, self._load, self.every = version, load, every
        self._seen = -1
        self._keys: frozenset[str] = frozenset()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def __contains__(self, public_key: object) -> bool:
        return public_key in self._keys

    async def refresh(self) -> None:
        version = await self._version()
        if version != self._seen:
            self._keys = await self._load()
            self._seen = version

    async def start(self) -> None:
        self._stopping = asyncio.Event()
        try:
            await self.refresh()
        except Exception:
            log.warning("could not load the blocked keys yet", exc_info=True)
        self._task = asyncio.create_task(self._run(), name="blocklist")

    async def stop(self, timeout: float = 2.0) -> None:
        """End the poller once a reload in progress is over: cancelled mid-query, its
        thread would go on with the query (and its connection) after the stop returned.
        Cancelled only past ``timeout`` seconds (a shutdown has 10 s in all)."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        failing = False
        while True:
            try:
                await asyncio.wait_for(self._stopping.wait(), self.every)
                return
            except TimeoutError:
                pass
            try:
                await self.refresh()
            except Exception as exc:
                if not failing:
                    log.warning("cannot reload the blocked keys: %s", type(exc).__name__)
                failing = True
            else:
                failing = False


# -- what operators do (the admin's actions, ``manage.py tokens``): each action recorded --------


class UnknownToken(LookupError):
    """No issued token has this ``jti``: nothing to revoke (a typo would otherwise be
    recorded as a revocation while the real token stayed active)."""


def revoke_token(*, jti: str, actor: str, reason: str = "", issued_elsewhere: bool = False) -> bool:
    """Revoke the issued token ``jti``; False if it was revoked already. Raises
    :class:`UnknownToken` when no issued token has that ``jti``, unless
    ``issued_elsewhere`` (a token of ours no row here records: another database's
    ``runauthority``, or rows pruned), which takes any non-empty jti of at most 64 characters."""
    if issued_elsewhere and not 0 < len(jti) <= 64:
        raise UnknownToken(jti)
    with transaction.atomic():
        if not issued_elsewhere and not IssuedToken.objects.filter(jti=jti).exists():
            raise UnknownToken(jti)
        _, created = RevokedToken.objects.get_or_create(
            jti=jti,
            defaults={"revoked_at": timezone.now(), "actor": actor[:150], "reason": reason[:200]},
        )
        if created:
            _event(RevocationEvent.REVOKE, jti, actor, reason)
    return created


def block_key(*, public_key: str, actor: str, reason: str = "") -> bool:
    """Block ``public_key`` (a canonical key string): its live tokens are inactive at once,
    it may not start a flow, and a challenge it holds gets no token. False if it was
    blocked already."""
    key = str(parse_public_key(public_key))
    with transaction.atomic():
        _, created = BlockedKey.objects.get_or_create(
            public_key=key,
            defaults={"blocked_at": timezone.now(), "actor": actor[:150], "reason": reason[:200]},
        )
        if created:
            _event(RevocationEvent.BLOCK, key, actor, reason)
    return created


def unblock_key(*, public_key: str, actor: str, reason: str = "") -> bool:
    """Lift a block; False if the key was not blocked."""
    key = str(parse_public_key(public_key))
    with transaction.atomic():
        deleted, _ = BlockedKey.objects.filter(public_key=key).delete()
        if deleted:
            _event(RevocationEvent.UNBLOCK, key, actor, reason)
    return bool(deleted)


def _who(actor: str, reason: str) -> dict[str, str]:
    return {"actor": actor[:150], "reason": reason[:200]}


def _event(action: str, target: str, actor: str, reason: str) -> None:
    RevocationEvent.objects.create(
        at=timezone.now(), action=action, target=target[:128], **_who(actor, reason)
    )
