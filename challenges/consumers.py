"""The WebSocket endpoint ``/ws/token``: frames to the step pipeline, outcomes to frames.

The consumer admits the connection (Host, Origin, the per-address cap), keeps
one :class:`~challenges.pipeline.Conversation` and a count of bad frames,
and closes on policy. It hears how its challenge ends elsewhere (expired,
answered on another connection, the server shutting down) through the
conversation's watcher.

Once it has closed the socket, the frames the server had already received
(a client may send many in one write) are dropped unread: not answered, not
audited, and nothing more is sent, since the servers refuse a send after the
close (uvicorn raises, daphne's autobahn too) and would log it as the
application's failure.
"""

from __future__ import annotations

import json
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from . import protocol, runtime
from .errors import CLOSE_INVALID_PAYLOAD, ChallengeError, Code, LimitError, not_utf8
from .limits import address_scope
from .pipeline import Conversation
from .tokens import MintedToken

#: Close codes in the application range (daphne/autobahn refuse 1008 and 1009 from an app):
#: 4008 mirrors 1008 "policy violation", 4009 mirrors 1009 "message too big".
CLOSE_POLICY = 4008
CLOSE_TOO_LARGE = 4009


class TokenConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    #: No channel per connection: routing goes through the process inbox (challenges.routing).
    channel_layer_alias = "__no_layer_per_connection__"
    conv: Conversation | None = None
    runtime: runtime.Runtime
    #: This side sent the close: what is left in the server's queue is dropped, nothing is sent.
    closing = False

    async def connect(self) -> None:
        await self.accept()
        self.runtime = rt = await runtime.get()
        client = rt.config.clients.describe(self.scope, transport="ws")
        conv = Conversation(client=client, watcher=self._event)
        try:
            rt.config.admit_socket(client, self.scope)
            await rt.limiter.take(address_scope(client.ip))
            rt.limits.open_connection(client.ip)
        except ChallengeError as error:
            outcome = await rt.pipeline.refuse(conv, error)
            await self._send_frame(outcome.frame)
            await self.close(code=CLOSE_POLICY)
            return
        self.conv = conv
        self.errors = 0
        rt.metrics.websocket_opened()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        conv = self.conv
        if conv is None or self.closing:
            return
        outcome = await self.runtime.pipeline.frame(conv, text=text_data, data=bytes_data)
        await self._send_frame(outcome.frame)
        if outcome.error is None:
            return
        if outcome.error.code == Code.FRAME_TOO_LARGE:
            await self.close(code=CLOSE_TOO_LARGE)
            return
        self.errors += 1
        if self.errors >= self.runtime.config.max_errors_per_connection:
            too_many = LimitError("too many bad frames; closing", code=Code.TOO_MANY_ERRORS)
            await self._send_frame((await self.runtime.pipeline.refuse(conv, too_many)).frame)
            await self.close(code=CLOSE_POLICY)

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        self.closing = True
        await super().close(code=code, reason=reason)

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels closes old database connections before every message, through a thread
        # hop (sync_to_async): two hops a flow for a consumer whose handlers never touch the
        # database (the audit writer keeps its own connection, in its own thread).
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # daphne cancels an application still busy 10 s after its client left, and then
        # disconnect() never runs: release the connection here too, or its count leaks.
        # Channels' loop (await_many_dispatch) runs each message's receive in a new task and
        # waits on it with asyncio.wait, made for a socket and a layer channel read together.
        # With no channel per connection there is only the socket: read and dispatch in turn
        # (four tasks and four asyncio.wait fewer a flow; the same order and the same stop).
        self.scope, self.channel_layer, self.base_send = scope, None, send
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass
        finally:
            self._release()

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        # Channels' own closes old database connections here too, through a thread hop: the
        # last one a flow paid (no groups to discard: there is no channel per connection).
        code = message.get("code", 1000)
        if code == CLOSE_INVALID_PAYLOAD and self.conv is not None:
            # The server's WebSocket layer refused a frame the consumer never saw (and told
            # the client with the close code): only the audit is left to do.
            await self.runtime.pipeline.refuse(self.conv, not_utf8())
        await self.disconnect(code)
        raise StopConsumer()

    async def disconnect(self, code: int) -> None:
        self._release()

    def _release(self) -> None:
        conv, self.conv = self.conv, None
        if conv is not None:
            service = self.runtime.service
            if conv.watcher is not None:
                service.unwatch(conv.flow_id, conv.watcher)
            service.abandoned(conv.flow_id, grace=self.runtime.config.relay_resume_grace)
            self.runtime.limits.close_connection(conv.client.ip)
            self.runtime.metrics.websocket_closed()

    async def _event(self, flow_id: str, event: MintedToken | ChallengeError) -> None:
        """A challenge of ours ended elsewhere: it expired, another connection answered it,
        or the server is shutting down. The news may come after this connection asked for
        a newer one: keep that one."""
        conv = self.conv
        if conv is not None and flow_id == conv.flow_id:
            conv.flow_id = None
        if isinstance(event, ChallengeError):
            await self._send_frame(protocol.error_frame(event))
        else:
            await self._send_frame(protocol.token_frame(event.token))

    async def _send_frame(self, frame: dict[str, Any]) -> None:
        if not self.closing:  # a challenge's news may come after the close: nobody to tell
            await self.send(text_data=json.dumps(frame))
