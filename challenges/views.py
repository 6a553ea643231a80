"""HTTP endpoints."""

from __future__ import annotations

import asyncio
import logging

from channels.layers import get_channel_layer
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from . import selectors

log = logging.getLogger(__name__)


@require_GET
async def health(request: HttpRequest) -> JsonResponse:
    """``GET /api/health``: the database and the channel layer, each ``ok`` or an error."""
    database = await _check(selectors.database_ping)
    layer = await _check(_layer_roundtrip)
    ok = database == "ok" and layer == "ok"
    return JsonResponse(
        {"status": "ok" if ok else "degraded", "database": database, "channel_layer": layer},
        status=200 if ok else 503,
    )


async def _check(probe) -> str:  # type: ignore[no-untyped-def]
    try:
        await asyncio.wait_for(probe(), 2.0)
    except TimeoutError:
        return "timeout"
    except Exception as exc:
        log.warning("health probe %s failed: %s", probe.__name__, type(exc).__name__)
        return f"error: {type(exc).__name__}"
    return "ok"


async def _layer_roundtrip() -> None:
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")
    channel = await layer.new_channel("health.")
    await layer.send(channel, {"type": "health.ping"})
    message = await layer.receive(channel)
    if message.get("type") != "health.ping":
        raise RuntimeError("the channel layer returned another message")
