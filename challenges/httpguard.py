"""The HTTP guard: what a client can make the server hold before Django reads its request.

Django's ASGI handler reads a whole request body (into a spooled temporary
file) before any view runs, and waits for it as long as the client likes.
:class:`HttpGuard`, in front of Django's HTTP app, reads the body first:

* a declared ``Content-Length`` over the path's limit (:class:`~challenges.http.BodyLimits`)
  is answered 413 ``frame_too_large`` at once, nothing read;
* a streamed body is counted and refused (413) as soon as it passes the limit:
  at most the limit and the chunk that crosses it are ever held;
* a body not complete within the limits' timeout is answered 408
  ``invalid_request``, and the connection closed;
* every request but ``GET /api/health`` (a load balancer's probe) takes a
  token from its address's rate limit (:mod:`challenges.ratelimit`): none
  left, 429 ``rate_limited`` with ``Retry-After``;
* a request for Django (not the two-step, ``/metrics`` or the health probe)
  whose Host is outside ``ALLOWED_HOSTS`` is answered 403 ``invalid_host``,
  as the two-step and the sockets are (Django answered an HTML 400, wrote no
  audit row, and logged an ERROR with its traceback for each);
* a sign-in attempt on the admin (a ``POST`` to its login page whose body
  arrived) takes one more from its address's sign-in bucket
  (``ADMIN_LOGIN_PER_MINUTE``, far slower), so passwords cannot be guessed at
  the request rate: none left, 429 ``too_many_sign_ins``;
* while it runs, a request holds one of its address's connection slots, the
  ones WebSockets count against (:class:`~challenges.limits.Limits`): none
  free, 429 ``too_many_connections``.

The two-step's endpoints are then answered in ASGI (:mod:`challenges.httpapi`);
for every other path, the body it read is replayed to Django. Every refusal is audited through the
runtime, with the client record :class:`~challenges.clients.ClientPolicy`
builds, as the views' refusals are. Under daphne, which reads a whole body
before it runs any application, :mod:`challenges.daphneguard` applies the same
limits inside daphne as the bytes arrive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from functools import cache
from typing import Any

from django.urls import NoReverseMatch, get_script_prefix, reverse

from . import httpapi, runtime
from .errors import ChallengeError, Code, FrameError
from .http import app_path, refusal
from .limits import address_scope
from .metricsview import PATH as METRICS_PATH
from .pipeline import Conversation

HEALTH = "/api/health"
#: The sign-in buckets' scopes: apart from the request rate's.
SIGN_IN = "sign-in:"
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class HttpGuard:
    """ASGI middleware for the ``http`` scope (Django's app behind it)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rt = await runtime.get()
        conv = Conversation(client=rt.config.clients.describe(scope, transport="http"))
        address = address_scope(conv.client.ip)
        path = app_path(scope)
        two_step = httpapi.handles(path)
        try:
            if path != HEALTH:  # a load balancer's probe is not a client's request
                await rt.limiter.take(address)
                if not two_step and path != METRICS_PATH:  # for Django: the two-step checks its own,
                    # /metrics is scraped at the worker's address. Django's answer was a 400 page,
                    # unaudited, and an ERROR with its traceback.
                    rt.config.clients.check_host(conv.client)
            rt.limits.open_connection(conv.client.ip)
        except ChallengeError as error:
            await _refuse(rt, conv, send, error)
            return
        try:
            body = await _body(rt, conv, scope, rt.config.http.for_path(path), receive, send)
            if body is None:
                return  # refused (and answered), or the client left
            if two_step:
                await httpapi.answer(rt, conv, scope, path, body, send)  # the two-step: no Django
            elif not _signs_in(scope, path) or await _sign_in_allowed(rt, conv, address, send):
                await self.app(scope, _replay(body, receive), send)
        finally:
            rt.limits.close_connection(conv.client.ip)


async def _body(
    rt: runtime.Runtime,
    conv: Conversation,
    scope: Mapping[str, Any],
    limit: int,
    receive: Receive,
    send: Send,
) -> bytes | None:
    """The whole body (at most ``limit`` bytes), or None when it was refused (and answered)
    or the client left."""
    limits = rt.config.http
    try:
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            raise too_large(limit)
        async with asyncio.timeout(limits.timeout):
            return await _read(receive, limit)
    except TimeoutError:
        await _refuse(rt, conv, send, too_slow(limits.timeout), status=408)
    except ChallengeError as error:
        await _refuse(rt, conv, send, error)
    return None


@cache
def _login_path() -> str | None:
    """The admin's login page below the application's root (None: no admin is routed)."""
    try:
        return "/" + reverse("admin:login").removeprefix(get_script_prefix())
    except NoReverseMatch:
        return None


def _signs_in(scope: Mapping[str, Any], path: str) -> bool:
    """A ``POST`` to the admin's login page (``path``: below the application's root)."""
    return scope.get("method") == "POST" and path == _login_path()


async def _sign_in_allowed(rt: runtime.Runtime, conv: Conversation, address: str, send: Send) -> bool:
    """Take a sign-in attempt from the address's bucket; False once refused and answered."""
    try:
        await rt.login_limiter.take(SIGN_IN + address)
    except ChallengeError as error:  # too_many_sign_ins, or the shared limits unreachable
        await _refuse(rt, conv, send, error)
        return False
    return True


def too_large(limit: int) -> FrameError:
    return FrameError(f"the request body is limited to {limit} bytes here", code=Code.FRAME_TOO_LARGE)


def too_slow(timeout: float) -> FrameError:
    return FrameError(f"the request did not arrive within {timeout:g} s", code=Code.INVALID_REQUEST)


async def audit(scope: Mapping[str, Any], error: ChallengeError) -> None:
    """Audit a refusal decided and answered outside ASGI (daphne's share of the guard)."""
    rt = await runtime.get()
    await rt.pipeline.refuse(Conversation(client=rt.config.clients.describe(scope, transport="http")), error)


async def _refuse(
    rt: runtime.Runtime, conv: Conversation, send: Send, error: ChallengeError, *, status: int | None = None
) -> None:
    await rt.pipeline.refuse(conv, error)
    code, headers, body = refusal(error, status=status)
    await send({"type": "http.response.start", "status": code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """Django's ``receive``: the body read, then the server's (for the disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> dict[str, Any]:
        return pending.pop() if pending else await receive()

    return replayed


def _content_length(scope: Mapping[str, Any]) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = -1
            if length < 0:
                raise FrameError("the Content-Length header is not a length", code=Code.INVALID_REQUEST)
            return length
    return None
