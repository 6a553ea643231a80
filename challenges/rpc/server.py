"""The embedded authority served as a Hub-compatible gRPC API (``manage.py runauthority``).

:class:`AuthorityServicer` answers ``/threads.pb.API/GetToken`` (and its twin
``/threads.net.pb.API/GetToken``) byte-compatibly with ``shared/PROTOCOL.md``
§3: key, 32-byte challenge, signature within the deadline, token. It mints
exactly the tokens of the ``local`` upstream and audits each attempt through
the same group-committed :class:`~challenges.services.AuditWriter`, releasing
a token only after its row is committed.

:class:`ApiKeyInterceptor` is the Hub's API-key check (``challenges.apikeys``),
done before the servicer sees the call. Each failure maps to the Hub's status
code and message in exactly one place (:data:`STATUS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import grpc.aio

from ..apikeys import API_KEY_HEADER, API_SIG_HEADER, API_SIG_MSG_HEADER, ApiKeyError, check_api_key
from ..authority import mint_token
from ..errors import ChallengeError
from ..identity import IdentityError, PrivateKey, PublicKey, parse_public_key
from ..services import AuditRecord, AuditWriter
from . import GET_TOKEN_METHODS
from .threads_pb2 import GetTokenReply, GetTokenRequest
from .threads_pb2_grpc import APIServicer, add_APIServicer_to_server

log = logging.getLogger(__name__)

CHALLENGE_BYTES = 32
#: Error code -> the Hub's status (PROTOCOL.md §3). ``None`` keeps the error's message.
STATUS: dict[str, tuple[grpc.StatusCode, str | None]] = {
    "missing_pub": (grpc.StatusCode.INVALID_ARGUMENT, "Key is required"),
    "invalid_pub": (grpc.StatusCode.UNKNOWN, None),
    "missing_sig": (grpc.StatusCode.INVALID_ARGUMENT, "Signature is required"),
    "challenge_timeout": (grpc.StatusCode.DEADLINE_EXCEEDED, "Challenge deadline exceeded"),
    "bad_signature": (grpc.StatusCode.UNKNOWN, "bad signature"),
    "invalid_sig_length": (grpc.StatusCode.UNKNOWN, "bad signature"),
    "api_key_required": (grpc.StatusCode.UNAUTHENTICATED, None),
    "api_key_not_found": (grpc.StatusCode.NOT_FOUND, None),
    "api_sig_required": (grpc.StatusCode.UNAUTHENTICATED, None),
    "api_sig_bad": (grpc.StatusCode.UNAUTHENTICATED, None),
    "internal_error": (grpc.StatusCode.INTERNAL, None),
}


def status_of(error: ChallengeError) -> tuple[grpc.StatusCode, str]:
    code, message = STATUS.get(error.code, (grpc.StatusCode.INTERNAL, None))
    return code, message or error.message


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
        self._tasks: set[asyncio.Task[None]] = set()

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
        attempt = _Attempt(context, self.config.worker)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("payload") != "key":
            missing_key = ChallengeError("Key is required", code="missing_pub")
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
            late = ChallengeError("Challenge deadline exceeded", code="challenge_timeout")
            await self._refuse(context, attempt, late)
            return
        if second is None or second.WhichOneof("payload") != "signature":
            missing = ChallengeError("Signature is required", code="missing_sig")
            await self._refuse(context, attempt, missing, ended=second is None)
            return
        try:
            key.verify(challenge, second.signature)
        except ChallengeError as bad_sig:
            await self._refuse(context, attempt, bad_sig)
            return
        yield await self._issue(context, attempt, key)

    async def _issue(
        self, context: grpc.aio.ServicerContext[Any, Any], attempt: _Attempt, key: PublicKey
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
        attempt: _Attempt,
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
            task = asyncio.create_task(self._audit_quietly(record))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            raise
        await self._audit_quietly(attempt.record(error.code, status=code.name, detail=error.message))
        await context.abort(code, message)

    async def _audit_quietly(self, record: AuditRecord) -> None:
        try:
            await self.audit.record(record)
        except ChallengeError:
            log.warning("could not audit a %s outcome", record.outcome)


class _Attempt:
    """What the audit records of one call."""

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any], worker: str) -> None:
        self.created = datetime.now(UTC)
        self.started: float | None = None
        self.key = ""
        self.worker = worker
        metadata = dict(context.invocation_metadata() or ())
        self.user_agent = str(metadata.get("user-agent", ""))[:200]
        self.ip = _peer_ip(context.peer())

    def challenged(self) -> None:
        self.started = time.monotonic()

    def record(self, outcome: str, *, status: str, detail: str = "", token: Any = None) -> AuditRecord:
        return AuditRecord(
            outcome=outcome,
            created_at=self.created,
            finished_at=datetime.now(UTC),
            public_key=self.key,
            detail=detail,
            client_ip=self.ip,
            user_agent=self.user_agent,
            transport="grpc",
            worker=self.worker,
            upstream="authority",
            upstream_status=status,
            latency_ms=None if self.started is None else (time.monotonic() - self.started) * 1000,
            token=token,
        )


def _peer_ip(peer: str) -> str | None:
    # "ipv4:127.0.0.1:5000" / "ipv6:[::1]:5000"
    kind, _, rest = (peer or "").partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or None
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]") or None
    return None


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """The Hub's API-key check on ``GetToken`` (PROTOCOL.md §3).

    ``keys`` maps each accepted key to its secret ("" for keys that need no
    signature). The refusal's reason is logged with the key's first characters;
    the secret, the signature and its message never are.
    """

    def __init__(self, keys: Mapping[str, str], *, servicer: AuthorityServicer | None = None) -> None:
        self.keys = dict(keys)
        #: Refusals are audited through the servicer's writer, like every other outcome.
        self.servicer = servicer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if handler_call_details.method not in GET_TOKEN_METHODS:
            return await continuation(handler_call_details)
        metadata: dict[str, Any] = {}
        for name, value in handler_call_details.invocation_metadata or ():
            metadata.setdefault(name, value)
        key = _text(metadata.get(API_KEY_HEADER))
        try:
            check_api_key(
                self.keys,
                key=key,
                msg=_text(metadata.get(API_SIG_MSG_HEADER)),
                sig=_text(metadata.get(API_SIG_HEADER)),
            )
        except ApiKeyError as error:
            log.warning("GetToken refused: %s (key %s...)", error.reason, (key or "-")[:8])
            return _refusal(error, self.servicer)
        return await continuation(handler_call_details)


def _key_of(first: Any) -> str:
    """The public key a refused caller sent first (raw bytes here: no deserializer)."""
    with contextlib.suppress(Exception):
        request = GetTokenRequest.FromString(first) if isinstance(first, bytes) else first
        if isinstance(request, GetTokenRequest) and request.WhichOneof("payload") == "key":
            return request.key[:128]
    return ""


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _refusal(error: ChallengeError, servicer: AuthorityServicer | None) -> grpc.RpcMethodHandler:
    code, message = status_of(error)

    async def refuse(request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        # Take the caller's first message before refusing: a grpc.aio client whose
        # write races our status reports INTERNAL instead of it (grpc/grpc#36066).
        first = None
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                first = await anext(aiter(request_iterator), None)
        if servicer is not None:
            attempt = _Attempt(context, servicer.config.worker)
            attempt.key = _key_of(first)
            await servicer._audit_quietly(attempt.record(error.code, status=code.name, detail=message))
        await context.abort(code, message)

    return grpc.stream_stream_rpc_method_handler(refuse)


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
    interceptors = [ApiKeyInterceptor(api_keys, servicer=servicer)] if api_keys else []
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
