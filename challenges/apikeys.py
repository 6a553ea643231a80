"""Hub API keys and their HMAC signatures (``docs/PROTOCOL.md``, "API keys").

A Hub "user group" API key is sent as ``x-textile-api-key``. A key with a
secret also sends ``x-textile-api-sig-msg``, an RFC 3339 date a little in the
future, and ``x-textile-api-sig``, the multibase base32 of HMAC-SHA256 keyed
with the *decoded* secret (24 bytes, not the secret string) over the UTF-8
bytes of that date. The secret itself never travels.

* keys: multibase base32 (``b`` + lower-case RFC 4648, unpadded) of 16 random
  bytes; secrets: the same over 24 random bytes;
* a verifier refuses a date in the past, or more than :data:`MAX_AHEAD`
  ahead, and compares in constant time.

Errors are :class:`~challenges.errors.ApiKeyError` whose ``code`` is one of
``api_key_required``, ``api_key_not_found``, ``api_sig_required`` and
``api_sig_bad``, and whose message is the Hub's own; the gRPC edge maps each
to the Hub's status. No message ever quotes a secret or a signature.

Time and randomness are injected (``now=``, ``rand=``). Pure module: no
Django, Channels or grpc import.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .errors import ApiKeyError, Code
from .identity import multibase_b32

API_KEY_HEADER = "x-textile-api-key"
API_SIG_MSG_HEADER = "x-textile-api-sig-msg"
API_SIG_HEADER = "x-textile-api-sig"
KEY_BYTES = 16
SECRET_BYTES = 24
#: How far ahead a client dates its signature message (js-textile used 30 min).
DEFAULT_AHEAD = timedelta(minutes=5)
#: A signature message dated further ahead than this is refused.
MAX_AHEAD = timedelta(hours=1)
_MAX_MSG = 64
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})")
_KEY_CHARS = re.compile(r"[A-Za-z0-9_-]{1,128}")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key and its secret (``secret`` is empty for keys that need no signature)."""

    key: str
    secret: str = ""

    def __repr__(self) -> str:  # never print the secret
        return f"ApiKey(key={self.key!r}, secret={'***' if self.secret else ''!r})"


@dataclass(frozen=True, slots=True)
class ApiSignature:
    """The two metadata values a signing client sends."""

    msg: str
    sig: str


