"""The Hub's API-key check, done before ``GetToken`` reaches the servicer.

Each refusal gets the Hub's status and message (:mod:`challenges.rpc.status`)
and an audit row with no secret in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
import grpc.aio

from ..apikeys import API_KEY_HEADER, API_SIG_HEADER, API_SIG_MSG_HEADER, check_api_key
from ..audit import AuditWriter
from ..errors import ApiKeyError, ChallengeError
from . import GET_TOKEN_METHODS
from .audit import caller_of, first_values, key_label
from .status import status_of
from .threads_pb2 import GetTokenRequest

log = logging.getLogger("challenges.rpc.server")


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """The Hub's API-key check on ``GetToken`` (``docs/PROTOCOL.md``, "API keys").

    ``keys`` maps each accepted key to its secret ("" for keys that need no
    signature). The refusal's reason is logged, and audited, with the key as
    :func:`~challenges.rpc.audit.key_label` shows it; the secret, the signature
    and its message never are.
    """

    def __init__(self, keys: Mapping[str, str], *, audit: AuditWriter, worker: str) -> None:
        self.keys = dict(keys)
        #: Refusals are audited through the servicer's writer, like every other outcome.
        self.audit = audit
        self.worker = worker

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if handler_call_details.method not in GET_TOKEN_METHODS:
            return await continuation(handler_call_details)
        metadata = first_values(handler_call_details.invocation_metadata)
        key = _text(metadata.get(API_KEY_HEADER))
        try:
            check_api_key(
                self.keys,
                key=key,
                msg=_text(metadata.get(API_SIG_MSG_HEADER)),
                sig=_text(metadata.get(API_SIG_HEADER)),
            )
        except ApiKeyError as error:
            log.warning("GetToken refused: %s (key %s)", error.reason, key_label(key, self.keys) or "-")
            return self._refusal(error)
        return await continuation(handler_call_details)

    def _refusal(self, error: ChallengeError) -> grpc.RpcMethodHandler:
        code, message = status_of(error)

        async def refuse(request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            # Take the caller's first message before refusing: a grpc.aio client whose
            # write races our status reports INTERNAL instead of it (grpc/grpc#36066).
            first = None
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    first = await anext(aiter(request_iterator), None)
            caller = caller_of(context, known_keys=self.keys)
            caller.key = _key_of(first)
            record = caller.record(error.code, status=code.name, worker=self.worker, detail=message)
            await self.audit.record_quietly(record)
            await context.abort(code, message)

        return grpc.stream_stream_rpc_method_handler(refuse)


def _key_of(first: Any) -> str:
    """The public key a refused caller sent first (raw bytes here: no deserializer)."""
    with contextlib.suppress(Exception):
        request = GetTokenRequest.FromString(first) if isinstance(first, bytes) else first
        if isinstance(request, GetTokenRequest) and request.WhichOneof("payload") == "key":
            return request.key[:128]
    return ""


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
