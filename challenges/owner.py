"""The owner's side of routing: what a process does with the messages other workers send
about its own challenges (:mod:`challenges.routing` sends them, reads the inbox and hands
these here), and how challenge ids and inboxes are named.

* ``flow.request``: a signature for one of our challenges. It is finished by the flow
  service and the answer sent back to the asking worker's inbox; a repeat of the request
  (the asker sends it again when no answer came) gets the answer already given, so a
  challenge is finished once. The answers given are kept for the last ``max_answered``
  requests.
* ``flow.spend``: a malformed answer another worker got for one of our challenges. The
  challenge is ended and audited as a malformed answer on our own connection would be, or,
  already gone, the refusal is audited.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from .clients import ClientInfo
from .errors import ChallengeError, Code, StateError
from .flows import FlowService

log = logging.getLogger("challenges.routing")

TAG_LENGTH = 8
#: A process's inbox is PREFIX + its tag.
PREFIX = "tokenflow."


def new_tag() -> str:
    return secrets.token_hex(TAG_LENGTH // 2)


def tag_of(challenge_id: str) -> str:
    return challenge_id[:TAG_LENGTH]


class Owner:
    def __init__(
        self,
        *,
        service: FlowService,
        send: Callable[[str, dict[str, Any]], Awaitable[None]],
        inbox: str,
        max_answered: int,
    ) -> None:
        self.service = service
        self.tag = service.tag
        self.inbox = inbox
        self._send = send
        #: request id -> the answer given (None while working on it): repeats get it again.
        self._answered: OrderedDict[str, dict[str, Any] | None] = OrderedDict()
        self._max_answered = max_answered

    async def serve(self, message: dict[str, Any]) -> None:
        """A signature for one of our challenges, routed here: finish it and send the answer
        back, once per request id (a repeat gets the answer already given)."""
        reply_to, request_id = message.get("reply_to"), message.get("request")
        if not isinstance(reply_to, str) or not reply_to.startswith(PREFIX) or not request_id:
            log.warning("inbox %s got a request it cannot answer", self.inbox)
            return
        if request_id in self._answered:  # a repeat: the answer given, if there is one yet
            given = self._answered[request_id]
            if given is not None:
                with contextlib.suppress(Exception):
                    await self._send(reply_to, given)
            return
        self._answered[request_id] = None
        while len(self._answered) > self._max_answered:
            self._answered.popitem(last=False)
        flow_id, signature = message.get("id"), message.get("sig")
        try:
            if (
                not isinstance(flow_id, str)
                or tag_of(flow_id) != self.tag
                or not isinstance(signature, bytes)
            ):
                raise StateError("malformed routed request", code=Code.UNKNOWN_CHALLENGE)
            token = await self.service.finish(
                flow_id=flow_id, signature=signature, client=ClientInfo.from_wire(message.get("client"))
            )
            answer: dict[str, Any] = {"ok": True, "token": token.token}
        except ChallengeError as error:
            answer = {"ok": False, "code": str(error.code), "message": error.message}
        reply = self._answered[request_id] = {**answer, "type": "flow.reply", "request": request_id}
        try:
            await self._send(reply_to, reply)
        except Exception as exc:
            log.warning("inbox %s could not answer a routed request: %s", self.inbox, type(exc).__name__)

    async def spend(self, message: dict[str, Any]) -> None:
        """Another worker's malformed answer to one of our challenges: spend it, or audit the
        refusal (the challenge already gone), with the answer's own code and client."""
        flow_id, client = message.get("id"), ClientInfo.from_wire(message.get("client"))
        code = Code.lookup(message.get("code"))
        if not isinstance(flow_id, str) or tag_of(flow_id) != self.tag or code is None:
            log.warning("inbox %s got a malformed spend", self.inbox)
            return
        error = ChallengeError(str(message.get("message") or code.meaning)[:200], code=code)
        if not await self.service.fail(flow_id, error, client=client):
            await self.service.refuse(error, client=client, challenge_id=flow_id[:64])
