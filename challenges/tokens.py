"""Tokens: minted by the embedded authority, checked for the apps that receive them.

Tokens are the JWTs of ``docs/PROTOCOL.md`` ("The token"): header
``{"alg":"Ed25519","typ":"JWT","kid":...}`` (go-threads' header plus the
signing key's RFC 7638 thumbprint), claims ``iat``, ``iss``, ``sub`` in
go-threads' order, then ``exp``, ``jti`` and (when configured) ``aud``; signed
with Ed25519 by the authority key through joserfc (RFC 9864 "Ed25519").
:func:`verify_token` checks one of ours against the authority's keys (a
go-threads token without ``kid`` too); :func:`jwk` is a key as the published
key set shows it; :func:`describe_token` reads what the audit keeps of a token
another authority minted, without verifying it.

Time and randomness are injected (``now=``, ``jti=``) so tests pin them. Pure
module: no Django, Channels or grpc import.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from .errors import Code, IdentityError, TokenError
from .identity import PrivateKey, PublicKey, parse_public_key

_HEADER = {"alg": "Ed25519", "typ": "JWT"}


@dataclass(frozen=True, slots=True)
class MintedToken:
    """A minted token and what the audit keeps of it (never the token)."""

    token: str
    jti: str
    sha256: str
    subject: str
    issuer: str
    audience: str
    issued_at: datetime
    expires_at: datetime | None


def mint_token(
    *,
    signer: PrivateKey,
    subject: PublicKey,
    ttl: float | None,
    audience: str = "",
    now: datetime | None = None,
    jti: str | None = None,
) -> MintedToken:
    """Sign a token for ``subject`` (go-threads' claims plus ``exp``/``jti``/``aud``; the
    header names the signing key)."""
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
    header = json.dumps({**_HEADER, "kid": key_id(signer.public)}, separators=(",", ":")).encode("ascii")
    # Compact JWS (RFC 7515 §7.1) signed with the key pair derived once, not per token.
    signing_input = f"{_b64url(header)}.{_b64url(payload)}"
    token = f"{signing_input}.{_b64url(signer.sign(signing_input.encode('ascii')))}"
    return MintedToken(
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
    issuer: PublicKey | Sequence[PublicKey],
    audience: str = "",
    now: datetime | None = None,
    leeway: int = 30,
    require_exp: bool = True,
) -> dict[str, Any]:
    """Return the claims of a valid token or raise :class:`TokenError`.

    ``issuer`` is the authority's key, or all of them (the current one and the
    rotated-out ones): the token's ``iss`` picks one, and its ``kid``, when it
    has one, must name that key. Checks the header, the Ed25519 signature,
    ``iss``, ``exp`` (with ``leeway`` seconds), ``iat`` not in the future, and
    ``aud`` when ``audience`` is given.
    """
    if not isinstance(token, str) or len(token) > 8192 or token.count(".") != 2:
        raise TokenError("the token is not a compact JWT")
    header, unverified = (_segment(part) for part in token.split(".")[:2])
    if not isinstance(header, dict) or not isinstance(unverified, dict):
        raise TokenError("the token's header or claims are not base64url JSON objects")
    issuers = [issuer] if isinstance(issuer, PublicKey) else list(issuer)
    key = next((k for k in issuers if unverified.get("iss") == str(k)), None)
    if key is None:
        raise TokenError("the token was issued by another authority")
    if header not in (_HEADER, {**_HEADER, "kid": key_id(key)}):
        raise TokenError("the token's header is not that of this authority")
    try:
        claims = json.loads(jws.deserialize_compact(token, _okp(key), algorithms=["Ed25519"]).payload)
    except (JoseError, ValueError) as exc:
        raise TokenError("the token's signature or encoding is invalid") from exc
    if not isinstance(claims, dict) or claims.get("iss") != str(key):
        raise TokenError("the token's claims are not those of this authority")
    moment = int((now or datetime.now(UTC)).timestamp())
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
        raise TokenError("the token has expired", code=Code.TOKEN_EXPIRED)
    if audience and claims.get("aud") != audience:
        raise TokenError("the token is for another audience", code=Code.WRONG_AUDIENCE)
    return claims


def key_id(key: PublicKey) -> str:
    """The RFC 7638 JWK thumbprint of an Ed25519 public key (the token header's ``kid``)."""
    return _key_id(key.raw)


def jwk(key: PublicKey) -> dict[str, str]:
    """The key as a published key set lists it (RFC 8037 OKP, RFC 9864 "Ed25519")."""
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": _b64url(key.raw),
        "kid": key_id(key),
        "use": "sig",
        "alg": "Ed25519",
    }


@lru_cache(maxsize=64)
def _key_id(raw: bytes) -> str:
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}, separators=(",", ":"))
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def _segment(part: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (ValueError, binascii.Error):
        return None


def describe_token(token: str, *, subject: PublicKey, now: datetime | None = None) -> MintedToken:
    """What the audit keeps of a token another authority minted (a relayed Hub
    token), read from its claims **without verifying them**: never use it to
    trust a token. Hub tokens have no ``jti`` or ``exp``: the ``jti`` then falls
    back to the token's hash, so the audit row is still unique.
    """
    claims: dict[str, Any] = {}
    try:
        segment = token.split(".")[1]
        decoded = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
        if isinstance(decoded, dict):
            claims = decoded
    except (IndexError, ValueError):
        pass
    digest = token_sha256(token)
    jti, aud = claims.get("jti"), claims.get("aud")
    return MintedToken(
        token=token,
        jti=jti if isinstance(jti, str) and 0 < len(jti) <= 64 else digest[:32],
        sha256=digest,
        subject=str(subject),
        issuer=str(claims.get("iss", ""))[:128],
        audience=aud if isinstance(aud, str) else "",
        issued_at=_moment(claims.get("iat")) or now or datetime.now(UTC),
        expires_at=_moment(claims.get("exp")),
    )


def _moment(value: Any) -> datetime | None:
    if type(value) is not int:
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


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
