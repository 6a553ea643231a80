"""The gRPC-Web framing codec (``challenges.grpcweb``), pure: bytes in, bytes out.

The client-side bytes are those ``@textile/hub`` 6.3.4 sends (docs/PROTOCOL.md, "GetToken
over gRPC-Web"): its metadata block, ``00`` + a gRPC frame per request, ``01`` for the
half-close, and the empty request it sends when the application's callback throws.
"""

from __future__ import annotations

import re
import struct
import urllib.parse

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from challenges import grpcweb
from challenges.errors import ApiKeyError, ChallengeError, Code, FrameError
from challenges.hubstatus import STATUS, Status, status_of
from challenges.rpc.status import status_of as grpc_status_of
from tests.browser import VECTOR_CHALLENGE, VECTOR_SIGNATURE
from tests.conftest import VECTOR_PUBLIC

#: The metadata block the Hub's client sent with a key and its secret (a capture).
CLIENT_METADATA = (
    b"host: http://127.0.0.1:8765\r\n"
    b"x-textile-api-key: bqgtbbn4yk5lmpqlgxcfbhq7gdq\r\n"
    b"x-textile-api-sig-msg: 2026-11-29T12:57:23.302Z\r\n"
    b"x-textile-api-sig: bxb46evjsl3u342522tc43wy44omdvei64araizxtp2oh3srv7dia\r\n"
    b"content-type: application/grpc-web+proto\r\n"
    b"x-grpc-web: 1\r\n"
)
#: docs/PROTOCOL.md "Vectors": the requests as the client frames them on the socket.
KEY_MESSAGE = bytes.fromhex("00000000003d0a3b") + VECTOR_PUBLIC.encode()
SIGNATURE_MESSAGE = bytes.fromhex("0000000000421240") + VECTOR_SIGNATURE
EMPTY_REQUEST_MESSAGE = bytes(6)


def frame(payload: bytes, flag: int = 0) -> bytes:
    return struct.pack(">BI", flag, len(payload)) + payload


def test_the_clients_metadata_block():
    assert grpcweb.parse_metadata(CLIENT_METADATA) == {
        "host": "http://127.0.0.1:8765",
        "x-textile-api-key": "bqgtbbn4yk5lmpqlgxcfbhq7gdq",
        "x-textile-api-sig-msg": "2026-11-29T12:57:23.302Z",
        "x-textile-api-sig": "bxb46evjsl3u342522tc43wy44omdvei64araizxtp2oh3srv7dia",
        "content-type": "application/grpc-web+proto",
        "x-grpc-web": "1",
    }


def test_metadata_names_are_folded_and_the_first_of_a_repeat_is_kept():
    block = b"X-Textile-Api-Key:  first \r\nx-textile-api-key: second\r\n\r\nempty:\r\n"
    assert grpcweb.parse_metadata(block) == {"x-textile-api-key": "first", "empty": ""}
    assert grpcweb.parse_metadata(b"") == {}


@pytest.mark.parametrize(
    ("block", "says"),
    [
        (KEY_MESSAGE, "data before the metadata block"),
        (b"\x01", "data before the metadata block"),
        (b"\x80\x00\x00\x00\x00", "not printable ASCII"),
        ("host: caf\u00e9\r\n".encode(), "not printable ASCII"),
        (b"host\r\n", "metadata line 1 is not 'name: value'"),
        (b"a: 1\r\nbad name: 2\r\n", "metadata line 2"),
        (b"a: 1\nb: 2\r\n", "metadata line 1"),
        (b"content-type: application/grpc-web-text\r\n", "is not served"),
        (b"".join(b"h%d: v\r\n" % i for i in range(65)), "more than 64 entries"),
    ],
)
def test_a_bad_metadata_block_is_refused_with_what_is_wrong(block, says):
    with pytest.raises(FrameError) as caught:
        grpcweb.parse_metadata(block)
    assert caught.value.code == Code.INVALID_GRPC_WEB
    assert says in caught.value.message


def test_a_metadata_block_over_64_kib_is_too_large():
    with pytest.raises(FrameError) as caught:
        grpcweb.parse_metadata(b"a: " + b"x" * (64 * 1024))
    assert caught.value.code == Code.FRAME_TOO_LARGE


def test_the_clients_requests_and_half_close():
    reader = grpcweb.RequestReader()
    assert reader.feed(KEY_MESSAGE) == [("key", VECTOR_PUBLIC)]
    assert reader.feed(SIGNATURE_MESSAGE) == [("signature", VECTOR_SIGNATURE)]
    assert reader.feed(b"\x01") == [None]
    assert reader.half_closed


def test_the_empty_request_of_a_callback_that_threw_is_neither_key_nor_signature():
    assert grpcweb.RequestReader().feed(EMPTY_REQUEST_MESSAGE) == [(None, None)]


