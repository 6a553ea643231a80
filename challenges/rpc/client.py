"""The ``grpc`` upstream: relay each flow to a Hub-compatible ``GetToken`` stream.

For each flow :meth:`GrpcUpstream.begin` opens ``/threads.pb.API/GetToken``
with the API-key metadata (``docs/PROTOCOL.md``, "API keys"), sends the
user's key and waits for the Hub's raw challenge; :meth:`GrpcPending.finish`
sends the signature, half-closes and returns the Hub's token. One channel per
upstream, and one upstream per process (built by :mod:`challenges.runtime`),
reused across flows (:mod:`challenges.rpc.channel`). A ``grpcs`` upstream is verified against the system's CA
bundle, or the PEM CAs of ``TOKEN_UPSTREAM_CA`` (a private CA) when given.

gRPC failures become :class:`~challenges.errors.UpstreamError` with their own
codes (:func:`~challenges.rpc.status.upstream_error`); each carries the gRPC
status name for the audit. Every wait is bounded by the challenge's own time, the call has a gRPC
deadline a few seconds beyond it, and :meth:`GrpcPending.cancel` cancels the
call, so no stream outlives its flow. ``open_calls`` counts live streams;
``on_status`` hears the status each call ends with (the metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import grpc.aio

from .. import apikeys
from ..authority import Challenge, new_challenge_id
from ..errors import Code, UpstreamError
from ..identity import PublicKey
from ..tokens import MintedToken, describe_token
from . import GET_TOKEN_METHODS, sched
from .channel import open_channel
from .status import upstream_error
from .threads_pb2 import GetTokenReply, GetTokenRequest

log = logging.getLogger(__name__)

#: The gRPC deadline of a call is the challenge timeout plus this margin.
DEADLINE_MARGIN = 3.0
#: The status the audit records when grpc.aio lost the upstream's refusal (grpc/grpc#36066).
LOST = "INTERNAL_LOST"


def _classify(exc: grpc.aio.AioRpcError, *, phase: str) -> UpstreamError:
    details = exc.details() or ""
    # The Hub's details are the peer's words, never our secret: fine for our log.
    log.warning("upstream %s in the %s phase: %s", exc.code().name, phase, details[:200])
    return upstream_error(exc.code(), phase=phase, details=details)


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def _lost_status(exc: grpc.aio.AioRpcError) -> bool:
    return exc.code() == grpc.StatusCode.INTERNAL and (exc.details() or "").startswith(
        "Internal error from Core"
    )


class GrpcPending:
    """One open ``GetToken`` stream, waiting for the client's signature."""

    #: A relayed challenge holds a stream on the Hub: a client that goes away
    #: cancels it soon instead of at expiry.
    holds_stream = True

    def __init__(self, *, upstream: GrpcUpstream, call: Any, key: PublicKey, timeout: float) -> None:
        self.upstream = upstream
        self.call = call
        self.key = key
        self.status = "pending"
        self.challenge = Challenge(
            id=new_challenge_id(),
            value=b"",
            expires_at=datetime.now(UTC) + timedelta(seconds=timeout),
            raw=True,
        )
        self._open = True

    async def receive_challenge(self, budget: float) -> None:
        async with self._phase("key", budget):
            with contextlib.suppress(asyncio.InvalidStateError):  # ended already: read its status
                await self.call.write(GetTokenRequest(key=str(self.key)))
            reply = await self.call.read()
            if reply is grpc.aio.EOF:
                raise _classify(await self._status_error(), phase="key")
        if reply.WhichOneof("payload") != "challenge" or not 0 < len(reply.challenge) <= 1024:
            log.warning("upstream sent %s instead of a challenge", reply.WhichOneof("payload"))
            raise self._invalid_reply()
        self.challenge = Challenge(
            id=self.challenge.id, value=reply.challenge, expires_at=self.challenge.expires_at, raw=True
        )

    async def finish(self, signature: bytes) -> MintedToken:
        if not self._open:
            raise UpstreamError("the upstream stream is already closed", code=Code.UPSTREAM_ERROR)
        # Within the challenge's own time (at least half a second for a late signature).
        budget = max((self.challenge.expires_at - datetime.now(UTC)).total_seconds(), 0.5)
        async with self._phase("signature", budget):
            try:
                await self.call.write(GetTokenRequest(signature=signature))
                await self.call.done_writing()
            except asyncio.InvalidStateError:
                pass  # the call already ended (the Hub went away): read its status
            reply = await self.call.read()
            if reply is grpc.aio.EOF:
                raise _classify(await self._status_error(), phase="signature")
        if reply.WhichOneof("payload") != "token" or not 0 < len(reply.token) <= 8192:
            log.warning("upstream sent %s instead of a token", reply.WhichOneof("payload"))
            raise self._invalid_reply()
        # The Hub ends with OK after the token; the token is ours even if it dawdles.
        with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError):
            async with asyncio.timeout(1.0):
                await self.call.code()
        self._close("OK")
        return describe_token(reply.token, subject=self.key)

    @contextlib.asynccontextmanager
    async def _phase(self, phase: str, budget: float) -> AsyncIterator[None]:
        """Bound one step of the stream by ``budget`` and turn its failures into coded errors,
        closing the stream with the status the audit records."""
        try:
            async with asyncio.timeout(budget):
                yield
        except grpc.aio.AioRpcError as exc:
            if _lost_status(exc) and await self.upstream.left_ready(within=0.25):
                # grpc.aio's lost status (grpc/grpc#36066) on a connection that just died,
                # before grpc.aio saw it go: UNAVAILABLE, as when it saw it first.
                exc = _rpc_error(grpc.StatusCode.UNAVAILABLE, "the connection to the authority was lost")
            self._close(exc.code().name)
            if phase == "key" and _lost_status(exc):
                raise upstream_error(grpc.StatusCode.INTERNAL, phase="key", status=LOST) from None
            raise _classify(exc, phase=phase) from None
        except TimeoutError:
            self._close("DEADLINE_EXCEEDED")
            raise upstream_error(grpc.StatusCode.DEADLINE_EXCEEDED, phase=phase) from None
        except BaseException as exc:
            self._close(getattr(exc, "upstream_status", "") or "CANCELLED")
            raise

    async def cancel(self) -> None:
        if self._open:
            self._close("CANCELLED")

    def _invalid_reply(self) -> UpstreamError:
        self._close("INVALID_REPLY")
        return upstream_error(None, phase="reply", status="INVALID_REPLY")

    async def _status_error(self) -> grpc.aio.AioRpcError:
        # The stream ended without the reply: its status says why.
        return _rpc_error(await self.call.code(), await self.call.details())

    def _close(self, status: str) -> None:
        if self._open:
            self._open = False
            self.status = status
            self.call.cancel()  # a no-op once the call has ended
            self.upstream.open_calls -= 1
            if self.upstream.on_status is not None:
                self.upstream.on_status(status)


