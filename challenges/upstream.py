"""The seam between "how a challenge is made and checked" and everything else.

An :class:`Upstream` starts a challenge for a public key; the returned
:class:`PendingChallenge` finishes it with the client's signature (once) or is
cancelled. ``local`` is the embedded authority (``authority.py``); ``grpc`` is a
relay to a Hub-compatible gRPC service (``rpc/client.py``) behind the same two
methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Protocol

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from . import authority
from .authority import Challenge, IssuedToken
from .errors import ChallengeError
from .identity import PrivateKey, PublicKey, parse_private_key


class PendingChallenge(Protocol):
    challenge: Challenge
    #: What the upstream said last, for the audit ("OK", a gRPC status name ...).
    status: str

    async def finish(self, signature: bytes) -> IssuedToken: ...

    async def cancel(self) -> None: ...


class Upstream(Protocol):
    name: str

    async def begin(self, *, key: PublicKey, audience: str, timeout: float) -> PendingChallenge: ...

    async def close(self) -> None: ...


@dataclass(eq=False)
class LocalPending:
    challenge: Challenge
    key: PublicKey
    signer: PrivateKey
    ttl: float
    token_audience: str
    status: str = field(default="pending")

    async def finish(self, signature: bytes) -> IssuedToken:
        if datetime.now(UTC) > self.challenge.expires_at:
            self.status = "expired"
            raise ChallengeError("the challenge was not answered in time", code="challenge_timeout")
        try:
            self.key.verify(self.challenge.value, signature)
        except ChallengeError:
            self.status = "bad_signature"
            raise
        self.status = "OK"
        return authority.mint_token(
            signer=self.signer, subject=self.key, ttl=self.ttl, audience=self.token_audience
        )

    async def cancel(self) -> None:
        if self.status == "pending":
            self.status = "cancelled"


@dataclass(eq=False)
class LocalUpstream:
    """The embedded authority: PyNaCl verification, joserfc tokens."""

    signer: PrivateKey
    ttl: float
    token_audience: str = ""
    name: str = "local"

    async def begin(self, *, key: PublicKey, audience: str, timeout: float) -> LocalPending:
        challenge = authority.make_challenge(audience=audience, key=key, timeout=timeout)
        return LocalPending(
            challenge=challenge,
            key=key,
            signer=self.signer,
            ttl=self.ttl,
            token_audience=self.token_audience,
        )

    async def close(self) -> None:
        return None


@cache
def authority_key() -> PrivateKey:
    """The authority's signing key: ``AUTHORITY_PRIVATE_KEY``, or in DEBUG a
    development key generated once into ``var/dev-authority.key`` (mode 0600)."""
    if settings.AUTHORITY_PRIVATE_KEY:
        return parse_private_key(settings.AUTHORITY_PRIVATE_KEY)
    if not settings.DEBUG:
        raise ImproperlyConfigured("AUTHORITY_PRIVATE_KEY is not set")
    path = settings.AUTHORITY_KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = PrivateKey.generate()
        try:
            with open(path, "x", encoding="ascii", opener=_private_opener) as fh:
                fh.write(str(key) + "\n")
        except FileExistsError:
            pass  # another process won the race; read theirs
    return parse_private_key(path.read_text(encoding="ascii").strip())


def _private_opener(path: str, flags: int) -> int:
    import os

    return os.open(path, flags, 0o600)


def from_settings() -> Upstream:
    """The upstream that ``TOKEN_UPSTREAM`` names: ``local``, or a relay to
    ``grpc://host:port`` / ``grpcs://host:port`` (``challenges.rpc.client``).

    Called once per event loop by ``flows.get_service()``, so a relay keeps one
    gRPC channel per process, reused across flows.
    """
    spec = settings.TOKEN_UPSTREAM
    if spec == "local":
        return LocalUpstream(
            signer=authority_key(), ttl=settings.TOKEN_TTL, token_audience=settings.TOKEN_AUDIENCE
        )
    if spec.startswith(("grpc://", "grpcs://")):
        from .rpc.client import GrpcUpstream, parse_target  # grpc only when relaying

        try:
            target, secure = parse_target(spec)
        except ValueError as exc:
            raise ImproperlyConfigured(str(exc)) from exc
        return GrpcUpstream(
            target=target,
            secure=secure,
            api_key=settings.USER_API_KEY,
            api_secret=settings.USER_API_SECRET,
        )
    raise ImproperlyConfigured(f"unsupported TOKEN_UPSTREAM {spec!r}")