def test_several_whole_frames_in_one_message():
    message = b"\x00" + frame(KEY_MESSAGE[6:]) + frame(SIGNATURE_MESSAGE[6:])
    assert grpcweb.RequestReader().feed(message) == [("key", VECTOR_PUBLIC), ("signature", VECTOR_SIGNATURE)]


@pytest.mark.parametrize(
    ("message", "code", "says"),
    [
        (b"", Code.INVALID_GRPC_WEB, "an empty message"),
        (b"\x00", Code.INVALID_GRPC_WEB, "holds no gRPC frame"),
        (b"\x02" + KEY_MESSAGE[1:], Code.INVALID_GRPC_WEB, "starts with 0x02"),
        (b"\x01\x01", Code.INVALID_GRPC_WEB, "the half-close is the single byte 01"),
        (KEY_MESSAGE[:-1], Code.INVALID_GRPC_WEB, "says 61 bytes but 60 follow"),
        # A length prefix that says less than follows: a cut protobuf, or a cut next frame.
        (
            b"\x00" + struct.pack(">BI", 0, 2) + b"\x0a\x03abc",
            Code.INVALID_GRPC_WEB,
            "not hold a GetTokenRequest",
        ),
        (b"\x00" + struct.pack(">BI", 0, 0) + b"\x0a\x03", Code.INVALID_GRPC_WEB, "cut short"),
        (b"\x00\x00\x00\x00", Code.INVALID_GRPC_WEB, "cut short"),
        (KEY_MESSAGE + b"\x00\x00", Code.INVALID_GRPC_WEB, "cut short"),
        (b"\x00" + frame(KEY_MESSAGE[6:], flag=1), Code.INVALID_GRPC_WEB, "flag is 0x01"),
        (b"\x00" + frame(b"\x08\x01", flag=0x80), Code.INVALID_GRPC_WEB, "flag is 0x80"),
        (b"\x00" + frame(b"\xff\xff\xff"), Code.INVALID_GRPC_WEB, "not hold a GetTokenRequest"),
        (b"\x00" + frame(b"\x0a\x02\xc3\x28"), Code.INVALID_GRPC_WEB, "not hold a GetTokenRequest"),
        (b"\x00\x00\x00\x01\x00\x01", Code.FRAME_TOO_LARGE, "65537 bytes"),
        (b"\x00" + frame(b"\x12\x83\x80\x04" + bytes(65536)), Code.FRAME_TOO_LARGE, "larger than"),
        (b"\x00" + frame(b"") * 17, Code.INVALID_GRPC_WEB, "cut short"),
    ],
)
def test_a_bad_message_is_refused_with_what_is_wrong(message, code, says):
    with pytest.raises(FrameError) as caught:
        grpcweb.RequestReader().feed(message)
    assert caught.value.code == code
    assert says in caught.value.message


def test_nothing_after_the_half_close():
    reader = grpcweb.RequestReader()
    reader.feed(b"\x01")
    for message in (KEY_MESSAGE, b"\x01"):
        with pytest.raises(FrameError, match="half-close"):
            reader.feed(message)


def parsed_or_refused(parse, data: bytes, codes: tuple[Code, ...]):
    """What ``parse`` makes of ``data``, or None when it refused it with one of ``codes``."""
    try:
        return parse(data)
    except FrameError as error:
        if error.code not in codes:
            raise
        return None


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_are_requests_or_a_coded_refusal(data):
    codes = (Code.INVALID_GRPC_WEB, Code.FRAME_TOO_LARGE)
    for parse in (grpcweb.RequestReader().feed, grpcweb.parse_metadata):
        parsed_or_refused(parse, data, codes)  # anything else raised fails the test


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=80), st.binary(max_size=80)), max_size=4))
def test_any_protobuf_payload_is_a_request_or_a_coded_refusal(fields):
    for value in fields:
        raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
        for tag in (0x0A, 0x12, 0x1A):
            request = parsed_or_refused(
                grpcweb.decode_request, bytes([tag, len(raw)]) + raw, (Code.INVALID_GRPC_WEB,)
            )
            assert request is None or request[0] in ("key", "signature", None)


# -- what the server sends ------------------------------------------------------------------


def test_the_replies_are_the_vectors_framed():
    challenge = grpcweb.data_message(grpcweb.encode_reply(challenge=VECTOR_CHALLENGE))
    assert challenge == bytes.fromhex("00000000220a20") + VECTOR_CHALLENGE
    token = "eyJ." + "a" * 200
    assert grpcweb.data_message(grpcweb.encode_reply(token=token)) == (
        bytes.fromhex("00000000cf12cc01") + token.encode()
    )


