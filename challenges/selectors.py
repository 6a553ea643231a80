"""Reads: the database's health, and revocation as every worker must see it."""

from __future__ import annotations

from channels.db import database_sync_to_async
from django.db import connection

from .errors import Code
from .models import BlockedKey, RevocationEvent, RevokedToken


def _ping() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def database_ping() -> None:
    await database_sync_to_async(_ping)()


async def revocation_version() -> int:
    """Grows with every revocation action (the id of the newest one)."""
    return int(await database_sync_to_async(_revocation_version)())


async def blocked_keys() -> frozenset[str]:
    return frozenset(await database_sync_to_async(_blocked_keys)())


def _revocation_version() -> int:
    newest = RevocationEvent.objects.order_by("-id").values_list("id", flat=True).first()
    return newest or 0


def _blocked_keys() -> frozenset[str]:
    return frozenset(BlockedKey.objects.values_list("public_key", flat=True))


def token_standing(*, jti: str, subject: str) -> Code | None:
    """``token_revoked`` / ``key_blocked`` when an operator took the token back, else None."""
    if jti and RevokedToken.objects.filter(jti=jti).exists():
        return Code.TOKEN_REVOKED
    if subject and BlockedKey.objects.filter(public_key=subject).exists():
        return Code.KEY_BLOCKED
    return None
