"""The seam between "how a challenge is made and checked" and everything else.

An :class:`Upstream` starts a challenge for a public key; the returned
:class:`PendingChallenge` finishes it with the client's signature (once) or is
cancelled. :class:`LocalUpstream` is the embedded authority
(:mod:`challenges.authority`); ``rpc.client.GrpcUpstream`` relays to a
Hub-compatible gRPC service behind the same two methods. The composition
root (:mod:`challenges.runtime`) picks one from ``TOKEN_UPSTREAM``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from . import authority, tokens
from .authority import Challenge
from .clock import Clock
from .errors import ChallengeError, Code
from .identity import PrivateKey, PublicKey
from .tokens import MintedToken


def relays(spec: str) -> bool:
    """Whether ``TOKEN_UPSTREAM`` relays over gRPC (``grpc://``, ``grpcs://``) rather than mints."""
    return spec.startswith(("grpc://", "grpcs://"))


class PendingChallenge(Protocol):
    challenge: Challenge
    #: What the upstream said last, for the audit ("OK", a gRPC status name ...).
    status: str
    #: It holds a resource upstream (an open stream) that a client who went away
    #: should not keep for the challenge's whole life.
    holds_stream: bool

    async def finish(self, signature: bytes) -> MintedToken: ...

    async def cancel(self) -> None: ...


class Upstream(Protocol):
    name: str

    async def begin(self, *, key: PublicKey, audience: str, timeout: float) -> PendingChallenge: ...

    async def close(self) -> None: ...


@dataclass(eq=False)
class LocalPending:
    challenge: Challenge
    key: PublicKey
    upstream: LocalUpstream
    status: str = field(default="pending")
    holds_stream: bool = False

    async def finish(self, signature: bytes) -> MintedToken:
        now = self.upstream.clock.now()
        if now > self.challenge.expires_at:
            self.status = "expired"
            raise ChallengeError("the challenge was not answered in time", code=Code.CHALLENGE_TIMEOUT)
        try:
            self.key.verify(self.challenge.value, signature)
        except ChallengeError:
            self.status = "bad_signature"
            raise
        self.status = "OK"
        return tokens.mint_token(
            signer=self.upstream.signer,
            subject=self.key,
            ttl=self.upstream.ttl,
            audience=self.upstream.token_audience,
            now=now,
        )

    async def cancel(self) -> None:
        if self.status == "pending":
            self.status = "cancelled"


@dataclass(eq=False)
class LocalUpstream:
    """The embedded authority: PyNaCl verification, joserfc tokens."""

    signer: PrivateKey
    ttl: float
    clock: Clock
    token_audience: str = ""
    name: str = "local"

    async def begin(self, *, key: PublicKey, audience: str, timeout: float) -> LocalPending:
        challenge = authority.make_challenge(
            audience=audience, key=key, timeout=timeout, now=self.clock.now()
        )
        return LocalPending(challenge=challenge, key=key, upstream=self)

    async def close(self) -> None:
        return None