def test_headers_and_trailers_are_80_blocks():
    assert (
        grpcweb.response_headers()
        == b"\x80\x00\x00\x00\x2a" + b"content-type: application/grpc-web+proto\r\n"
    )
    ok = b"grpc-status: 0\r\ngrpc-message: \r\n"
    assert grpcweb.trailers(Status.OK, "") == b"\x80" + struct.pack(">I", len(ok)) + ok
    only = grpcweb.trailers(Status.UNAUTHENTICATED, "Session or API key required", headers_sent=False)
    assert only[5:] == (
        b"content-type: application/grpc-web+proto\r\n"
        b"grpc-status: 16\r\ngrpc-message: Session or API key required\r\n"
    )


@pytest.mark.parametrize(
    "message",
    ["bad signature", "100% sure", "line\r\nbreak: injected", "caf\u00e9 \U0001f512", "Key is required"],
)
def test_grpc_message_is_percent_encoded_and_decodes_back(message):
    encoded = grpcweb.percent_encode(message)
    assert all(0x20 <= ord(c) <= 0x7E for c in encoded)
    assert "\r" not in encoded
    assert "\n" not in encoded
    assert urllib.parse.unquote(encoded, errors="strict") == message  # as decodeURIComponent does
    block = grpcweb.trailers(Status.UNKNOWN, message)
    assert block.count(b"\r\n") == 2


def test_header_blocks_refuse_what_would_break_the_framing():
    with pytest.raises(ValueError, match="printable"):
        grpcweb.header_block({"grpc-message": "a\r\nb"})
    with pytest.raises(ValueError, match="tokens"):
        grpcweb.header_block({"bad name": "x"})


# -- the Hub's status contract, one table for both transports ---------------------------------


def test_the_status_numbers_are_grpcs():
    assert {s.name: s.value for s in Status} == {c.name: c.value[0] for c in grpc.StatusCode}


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (ChallengeError("x", code=Code.MISSING_PUB), Status.INVALID_ARGUMENT, "Key is required"),
        (ChallengeError("x", code=Code.MISSING_SIG), Status.INVALID_ARGUMENT, "Signature is required"),
        (
            ChallengeError("x", code=Code.CHALLENGE_TIMEOUT),
            Status.DEADLINE_EXCEEDED,
            "Challenge deadline exceeded",
        ),
        (ChallengeError("x", code=Code.BAD_SIGNATURE), Status.UNKNOWN, "bad signature"),
        (ApiKeyError(Code.API_KEY_REQUIRED), Status.UNAUTHENTICATED, "Session or API key required"),
        (ApiKeyError(Code.API_KEY_NOT_FOUND), Status.NOT_FOUND, "API key not found or is invalid"),
        (ApiKeyError(Code.API_SIG_REQUIRED), Status.UNAUTHENTICATED, "API key signature required"),
        (ApiKeyError(Code.API_SIG_BAD), Status.UNAUTHENTICATED, "Bad API key signature"),
        (ChallengeError("slow down", code=Code.RATE_LIMITED), Status.RESOURCE_EXHAUSTED, "slow down"),
        (ChallengeError("bye", code=Code.SERVER_SHUTDOWN), Status.UNAVAILABLE, "bye"),
        (grpcweb.invalid("what"), Status.INTERNAL, "what"),
        (grpcweb.too_large(70000), Status.RESOURCE_EXHAUSTED, grpcweb.too_large(70000).message),
        (ChallengeError("?", code=Code.UNKNOWN_CHALLENGE), Status.INTERNAL, "?"),  # not in the table
    ],
)
def test_one_status_table_for_grpc_and_grpc_web(error, status, message):
    assert status_of(error) == (status, message)
    assert grpc_status_of(error) == (grpc.StatusCode[status.name], message)


def test_every_status_in_the_table_is_a_code_the_server_can_raise():
    assert all(isinstance(code, Code) for code in STATUS)


@pytest.mark.parametrize(
    ("path", "routed"),
    [
        ("threads.pb.API/GetToken", True),
        ("threads.net.pb.API/GetToken", True),
        ("hub/v1/threads.pb.API/GetToken", True),  # a host with a path
        ("GetToken", True),  # daphne's reading of //threads.pb.API/GetToken (a host ending in /)
        ("threads.pb.API/GetTokens", False),
        ("threads.pb.API/GetToken/", False),
        ("xthreads.pb.API/GetToken", False),
        ("threads.pb.APIs/GetToken", False),
        ("hub/GetToken", False),
        ("ws/token", False),
    ],
)
def test_the_route_takes_the_paths_the_client_asks_for(path, routed):
    from challenges.grpcweb_consumer import PATH

    assert bool(re.match(PATH, path)) is routed
