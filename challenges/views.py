"""HTTP endpoints: health, the two-step token flow, token verification, the demo page.

The two-step flow runs the same step pipeline as the WebSocket
(:mod:`challenges.pipeline`): same validation, codes, audit rows and
upstreams; errors are the error frame as a JSON body with the status
:mod:`challenges.http` gives its code.
"""

from __future__ import annotations

import asyncio
import json
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

from . import protocol, runtime, selectors, tokens
from .errors import ChallengeError, Code, FrameError
from .http import MAX_VERIFY_BODY, bounded_body, error_response
from .keys import AuthorityKeyMissing
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
    conv = Conversation(client=client, requires_id=True)
    try:
        rt.config.clients.admit(client)
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


@csrf_exempt
@require_POST
async def token_verify(request: HttpRequest) -> JsonResponse:
    """``POST /api/token/verify`` with ``{"token": "..."}``: is this token one of ours?

    Answers ``{"active": true, "claims": {...}}`` or ``{"active": false,
    "code": ..., "error": ...}`` (200 either way, as RFC 7662 introspection
    does); 400 with ``code: invalid_request`` for a body that is not such
    JSON, 413 ``frame_too_large`` over 16 KiB, 503 ``verification_unavailable``
    without a key to check against. It only reads, so it needs no CSRF token. Checks the signature,
    issuer, expiry and (when ``TOKEN_AUDIENCE`` is set) audience with
    :func:`tokens.verify_token`; it does not consult revocation.
    """
    rt = await runtime.get()
    raw = bounded_body(request, MAX_VERIFY_BODY)
    if raw is None:  # as the HTTP guard answers it in front of a server
        return error_response(
            FrameError(f"the body is limited to {MAX_VERIFY_BODY} bytes", code=Code.FRAME_TOO_LARGE)
        )
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return _not_verified(Code.INVALID_REQUEST, "the body must be JSON", 400)
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str):
        return _not_verified(Code.INVALID_REQUEST, 'the body must be {"token": "<token>"}', 400)
    try:
        issuer = rt.authority_key.public
    except AuthorityKeyMissing:  # a relay in production without the key: challenges.E011
        log.error("POST /api/token/verify: AUTHORITY_PRIVATE_KEY is not set; no token can be verified")
        return _not_verified(Code.VERIFICATION_UNAVAILABLE, Code.VERIFICATION_UNAVAILABLE.meaning, 503)
    try:
        claims = tokens.verify_token(token, issuer=issuer, audience=rt.config.token_audience)
    except ChallengeError as error:
        return _not_verified(error.code, error.message, 200)
    return JsonResponse({"active": True, "claims": claims})


def _not_verified(code: Code, message: str, status: int) -> JsonResponse:
    return JsonResponse({"active": False, "code": str(code), "error": message}, status=status)
