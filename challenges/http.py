"""The HTTP edge's share of the error contract: codes to statuses, and bounded bodies.

Every error an HTTP endpoint answers is the WebSocket's error frame as a JSON
body, with the status :data:`STATUS` gives its code (400 for any code not
listed).
"""

from __future__ import annotations

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse

from . import protocol
from .errors import ChallengeError, Code

STATUS: dict[Code, int] = {
    Code.BAD_SIGNATURE: 401,
    Code.UPSTREAM_BAD_SIGNATURE: 401,
    Code.INVALID_TOKEN: 401,
    Code.TOKEN_EXPIRED: 401,
    Code.WRONG_AUDIENCE: 401,
    Code.API_KEY_REQUIRED: 401,
    Code.API_KEY_NOT_FOUND: 401,
    Code.API_SIG_REQUIRED: 401,
    Code.API_SIG_BAD: 401,
    Code.ORIGIN_NOT_ALLOWED: 403,
    Code.INVALID_HOST: 403,
    Code.UNKNOWN_CHALLENGE: 404,
    Code.NO_CHALLENGE: 409,
    Code.ALREADY_PENDING: 409,
    Code.CHALLENGE_TIMEOUT: 410,
    Code.FRAME_TOO_LARGE: 413,
    Code.TOO_MANY_PENDING: 429,
    Code.TOO_MANY_CONNECTIONS: 429,
    Code.TOO_MANY_ERRORS: 429,
    Code.INTERNAL_ERROR: 500,
    Code.UPSTREAM_API_KEY: 502,
    Code.UPSTREAM_ERROR: 502,
    Code.UPSTREAM_UNAVAILABLE: 503,
    Code.ROUTING_UNAVAILABLE: 503,
    Code.SERVER_SHUTDOWN: 503,
    Code.VERIFICATION_UNAVAILABLE: 503,
    Code.UPSTREAM_DEADLINE: 504,
}


def status_of(code: Code) -> int:
    return STATUS.get(code, 400)


def error_response(error: ChallengeError) -> JsonResponse:
    return JsonResponse(protocol.error_frame(error), status=status_of(error.code))


def bounded_body(request: HttpRequest, limit: int) -> bytes | None:
    """The request body, or None when it is (or says it is) over ``limit`` bytes.
    The Content-Length is checked before anything is read."""
    try:
        if int(request.META.get("CONTENT_LENGTH") or 0) > limit:
            return None
        body = request.body  # also covers a body sent without a Content-Length
    except (ValueError, RequestDataTooBig):
        return None
    return body if len(body) <= limit else None
