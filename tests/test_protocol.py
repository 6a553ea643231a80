"""Frame parsing (pure): every rejection has its own code."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from challenges import protocol
from challenges.errors import ChallengeError
from tests.conftest import VECTOR_PUBLIC


def parse(obj):
    return protocol.parse_frame(json.dumps(obj) if not isinstance(obj, str) else obj)


def code_of(obj) -> str:
    with pytest.raises(ChallengeError) as info:
        parse(obj)
    return info.value.code


def test_token_request():
    msg = parse({"type": "token", "pub": VECTOR_PUBLIC})
    assert isinstance(msg, protocol.TokenRequest)
    assert str(msg.pub) == VECTOR_PUBLIC


def test_tutorial_challenge_frame_with_pub():
    sig = list(range(64))
    msg = parse({"type": "challenge", "sig": {"type": "Buffer", "data": sig}, "pub": VECTOR_PUBLIC})
    assert isinstance(msg, protocol.ChallengeResponse)
    assert msg.sig == bytes(sig)
    assert msg.challenge_id is None
    assert str(msg.pub) == VECTOR_PUBLIC


def test_challenge_frame_with_id():
    msg = parse({"type": "challenge", "sig": [0] * 64, "id": "A" * 24})
    assert msg.challenge_id == "A" * 24


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("nope", "invalid_json"),
        ("", "invalid_json"),
        ("[" * 100_00 + "]" * 100_00, "invalid_json"),
        ("null", "invalid_frame"),
        ("1", "invalid_frame"),
        ({}, "missing_type"),
        ({"type": None}, "missing_type"),
        ({"type": 1}, "unknown_type"),
        ({"type": "TOKEN"}, "unknown_type"),
        ({"type": "token"}, "missing_pub"),
        ({"type": "token", "pub": 5}, "invalid_pub"),
        ({"type": "token", "pub": "bad"}, "invalid_pub"),
        ({"type": "challenge"}, "missing_sig"),
        ({"type": "challenge", "sig": "%%"}, "invalid_sig_encoding"),
        ({"type": "challenge", "sig": [0] * 10}, "invalid_sig_length"),
        ({"type": "challenge", "sig": [0] * 64, "id": "short"}, "unknown_challenge"),
        ({"type": "challenge", "sig": [0] * 64, "id": 7}, "unknown_challenge"),
        ({"type": "challenge", "sig": [0] * 64, "pub": "bad"}, "invalid_pub"),
    ],
)
def test_rejections(frame, code):
    assert code_of(frame) == code


def test_size_limit_counts_utf8_bytes():
    protocol.check_size(text="a" * protocol.MAX_FRAME_BYTES)
    with pytest.raises(ChallengeError) as info:
        protocol.check_size(text="é" * (protocol.MAX_FRAME_BYTES // 2 + 1))
    assert info.value.code == "frame_too_large"
    with pytest.raises(ChallengeError) as info:
        protocol.check_size(data=b"{}")
    assert info.value.code == "binary_frame"


def test_peek_never_raises_and_bounds_what_it_keeps():
    assert protocol.peek([1]) == protocol.FrameContext()
    ctx = protocol.peek({"type": "token", "pub": "x" * 1000, "id": "../../etc"})
    assert ctx.type == "token"
    assert len(ctx.pub or "") == 128
    assert ctx.challenge_id is None


def test_server_frames():
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    frame = protocol.challenge_frame(value=b"\x01", challenge_id="i" * 24, expires_at=moment, raw=False)
    assert frame == {
        "type": "challenge",
        "value": {"type": "Buffer", "data": [1]},
        "id": "i" * 24,
        "expires_at": "2026-01-02T03:04:05Z",
        "raw": False,
    }
    assert protocol.token_frame("t") == {"type": "token", "value": "t"}
    err = protocol.error_frame(ChallengeError("boom", code="bad_signature"))
    assert err == {"type": "error", "value": "boom", "code": "bad_signature"}
