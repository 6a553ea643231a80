"""HTTP endpoints: health, the two-step token flow, the demo page and its assets.

The two-step flow runs the same step pipeline as the WebSocket
(:mod:`challenges.pipeline`): same validation, codes, audit rows and
upstreams; errors are the error frame as a JSON body with the status
:mod:`challenges.http` gives its code. The endpoints apps check tokens with
are in :mod:`challenges.tokenviews`.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST
from django.views.static import serve as static_serve

from . import protocol, runtime, selectors
from .errors import ChallengeError
from .http import bounded_body, error_response
from .pipeline import Conversation, Outcome

log = logging.getLogger(__name__)


@require_GET
async def health(request: HttpRequest) -> JsonResponse:
    """``GET /api/health``: the database and the channel layer, each ``ok`` or an error."""
    rt = await runtime.get()
    database = await _check(selectors.database_ping)
    layer = await _check(lambda: _layer_roundtrip(rt.layer))
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
    rt = await runtime.get()
    client = rt.config.clients.describe(_scope(request), transport="http")
    conv = Conversation(client=client, requires_id=True, charge_token_frames=False)
    try:
        rt.config.clients.admit(client)  # the HTTP guard took the request's rate-limit token
    except ChallengeError as error:
        return _answer(await rt.pipeline.refuse(conv, error))
    body = bounded_body(request, protocol.MAX_FRAME_BYTES)
    return _answer(await rt.pipeline.body(conv, body, kind=kind))


def _answer(outcome: Outcome) -> JsonResponse:
    if outcome.error is not None:
        return error_response(outcome.error)
    return JsonResponse(outcome.frame)


def _scope(request: HttpRequest) -> dict[str, Any]:
    """The ASGI scope behind a request (a WSGI request gets one built from its META)."""
    scope = getattr(request, "scope", None)
    if scope is not None:
        return dict(scope)
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.items()]
    return {"headers": headers, "client": (request.META.get("REMOTE_ADDR"), 0), "scheme": request.scheme}


async def _check(probe) -> str:  # type: ignore[no-untyped-def]
    try:
        await asyncio.wait_for(probe(), 2.0)
    except TimeoutError:
        return "timeout"
    except Exception as exc:
        log.warning("health probe %s failed: %s %s", probe.__name__, type(exc).__name__, exc)
        return f"error: {type(exc).__name__}"
    return "ok"


async def _layer_roundtrip(layer: Any) -> None:
    if layer is None:
        raise RuntimeError("no channel layer configured")
    channel = await layer.new_channel("health.")
    await layer.send(channel, {"type": "health.ping"})
    message = await layer.receive(channel)
    if message.get("type") != "health.ping":
        raise RuntimeError("the channel layer returned another message")


# -- the browser client's demo page and its token check -------------------------

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
