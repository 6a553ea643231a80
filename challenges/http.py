"""The HTTP edge's share of the error contract: codes to statuses, and bounded bodies.

Every error an HTTP endpoint answers is the WebSocket's error frame as a JSON
body, with the status :data:`STATUS` gives its code (400 for any code not
listed). :class:`BodyLimits` is how much body each path takes, and how long a
body may take to arrive (enforced by :mod:`challenges.httpguard`).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import quote

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from . import protocol
from .errors import ChallengeError, Code, RefusedError

#: ``POST /api/token/verify`` and ``/introspect``: bigger than any token verify_token accepts (8 KiB).
MAX_VERIFY_BODY = 16 * 1024
#: Django's default ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (2.5 MB).
DJANGO_UPLOAD_LIMIT = 2_621_440


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """The bytes a request body may have, by path, and the seconds it has to arrive in full."""

    api: int = protocol.MAX_FRAME_BYTES
    verify: int = MAX_VERIFY_BODY
    #: Anything else (the admin): Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE``.
    other: int = DJANGO_UPLOAD_LIMIT
    timeout: float = 10.0

    def for_path(self, path: str) -> int:
        if path.rstrip("/") in ("/api/token/verify", "/api/token/introspect"):
            return self.verify
        return self.api if path.startswith("/api/") else self.other


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
    Code.INSECURE_TRANSPORT: 403,
    Code.UNKNOWN_CHALLENGE: 404,
    Code.NO_CHALLENGE: 409,
    Code.ALREADY_PENDING: 409,
    Code.CHALLENGE_TIMEOUT: 410,
    Code.FRAME_TOO_LARGE: 413,
    Code.TOO_MANY_PENDING: 429,
    Code.TOO_MANY_CONNECTIONS: 429,
    Code.TOO_MANY_ERRORS: 429,
    Code.RATE_LIMITED: 429,
    Code.TOO_MANY_SIGN_INS: 429,
    Code.KEY_BLOCKED: 403,
    Code.LIMITS_UNAVAILABLE: 503,
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
    response = JsonResponse(protocol.error_frame(error), status=status_of(error.code))
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    return response


def method_not_allowed(allowed: str) -> bytes:
    """The body of an API endpoint's 405 (with an ``Allow`` header): JSON, as all its answers."""
    return json.dumps({"error": "method_not_allowed", "error_description": f"use {allowed}"}).encode()


View = TypeVar("View", bound=Callable[..., Awaitable[HttpResponse]])


def only(method: str) -> Callable[[View], View]:
    """An API view that takes ``method`` only (``GET`` takes ``HEAD`` too). Any other method
    gets 405, ``Allow`` and a JSON body (Django's own answer was an empty HTML page), and no
    CSRF check comes first (it answered a POST to a GET endpoint with a 403 HTML page)."""
    allowed = ("GET", "HEAD") if method == "GET" else (method,)

    def decorate(view: View) -> View:
        @functools.wraps(view)
        async def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in allowed:
                response = HttpResponse(
                    method_not_allowed(method), status=405, content_type="application/json"
                )
                response["Allow"] = ", ".join(allowed)
                return response
            return await view(request, *args, **kwargs)

        return cast(View, csrf_exempt(checked))

    return decorate


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


def refusal(
    error: ChallengeError, *, status: int | None = None
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """A refusal outside Django (status, headers, body): the error frame, and the connection
    closed after it (the rest of the request is never read)."""
    body = json.dumps(protocol.error_frame(error)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"connection", b"close"),
    ]
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    return status or status_of(error.code), headers, body


@dataclass(frozen=True, slots=True)
class HttpsPolicy:
    """Django's https settings for what is answered outside its middleware (the two-step):
    ``SECURE_SSL_REDIRECT`` (and ``SECURE_SSL_HOST``), and the ``Strict-Transport-Security``
    header of ``SECURE_HSTS_*`` on https answers."""

    redirect: bool = False
    ssl_host: str = ""
    hsts: str = ""
    #: ``SECURE_REDIRECT_EXEMPT``: paths (without their leading slash) never redirected.
    exempt: tuple[re.Pattern[str], ...] = ()

    @classmethod
    def from_settings(cls, settings: Any) -> HttpsPolicy:
        hsts = ""
        if settings.SECURE_HSTS_SECONDS:
            hsts = f"max-age={settings.SECURE_HSTS_SECONDS}"
            hsts += "; includeSubDomains" if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS else ""
            hsts += "; preload" if settings.SECURE_HSTS_PRELOAD else ""
        return cls(
            redirect=settings.SECURE_SSL_REDIRECT,
            ssl_host=settings.SECURE_SSL_HOST or "",
            hsts=hsts,
            exempt=tuple(re.compile(pattern) for pattern in settings.SECURE_REDIRECT_EXEMPT),
        )

    def location(self, *, secure: bool, host: str, scope: Mapping[str, Any]) -> str | None:
        """Where a plain-http request goes instead (None: answer it). ``host`` must have
        passed ``ALLOWED_HOSTS``: it is written into the redirect."""
        if not self._redirects(secure, scope):
            return None
        own = app_path(scope)
        path = quote(f"{scope.get('root_path', '')}{own}", safe="/")
        query = bytes(scope.get("query_string", b"")).decode("latin-1")
        return f"https://{self.ssl_host or host}{path}" + (f"?{query}" if query else "")

    def refuse_plain_socket(self, *, secure: bool, scope: Mapping[str, Any]) -> None:
        """Raise :class:`~challenges.errors.RefusedError` (``insecure_transport``) for a plain
        ``ws://`` socket where a plain-http request would be redirected: a socket cannot
        follow a redirect, and the token it asks for would cross the network in clear."""
        if self._redirects(secure, scope):
            raise RefusedError(Code.INSECURE_TRANSPORT.meaning, code=Code.INSECURE_TRANSPORT)

    def _redirects(self, secure: bool, scope: Mapping[str, Any]) -> bool:
        if not self.redirect or secure:
            return False
        return not any(pattern.search(app_path(scope).lstrip("/")) for pattern in self.exempt)

    def headers(self, *, secure: bool) -> list[tuple[bytes, bytes]]:
        return [(b"strict-transport-security", self.hsts.encode())] if secure and self.hsts else []


def app_path(scope: Mapping[str, Any]) -> str:
    """The request's path below the application's root: uvicorn's ``path`` includes
    ``root_path`` (as the ASGI spec now has it), daphne's does not (as Django reads both)."""
    path, root = str(scope.get("path", "")), str(scope.get("root_path", ""))
    return path[len(root) :] if root and path.startswith(root) else path
