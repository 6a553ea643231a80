"""One WebSocket connection's view of the token flow.

:class:`TokenSession` turns parsed frames into :class:`~challenges.flows.FlowService`
calls and outcomes into frames, so the consumer only moves bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from . import protocol
from .authority import IssuedToken
from .errors import ChallengeError, LimitError, StateError
from .flows import ClientInfo, FlowService
from .protocol import ChallengeResponse, FrameContext, TokenRequest


class TokenSession:
    """One connection's token flow: frames in, frames out, every error audited."""

    def __init__(
        self,
        *,
        service: FlowService,
        client: ClientInfo,
        send: Callable[[dict[str, Any]], Awaitable[None]],
        max_errors: int,
    ) -> None:
        self.service = service
        self.client = client
        self._send = send
        self.flow_id: str | None = None
        self.errors = 0
        self.max_errors = max_errors
        self.closed = False

    async def receive(self, *, text: str | None, data: bytes | None) -> bool:
        """Handle one frame. Returns False when the connection should close."""
        context = FrameContext()
        try:
            protocol.check_size(text=text, data=data)
            assert text is not None
            obj = protocol.decode(text)
            context = protocol.peek(obj)
            message = protocol.parse_message(obj)
            if isinstance(message, TokenRequest):
                await self._token(message)
            else:
                await self._challenge(message)
        except ChallengeError as error:
            await self._error(error, context)
            self.errors += 1
            if error.code == "frame_too_large":
                return False
            if self.errors >= self.max_errors:
                await self._error(LimitError("too many bad frames; closing", code="too_many_errors"), context)
                return False
        return True

    def close(self, *, resume_grace: float) -> None:
        """The socket is gone. Its pending challenge stays resumable from another
        connection; one that holds an upstream stream is cancelled after ``resume_grace``."""
        self.closed = True
        self.service.unwatch(self.flow_id, self._event)
        self.service.abandoned(self.flow_id, grace=resume_grace)

    async def _token(self, message: TokenRequest) -> None:
        if self.service.is_pending(self.flow_id):
            raise StateError(
                "a challenge is already pending on this connection; answer it first",
                code="already_pending",
            )
        flow = await self.service.begin(key=message.pub, client=self.client, watcher=self._event)
        self.flow_id = flow.id
        await self._send(flow.frame())

    async def _challenge(self, message: ChallengeResponse) -> None:
        flow_id = message.challenge_id or self.flow_id
        if flow_id is None:
            raise StateError("no challenge is pending; send a 'token' frame first", code="no_challenge")
        if flow_id == self.flow_id:
            self.flow_id = None
        token = await self.service.finish(
            flow_id=flow_id, signature=message.sig, client=self.client, finisher=self._event
        )
        await self._send(protocol.token_frame(token))

    async def _error(self, error: ChallengeError, context: FrameContext) -> None:
        if context.type == "challenge" and not context.id_given and self.flow_id:
            # An answer without an id is for this connection's challenge.
            context = dataclasses.replace(context, challenge_id=self.flow_id, id_given=True)
        if context.challenge_id == self.flow_id and context.type == "challenge":
            self.flow_id = None
        await self.service.reject(error, client=self.client, context=context, finisher=self._event)
        await self.send_error(error)

    async def send_error(self, error: ChallengeError) -> None:
        if not self.closed:
            await self._send(protocol.error_frame(error))

    async def _event(self, flow_id: str, event: IssuedToken | ChallengeError) -> None:
        """A challenge of ours ended elsewhere: it expired, or another connection answered it.
        The news may come after this connection asked for a newer one: keep that one."""
        if flow_id == self.flow_id:
            self.flow_id = None
        if isinstance(event, ChallengeError):
            await self.send_error(event)
        elif not self.closed:
            await self._send(protocol.token_frame(event.token))
