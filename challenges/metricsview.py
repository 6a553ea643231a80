"""``GET /metrics``: the Prometheus exposition, for the addresses and the token allowed.

An ASGI endpoint in front of Django (and behind the HTTP guard, whose rate
limit and connection cap it shares): a scraper reaches a worker by its own
address, a Host Django's ``ALLOWED_HOSTS`` would refuse, and over plain http,
which production settings redirect. Who may read is
:class:`~challenges.access.MetricsAccess`'s rule, on the client address as
:class:`~challenges.clients.ClientPolicy` sees it (behind your proxies, the
address they report); anyone else gets 403. The exposition is
:func:`challenges.metrics.render`: every worker's metrics under ``manage.py
serve``, this process's otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from . import metrics, runtime
from .http import app_path

if TYPE_CHECKING:  # the guard imports this module (its path)
    from .httpguard import Receive, Send

log = logging.getLogger(__name__)

PATH = "/metrics"
_TEXT = b"text/plain; charset=utf-8"


class MetricsEndpoint:
    """ASGI middleware for the ``http`` scope: ``/metrics`` here, anything else to ``app``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or app_path(scope) != PATH:
            await self.app(scope, receive, send)
            return
        rt = await runtime.get()
        client = rt.config.clients.describe(scope, transport="http")
        if not rt.config.metrics.allows(client.ip, _header(scope, b"authorization")):
            log.debug("/metrics refused to %s", client.ip)
            await _respond(send, 403, _TEXT, b"forbidden\n")
            return
        method = scope.get("method")
        if method not in ("GET", "HEAD"):
            await _respond(send, 405, _TEXT, b"GET or HEAD\n", [(b"allow", b"GET, HEAD")])
            return
        body = await asyncio.to_thread(metrics.render)
        await _respond(send, 200, metrics.CONTENT_TYPE.encode(), body, head=method == "HEAD")


def _header(scope: dict[str, Any], name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return ""


async def _respond(
    send: Send,
    status: int,
    content_type: bytes,
    body: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
    *,
    head: bool = False,
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
