"""HTTP endpoints: health, and the two-step token flow for clients without a WebSocket."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST
from django.views.static import serve as static_serve

from . import authority, flows, protocol, selectors, upstream
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
        origin = request.headers.get("origin")
        if origin and not origin_allowed(origin, own=f"{request.scheme}://{request.get_host()}"):
            raise ChallengeError("this Origin is not allowed to get tokens here", code="origin_not_allowed")
        body = _bounded_body(request, protocol.MAX_FRAME_BYTES)
        if body is None:
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


def _bounded_body(request: HttpRequest, limit: int) -> bytes | None:
    """The request body, or None when it is (or says it is) over ``limit`` bytes.
    The Content-Length is checked before anything is read."""
    try:
        if int(request.META.get("CONTENT_LENGTH") or 0) > limit:
            return None
        body = request.body  # also covers a body sent without a Content-Length
    except (ValueError, RequestDataTooBig):
        return None
    return body if len(body) <= limit else None


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
        log.warning("health probe %s failed: %s %s", probe.__name__, type(exc).__name__, exc)
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


# -- the browser client's demo page and its token check (issue 3) ---------------

#: Bigger than any token verify_token accepts (8 KiB), small enough to read at once.
MAX_VERIFY_BODY = 16 * 1024
_ASSETS = Path(__file__).resolve().parent / "static" / "challenges"
_DEMO_CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)


@require_GET
def demo(request: HttpRequest) -> HttpResponse:
    """``GET /``: the demo page of the browser client (``static/challenges/demo.js``)."""
    response = render(
        request,
        "challenges/demo.html",
        {"challenge_timeout": settings.CHALLENGE_TIMEOUT, "token_ttl": settings.TOKEN_TTL},
    )
    response["Content-Security-Policy"] = _DEMO_CSP
    response["Referrer-Policy"] = "no-referrer"
    return response


@require_GET
def client_asset(request: HttpRequest, path: str) -> HttpResponseBase:
    """``GET /static/challenges/<file>``: the client module and the demo's files.

    Served by Django whatever ``DEBUG`` says, so the module's import path works
    without ``collectstatic``; a front server may serve ``STATIC_ROOT`` instead.
    """
    response = static_serve(request, path, document_root=str(_ASSETS))
    response["Cache-Control"] = "no-cache"
    if path == "token-client.js":  # public code: apps on other origins may import it
        response["Access-Control-Allow-Origin"] = "*"
    return response


@csrf_exempt
@require_POST
def token_verify(request: HttpRequest) -> JsonResponse:
    """``POST /api/token/verify`` with ``{"token": "..."}``: is this token one of ours?

    Answers ``{"active": true, "claims": {...}}`` or ``{"active": false,
    "code": ..., "error": ...}`` (200 either way, as RFC 7662 introspection
    does); 400 or 413 with ``code: invalid_request`` for a body that is not
    such JSON. It only reads, so it needs no CSRF token. Checks the signature,
    issuer, expiry and (when ``TOKEN_AUDIENCE`` is set) audience with
    :func:`authority.verify_token`; it does not consult revocation.
    """
    raw = _bounded_body(request, MAX_VERIFY_BODY)
    if raw is None:
        return _not_verified("invalid_request", f"the body is limited to {MAX_VERIFY_BODY} bytes", 413)
    try:
        body = json.loads(raw)
    except ValueError:
        return _not_verified("invalid_request", "the body must be JSON", 400)
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str):
        return _not_verified("invalid_request", 'the body must be {"token": "<token>"}', 400)
    try:
        claims = authority.verify_token(
            token, issuer=upstream.authority_key().public, audience=settings.TOKEN_AUDIENCE
        )
    except ChallengeError as error:
        return _not_verified(error.code, error.message, 200)
    return JsonResponse({"active": True, "claims": claims})


def _not_verified(code: str, message: str, status: int) -> JsonResponse:
    return JsonResponse({"active": False, "code": code, "error": message}, status=status)
