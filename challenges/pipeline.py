"""The one step pipeline both transports call: a WebSocket frame or an HTTP body in,
the frame to answer with out.

Each step is: size check, decode, parse, dispatch (a challenge from the flow
service, or a token through the router), and for a refusal the audit. The
transports differ only in their :class:`Conversation`: a WebSocket keeps one
across frames (the challenge it waits for, and a watcher that hears how that
challenge ends elsewhere), an HTTP request is a conversation of one step
whose type the URL fixes and whose answer must name its challenge.

Errors raised by the flow service or the router are audited where they were
raised; the refusals this module decides (a malformed frame, a state that
does not fit) are audited here, through :meth:`FlowService.fail` when they
spend the pending challenge they name, :meth:`FlowService.refuse` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import protocol
from .clients import ClientInfo
from .errors import ChallengeError, Code, StateError
from .flows import FlowService
from .limits import address_scope
from .pending import Watcher
from .protocol import ChallengeResponse, FrameContext, TokenRequest
from .ratelimit import RateLimiter
from .routing import Router


@dataclass(eq=False)
class Conversation:
    """One client's side of the flow: a WebSocket connection, or one HTTP request."""

    client: ClientInfo
    #: The challenge this conversation waits for (WebSocket: answered without an id).
    flow_id: str | None = None
    #: Told when that challenge ends elsewhere (expired, answered on another connection).
    watcher: Watcher | None = None
    #: HTTP: an answer must name its challenge.
    requires_id: bool = False
    #: Each 'token' frame takes a token from the address's rate limit (a WebSocket; an
    #: HTTP request is charged whole by its edge).
    charge_token_frames: bool = True


@dataclass(frozen=True, slots=True)
class Outcome:
    frame: dict[str, Any]
    error: ChallengeError | None = None


class Pipeline:
    def __init__(self, *, service: FlowService, router: Router, limiter: RateLimiter) -> None:
        self.service = service
        self.router = router
        self.limiter = limiter

    async def frame(self, conv: Conversation, *, text: str | None, data: bytes | None) -> Outcome:
        """One WebSocket frame (text, or a refused binary frame)."""
        return await self._step(conv, text=text, data=data, kind=None)

    async def body(self, conv: Conversation, body: bytes | None, *, kind: str) -> Outcome:
        """One HTTP body (None: over the size limit, left unread); ``kind`` (``token`` or
        ``challenge``) comes from the URL."""
        text = None if body is None else body.decode("utf-8", errors="replace")
        return await self._step(conv, text=text, data=None, kind=kind, oversized=body is None)

    async def refuse(self, conv: Conversation, error: ChallengeError) -> Outcome:
        """A refusal the edge decides (a policy: too many errors, a refused Origin)."""
        await self.service.refuse(error, client=conv.client)
        return Outcome(protocol.error_frame(error), error)

    async def _step(
        self,
        conv: Conversation,
        *,
        text: str | None,
        data: bytes | None,
        kind: str | None,
        oversized: bool = False,
    ) -> Outcome:
        context = FrameContext(type=kind)
        try:
            if oversized:
                raise protocol.too_large()
            protocol.check_size(text=text, data=data)
            obj = protocol.decode(text or "")
            if kind is not None:
                obj["type"] = kind
            context = protocol.peek(obj)
            if context.type == "challenge" and not context.id_given and conv.flow_id is None:
                raise _unnamed(conv)  # the state first: nothing to answer, however well-formed
            message = protocol.parse_message(obj)
            if isinstance(message, TokenRequest):
                if self.service.pending(conv.flow_id):
                    raise StateError(
                        "a challenge is already pending on this connection; answer it first",
                        code=Code.ALREADY_PENDING,
                    )
                if conv.charge_token_frames:
                    await self.limiter.take(address_scope(conv.client.ip))
        except ChallengeError as error:
            await self._refused(conv, error, context)
            return Outcome(protocol.error_frame(error), error)
        try:
            if isinstance(message, TokenRequest):
                return Outcome(await self._challenge(conv, message))
            return Outcome(await self._token(conv, message))
        except ChallengeError as error:  # audited where it was raised
            return Outcome(protocol.error_frame(error), error)

    async def _challenge(self, conv: Conversation, message: TokenRequest) -> dict[str, Any]:
        flow = await self.service.begin(key=message.pub, client=conv.client, watcher=conv.watcher)
        conv.flow_id = flow.id
        challenge = flow.challenge
        return protocol.challenge_frame(
            value=challenge.value, challenge_id=flow.id, expires_at=challenge.expires_at, raw=challenge.raw
        )

    async def _token(self, conv: Conversation, message: ChallengeResponse) -> dict[str, Any]:
        flow_id = message.challenge_id or conv.flow_id
        assert flow_id is not None  # checked in _step
        if flow_id == conv.flow_id:
            conv.flow_id = None
        token = await self.router.finish(
            flow_id=flow_id, signature=message.sig, client=conv.client, finisher=conv.watcher
        )
        return protocol.token_frame(token)

    async def _refused(self, conv: Conversation, error: ChallengeError, context: FrameContext) -> None:
        """Audit a refused frame; a malformed answer spends the challenge it names."""
        named = context.challenge_id
        if context.type == "challenge" and not context.id_given:
            named = conv.flow_id  # an answer without an id is for this conversation's challenge
        if context.type == "challenge" and named is not None:
            if named == conv.flow_id:
                conv.flow_id = None
            if await self.router.spend(named, error, client=conv.client, finisher=conv.watcher):
                return
        await self.service.refuse(
            error, client=conv.client, key=context.pub or "", challenge_id=context.challenge_id or ""
        )


def _unnamed(conv: Conversation) -> StateError:
    if conv.requires_id:
        return StateError("the body needs the challenge 'id'", code=Code.UNKNOWN_CHALLENGE)
    return StateError("no challenge is pending; send a 'token' frame first", code=Code.NO_CHALLENGE)
