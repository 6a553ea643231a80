"""gRPC-Web on a WebSocket, as the Hub's JavaScript client speaks it: the framing, both
ways, with no I/O (``docs/PROTOCOL.md``, "GetToken over gRPC-Web").

``@textile/hub`` calls ``GetToken`` through ``@textile/grpc-transport``'s
WebSocket transport (subprotocol ``grpc-websockets``) under
``@improbable-eng/grpc-web``. Client to server, each a binary WebSocket message:

* first, the call's metadata: ``name: value\\r\\n`` lines in ASCII, no prefix
  (:func:`parse_metadata`);
* then ``00`` followed by whole gRPC frames: a flag byte ``00``, a big-endian
  uint32 length, a ``GetTokenRequest`` protobuf (:class:`RequestReader`);
* ``01`` alone: the half-close.

Server to client, each block in a binary message of its own (the client reads
no further in a message after a ``80`` block): ``80`` + uint32 length +
``name: value\\r\\n`` lines, the first such block being the headers and the
second the trailers (:func:`header_block`, :func:`trailers`), and ``00`` +
uint32 length + a ``GetTokenReply`` protobuf (:func:`data_message`).

What the Hub's client never sends is refused with a coded error
(``invalid_grpc_web``, or ``frame_too_large`` past :data:`MAX_MESSAGE_BYTES`):
data before the metadata, a frame split across messages or whose length
prefix says more than follows, compression, data after the half-close.

Pure module: no Django, Channels or grpc import (the protobuf messages are the
generated ``threads_pb2``, the same the native server decodes with).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping

from google.protobuf.message import DecodeError

from .errors import Code, FrameError
from .rpc.threads_pb2 import GetTokenReply, GetTokenRequest

#: The WebSocket subprotocol of the transport; the server must echo it.
SUBPROTOCOL = "grpc-websockets"
#: The largest gRPC message accepted (as ``runauthority``'s receive limit).
MAX_MESSAGE_BYTES = 64 * 1024
#: The most metadata entries, and gRPC frames in one message, accepted.
MAX_METADATA_ENTRIES = 64
MAX_FRAMES_PER_MESSAGE = 16
DATA, HALF_CLOSE, HEADERS = 0x00, 0x01, 0x80
CONTENT_TYPE = "application/grpc-web+proto"

#: A caller's message as :class:`challenges.gettoken.GetTokenCall` takes it:
#: ("key", str), ("signature", bytes), or (None, None) for a request with neither.
Request = tuple[str | None, str | bytes | None]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER = struct.Struct(">BI")


def invalid(message: str) -> FrameError:
    return FrameError(message, code=Code.INVALID_GRPC_WEB)


def too_large(size: int) -> FrameError:
    return FrameError(
        f"a gRPC message of {size} bytes is larger than the limit ({MAX_MESSAGE_BYTES // 1024} KiB)",
        code=Code.FRAME_TOO_LARGE,
    )


def parse_metadata(data: bytes) -> dict[str, str]:
    """The call's metadata block: lower-case names to their first value. Raises a coded
    :class:`~challenges.errors.FrameError`."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise too_large(len(data))
    if data[:1] in (bytes([DATA]), bytes([HALF_CLOSE])):
        raise invalid("data before the metadata block: the first message must be the call's metadata")
    if any(b > 0x7E or (b < 0x20 and b not in (0x09, 0x0A, 0x0D)) for b in data):
        raise invalid("the metadata block is not printable ASCII")
    metadata: dict[str, str] = {}
    lines = [line for line in data.decode("ascii").split("\r\n") if line]
    if len(lines) > MAX_METADATA_ENTRIES:
        raise invalid(f"the metadata block has more than {MAX_METADATA_ENTRIES} entries")
    for number, line in enumerate(lines, start=1):
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name) or "\r" in line or "\n" in line:
            raise invalid(f"metadata line {number} is not 'name: value' ending in CR LF")
        metadata.setdefault(name.lower(), value.strip(" \t"))
    content_type = metadata.get("content-type", CONTENT_TYPE).lower()
    if content_type not in ("application/grpc-web", CONTENT_TYPE):
        raise invalid(f"content-type {content_type[:60]!r} is not served; use {CONTENT_TYPE}")
    return metadata


