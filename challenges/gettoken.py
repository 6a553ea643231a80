"""``GetToken`` as the Hub answered it, with no transport: the state machine of one call.

Both the native gRPC servicer (``manage.py runauthority``,
:mod:`challenges.rpc.server`) and the gRPC-Web endpoint on the ASGI app drive
:class:`GetTokenCall`: they hand it the caller's messages as they come and
send what it answers; it decides every outcome, audits it, and returns the
error the transport ends the call with (``None``: status OK). The Hub's
sequence (``docs/PROTOCOL.md``, "GetToken"): the caller sends its key, gets
32 random bytes, sends their signature within the deadline (one minute), and
gets a token, which is released only after its audit row is committed.

A call the caller cancels (or whose transport goes away) is audited with
status ``CANCELLED`` and the step it was at. A transport's ``receive`` may
raise a coded error instead of giving a message (the message was malformed,
or the server is shutting down): the call ends with it, audited. A call the
transport refuses before it starts (``refusal``: the API key, say) reads the
caller's first message, for the key in the audit, and ends with the refusal.

:class:`StreamCap` bounds the calls in progress; one cap is shared by every
transport a process serves ``GetToken`` on. A call past it is refused at
once (``too_many_pending``, the Hub's ``RESOURCE_EXHAUSTED``) and audited.

Every outcome audited is counted and logged too
(:func:`challenges.outcomes.observe`, into the transport's
:class:`~challenges.metrics.Metrics`), as the other transports' are: with its
latency, or, for a call refused before its challenge, as a refusal; a call
whose key was read counts as started.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .audit import AuditWriter
from .errors import ChallengeError, Code, IdentityError, LimitError, key_blocked
from .identity import PrivateKey, PublicKey, parse_public_key
from .metrics import DEFAULT, Metrics
from .outcomes import observe, record_issued
from .services import AuditRecord
from .tasks import TaskSet
from .tokens import MintedToken, mint_token

CHALLENGE_BYTES = 32
#: The default cap on calls in progress (``AUTHORITY_MAX_STREAMS``).
DEFAULT_MAX_STREAMS = 1000
#: How long a refused call waits for the caller's first message (its key, for the audit)
#: before ending: a grpc.aio client whose write races the status reports INTERNAL
#: instead of it (as the API-key check's refusals, in rpc/interceptor.py).
FIRST_MESSAGE_WAIT = 1.0

#: The upstream a call's audit rows and metrics name: the embedded authority mints.
AUTHORITY = "authority"

#: A caller's message: ("key", str), ("signature", bytes), or (None, None) for any other.
Request = tuple[str | None, str | bytes | None]


@dataclass(frozen=True, slots=True)
class Reply:
    """What the call answers: the challenge, then the token."""

    challenge: bytes = b""
    token: str = ""


@dataclass(frozen=True, slots=True)
class AuthorityConfig:
    """What the authority mints and how long it waits."""

    signer: PrivateKey
    ttl: float | None
    audience: str = ""
    challenge_deadline: float = 60.0
    worker: str = ""


class StreamCap:
    """How many ``GetToken`` calls may be in progress at once in this process, across every
    transport that serves them (each call holds one slot from its start to its end).

    One event loop drives every call, so the counter needs no lock.
    """

    def __init__(self, limit: int = DEFAULT_MAX_STREAMS) -> None:
        if limit < 1:
            raise ValueError("the stream cap must be at least 1")
        self.limit = limit
        #: Calls holding a slot now.
        self.active = 0

    def acquire(self) -> bool:
        """Take a slot; False when all are taken."""
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active -= 1


@dataclass
class Caller:
    """Who calls, as the audit records it."""

    ip: str | None = None
    user_agent: str = ""
    origin: str = ""
    transport: str = "grpc"
    api_key: str = ""
    key: str = ""
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    challenged: float | None = None
    recorded: bool = False

    def record(
        self, outcome: str, *, status: str, worker: str, detail: str = "", token: MintedToken | None = None
    ) -> AuditRecord:
        self.recorded = True
        return AuditRecord(
            outcome=outcome,
            created_at=self.created,
            finished_at=datetime.now(UTC),
            public_key=self.key,
            detail=detail,
            client_ip=self.ip,
            origin=self.origin,
            user_agent=self.user_agent,
            transport=self.transport,
            worker=worker,
            upstream=AUTHORITY,
            upstream_status=status,
            latency_ms=None if self.challenged is None else (time.monotonic() - self.challenged) * 1000,
            api_key=self.api_key,
            token=token,
        )


class GetTokenCall:
    """One ``GetToken`` call. :meth:`run` returns the error to end it with, or None (OK)."""

    def __init__(
        self,
        *,
        config: AuthorityConfig,
        audit: AuditWriter,
        caller: Caller,
        tasks: TaskSet,
        cap: StreamCap | None = None,
        blocked: Container[str] = frozenset(),
        metrics: Metrics = DEFAULT,
    ) -> None:
        self.config = config
        self.audit = audit
        self.caller = caller
        self.cap = cap
        #: Public keys an operator blocked: refused once read, and at the signature.
        self.blocked = blocked
        self.metrics = metrics
        self._tasks = tasks

    async def run(
        self,
        receive: Callable[[], Awaitable[Request | None]],
        send: Callable[[Reply], Awaitable[None]],
        *,
        status_name: Callable[[ChallengeError], str],
        refusal: ChallengeError | None = None,
    ) -> ChallengeError | None:
        """Drive the call: ``receive()`` gives the next message (None: the caller half-closed)
        or raises a coded error, ``send`` answers; ``status_name`` names the status an error
        ends the call with, for the audit. With ``refusal``, the call is refused at once."""
        admitted = refusal is None and (self.cap is None or self.cap.acquire())
        try:
            if not admitted:
                busy = LimitError(
                    "too many concurrent GetToken calls; retry shortly", code=Code.TOO_MANY_PENDING
                )
                return await self._refused(receive, status_name, refusal or busy)
            return await self._run(receive, send, status_name)
        except ChallengeError as error:  # from receive(): a malformed message, a shutdown
            return await self._refuse(error, status_name)
        except asyncio.CancelledError:
            if not self.caller.recorded:
                if not admitted:
                    code = refusal.code if refusal is not None else Code.TOO_MANY_PENDING
                elif self.caller.challenged is not None:
                    code = Code.MISSING_SIG
                else:
                    code = Code.MISSING_PUB
                record = self._record(code, status="CANCELLED", detail="the caller cancelled the call")
                observe(self.metrics, record)
                self._tasks.spawn(self.audit.record_quietly(record))
            raise
        finally:
            if admitted and self.cap is not None:
                self.cap.release()

    async def _refused(
        self,
        receive: Callable[[], Awaitable[Request | None]],
        status_name: Callable[[ChallengeError], str],
        error: ChallengeError,
    ) -> ChallengeError:
        # Read the caller's key first (see FIRST_MESSAGE_WAIT); nothing else is done for it.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(FIRST_MESSAGE_WAIT):
                first = await receive()
                if first is not None and first[0] == "key":
                    self.caller.key = str(first[1])[:128]
        return await self._refuse(error, status_name)

    async def _run(
        self,
        receive: Callable[[], Awaitable[Request | None]],
        send: Callable[[Reply], Awaitable[None]],
        status_name: Callable[[ChallengeError], str],
    ) -> ChallengeError | None:
        first = await receive()
        if first is None or first[0] != "key":
            missing_key = ChallengeError("Key is required", code=Code.MISSING_PUB)
            return await self._refuse(missing_key, status_name, ended=first is None)
        self.caller.key = str(first[1])[:128]
        try:
            key = parse_public_key(first[1])
        except IdentityError as bad_key:
            return await self._refuse(bad_key, status_name)
        self.metrics.started(self.caller.transport)
        if str(key) in self.blocked:
            return await self._refuse(key_blocked(), status_name)
        challenge = secrets.token_bytes(CHALLENGE_BYTES)
        self.caller.challenged = time.monotonic()
        await send(Reply(challenge=challenge))
        try:
            async with asyncio.timeout(self.config.challenge_deadline):
                second = await receive()
        except TimeoutError:
            late = ChallengeError("Challenge deadline exceeded", code=Code.CHALLENGE_TIMEOUT)
            return await self._refuse(late, status_name)
        if second is None or second[0] != "signature" or not isinstance(second[1], bytes):
            missing = ChallengeError("Signature is required", code=Code.MISSING_SIG)
            return await self._refuse(missing, status_name, ended=second is None)
        if str(key) in self.blocked:  # blocked while the call waited for the signature
            return await self._refuse(key_blocked(), status_name)
        try:
            key.verify(challenge, second[1])
        except ChallengeError as bad_sig:
            return await self._refuse(bad_sig, status_name)
        return await self._issue(key, send)

    async def _issue(self, key: PublicKey, send: Callable[[Reply], Awaitable[None]]) -> ChallengeError | None:
        config = self.config
        token = mint_token(signer=config.signer, subject=key, ttl=config.ttl, audience=config.audience)
        try:
            await record_issued(self.audit, self.metrics, self._record("success", status="OK", token=token))
        except ChallengeError as error:  # no row, no token: counted as what the caller is told
            return error
        await send(Reply(token=token.token))
        return None

    async def _refuse(
        self, error: ChallengeError, status_name: Callable[[ChallengeError], str], *, ended: bool = False
    ) -> ChallengeError:
        if ended:
            # A caller that cancels ends our request stream first and our task a few turns
            # of the loop later: let that land, so the audit tells a cancelled call from a
            # half-closed one.
            await asyncio.sleep(0.1)
        record = self._record(error.code, status=status_name(error), detail=error.message)
        observe(self.metrics, record)
        await self.audit.record_quietly(record)
        return error

    def _record(
        self, outcome: str, *, status: str, detail: str = "", token: MintedToken | None = None
    ) -> AuditRecord:
        return self.caller.record(
            outcome, status=status, worker=self.config.worker, detail=detail, token=token
        )
