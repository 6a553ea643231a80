"""The endpoints apps check tokens with: the published key set, introspection, verify.

* ``GET /.well-known/jwks.json``: the authority's public keys (the current
  one, rotated-out ones still listed, a relayed authority's) as OKP/Ed25519
  JWKs with the ``kid`` every token carries in its header; for offline checks.
* ``POST /api/token/introspect`` (RFC 7662): ``token`` as a form field or JSON,
  ``Authorization: Bearer <INTROSPECTION_TOKEN>``; answers
  ``{"active": true, ...claims}`` or ``{"active": false}``, honouring expiry,
  audience and revocation at once.
* ``POST /api/token/verify``: the older alias the demo page uses, on the same
  check, unauthenticated (its caller holds the token), with the reason when
  the token is not active: ``{"active": false, "code": ..., "error": ...}``.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from django.core.exceptions import SuspiciousOperation
from django.http import HttpRequest, JsonResponse
from django.http.multipartparser import MultiPartParserError

from . import runtime
from .errors import ChallengeError, Code, FrameError
from .http import MAX_VERIFY_BODY, bounded_body, error_response, only
from .introspection import inspect


@only("GET")
async def jwks(request: HttpRequest) -> JsonResponse:
    """``GET /.well-known/jwks.json``: the key set (cacheable, readable from any origin)."""
    rt = await runtime.get()
    response = JsonResponse(rt.keys.jwks())
    response["Cache-Control"] = "public, max-age=300"
    response["Access-Control-Allow-Origin"] = "*"
    return response


@only("POST")
async def introspect(request: HttpRequest) -> JsonResponse:
    """``POST /api/token/introspect``: RFC 7662 token introspection, for resource servers."""
    rt = await runtime.get()
    if not _authorized(request, rt.config.introspection_token):
        response = JsonResponse({"error": "invalid_client"}, status=401)
        response["WWW-Authenticate"] = 'Bearer realm="introspection"'
        return response
    token, problem = _token_of(request, form=True)
    if problem is not None:
        return JsonResponse({"error": "invalid_request", "error_description": problem[0]}, status=problem[1])
    try:
        verdict = await inspect(token, keys=rt.keys, audience=rt.config.token_audience)
    except ChallengeError as error:
        return error_response(error)
    body: dict[str, Any] = (
        {"active": True, **verdict.claims, "token_type": "Bearer"} if verdict.active else {"active": False}
    )
    response = JsonResponse(body)
    response["Cache-Control"] = "no-store"
    return response


@only("POST")
async def token_verify(request: HttpRequest) -> JsonResponse:
    """``POST /api/token/verify`` with ``{"token": "..."}``: is this token one of ours, and live?

    Answers ``{"active": true, "claims": {...}}`` or ``{"active": false,
    "code": ..., "error": ...}`` (200 either way); 400 ``invalid_request`` for
    a body that is not such JSON, 413 ``frame_too_large`` over 16 KiB, 503
    ``verification_unavailable`` without a key to check against. It only
    reads, so it needs no CSRF token.
    """
    rt = await runtime.get()
    token, problem = _token_of(request, form=False)
    if problem is not None:
        if problem[1] == 413:  # as the HTTP guard answers it in front of a server
            return error_response(FrameError(problem[0], code=Code.FRAME_TOO_LARGE))
        return _not_verified(Code.INVALID_REQUEST, *problem)
    try:
        verdict = await inspect(token, keys=rt.keys, audience=rt.config.token_audience)
    except ChallengeError as error:
        return _not_verified(error.code, error.message, 503)
    if not verdict.active:
        return _not_verified(verdict.code or Code.INVALID_TOKEN, verdict.message, 200)
    return JsonResponse({"active": True, "claims": verdict.claims})


def _token_of(request: HttpRequest, *, form: bool) -> tuple[str, tuple[str, int] | None]:
    """The ``token`` field of a JSON body (or, with ``form``, a form body), or why not."""
    raw = bounded_body(request, MAX_VERIFY_BODY)
    if raw is None:
        return "", (f"the body is limited to {MAX_VERIFY_BODY} bytes", 413)
    if form and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        try:
            token = request.POST.get("token")
        except (MultiPartParserError, SuspiciousOperation):  # no boundary, too many fields:
            return "", ("the form body is malformed", 400)  # Django's HTML 400 and a traceback
    else:
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            return "", ("the body must be JSON" + (" or a form" if form else ""), 400)
        token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        return "", ('the body must be {"token": "<token>"}', 400)
    return token, None


def _authorized(request: HttpRequest, expected: str) -> bool:
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if not expected or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode(), expected.encode())


def _not_verified(code: Code, message: str, status: int) -> JsonResponse:
    return JsonResponse({"active": False, "code": str(code), "error": message}, status=status)
