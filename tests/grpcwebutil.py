"""A hand-made gRPC-Web client for the tests: raw bytes on a ``websockets`` connection.

It frames what ``@textile/hub`` sends (docs/PROTOCOL.md, "GetToken over gRPC-Web") without
the codec under test: the metadata block, ``00`` + a gRPC frame per request, ``01``; and
it splits what the server sends into its blocks, one list per WebSocket message. And
:func:`check_against_the_key_set` checks a token as an app would: with the key the service
publishes at ``/.well-known/jwks.json`` under the token's ``kid``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import websockets
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

from challenges import tokens
from challenges.identity import format_public_key, parse_public_key, verify_signature
from tests import servers
from tests.rpcutil import API_KEY, API_SECRET, api_metadata, key_frame, parse_reply, signature_frame

PATH = "/threads.pb.API/GetToken"
SUBPROTOCOL = "grpc-websockets"
HALF_CLOSE = b"\x01"


def metadata_block(
    host: str = "http://127.0.0.1",
    key: str | None = API_KEY,
    secret: str | None = API_SECRET,
    ahead: timedelta = timedelta(minutes=30),
    extra: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """The metadata block in the client's order: host, the API key lines, then gRPC-Web's."""
    entries = [("host", host)]
    if key is not None:
        entries += api_metadata(key, secret=secret, ahead=ahead)
    entries += [*extra, ("content-type", "application/grpc-web+proto"), ("x-grpc-web", "1")]
    return "".join(f"{name}: {value}\r\n" for name, value in entries).encode()


def data(payload: bytes, flag: int = 0) -> bytes:
    """``00`` and one gRPC frame: what the client sends for each request."""
    return b"\x00" + struct.pack(">BI", flag, len(payload)) + payload


def key_message(pub: str) -> bytes:
    return data(key_frame(pub))


def signature_message(sig: bytes) -> bytes:
    return data(signature_frame(sig))


def blocks(message: bytes) -> list[tuple[int, bytes]]:
    """The gRPC-Web blocks of one server message: (flag, payload) each."""
    out, pos = [], 0
    while pos < len(message):
        flag, length = struct.unpack_from(">BI", message, pos)
        out.append((flag, message[pos + 5 : pos + 5 + length]))
        pos += 5 + length
    assert pos == len(message), f"a block overruns its message: {message!r}"
    return out


def header_lines(payload: bytes) -> dict[str, str]:
    lines = [line for line in payload.decode("ascii").split("\r\n") if line]
    return {name: value.strip() for name, _, value in (line.partition(":") for line in lines)}


@dataclass
class Ended:
    """Everything the server sent on one call, and how the socket closed."""

    messages: list[bytes | str] = field(default_factory=list)
    close_code: int | None = None

    @property
    def blocks(self) -> list[tuple[int, bytes]]:
        found = []
        for message in self.messages:
            assert isinstance(message, bytes), f"a text message from the server: {message!r}"
            parts = blocks(message)
            assert len(parts) == 1, f"one block per message, got {parts}"
            found += parts
        return found

    @property
    def replies(self) -> list[tuple[str, bytes]]:
        return [parse_reply(payload) for flag, payload in self.blocks if flag == 0]

    @property
    def trailers(self) -> dict[str, str]:
        flag, payload = self.blocks[-1]
        assert flag == 0x80, "the last message must be the trailers"
        return header_lines(payload)

    @property
    def status(self) -> tuple[int, str]:
        """The call's status as the client reads it (grpc-message percent-decoded)."""
        trailers = self.trailers
        return int(trailers["grpc-status"]), urllib.parse.unquote(trailers.get("grpc-message", ""))


class Call:
    """One call: a WebSocket to the endpoint."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ended = Ended()

    @classmethod
    async def open(cls, base: str, path: str = PATH, **kwargs: Any) -> Call:
        ws = await websockets.connect(base + path, subprotocols=[SUBPROTOCOL], open_timeout=10, **kwargs)
        assert ws.subprotocol == SUBPROTOCOL
        return cls(ws)

    async def send(self, *messages: bytes | str) -> None:
        """Send in turn; the server may end the call (trailers, then a clean close) before
        reading them all, as it does when it refuses one at once: what it sent is read by
        :meth:`end`, as a browser's client reads it."""
        for message in messages:
            try:
                await self.ws.send(message)
            except ConnectionClosedOK:
                return

    async def recv(self, timeout: float = 10) -> bytes | str:
        message = await asyncio.wait_for(self.ws.recv(), timeout)
        self.ended.messages.append(message)
        return message

    async def challenge(self) -> bytes:
        """The headers block, then the challenge (each its own message)."""
        [(flag, payload)] = blocks(await self.recv())  # type: ignore[arg-type]
        assert flag == 0x80, payload
        assert header_lines(payload) == {"content-type": "application/grpc-web+proto"}
        [(flag, payload)] = blocks(await self.recv())  # type: ignore[arg-type]
        kind, challenge = parse_reply(payload)
        assert (flag, kind, len(challenge)) == (0, "challenge", 32)
        return challenge

    async def end(self, timeout: float = 15) -> Ended:
        """Read until the server closes the socket."""
        try:
            async with asyncio.timeout(timeout):
                async for message in self.ws:
                    self.ended.messages.append(message)
        except ConnectionClosed:
            pass
        self.ended.close_code = self.ws.close_code
        return self.ended


def b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def check_against_the_key_set(
    server: servers.Server, token: str, pub: str, *, audience: str | None = None
) -> dict[str, Any]:
    """The token's signature checked with the published key its ``kid`` names, then its claims."""
    with urllib.request.urlopen(f"{server.http}/.well-known/jwks.json", timeout=5) as response:
        keys = json.load(response)["keys"]
    head, body, signature = token.split(".")
    header = json.loads(b64url(head))
    [published] = [key for key in keys if key["kid"] == header["kid"]]
    assert (published["kty"], published["crv"], header["alg"]) == ("OKP", "Ed25519", "Ed25519")
    raw = b64url(published["x"])
    verify_signature(public_key=raw, message=f"{head}.{body}".encode(), signature=b64url(signature))
    claims = tokens.verify_token(token, issuer=parse_public_key(format_public_key(raw)), audience=audience)
    assert claims["sub"] == pub
    return claims