class RequestReader:
    """The messages after the metadata, one WebSocket message at a time."""

    def __init__(self) -> None:
        self.half_closed = False

    def feed(self, data: bytes) -> list[Request | None]:
        """The requests one message holds, or ``[None]`` for the half-close. Raises a coded
        :class:`~challenges.errors.FrameError`."""
        if not data:
            raise invalid("an empty message: expected 00 and a gRPC frame, or 01")
        if data[0] == HALF_CLOSE:
            if len(data) != 1 or self.half_closed:
                raise invalid("the half-close is the single byte 01, once")
            self.half_closed = True
            return [None]
        if data[0] != DATA:
            raise invalid(f"a message starts with {data[0]:#04x}: expected 00 (a gRPC frame) or 01")
        if self.half_closed:
            raise invalid("data after the half-close")
        if len(data) > 1 + _HEADER.size + MAX_MESSAGE_BYTES:
            raise too_large(len(data) - 1 - _HEADER.size)
        if len(data) == 1:
            raise invalid("a data message holds no gRPC frame")
        requests: list[Request | None] = []
        offset = 1
        while offset < len(data):
            if len(data) - offset < _HEADER.size or len(requests) >= MAX_FRAMES_PER_MESSAGE:
                raise invalid("a gRPC frame is cut short: each message must hold whole frames")
            flag, length = _HEADER.unpack_from(data, offset)
            if flag != 0:
                raise invalid(f"a gRPC frame's flag is {flag:#04x}: compression and trailers are not taken")
            if length > MAX_MESSAGE_BYTES:
                raise too_large(length)
            offset += _HEADER.size
            if length > len(data) - offset:
                raise invalid(
                    f"a gRPC frame's length prefix says {length} bytes but {len(data) - offset} follow"
                )
            requests.append(decode_request(data[offset : offset + length]))
            offset += length
        return requests


def decode_request(payload: bytes) -> Request:
    """A ``GetTokenRequest`` protobuf as the call takes it (as the native servicer reads it)."""
    try:
        message = GetTokenRequest.FromString(payload)
    except DecodeError:
        raise invalid("a gRPC frame does not hold a GetTokenRequest protobuf") from None
    kind = message.WhichOneof("payload")
    if kind == "key":
        return kind, message.key
    if kind == "signature":
        return kind, message.signature
    return None, None


def encode_reply(*, challenge: bytes = b"", token: str = "") -> bytes:
    """A ``GetTokenReply`` protobuf: the challenge (``0a 20`` + 32 bytes) or the token."""
    reply = GetTokenReply(challenge=challenge) if challenge else GetTokenReply(token=token)
    return reply.SerializeToString()


def data_message(payload: bytes) -> bytes:
    """A gRPC-Web data frame: ``00``, the length, the protobuf."""
    return _HEADER.pack(DATA, len(payload)) + payload


def header_block(entries: Mapping[str, str]) -> bytes:
    """A headers or trailers block: ``80``, the length, ``name: value\\r\\n`` lines."""
    for name, value in entries.items():
        if not _TOKEN.fullmatch(name) or any(not 0x20 <= ord(c) <= 0x7E for c in value):
            raise ValueError("header names must be tokens, and values printable ASCII")
    payload = "".join(f"{name}: {value}\r\n" for name, value in entries.items()).encode("ascii")
    return _HEADER.pack(HEADERS, len(payload)) + payload


def response_headers() -> bytes:
    return header_block({"content-type": CONTENT_TYPE})


def trailers(status: int, message: str, *, headers_sent: bool = True) -> bytes:
    """The call's status: ``grpc-status`` and the percent-encoded ``grpc-message``. Before any
    headers it is a trailers-only response, which also names the content type."""
    entries = {} if headers_sent else {"content-type": CONTENT_TYPE}
    entries |= {"grpc-status": str(int(status)), "grpc-message": percent_encode(message)}
    return header_block(entries)


def percent_encode(message: str) -> str:
    """gRPC's ``grpc-message`` encoding: printable ASCII but ``%`` as is, every other byte of
    the UTF-8 as ``%XX``."""
    return "".join(
        chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in message.encode("utf-8")
    )
