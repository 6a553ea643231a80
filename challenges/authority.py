"""The embedded authority's challenges: the challenge text a client signs.

Challenges (``docs/PROTOCOL.md``, "The challenge text") are a short UTF-8 text that
binds the purpose, the audience, the user's public key, a 192-bit nonce, the
issue time and the expiry, so a signature made for this service is useless
anywhere else::

    textile-token-challenge/v1
    purpose: api-token
    audience: https://app.example.com
    key: bbaarei...
    nonce: 3q2-7w...
    issued: 2026-11-29T12:00:00Z
    expires: 2026-11-29T12:01:00Z

Tokens are minted and checked in :mod:`challenges.tokens`.

Time and randomness are injected (``now=``, ``nonce=``) so tests pin
them. Pure module: no Django, Channels or grpc import.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .errors import ChallengeTextError
from .identity import PublicKey

CHALLENGE_VERSION = "textile-token-challenge/v1"
CHALLENGE_PURPOSE = "api-token"
NONCE_BYTES = 24
CHALLENGE_ID_BYTES = 18
_FIELDS = ("purpose", "audience", "key", "nonce", "issued", "expires")
MAX_CHALLENGE_TEXT = 1024


@dataclass(frozen=True, slots=True)
class ChallengeText:
    """The parsed fields of a v1 challenge text."""

    audience: str
    key: str
    nonce: str
    issued: datetime
    expires: datetime
    purpose: str = CHALLENGE_PURPOSE

    def encode(self) -> bytes:
        lines = [
            CHALLENGE_VERSION,
            f"purpose: {self.purpose}",
            f"audience: {self.audience}",
            f"key: {self.key}",
            f"nonce: {self.nonce}",
            f"issued: {_iso(self.issued)}",
            f"expires: {_iso(self.expires)}",
        ]
        return "\n".join(lines).encode("utf-8")


@dataclass(frozen=True, slots=True)
class Challenge:
    """A challenge as issued: its id, the bytes to sign, and its expiry."""

    id: str
    value: bytes
    expires_at: datetime
    raw: bool = False


def new_challenge_id() -> str:
    return secrets.token_urlsafe(CHALLENGE_ID_BYTES)


def make_challenge(
    *,
    audience: str,
    key: PublicKey,
    timeout: float,
    now: datetime | None = None,
    nonce: bytes | None = None,
    challenge_id: str | None = None,
) -> Challenge:
    """A fresh audience-bound challenge for ``key``, valid ``timeout`` seconds."""
    issued = now or datetime.now(UTC)
    expires = issued + timedelta(seconds=timeout)
    nonce = secrets.token_bytes(NONCE_BYTES) if nonce is None else nonce
    if len(nonce) < 16:
        raise ValueError("a challenge nonce needs at least 128 bits")
    text = ChallengeText(
        audience=audience,
        key=str(key),
        nonce=base64.urlsafe_b64encode(nonce).decode("ascii").rstrip("="),
        issued=issued.replace(microsecond=0),
        # The text has whole seconds: round the expiry up, never promise less time.
        expires=(expires + timedelta(microseconds=999_999)).replace(microsecond=0),
    )
    return Challenge(id=challenge_id or new_challenge_id(), value=text.encode(), expires_at=expires)


def parse_challenge_text(value: bytes) -> ChallengeText:
    """Parse a v1 challenge text; raises :class:`ChallengeTextError`."""
    if len(value) > MAX_CHALLENGE_TEXT:
        raise ChallengeTextError("the challenge is too long to be a v1 challenge text")
    try:
        lines = value.decode("utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise ChallengeTextError("the challenge is not a v1 challenge text") from exc
    if len(lines) != len(_FIELDS) + 1 or lines[0] != CHALLENGE_VERSION:
        raise ChallengeTextError("the challenge is not a v1 challenge text")
    fields: dict[str, str] = {}
    for name, line in zip(_FIELDS, lines[1:], strict=True):
        prefix = f"{name}: "
        if not line.startswith(prefix):
            raise ChallengeTextError(f"the challenge text lacks '{name}'")
        fields[name] = line[len(prefix) :]
    try:
        issued, expires = _parse_iso(fields["issued"]), _parse_iso(fields["expires"])
    except ValueError as exc:
        raise ChallengeTextError("the challenge text has a malformed time") from exc
    return ChallengeText(
        purpose=fields["purpose"],
        audience=fields["audience"],
        key=fields["key"],
        nonce=fields["nonce"],
        issued=issued,
        expires=expires,
    )


def check_challenge_text(
    value: bytes, *, audience: str, key: PublicKey, now: datetime | None = None
) -> ChallengeText:
    """What a client checks before signing: right purpose, audience and key."""
    text = parse_challenge_text(value)
    if text.purpose != CHALLENGE_PURPOSE:
        raise ChallengeTextError(f"the challenge is for '{text.purpose}', not a token")
    if text.audience != audience:
        raise ChallengeTextError(f"the challenge names audience {text.audience!r}, expected {audience!r}")
    if text.key != str(key):
        raise ChallengeTextError("the challenge names another public key")
    if (now or datetime.now(UTC)) > text.expires + timedelta(seconds=5):
        raise ChallengeTextError("the challenge has already expired")
    return text


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
