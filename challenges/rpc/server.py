"""The embedded authority served as a Hub-compatible gRPC API (``manage.py runauthority``).

:class:`AuthorityServicer` answers ``/threads.pb.API/GetToken`` (and its twin
``/threads.net.pb.API/GetToken``) byte-compatibly with the Hub
(``docs/PROTOCOL.md``, "GetToken"): key, 32-byte challenge, signature within
the deadline, token. It mints exactly the tokens of the ``local`` upstream
and audits each attempt through the same group-committed
:class:`~challenges.services.AuditWriter`, releasing a token only after its
row is committed. The Hub's API-key check runs before it, in
:mod:`challenges.rpc.interceptor`; every failure maps to the Hub's status in
:mod:`challenges.rpc.status`. A :class:`~challenges.gettoken.StreamCap`
bounds the calls in progress; with a certificate and key
(:class:`~challenges.rpc.tls.ServerTls`) the server speaks TLS only.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Collection, Container, Mapping
from typing import Any

import grpc
import grpc.aio

from ..audit import AuditWriter
from ..gettoken import AuthorityConfig, GetTokenCall, Reply, Request, StreamCap
from ..tasks import TaskSet
from .audit import caller_of
from .interceptor import ApiKeyInterceptor
from .status import status_of
from .threads_pb2 import GetTokenReply, GetTokenRequest
from .threads_pb2_grpc import APIServicer, add_APIServicer_to_server
from .tls import ServerTls

log = logging.getLogger(__name__)

__all__ = ["AuthorityConfig", "AuthorityServicer", "ServerTls", "StreamCap", "create_server"]


class AuthorityServicer(APIServicer):
    """``GetToken`` of the embedded authority: protobuf in and out of a :class:`GetTokenCall`
    (:mod:`challenges.gettoken`, shared with the gRPC-Web endpoint)."""

    def __init__(
        self,
        *,
        config: AuthorityConfig,
        audit: AuditWriter,
        cap: StreamCap | None = None,
        known_keys: Collection[str] = (),
        blocked: Container[str] = frozenset(),
    ) -> None:
        self.config = config
        self.audit = audit
        #: Public keys an operator blocked (a :class:`~challenges.revocation.Blocklist`).
        self.blocked = blocked
        #: Calls in progress, and how many may be (shared with any other transport).
        self.cap = cap or StreamCap()
        #: The API keys the server accepts, named in full in the audit (:func:`caller_of`).
        self.known_keys = frozenset(known_keys)
        self._tasks = TaskSet()

    @property
    def active(self) -> int:
        """Streams in progress (what a graceful shutdown waits for)."""
        return self.cap.active

    async def GetToken(  # type: ignore[override]
        self, request_iterator: AsyncIterator[GetTokenRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        # The reader/writer form of a streaming handler: read() and write() on the context.
        async def receive() -> Request | None:
            message = await context.read()
            if message is grpc.aio.EOF:
                return None
            kind = message.WhichOneof("payload")
            return (
                kind,
                message.key if kind == "key" else message.signature if kind == "signature" else None,
            )

        async def send(reply: Reply) -> None:
            await context.write(
                GetTokenReply(challenge=reply.challenge)
                if reply.challenge
                else GetTokenReply(token=reply.token)
            )

        call = GetTokenCall(
            config=self.config,
            audit=self.audit,
            caller=caller_of(context, known_keys=self.known_keys),
            tasks=self._tasks,
            cap=self.cap,
            blocked=self.blocked,
        )
        error = await call.run(receive, send, status_name=lambda error: status_of(error)[0].name)
        if error is not None:
            code, message = status_of(error)
            await context.abort(code, message)


def create_server(
    address: str,
    *,
    servicer: AuthorityServicer,
    api_keys: Mapping[str, str] | None = None,
    tls: ServerTls | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A ``grpc.aio`` server answering both ``GetToken`` methods on ``address``.

    With ``api_keys`` (key -> secret) every call must carry an accepted key
    (and the servicer's audit names those keys in full). With ``tls`` the port
    speaks TLS only; without it, plaintext, and one log line says so. Returns
    the server (not started) and the bound port. Raises :class:`RuntimeError`
    when the address cannot be bound.
    """
    port_text = address.rpartition(":")[2]
    if port_text.isdigit() and int(port_text) > 65535:  # grpc bound 99999 as 99999 - 65536
        raise RuntimeError(f"cannot listen on {address}: the port must be 0 to 65535")
    if api_keys:
        servicer.known_keys = frozenset(api_keys)
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
    if tls is not None:
        credentials = grpc.ssl_server_credentials([(tls.private_key, tls.cert_chain)])
        port = server.add_secure_port(address, credentials)
    else:
        log.warning("GetToken on %s is served in plaintext: no TLS certificate and key given", address)
        port = server.add_insecure_port(address)
    if not port:
        raise RuntimeError(f"cannot listen on {address}")
    return server, port