def new_api_key(*, rand: Callable[[int], bytes] = secrets.token_bytes) -> ApiKey:
    """A new key and secret in the Hub's format."""
    return ApiKey(key=multibase_b32(rand(KEY_BYTES)), secret=multibase_b32(rand(SECRET_BYTES)))


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a secret string: its multibase base32 decoded (24 bytes).

    Raises :class:`ValueError` (never quoting the secret) when it is malformed.
    """
    if not isinstance(secret, str) or not secret.startswith("b") or len(secret) > 256:
        raise ValueError("an API secret must be multibase base32 (start with 'b')")
    body = secret[1:].upper()
    try:
        data = base64.b32decode(body + "=" * (-len(body) % 8))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("an API secret must be multibase base32") from exc
    if not data:
        raise ValueError("an API secret is empty")
    return data


def sign_message(*, secret: str, msg: str) -> str:
    """``x-textile-api-sig`` for ``msg``: multibase base32 of HMAC-SHA256."""
    return multibase_b32(hmac.new(decode_secret(secret), msg.encode("utf-8"), hashlib.sha256).digest())


def make_signature(
    *, secret: str, now: datetime | None = None, ahead: timedelta = DEFAULT_AHEAD
) -> ApiSignature:
    """A fresh signature message dated ``ahead`` of ``now``, and its HMAC."""
    moment = (now or datetime.now(UTC)) + ahead
    msg = format_date(moment)
    return ApiSignature(msg=msg, sig=sign_message(secret=secret, msg=msg))


def verify_signature(
    *,
    secret: str,
    msg: str | None,
    sig: str | None,
    now: datetime | None = None,
    max_ahead: timedelta = MAX_AHEAD,
) -> None:
    """Check a key's signature; raises :class:`ApiKeyError`.

    ``api_sig_required`` when either value is missing; ``api_sig_bad`` when the
    date is malformed, in the past, more than ``max_ahead`` ahead, or the HMAC
    does not match (compared in constant time).
    """
    if not msg or not sig:
        raise ApiKeyError(Code.API_SIG_REQUIRED)
    moment = now or datetime.now(UTC)
    try:
        date = parse_date(msg)
    except ValueError:
        raise ApiKeyError(Code.API_SIG_BAD, "the signature message is not an RFC 3339 date") from None
    if date <= moment:
        raise ApiKeyError(Code.API_SIG_BAD, "the signature message is dated in the past")
    if date > moment + max_ahead:
        raise ApiKeyError(Code.API_SIG_BAD, "the signature message is dated too far ahead")
    expected = sign_message(secret=secret, msg=msg)
    if not hmac.compare_digest(expected.encode("ascii"), sig.encode("utf-8", "replace")):
        raise ApiKeyError(Code.API_SIG_BAD, "the signature does not match")


def check_api_key(
    keys: Mapping[str, str],
    *,
    key: str | None,
    msg: str | None,
    sig: str | None,
    now: datetime | None = None,
) -> str:
    """The Hub's API-key check over configured ``keys`` (key -> secret or "").

    Returns the key; raises :class:`ApiKeyError`. A key configured without a
    secret needs no signature.
    """
    if not key:
        raise ApiKeyError(Code.API_KEY_REQUIRED)
    secret = None
    for known, known_secret in keys.items():
        if hmac.compare_digest(known.encode("utf-8"), key.encode("utf-8", "replace")):
            secret = known_secret
    if secret is None:
        raise ApiKeyError(Code.API_KEY_NOT_FOUND)
    if secret:
        verify_signature(secret=secret, msg=msg, sig=sig, now=now)
    return key


def parse_api_keys(text: str) -> dict[str, str]:
    """``key:secret,key2:secret2`` (or a bare ``key``: no signature) to a mapping.

    Raises :class:`ValueError` naming the entry's position, never a secret.
    """
    return {key: secret for _, key, secret in api_key_entries(text)}


def api_key_entries(text: str) -> list[tuple[int, str, str]]:
    """:func:`parse_api_keys`'s entries as ``(position, key, secret)``, positions counted
    from 1 in the text (a key given twice is there twice)."""
    entries = []
    for position, entry in enumerate(filter(None, (e.strip() for e in text.split(","))), start=1):
        key, _, secret = entry.partition(":")
        key, secret = key.strip(), secret.strip()
        if not _KEY_CHARS.fullmatch(key):
            raise ValueError(f"API key entry {position} has a malformed key")
        if secret:
            try:
                decode_secret(secret)
            except ValueError as exc:
                raise ValueError(f"API key entry {position}: {exc}") from None
        entries.append((position, key, secret))
    return entries


def configured_api_keys(
    authority_api_keys: str, *, user_api_key: str = "", user_api_secret: str = ""
) -> dict[str, str]:
    """The keys a ``GetToken`` server accepts (see :func:`api_keys_source`). Raises
    :class:`ValueError` as :func:`parse_api_keys` does."""
    _, text = api_keys_source(authority_api_keys, user_api_key=user_api_key, user_api_secret=user_api_secret)
    return parse_api_keys(text)


def api_keys_source(
    authority_api_keys: str, *, user_api_key: str = "", user_api_secret: str = ""
) -> tuple[str, str]:
    """The setting that holds the keys a ``GetToken`` server accepts, and its keys as
    :func:`parse_api_keys` reads them: ``AUTHORITY_API_KEYS``, or when it names no key the
    relay's own ``USER_API_KEY`` (with ``USER_API_SECRET``, if set). Raises
    :class:`ValueError` as :func:`parse_api_keys` does."""
    if parse_api_keys(authority_api_keys) or not user_api_key:
        return "AUTHORITY_API_KEYS", authority_api_keys
    if not is_api_key(user_api_key):
        raise ValueError("USER_API_KEY is malformed")
    return "USER_API_KEY", f"{user_api_key}:{user_api_secret}" if user_api_secret else user_api_key


def is_api_key(text: str) -> bool:
    """Whether ``text`` has an API key's form (1 to 128 of A-Z, a-z, 0-9, ``_``, ``-``)."""
    return bool(_KEY_CHARS.fullmatch(text))


def format_date(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds, as JavaScript's ``toISOString``."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_date(text: str) -> datetime:
    """Parse an RFC 3339 date-time (any offset, up to nanoseconds); :class:`ValueError`."""
    if len(text) > _MAX_MSG:
        raise ValueError("too long")
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError("not RFC 3339")
    fraction, zone = match.group(1), match.group(2)
    head = text[:19].replace("t", "T")
    micro = (fraction or "").ljust(6, "0")[:6]
    offset = "+00:00" if zone in ("Z", "z") else zone
    return datetime.fromisoformat(f"{head}.{micro}{offset}").astimezone(UTC)
