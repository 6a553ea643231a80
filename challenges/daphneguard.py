"""daphne's share of the HTTP guard (:mod:`challenges.httpguard`).

daphne's HTTP server (Twisted's) reads a whole request body, into memory or a
temporary file, before it runs any application, and keeps a connection open
as long as a byte arrives now and then; so an ASGI guard sees a body only
once it has cost its full size and time. :func:`install` makes daphne's
requests :class:`GuardedRequest`, which applies the same limits as the bytes
arrive: a declared ``Content-Length`` over the path's limit, or a streamed
body passing it, is answered 413 ``frame_too_large`` and the connection
closed without reading more; a request not received in full within the
timeout of its first line is answered 408 ``invalid_request`` and closed.
Each refusal is audited through the runtime, like the ASGI guard's. A
WebSocket frame that breaks the protocol (a text frame that is not UTF-8)
is answered with a close frame and its RFC 6455 code, 1007, as uvicorn
does, instead of autobahn's default of dropping the TCP connection: the
client learns why, and the application hears the code and audits it. With
``access_records``, daphne's access log (lines it writes to stdout itself)
becomes records of the logger ``daphne.access``, so ``LOG_FORMAT=json`` keeps
one JSON object per line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, ClassVar
from urllib.parse import unquote

from daphne import access, http_protocol, ws_protocol

from . import httpguard
from .errors import ChallengeError
from .http import BodyLimits, refusal
from .tasks import TaskSet

_audits = TaskSet()
_access = logging.getLogger("daphne.access")


def install(limits: BodyLimits, *, access_records: bool = False) -> None:
    """daphne's requests are guarded by ``limits`` from now on (daphne builds one request
    class per connection, looked up when the connection opens). Without daphne running
    (uvicorn) this is inert."""
    GuardedRequest.limits = limits
    http_protocol.WebRequest = GuardedRequest
    ws_protocol.WebSocketFactory.protocol = GuardedWebSocket
    if access_records:
        access.AccessLogGenerator.write_entry = _access_record


def _access_record(
    self: Any, host: str, date: Any, request: str, status: Any = None, length: Any = None, **_: Any
) -> None:
    fields = {"client": host, "request": request, "status": status, "length": length}
    _access.info('%s "%s" %s %s', host, request, status or "-", length or "-", extra=fields)


class GuardedWebSocket(ws_protocol.WebSocketProtocol):  # type: ignore[misc]
    """daphne's WebSocket connection, failing a broken frame as uvicorn does."""

    #: Close with the protocol's code instead of dropping the TCP connection (autobahn copies
    #: a factory option to a connection only when the connection has none of its own).
    failByDrop = False

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        # A connection autobahn failed itself ends without a clean handshake, so the
        # application would hear 1006; tell it the code autobahn closed with instead.
        if self.failedByMe and self.localCloseCode is not None:
            code = self.localCloseCode
        super().onClose(wasClean, code, reason)


class GuardedRequest(http_protocol.WebRequest):  # type: ignore[misc]
    limits: ClassVar[BodyLimits] = BodyLimits()
    _deadline: Any = None
    _refused = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from twisted.internet import reactor as installed  # the one daphne installed

        reactor: Any = installed  # its zope interfaces confuse the type checker
        super().__init__(*args, **kwargs)
        self._limit = self.limits.other
        self._received = 0
        # From the request's first line: slow headers are as costly as a slow body.
        self._deadline = reactor.callLater(self.limits.timeout, self._too_slow)

    def gotLength(self, length: int | None) -> None:
        path = getattr(self.channel, "_path", None) or b""
        self._limit = self.limits.for_path(unquote(path.split(b"?", 1)[0].decode("latin-1")))
        if length is not None and length > self._limit:
            super().gotLength(0)  # an empty body file, never written to
            self._refuse(httpguard.too_large(self._limit))
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self._limit:
            self._refuse(httpguard.too_large(self._limit))
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self._stop_deadline()
        if not self._refused:  # a refused request's body may still complete in the buffer
            super().requestReceived(command, path, version)

    def connectionLost(self, reason: Any) -> None:
        self._stop_deadline()
        super().connectionLost(reason)

    def _too_slow(self) -> None:
        self._deadline = None
        if not self._refused and self.channel is not None:
            self._refuse(httpguard.too_slow(self.limits.timeout), status=408)

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _refuse(self, error: ChallengeError, *, status: int | None = None) -> None:
        """Answer ``error`` and close: nothing more of this connection is read."""
        self._refused = True
        self._stop_deadline()
        channel = self.channel
        _audits.spawn(httpguard.audit(self._scope(), error), name="http-refusal-audit")
        self.requestHeaders.removeHeader(b"expect")  # no "100 Continue" after the refusal
        code, headers, body = refusal(error, status=status)
        head = f"HTTP/1.1 {code} {HTTPStatus(code).phrase}\r\n".encode()
        head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        channel.transport.write(head + b"\r\n" + body)
        channel.loseConnection()

    def _scope(self) -> Mapping[str, Any]:
        """What the client record is built from (as the ASGI scope daphne would give)."""
        headers = [
            (name.lower(), value)
            for name, values in self.requestHeaders.getAllRawHeaders()
            for value in values
        ]
        peer = self.client
        client = (peer.host, peer.port) if hasattr(peer, "host") else None
        return {
            "type": "http",
            "headers": headers,
            "client": client,
            "scheme": "https" if self.isSecure() else "http",
        }
