"""The embedded authority served as a Hub-compatible gRPC API (``manage.py runauthority``).

:class:`AuthorityServicer` answers ``/threads.pb.API/GetToken`` (and its twin
``/threads.net.pb.API/GetToken``) byte-compatibly with the Hub
(``docs/PROTOCOL.md``, "GetToken"): key, 32-byte challenge, signature within
the deadline, token. It mints exactly the tokens of the ``local`` upstream
and audits each attempt through the same group-committed
:class:`~challenges.services.AuditWriter`, releasing a token only after its
row is committed. The Hub's API-key check runs before it, in
:mod:`challenges.rpc.interceptor`; every failure maps to the Hub's status in
:mod:`challenges.rpc.status`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from ..errors import ChallengeError, Code, IdentityError
from ..identity import PrivateKey, PublicKey, parse_public_key
from ..services import AuditWriter
from ..tasks import TaskSet
from ..tokens import mint_token
from .audit import Attempt
from .interceptor import ApiKeyInterceptor
from .status import status_of
from .threads_pb2 import GetTokenReply, GetTokenRequest
from .threads_pb2_grpc import APIServicer, add_APIServicer_to_server

log = logging.getLogger(__name__)

CHALLENGE_BYTES = 32


@dataclass(frozen=True, slots=True)
class AuthorityConfig:
    """What the authority mints and how long it waits (from settings)."""

    signer: PrivateKey
    ttl: float | None
    audience: str = ""
    challenge_deadline: float = 60.0
    worker: str = ""


class AuthorityServicer(APIServicer):
    """``GetToken`` of the embedded authority."""

    def __init__(self, *, config: AuthorityConfig, audit: AuditWriter) -> None:
        self.config = config
        self.audit = audit
        #: Streams in progress (what a graceful shutdown waits for).
        self.active = 0
        self._tasks = TaskSet()

    async def GetToken(
        self, request_iterator: AsyncIterator[GetTokenRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[GetTokenReply]:
        self.active += 1
        try:
            async for reply in self._get_token(aiter(request_iterator), context):
                yield reply
        finally:
            self.active -= 1

    async def _get_token(
        self, requests: AsyncIterator[GetTokenRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[GetTokenReply]:
        attempt = Attempt(context, self.config.worker)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("payload") != "key":
            missing_key = ChallengeError("Key is required", code=Code.MISSING_PUB)
            await self._refuse(context, attempt, missing_key, ended=first is None)
            return
        attempt.key = first.key[:128]
        try:
            key = parse_public_key(first.key)
        except IdentityError as bad_key:
            await self._refuse(context, attempt, bad_key)
            return
        challenge = secrets.token_bytes(CHALLENGE_BYTES)
        attempt.challenged()
        yield GetTokenReply(challenge=challenge)
        try:
            async with asyncio.timeout(self.config.challenge_deadline):
                second = await anext(requests, None)
        except TimeoutError:
            late = ChallengeError("Challenge deadline exceeded", code=Code.CHALLENGE_TIMEOUT)
            await self._refuse(context, attempt, late)
            return
        if second is None or second.WhichOneof("payload") != "signature":
            missing = ChallengeError("Signature is required", code=Code.MISSING_SIG)
            await self._refuse(context, attempt, missing, ended=second is None)
            return
        try:
            key.verify(challenge, second.signature)
        except ChallengeError as bad_sig:
            await self._refuse(context, attempt, bad_sig)
            return
        yield await self._issue(context, attempt, key)

    async def _issue(
        self, context: grpc.aio.ServicerContext[Any, Any], attempt: Attempt, key: PublicKey
    ) -> GetTokenReply:
        token = mint_token(
            signer=self.config.signer, subject=key, ttl=self.config.ttl, audience=self.config.audience
        )
        try:
            await self.audit.record(attempt.record("success", status="OK", token=token))
        except ChallengeError as error:  # no row, no token
            code, message = status_of(error)
            await context.abort(code, message)
        return GetTokenReply(token=token.token)

    async def _refuse(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        attempt: Attempt,
        error: ChallengeError,
        *,
        ended: bool = False,
    ) -> None:
        code, message = status_of(error)
        try:
            # A caller that cancels ends our request stream first and our task a few
            # turns of the loop later: when the stream ended, let that land, so the
            # audit tells a cancelled call from a half-closed one.
            await asyncio.sleep(0.1 if ended else 0)
        except asyncio.CancelledError:
            record = attempt.record(error.code, status="CANCELLED", detail="the caller cancelled the call")
            self._tasks.spawn(self.audit.record_quietly(record))
            raise
        await self.audit.record_quietly(attempt.record(error.code, status=code.name, detail=error.message))
        await context.abort(code, message)


def create_server(
    address: str,
    *,
    servicer: AuthorityServicer,
    api_keys: Mapping[str, str] | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A ``grpc.aio`` server answering both ``GetToken`` methods on ``address``.

    With ``api_keys`` (key -> secret) every call must carry an accepted key.
    Returns the server (not started) and the bound port. Raises
    :class:`RuntimeError` when the address cannot be bound.
    """
    interceptors = (
        [ApiKeyInterceptor(api_keys, audit=servicer.audit, worker=servicer.config.worker)] if api_keys else []
    )
    server = grpc.aio.server(
        interceptors=interceptors,
        # No SO_REUSEPORT: a second authority on the same port must fail, not share it.
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 64 * 1024)],
    )
    add_APIServicer_to_server(servicer, server)
    twin = grpc.method_handlers_generic_handler(
        "threads.net.pb.API",
        {
            "GetToken": grpc.stream_stream_rpc_method_handler(
                servicer.GetToken,
                request_deserializer=GetTokenRequest.FromString,
                response_serializer=GetTokenReply.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((twin,))
    port = server.add_insecure_port(address)
    if not port:
        raise RuntimeError(f"cannot listen on {address}")
    return server, port
