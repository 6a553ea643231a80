"""A Python client for the token flow, usable without Django settings.

>>> token = get_token("ws://127.0.0.1:8000/ws/token", "bbaareq...")  # doctest: +SKIP

Before signing, the client checks that the challenge text names the expected
audience (by default the origin of ``url``) and its own key, so it never signs
for another service. A relay that passes a Hub's raw 32-byte challenge through
marks it ``"raw": true``; the client signs those only with ``accept_raw=True``,
and only when they are 32 bytes: anything else labelled raw is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any
from urllib.parse import urlsplit

import websockets

from .authority import check_challenge_text
from .errors import ChallengeError, ChallengeTextError, Code, TokenClientError
from .identity import PrivateKey, decode_bytes, encode_buffer, parse_private_key

__all__ = ["TokenClientError", "get_token", "get_token_async"]

#: The only length of a raw (Hub) challenge the client signs, as the browser module.
RAW_CHALLENGE_BYTES = 32


def origin_of(url: str) -> str:
    """``ws://host:port/path`` -> ``http://host:port`` (the default audience)."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"


async def get_token_async(
    url: str,
    private_key: PrivateKey | str,
    *,
    audience: str | None = None,
    timeout: float = 30.0,
    accept_raw: bool = False,
    origin: str | None = None,
) -> str:
    """Run the flow over one WebSocket and return the token string."""
    key = parse_private_key(private_key) if isinstance(private_key, str) else private_key
    try:
        async with asyncio.timeout(timeout):
            return await _flow(url, key, audience or origin_of(url), accept_raw, origin)
    except TimeoutError:
        raise TokenClientError(Code.TIMEOUT, f"no token within {timeout:g} s") from None
    except (OSError, websockets.exceptions.WebSocketException) as exc:
        raise TokenClientError(Code.CONNECTION_CLOSED, f"{type(exc).__name__}: {exc}") from exc


def get_token(url: str, private_key: PrivateKey | str, **options: Any) -> str:
    """Blocking wrapper of :func:`get_token_async`."""
    return asyncio.run(get_token_async(url, private_key, **options))


async def _flow(url: str, key: PrivateKey, audience: str, accept_raw: bool, origin: str | None) -> str:
    headers = {"Origin": origin} if origin else None
    async with websockets.connect(url, max_size=2**16, additional_headers=headers) as socket:
        # Refused as it opened (an error frame, then the close): what it said is read below.
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            await socket.send(json.dumps({"type": "token", "pub": str(key.public)}))
        frame = await _receive(socket)
        if frame["type"] != "challenge":
            raise TokenClientError(Code.PROTOCOL_ERROR, f"expected a challenge, got {frame['type']!r}")
        try:
            value = decode_bytes(frame.get("value"), what="the challenge")
        except ChallengeError as exc:
            raise TokenClientError(Code.PROTOCOL_ERROR, exc.message) from exc
        if frame.get("raw"):
            _check_raw(value, accept_raw)
        else:
            try:
                check_challenge_text(value, audience=audience, key=key.public)
            except ChallengeTextError as exc:
                raise TokenClientError(Code.CHALLENGE_REFUSED, exc.message) from exc
        answer: dict[str, Any] = {"type": "challenge", "sig": encode_buffer(key.sign(value))}
        if frame.get("id"):
            answer["id"] = frame["id"]
        await socket.send(json.dumps(answer))
        frame = await _receive(socket)
        if frame["type"] != "token" or not isinstance(frame.get("value"), str):
            raise TokenClientError(Code.PROTOCOL_ERROR, f"expected a token, got {frame['type']!r}")
        return str(frame["value"])


def _check_raw(value: bytes, accept_raw: bool) -> None:
    """A raw challenge is a Hub's 32 random bytes, nothing else: any other bytes labelled raw
    (a message, another service's challenge text) are refused, whatever ``accept_raw`` says."""
    if len(value) != RAW_CHALLENGE_BYTES:
        raise TokenClientError(
            Code.CHALLENGE_REFUSED,
            f"the server sent {len(value)} bytes as a raw challenge; a raw challenge is"
            f" {RAW_CHALLENGE_BYTES} random bytes",
        )
    if not accept_raw:
        raise TokenClientError(
            Code.CHALLENGE_REFUSED, "the server sent a raw challenge; pass accept_raw=True to sign it"
        )


async def _receive(socket: Any) -> dict[str, Any]:
    try:
        frame = json.loads(await socket.recv())
    except ValueError as exc:
        raise TokenClientError(Code.PROTOCOL_ERROR, "the server sent a frame that is not JSON") from exc
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        raise TokenClientError(Code.PROTOCOL_ERROR, "the server sent a frame without a type")
    if frame["type"] == "error":
        raise TokenClientError(str(frame.get("code") or "error"), str(frame.get("value", "")))
    return frame
