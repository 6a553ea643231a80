"""Client frames of the WebSocket protocol, parsed into typed messages.

The frames are those of ``docs/PROTOCOL.md`` ("The WebSocket protocol"),
the contract of the Textile tutorial's client:

* ``{"type": "token", "pub": "<public key string>"}``
* ``{"type": "challenge", "sig": <Buffer JSON | int array | base64>,
  "id": "<challenge id>"?, "pub": "<public key string>"?}``

Server frames are built here too, so the wire format lives in one module.
Parsing raises :class:`~challenges.errors.ChallengeError` subclasses with
stable codes; nothing here touches I/O.

Pure module: no Django, Channels or grpc import.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .errors import ChallengeError, Code, FrameError, PubKeyError, SignatureError, StateError
from .identity import PublicKey, decode_bytes, encode_buffer, parse_public_key

#: Frames larger than this are refused before parsing.
MAX_FRAME_BYTES = 64 * 1024
#: Challenge ids are url-safe base64 of 18+ random bytes; bound what we accept.
_CHALLENGE_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """Step 1: the client asks for a challenge for its public key."""

    pub: PublicKey


@dataclass(frozen=True, slots=True)
class ChallengeResponse:
    """Step 3: the client's signature, optionally naming the challenge."""

    sig: bytes
    challenge_id: str | None = None
    pub: PublicKey | None = None


Message = TokenRequest | ChallengeResponse


@dataclass(frozen=True, slots=True)
class FrameContext:
    """What is known of a frame even when it fails to parse (for the audit)."""

    type: str | None = None
    pub: str | None = None
    challenge_id: str | None = None
    #: The frame named a challenge, even one whose id is malformed.
    id_given: bool = False


def check_size(*, text: str | None = None, data: bytes | None = None) -> None:
    """Refuse binary frames and oversized frames before any parsing."""
    if data is not None:
        raise FrameError("binary frames are not accepted; send JSON text", code=Code.BINARY_FRAME)
    # Each character is at least one UTF-8 byte, so a cheap length test first.
    # surrogatepass: a lone surrogate counts its three bytes instead of failing the count.
    if text is not None and (
        len(text) > MAX_FRAME_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_FRAME_BYTES
    ):
        raise too_large()


def too_large() -> FrameError:
    return FrameError(f"frames are limited to {MAX_FRAME_BYTES} bytes", code=Code.FRAME_TOO_LARGE)


def peek(obj: Any) -> FrameContext:
    """Pull the audit-relevant fields out of a decoded frame, never raising."""
    if not isinstance(obj, dict):
        return FrameContext()
    t, pub, cid = obj.get("type"), obj.get("pub"), obj.get("id")
    return FrameContext(
        type=t if isinstance(t, str) else None,
        pub=pub[:128] if isinstance(pub, str) else None,
        challenge_id=cid if isinstance(cid, str) and _CHALLENGE_ID.fullmatch(cid) else None,
        id_given=cid is not None,
    )


def decode(text: str) -> dict[str, Any]:
    """JSON text to an object; raises ``invalid_json`` / ``invalid_frame``."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise FrameError("the frame is not valid JSON", code=Code.INVALID_JSON) from exc
    if not isinstance(obj, dict):
        raise FrameError("the frame must be a JSON object", code=Code.INVALID_FRAME)
    return obj


def parse_message(obj: dict[str, Any]) -> Message:
    """A decoded frame to a typed message; raises a coded error."""
    kind = obj.get("type")
    if kind is None:
        raise FrameError("the frame has no 'type'", code=Code.MISSING_TYPE)
    if kind == "token":
        return TokenRequest(pub=_pub(obj.get("pub"), required=True))  # type: ignore[arg-type]
    if kind == "challenge":
        return _challenge(obj)
    raise FrameError("'type' must be 'token' or 'challenge'", code=Code.UNKNOWN_TYPE)


def parse_frame(text: str) -> Message:
    """Size check, JSON decode and typed parse of one text frame."""
    check_size(text=text)
    return parse_message(decode(text))


def _pub(value: Any, *, required: bool) -> PublicKey | None:
    if value is None or value == "":
        if required:
            raise PubKeyError("a 'token' frame needs 'pub', the public key string", code=Code.MISSING_PUB)
        return None
    return parse_public_key(value)


def _challenge(obj: dict[str, Any]) -> ChallengeResponse:
    raw_sig = obj.get("sig")
    if raw_sig is None:
        raise SignatureError("a 'challenge' frame needs 'sig', the signature", code=Code.MISSING_SIG)
    sig = decode_bytes(raw_sig, allow_base64=True, what="'sig'")
    if len(sig) != 64:
        raise SignatureError(f"'sig' must be 64 bytes, not {len(sig)}", code=Code.INVALID_SIG_LENGTH)
    cid = obj.get("id")
    if cid is not None and not (isinstance(cid, str) and _CHALLENGE_ID.fullmatch(cid)):
        raise StateError("the challenge id is unknown, expired or already used", code=Code.UNKNOWN_CHALLENGE)
    return ChallengeResponse(sig=sig, challenge_id=cid, pub=_pub(obj.get("pub"), required=False))


# -- server frames ---------------------------------------------------------


def challenge_frame(*, value: bytes, challenge_id: str, expires_at: datetime, raw: bool) -> dict[str, Any]:
    return {
        "type": "challenge",
        "value": encode_buffer(value),
        "id": challenge_id,
        "expires_at": isoformat(expires_at),
        "raw": raw,
    }


def token_frame(token: str) -> dict[str, Any]:
    return {"type": "token", "value": token}


def error_frame(error: ChallengeError) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "value": error.message, "code": str(error.code)}
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        frame["retry_after"] = retry_after
    return frame


def isoformat(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
