"""Textile / libp2p Ed25519 identities: key strings, byte encodings, signatures.

Follows ``docs/PROTOCOL.md`` (identities, and byte arrays in frames):

* a public key string is multibase base32 (``b`` + RFC 4648 base32, lower
  case, no padding) of the libp2p ``PublicKey`` protobuf
  ``08 01 12 20 || pub32``: 59 characters starting ``bbaarei``;
* a private key string is the same scheme over ``08 01 12 40 || seed32 ||
  pub32``: 110 characters starting ``bbaareq``;
* signatures are plain RFC 8032 Ed25519 over the exact message bytes.

Only the canonical form is accepted: any other multibase prefix, key type,
length, upper case, padding or trailing bits raises :class:`IdentityError`
(a :class:`~challenges.errors.PubKeyError`). PyNaCl errors are re-raised as the
project's own. :func:`multibase_b32` is the one base32 writer of the project
(key strings, API keys and their signatures).

Pure module: no Django, Channels or grpc import.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import nacl.exceptions
import nacl.signing

from .errors import Code, IdentityError, SignatureError

PUBLIC_PREFIX = b"\x08\x01\x12\x20"
PRIVATE_PREFIX = b"\x08\x01\x12\x40"
PUBLIC_KEY_LENGTH = 59
PRIVATE_KEY_LENGTH = 110
SIGNATURE_LENGTH = 64
_BASE32_LOWER = re.compile(r"[a-z2-7]*")
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")


@dataclass(frozen=True, slots=True)
class PublicKey:
    """An Ed25519 public key and its canonical string."""

    raw: bytes
    #: The canonical string, kept by :func:`parse_public_key` (never an argument, so no
    #: other string can be passed in, and ``dataclasses.replace`` does not carry it over):
    #: a flow names its key in the audit, the log, the blocklist check and the relay.
    _text: str = field(default="", init=False, compare=False, repr=False)

    def __str__(self) -> str:
        return self._text or format_public_key(self.raw)

    def verify(self, message: bytes, signature: bytes) -> None:
        """Raise :class:`SignatureError` unless ``signature`` signs ``message``."""
        verify_signature(public_key=self.raw, message=message, signature=signature)


@dataclass(frozen=True, slots=True)
class PrivateKey:
    """An Ed25519 seed; ``public`` and ``sign`` mirror ``@textile/crypto``."""

    seed: bytes

    @property
    def public(self) -> PublicKey:
        return PublicKey(bytes(_signing_key(self.seed).verify_key))

    def sign(self, message: bytes) -> bytes:
        return _signing_key(self.seed).sign(message).signature

    def __str__(self) -> str:
        return format_private_key(self.seed)

    def __repr__(self) -> str:  # never print the seed
        return f"PrivateKey(public={self.public})"

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(bytes(nacl.signing.SigningKey.generate()))


@lru_cache(maxsize=16)
def _signing_key(seed: bytes) -> nacl.signing.SigningKey:
    """A seed's key pair, derived once: the authority signs every token with the same one."""
    return nacl.signing.SigningKey(seed)


def multibase_b32(data: bytes) -> str:
    """Multibase base32: ``b`` + RFC 4648 base32, lower case, unpadded."""
    return "b" + base64.b32encode(data).decode("ascii").lower().rstrip("=")


def _b32decode(text: str, *, what: str) -> bytes:
    """Strict multibase base32 (lower case, unpadded, canonical)."""
    if not text.startswith("b"):
        raise IdentityError(f"{what} must be multibase base32 (start with 'b')")
    body = text[1:]
    if not _BASE32_LOWER.fullmatch(body):
        raise IdentityError(f"{what} has characters outside lower-case base32")
    padded = body.upper() + "=" * (-len(body) % 8)
    try:
        data = base64.b32decode(padded)
    except (binascii.Error, ValueError) as exc:
        raise IdentityError(f"{what} is not valid base32") from exc
    if multibase_b32(data) != text:  # non-zero trailing bits or bad length
        raise IdentityError(f"{what} is not canonical base32")
    return data


def format_public_key(raw: bytes) -> str:
    """The 59-character public key string of a 32-byte Ed25519 key."""
    if len(raw) != 32:
        raise IdentityError("an Ed25519 public key is 32 bytes")
    return multibase_b32(PUBLIC_PREFIX + raw)


