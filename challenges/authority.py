"""The embedded authority's pure core: challenge texts and tokens.

Challenges (see the README, "Challenge text") are a short UTF-8 text that
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

Tokens are the JWTs of ``shared/PROTOCOL.md`` §4: header
``{"alg":"Ed25519","typ":"JWT"}``, claims ``iat``, ``iss``, ``sub`` in
go-threads' order, then ``exp``, ``jti`` and (when configured) ``aud``; signed
with Ed25519 by the authority key through joserfc (RFC 9864 "Ed25519").

Time and randomness are injected (``now=``, ``nonce=``, ``jti=``) so tests pin
them. Pure module: no Django, Channels or grpc import.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from .errors import ChallengeError
from .identity import IdentityError, PrivateKey, PublicKey, parse_public_key

CHALLENGE_VERSION = "textile-token-challenge/v1"
CHALLENGE_PURPOSE = "api-token"
NONCE_BYTES = 24
CHALLENGE_ID_BYTES = 18
_FIELDS = ("purpose", "audience", "key", "nonce", "issued", "expires")
_HEADER = {"alg": "Ed25519", "typ": "JWT"}
MAX_CHALLENGE_TEXT = 1024


class TokenError(ChallengeError):
    """A token failed verification."""

    code = "invalid_token"


class ChallengeTextError(ChallengeError):
    """A challenge text is malformed or does not name what the client expects."""

    code = "challenge_refused"


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


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A minted token and what the audit keeps of it (never the token)."""

    token: str
    jti: str
    sha256: str
    subject: str
    issuer: str
    audience: str
    issued_at: datetime
    expires_at: datetime | None


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


def mint_token(
    *,
    signer: PrivateKey,
    subject: PublicKey,
    ttl: float | None,
    audience: str = "",
    now: datetime | None = None,
    jti: str | None = None,
) -> IssuedToken:
    """Sign a token for ``subject`` (PROTOCOL.md §4 plus ``exp``/``jti``/``aud``)."""
    issued = (now or datetime.now(UTC)).replace(microsecond=0)
    expires = issued + timedelta(seconds=ttl) if ttl else None
    jti = jti or secrets.token_urlsafe(16)
    issuer = _issuer(signer)
    claims: dict[str, Any] = {"iat": int(issued.timestamp()), "iss": issuer, "sub": str(subject)}
    if expires is not None:
        claims["exp"] = int(expires.timestamp())
    claims["jti"] = jti
    if audience:
        claims["aud"] = audience
    payload = json.dumps(claims, separators=(",", ":")).encode("utf-8")
    token = jws.serialize_compact(_HEADER, payload, _okp(signer), algorithms=["Ed25519"])
    return IssuedToken(
        token=token,
        jti=jti,
        sha256=token_sha256(token),
        subject=str(subject),
        issuer=issuer,
        audience=audience,
        issued_at=issued,
        expires_at=expires,
    )


def verify_token(
    token: str,
    *,
    issuer: PublicKey,
    audience: str = "",
    now: datetime | None = None,
    leeway: int = 30,
    require_exp: bool = True,
) -> dict[str, Any]:
    """Return the claims of a valid token or raise :class:`TokenError`.

    Checks the header, the Ed25519 signature by ``issuer``, ``iss``, ``exp``
    (with ``leeway`` seconds), ``iat`` not in the future, and ``aud`` when
    ``audience`` is given.
    """
    if not isinstance(token, str) or len(token) > 8192 or token.count(".") != 2:
        raise TokenError("the token is not a compact JWT")
    try:
        obj = jws.deserialize_compact(token, _okp(issuer), algorithms=["Ed25519"])
        claims = json.loads(obj.payload)
    except (JoseError, ValueError) as exc:
        raise TokenError("the token's signature or encoding is invalid") from exc
    if obj.protected != _HEADER or not isinstance(claims, dict):
        raise TokenError("the token's header or claims are not those of this authority")
    moment = int((now or datetime.now(UTC)).timestamp())
    if claims.get("iss") != str(issuer):
        raise TokenError("the token was issued by another authority")
    try:
        parse_public_key(claims.get("sub"))
    except IdentityError as exc:
        raise TokenError("the token's subject is not a public key") from exc
    iat, exp = claims.get("iat"), claims.get("exp")
    if type(iat) is not int or iat > moment + leeway:
        raise TokenError("the token's issue time is missing or in the future")
    if exp is None and require_exp:
        raise TokenError("the token has no expiry")
    if exp is not None and (type(exp) is not int or moment > exp + leeway):
        raise TokenError("the token has expired", code="token_expired")
    if audience and claims.get("aud") != audience:
        raise TokenError("the token is for another audience", code="wrong_audience")
    return claims


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


@lru_cache(maxsize=64)
def _okp(key: PrivateKey | PublicKey) -> OKPKey:
    # Cached: importing the key (and deriving its public half) cost ~5 % of a flow.
    pub = key.public.raw if isinstance(key, PrivateKey) else key.raw
    data: dict[str, str | list[str]] = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(pub)}
    if isinstance(key, PrivateKey):
        data["d"] = _b64url(key.seed)
    return OKPKey.import_key(data)


@lru_cache(maxsize=64)
def _issuer(signer: PrivateKey) -> str:
    return str(signer.public)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
