"""The gRPC-Web endpoint: ``GetToken`` for the Hub's JavaScript client (``@textile/hub``).

``tokensite/asgi.py`` routes here every WebSocket handshake whose path ends in
``/threads.pb.API/GetToken`` or ``/threads.net.pb.API/GetToken``; one without
the subprotocol ``grpc-websockets`` is refused (HTTP 403, which the client
reports as "Response closed without headers"). Each connection is one call:

1. admitted as every other flow (Host and Origin by the runtime's
   ``ClientPolicy``, one token of the address's rate limit, the per-address
   connection cap);
2. its metadata block read (:mod:`challenges.grpcweb`) and its API key checked
   as ``runauthority`` checks it (:class:`~challenges.hub.ApiKeyCheck`);
3. driven through :class:`~challenges.gettoken.GetTokenCall`, the state machine
   ``runauthority`` drives too, with the embedded authority's key and the
   process's one stream cap (:class:`~challenges.hub.GetTokenService`);
4. ended by the trailers (``grpc-status``, ``grpc-message``) and a close: the
   client settles its promise only when the socket closes.

Every call is an audit row (``transport`` ``grpc-web``, with its API key as
:func:`~challenges.hub.key_label` shows it): the call's outcome, or, for a
call refused before it began (admission, a malformed or missing metadata
block, the server shutting down), a refusal counted per address, code and
minute as ``/ws/token``'s are. Each is counted in the metrics as the other
transports' outcomes are (``transport`` ``grpc-web``, ``upstream``
``authority``, as its audit row). Malformed framing gets a trailer naming what
was wrong and a normal close, never 1011 (a text message that is not UTF-8
is closed by the server's WebSocket layer, 1007: the call ends as
``invalid_utf8``, not as cancelled). When the server drains, a call in
progress ends with ``UNAVAILABLE`` "the server is shutting down; retry".
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import Any

from . import grpcweb, runtime
from .apikeys import API_KEY_HEADER
from .clients import ClientInfo
from .errors import CLOSE_INVALID_PAYLOAD, ApiKeyError, ChallengeError, Code, RefusedError, not_utf8
from .gettoken import FIRST_MESSAGE_WAIT, Caller, Reply
from .grpcweb import Request
from .hub import GetTokenService
from .hubstatus import Status, status_of
from .limits import address_scope
from .outcomes import observe

log = logging.getLogger(__name__)

TRANSPORT = "grpc-web"
#: The route (the router strips the leading slashes): any prefix (an app's host may carry a
#: path), either service name. A host given with a trailing slash makes the client ask for
#: ``//threads.pb.API/GetToken``, which daphne (autobahn) reads as a network-path reference,
#: host ``threads.pb.API``, path ``/GetToken``: so that path alone is taken too.
PATH = r"^(?:(?:.*/)?threads(?:\.net)?\.pb\.API/)?GetToken$"
#: Seconds a new connection has to send its metadata block, and then its first request (the
#: client sends both on open): a call waiting for them holds a slot of the stream cap.
METADATA_WAIT = 10.0
#: Messages a connection may leave unread (the Hub's client sends at most five).
MAX_QUEUED = 8
#: A message larger than this is refused unread (a metadata block or a frame over 64 KiB).
MAX_QUEUED_BYTES = grpcweb.MAX_MESSAGE_BYTES + 6
#: Seconds a call failed by the server's WebSocket layer has to audit its end before it is
#: cancelled (it only has its audit row to write: the socket is gone).
FAILED_CALL_WAIT = 5.0
_SHUTDOWN = object()


def _shutting_down() -> RefusedError:
    return RefusedError("the server is shutting down; retry", code=Code.SERVER_SHUTDOWN)


class GetTokenSocket:
    """The ASGI application of the route: one connection, one call."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "websocket" or (await receive()).get("type") != "websocket.connect":
            return
        if grpcweb.SUBPROTOCOL not in (scope.get("subprotocols") or ()):
            await send({"type": "websocket.close"})  # the handshake refused: HTTP 403
            return
        rt = await runtime.get()
        await send({"type": "websocket.accept", "subprotocol": grpcweb.SUBPROTOCOL})
        connection = _Connection(rt, scope, send)
        call = asyncio.create_task(connection.serve(), name="grpc-web-get-token")
        try:
            while True:  # until the socket is closed, by either side
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    if message.get("code") == CLOSE_INVALID_PAYLOAD:
                        # A text frame that was not UTF-8, refused by the server's WebSocket
                        # layer: the call ends with it (audited as such), not as cancelled.
                        connection.fail(not_utf8())
                        await asyncio.wait({call}, timeout=FAILED_CALL_WAIT)
                    break
                if message["type"] == "websocket.receive":
                    connection.feed(message)
        finally:
            call.cancel()  # a no-op once it has ended; else the caller went away mid-call
            await asyncio.gather(call, return_exceptions=True)


async def refuse_handshake(scope: Any, receive: Any, send: Any) -> None:
    """Any other WebSocket path: the handshake refused (HTTP 403), no traceback."""
    if scope.get("type") == "websocket" and (await receive()).get("type") == "websocket.connect":
        await send({"type": "websocket.close"})


