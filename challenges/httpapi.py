"""The HTTP two-step, answered in ASGI: no Django request machinery on the hot path.

``POST /api/token/challenge`` ``{"pub": "<public key string>"}`` (step 1) and
``POST /api/token`` ``{"id": "...", "sig": <Buffer JSON | int array | base64>}``
(step 2) run the same step pipeline as the WebSocket (:mod:`challenges.pipeline`):
same validation, codes, audit rows and upstreams; the id of step 2 may
belong to any worker. Errors are the error frame as a JSON body with the
status :mod:`challenges.http` gives its code.

The HTTP guard (:mod:`challenges.httpguard`) calls :func:`answer` once it has
read the body (bounded, in time) and taken the request's rate-limit token.
Django's ASGI handler cost the two-step a thread hop around every request
(its request signals) and its middleware stack: a third of the WebSocket
flow's rate. These two endpoints need neither: no session, no CSRF (a
signature is the credential), no templates.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import ChallengeError
from .http import method_not_allowed, status_of
from .pipeline import Conversation, Outcome
from .runtime import Runtime

Send = Callable[[dict[str, Any]], Awaitable[None]]

#: path -> the frame type its body is.
ROUTES = {"/api/token/challenge": "token", "/api/token": "challenge"}
_HEADERS = [
    (b"content-type", b"application/json"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


def handles(path: str) -> bool:
    """Whether ``path`` (below the application's root) is a step of the two-step."""
    return path in ROUTES


async def answer(
    rt: Runtime, conv: Conversation, scope: dict[str, Any], path: str, body: bytes | None, send: Send
) -> None:
    """Run one step for the request and send its response."""
    if scope.get("method") != "POST":
        await _send(send, 405, method_not_allowed("POST"), [(b"allow", b"POST")])
        return
    conv.requires_id, conv.charge_token_frames = True, False
    client, https = conv.client, rt.config.https
    try:
        domain = rt.config.clients.check_host(client)  # the Host, the transport, then the Origin
        # SECURE_SSL_REDIRECT, as Django's pages have it; 308 keeps the POST and its body.
        location = https.location(secure=client.secure, host=client.host, scope=scope)
        if location is not None:
            await _send(send, 308, b"", [(b"location", location.encode())])
            return
        rt.config.clients.check_origin(client, domain)
    except ChallengeError as error:
        outcome = await rt.pipeline.refuse(conv, error)
    else:
        outcome = await rt.pipeline.body(conv, body, kind=ROUTES[path])
    await _send_outcome(send, outcome, https.headers(secure=client.secure))


async def _send_outcome(send: Send, outcome: Outcome, extra: list[tuple[bytes, bytes]]) -> None:
    status = 200
    if outcome.error is not None:
        status = status_of(outcome.error.code)
        retry_after = getattr(outcome.error, "retry_after", None)
        if retry_after is not None:
            extra = [*extra, (b"retry-after", str(retry_after).encode())]
    await _send(send, status, json.dumps(outcome.frame).encode(), extra)


async def _send(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [*_HEADERS, (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