def format_private_key(seed: bytes) -> str:
    """The 110-character private key string (``@textile/crypto`` format)."""
    if len(seed) != 32:
        raise IdentityError("an Ed25519 seed is 32 bytes")
    pub = bytes(nacl.signing.SigningKey(seed).verify_key)
    return multibase_b32(PRIVATE_PREFIX + seed + pub)


def parse_public_key(text: object) -> PublicKey:
    """Parse a public key string; raises :class:`IdentityError`."""
    if not isinstance(text, str):
        raise IdentityError("the public key must be a string")
    if len(text) != PUBLIC_KEY_LENGTH:
        raise IdentityError(
            f"an Ed25519 public key string has {PUBLIC_KEY_LENGTH} characters, not {len(text)}"
        )
    data = _b32decode(text, what="the public key")
    if data[:2] != PUBLIC_PREFIX[:2]:
        raise IdentityError("the public key is not an Ed25519 key (libp2p type 1)")
    if data[:4] != PUBLIC_PREFIX:
        raise IdentityError("the public key does not hold 32 bytes of key data")
    key = PublicKey(data[4:])
    object.__setattr__(key, "_text", text)  # canonical: _b32decode refuses any other spelling
    return key


def parse_private_key(text: str) -> PrivateKey:
    """Parse a private key string; keeps the seed, checks the embedded public key."""
    if not isinstance(text, str):
        raise IdentityError("the private key must be a string")
    if len(text) != PRIVATE_KEY_LENGTH:
        raise IdentityError(
            f"an Ed25519 private key string has {PRIVATE_KEY_LENGTH} characters, not {len(text)}"
        )
    data = _b32decode(text, what="the private key")
    if data[:4] != PRIVATE_PREFIX:
        raise IdentityError("the private key is not a 64-byte Ed25519 libp2p key")
    key = PrivateKey(data[4:36])
    if key.public.raw != data[36:]:
        raise IdentityError("the private key's public half does not match its seed")
    return key


def decode_bytes(value: Any, *, allow_base64: bool = False, what: str = "value") -> bytes:
    """Decode Node's Buffer JSON, a plain int array, or (if allowed) base64.

    Raises :class:`SignatureError` with code ``invalid_sig_encoding`` for
    anything else (docs/PROTOCOL.md).
    """
    if isinstance(value, dict):
        if value.get("type") != "Buffer" or set(value) != {"type", "data"}:
            raise _encoding_error(what, "an object must be Buffer JSON")
        value = value["data"]
        if not isinstance(value, list):
            raise _encoding_error(what, "Buffer JSON 'data' must be an array")
    if isinstance(value, list):
        if not all(type(b) is int and 0 <= b <= 255 for b in value):
            raise _encoding_error(what, "array items must be integers 0..255")
        return bytes(value)
    if isinstance(value, str) and allow_base64:
        if not _BASE64.fullmatch(value):
            raise _encoding_error(what, "it is not base64")
        try:
            text = value.replace("-", "+").replace("_", "/")
            return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _encoding_error(what, "it is not base64") from exc
    allowed = "Buffer JSON, an int array or base64" if allow_base64 else "Buffer JSON"
    raise _encoding_error(what, f"expected {allowed}")


def encode_buffer(data: bytes) -> dict[str, Any]:
    """Node's ``Buffer.toJSON()`` form, which the tutorial's client expects."""
    return {"type": "Buffer", "data": list(data)}


def _encoding_error(what: str, why: str) -> SignatureError:
    return SignatureError(f"{what} is badly encoded: {why}", code=Code.INVALID_SIG_ENCODING)


def verify_signature(*, public_key: bytes, message: bytes, signature: bytes) -> None:
    """Verify a detached RFC 8032 signature; raises :class:`SignatureError`."""
    if len(signature) != SIGNATURE_LENGTH:
        raise SignatureError(
            f"an Ed25519 signature is {SIGNATURE_LENGTH} bytes, not {len(signature)}",
            code=Code.INVALID_SIG_LENGTH,
        )
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError) as exc:
        raise SignatureError("the signature does not verify", code=Code.BAD_SIGNATURE) from exc
