"""Django's HTTP endpoints: health, the demo page and its assets.

The two-step token flow is answered before Django, in ASGI
(:mod:`challenges.httpapi`); the endpoints apps check tokens with are in
:mod:`challenges.tokenviews`.
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
from django.views.decorators.http import require_safe
from django.views.static import serve as static_serve

from . import runtime, selectors
from .http import only

log = logging.getLogger(__name__)


@only("GET")
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


# GET and HEAD (RFC 9110: wherever GET is); any other method 405 with Allow, not the CSRF
# check's 403 page first (these pages take no input).
@csrf_exempt
@require_safe
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


@csrf_exempt
@require_safe
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