class GrpcUpstream:
    """Relay to ``/threads.pb.API/GetToken`` over one lazily created channel."""

    def __init__(
        self,
        *,
        target: str,
        secure: bool,
        api_key: str = "",
        api_secret: str = "",
        root_certificates: bytes | None = None,
        on_status: Callable[[str], None] | None = None,
    ) -> None:
        self.target = target
        self.on_status = on_status
        self.secure = secure
        #: PEM CAs a ``grpcs`` upstream is verified against (``TOKEN_UPSTREAM_CA``);
        #: None: the system's bundle.
        self.root_certificates = root_certificates
        self.name = f"{'grpcs' if secure else 'grpc'}://{target}"
        self._api_key = api_key
        self._api_secret = api_secret
        self._channel: grpc.aio.Channel | None = None
        self._method: Any = None
        #: The process's threads before the channel was made, until gRPC's own are set
        #: not to preempt the event loop (:mod:`challenges.rpc.sched`).
        self._threads_before: set[int] | None = None
        #: Streams open right now (a debugging aid and the tests' leak check).
        self.open_calls = 0

    def __repr__(self) -> str:  # never print the secret
        return f"GrpcUpstream({self.name!r}, api_key={'set' if self._api_key else 'unset'})"

    def metadata(self, *, now: datetime | None = None) -> list[tuple[str, str]]:
        """The API-key metadata of one call: a fresh signature each time."""
        if not self._api_key:
            return []
        entries = [(apikeys.API_KEY_HEADER, self._api_key)]
        if self._api_secret:
            signed = apikeys.make_signature(secret=self._api_secret, now=now)
            entries += [(apikeys.API_SIG_MSG_HEADER, signed.msg), (apikeys.API_SIG_HEADER, signed.sig)]
        return entries

    async def begin(self, *, key: PublicKey, audience: str, timeout: float) -> GrpcPending:
        method = self._get_method()
        # Answer before the flow service's own bound, so the audit has our status.
        deadline = time.monotonic() + max(timeout - 0.5, timeout * 0.8)
        for attempt in range(2):
            call = method(metadata=self.metadata(), timeout=timeout + DEADLINE_MARGIN)
            self.open_calls += 1
            pending = GrpcPending(upstream=self, call=call, key=key, timeout=timeout)
            try:
                await pending.receive_challenge(max(deadline - time.monotonic(), 0.01))
            except UpstreamError as error:
                # Nothing was consumed yet: one more call learns the real status.
                if attempt or error.upstream_status != LOST:
                    raise
                continue
            if self._threads_before is not None:  # the first call: gRPC's threads are up
                sched.not_preempting(sched.thread_ids() - self._threads_before)
                self._threads_before = None
            return pending
        raise AssertionError("unreachable")

    async def left_ready(self, *, within: float) -> bool:
        """Whether the channel is out of READY, or leaves it within ``within`` seconds."""
        channel, ready = self._channel, grpc.ChannelConnectivity.READY
        if channel is not None and channel.get_state() == ready:
            with contextlib.suppress(Exception):  # a timeout, or a channel closed meanwhile
                async with asyncio.timeout(within):
                    await channel.wait_for_state_change(ready)
        return channel is not None and channel.get_state() != ready

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel, self._method = self._channel, None, None
            await channel.close()

    def _get_method(self) -> Any:
        if self._channel is None:
            self._threads_before = sched.thread_ids()
            self._channel = open_channel(
                self.target, secure=self.secure, root_certificates=self.root_certificates
            )
            self._method = self._channel.stream_stream(
                GET_TOKEN_METHODS[0],
                request_serializer=GetTokenRequest.SerializeToString,
                response_deserializer=GetTokenReply.FromString,
            )
        return self._method
