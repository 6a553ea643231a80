"""Reads."""

from __future__ import annotations

from channels.db import database_sync_to_async
from django.db import connection


def _ping() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def database_ping() -> None:
    await database_sync_to_async(_ping)()
