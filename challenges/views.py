"""HTTP endpoints: health, and the two-step token flow for clients without a WebSocket."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from . import flows, protocol, selectors
from .errors import ChallengeError, FrameError, StateError
from .origins import client_ip, origin_allowed

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


@csrf_exempt
@require_POST
async def token_challenge(request: HttpRequest) -> JsonResponse:
    """``POST /api/token/challenge`` ``{"pub": "<public key string>"}``: step 1.

    Answers the WebSocket's challenge frame as JSON: ``id``, ``value``
    (Buffer JSON), ``expires_at`` and ``raw``.
    """
    return await _step(request, "token")


@csrf_exempt
@require_POST
async def token(request: HttpRequest) -> JsonResponse:
    """``POST /api/token`` ``{"id": "...", "sig": <Buffer JSON | int array | base64>}``: step 2.

    The id may belong to a challenge issued by any worker.
    """
    return await _step(request, "challenge")


async def _step(request: HttpRequest, kind: str) -> JsonResponse:
    service = flows.get_service()
    client = _client(request)
    context = protocol.FrameContext(type=kind)
    try:
        if request.headers.get("origin") and not origin_allowed(request.headers["origin"]):
            raise ChallengeError("this Origin is not allowed to get tokens here", code="origin_not_allowed")
        body = request.body
        if len(body) > protocol.MAX_FRAME_BYTES:
            raise FrameError(
                f"bodies are limited to {protocol.MAX_FRAME_BYTES} bytes", code="frame_too_large"
            )
        obj: dict[str, Any] = protocol.decode(body.decode("utf-8", errors="replace"))
        obj["type"] = kind
        context = protocol.peek(obj)
        message = protocol.parse_message(obj)
        if isinstance(message, protocol.TokenRequest):
            flow = await service.begin(key=message.pub, client=client)
            return JsonResponse(flow.frame())
        if message.challenge_id is None:
            raise StateError("the body needs the challenge 'id'", code="unknown_challenge")
        value = await service.finish(flow_id=message.challenge_id, signature=message.sig, client=client)
        return JsonResponse(protocol.token_frame(value))
    except ChallengeError as error:
        await service.reject(error, client=client, context=context)
        return JsonResponse(protocol.error_frame(error), status=error.http_status)


def _client(request: HttpRequest) -> flows.ClientInfo:
    headers = {k.lower(): v for k, v in request.headers.items()}
    return flows.ClientInfo(
        ip=client_ip({"client": (request.META.get("REMOTE_ADDR"), 0)}, headers),
        origin=headers.get("origin", "")[:200],
        user_agent=headers.get("user-agent", "")[:200],
        audience=settings.TOKEN_AUDIENCE or f"{request.scheme}://{request.get_host()}",
        transport="http",
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