class _Connection:
    def __init__(self, rt: runtime.Runtime, scope: Any, send: Any) -> None:
        self.rt = rt
        self.scope = scope
        self._send = send
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.reader = grpcweb.RequestReader()
        self.requests: collections.deque[Request | None] = collections.deque()
        self.headers_sent = False
        self.closed = False
        self.first = True

    # -- the caller's side ----------------------------------------------------------

    def feed(self, message: dict[str, Any]) -> None:
        """A WebSocket message from the client (the ASGI loop's task)."""
        if self.closed:
            return
        data = message.get("bytes")
        if self.inbox.qsize() >= MAX_QUEUED:
            self.inbox.put_nowait(grpcweb.invalid("too many messages left unread"))
            self.closed = True
        elif data is None:
            self.inbox.put_nowait(grpcweb.invalid("a text message: gRPC-Web messages are binary"))
        elif len(data) > MAX_QUEUED_BYTES:
            self.inbox.put_nowait(grpcweb.too_large(len(data)))
            self.closed = True
        else:
            self.inbox.put_nowait(data)

    def fail(self, error: ChallengeError) -> None:
        """The server's WebSocket layer failed the connection: whatever the call waits for
        next is ``error``, and nothing more is read."""
        self.closed = True
        self.inbox.put_nowait(error)

    def stop(self) -> None:
        """The server drains: whatever the call waits for next is the shutdown."""
        self.inbox.put_nowait(_SHUTDOWN)

    async def _next(self) -> bytes:
        item = await self.inbox.get()
        if item is _SHUTDOWN:
            raise _shutting_down()
        if isinstance(item, ChallengeError):
            raise item
        return bytes(item)

    async def receive(self) -> Request | None:
        """The call's next request (None: the half-close); raises a coded error. The first
        must come within :data:`METADATA_WAIT` (the signature has the call's deadline)."""
        first, self.first = self.first, False
        try:
            async with asyncio.timeout(METADATA_WAIT if first else None):
                while not self.requests:
                    self.requests.extend(self.reader.feed(await self._next()))
        except TimeoutError:
            raise ChallengeError(f"no request within {METADATA_WAIT:g} s", code=Code.MISSING_PUB) from None
        return self.requests.popleft()

    async def _metadata(self, wait: float) -> dict[str, str]:
        try:
            async with asyncio.timeout(wait):
                data = await self._next()
        except TimeoutError:
            raise grpcweb.invalid(f"no metadata block within {wait:g} s") from None
        return grpcweb.parse_metadata(data)

    # -- the call ---------------------------------------------------------------------

    async def serve(self) -> None:
        rt = self.rt
        client = rt.config.clients.describe(self.scope, transport=TRANSPORT)
        caller = Caller(ip=client.ip, user_agent=client.user_agent, origin=client.origin, transport=TRANSPORT)
        try:
            hub = rt.hub
        except runtime.HubUnavailable:  # the runtime logged why, once
            error = ChallengeError("GetToken is not configured on this server", code=Code.NOT_CONFIGURED)
            await self._refuse(error, client, caller)
            return
        untrack = hub.track(self.stop)
        opened = False
        try:
            try:
                rt.config.admit_socket(client, self.scope)
                await rt.limiter.take(address_scope(client.ip))
                rt.limits.open_connection(client.ip)
                opened = True
                rt.metrics.websocket_opened()
            except ChallengeError as error:
                with contextlib.suppress(ChallengeError):  # the key, for the audit, if it comes
                    metadata = await self._metadata(FIRST_MESSAGE_WAIT)
                    caller.api_key = hub.keys.label(metadata.get(API_KEY_HEADER))
                await self._refuse(error, client, caller)
                return
            await self._call(hub, client, caller)
        except Exception:
            log.exception("GetToken over gRPC-Web failed")
            await self.finish(ChallengeError("the server failed; retry", code=Code.INTERNAL_ERROR))
        finally:
            if opened:
                rt.limits.close_connection(client.ip)
                rt.metrics.websocket_closed()
            untrack()

    async def _call(self, hub: GetTokenService, client: ClientInfo, caller: Caller) -> None:
        try:
            metadata = await self._metadata(METADATA_WAIT)
            caller.api_key = hub.keys.label(metadata.get(API_KEY_HEADER))
            if not hub.accepting:
                raise _shutting_down()
        except ChallengeError as error:
            await self._refuse(error, client, caller)
            return
        refusal: ChallengeError | None = None
        try:
            hub.keys.check(metadata)
        except ApiKeyError as error:
            refusal = error
        ended = await hub.call(caller).run(
            self.receive, self.reply, status_name=lambda error: status_of(error)[0].name, refusal=refusal
        )
        await self.finish(ended)

    async def _refuse(self, error: ChallengeError, client: ClientInfo, caller: Caller) -> None:
        """A call refused before it began: counted per address, code and minute, then ended."""
        status, message = status_of(error)
        record = caller.record(error.code, status=status.name, worker=self.rt.config.worker, detail=message)
        observe(self.rt.authority_metrics, record)
        await self.rt.refusals.add(record)
        log.debug("GetToken over gRPC-Web refused from %s: %s", client.ip, error.code)
        await self.finish(error)

    # -- the server's side -----------------------------------------------------------------

    async def reply(self, reply: Reply) -> None:
        """The challenge or the token, after the headers (each block its own message)."""
        if not self.headers_sent:
            self.headers_sent = True
            await self._write(grpcweb.response_headers())
        payload = grpcweb.encode_reply(challenge=reply.challenge, token=reply.token)
        await self._write(grpcweb.data_message(payload))

    async def finish(self, error: ChallengeError | None) -> None:
        """The trailers, then the close: nothing follows an ``80`` block in its message."""
        status, message = (Status.OK, "") if error is None else status_of(error)
        await self._write(grpcweb.trailers(status, message, headers_sent=self.headers_sent))
        self.closed = True
        with contextlib.suppress(Exception):
            await self._send({"type": "websocket.close", "code": 1000})

    async def _write(self, data: bytes) -> None:
        try:
            await self._send({"type": "websocket.send", "bytes": data})
        except Exception:  # the client has gone: its disconnect ends the call
            log.debug("a gRPC-Web client went away before a write", exc_info=True)
