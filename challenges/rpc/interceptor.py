"""The Hub's API-key check, done before ``GetToken`` reaches the servicer.

The check itself is :class:`challenges.hub.ApiKeyCheck`, shared with the
gRPC-Web endpoint. Each refusal gets the Hub's status and message
(:mod:`challenges.rpc.status`) and an audit row with no secret in it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
import grpc.aio

from ..audit import AuditWriter
from ..errors import ApiKeyError, ChallengeError
from ..hub import ApiKeyCheck, first_values
from . import GET_TOKEN_METHODS
from .audit import caller_of
from .status import status_of
from .threads_pb2 import GetTokenRequest


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """The Hub's API-key check on ``GetToken`` (``docs/PROTOCOL.md``, "API keys").

    ``keys`` maps each accepted key to its secret ("" for keys that need no
    signature). The refusal's reason is logged, and audited, with the key as
    :func:`~challenges.hub.key_label` shows it; the secret, the signature and
    its message never are.
    """

    def __init__(self, keys: Mapping[str, str], *, audit: AuditWriter, worker: str) -> None:
        self.keys = dict(keys)
        self.check = ApiKeyCheck(self.keys)
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
        try:
            self.check.check(first_values(handler_call_details.invocation_metadata))
        except ApiKeyError as error:
            return self._refusal(error)
        return await continuation(handler_call_details)

    def _refusal(self, error: ChallengeError) -> grpc.RpcMethodHandler:
        code, message = status_of(error)

        async def refuse(request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            # Take the caller's first message before refusing: a grpc.aio client whose
            # write races our status reports INTERNAL instead of it.
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
