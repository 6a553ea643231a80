"""Key strings, byte encodings and signatures against docs/PROTOCOL.md (identities, byte arrays, vectors)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from challenges.errors import IdentityError, PubKeyError, SignatureError
from challenges.identity import (
    PrivateKey,
    PublicKey,
    decode_bytes,
    encode_buffer,
    format_private_key,
    format_public_key,
    parse_private_key,
    parse_public_key,
    verify_signature,
)
from tests.conftest import VECTOR_PRIVATE, VECTOR_PUBLIC

SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
PUB = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
CHALLENGE = bytes(range(32))
SIGNATURE = bytes.fromhex(
    "00c1db988bb12fd7351a6054ae3fac90fab7e4fc56b1651c7181f5f55f896f66"
    "3933d3a90605d9058e9d0ac45950ee2d3c9c9b14857415587179fe0ccac35f09"
)


def test_vector_strings_round_trip():
    assert format_public_key(PUB) == VECTOR_PUBLIC
    assert format_private_key(SEED) == VECTOR_PRIVATE
    assert parse_public_key(VECTOR_PUBLIC).raw == PUB
    key = parse_private_key(VECTOR_PRIVATE)
    assert key.seed == SEED
    assert key.public.raw == PUB
    assert str(key) == VECTOR_PRIVATE
    assert VECTOR_PUBLIC.startswith("bbaarei")
    assert len(VECTOR_PUBLIC) == 59
    assert VECTOR_PRIVATE.startswith("bbaareq")
    assert len(VECTOR_PRIVATE) == 110


def test_vector_signature():
    key = parse_private_key(VECTOR_PRIVATE)
    assert key.sign(CHALLENGE) == SIGNATURE
    verify_signature(public_key=PUB, message=CHALLENGE, signature=SIGNATURE)


def test_private_key_repr_hides_the_seed():
    key = parse_private_key(VECTOR_PRIVATE)
    assert VECTOR_PRIVATE not in repr(key)
    assert SEED.hex() not in repr(key)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("z" + VECTOR_PUBLIC[1:], "multibase"),  # base58btc prefix
        ("f" + VECTOR_PUBLIC[1:], "multibase"),
        (VECTOR_PUBLIC.upper(), "multibase"),
        ("B" + VECTOR_PUBLIC[1:], "multibase"),
        (VECTOR_PUBLIC[:-1], "59"),
        (VECTOR_PUBLIC + "a", "59"),
        (VECTOR_PUBLIC[:-1] + "1", "base32"),  # '1' is not base32
        (VECTOR_PUBLIC[:-1] + "j", "canonical"),  # non-zero trailing bits
        ("b" + base64.b32encode(b"\x08\x00\x12\x20" + PUB).decode().lower().rstrip("="), "Ed25519"),
        ("b" + base64.b32encode(b"\x08\x01\x12\x21" + PUB).decode().lower().rstrip("="), "32 bytes"),
        ("", "59"),
    ],
)
def test_public_key_rejections(text, why):
    with pytest.raises(IdentityError, match=why) as info:
        parse_public_key(text)
    assert isinstance(info.value, PubKeyError)
    assert info.value.code == "invalid_pub"


@pytest.mark.parametrize("value", [None, 1, b"bytes", ["list"]])
def test_public_key_must_be_a_string(value):
    with pytest.raises(IdentityError, match="string"):
        parse_public_key(value)


def test_public_key_string_of_a_private_key_is_refused():
    with pytest.raises(IdentityError):
        parse_public_key(VECTOR_PRIVATE)


@pytest.mark.parametrize(
    "text",
    [
        VECTOR_PUBLIC,
        VECTOR_PRIVATE[:-1] + "a",  # canonical but the public half no longer matches
        "b" + base64.b32encode(b"\x08\x01\x12\x40" + SEED + bytes(32)).decode().lower().rstrip("="),
        "b" + base64.b32encode(b"\x08\x02\x12\x40" + SEED + PUB).decode().lower().rstrip("="),
    ],
)
def test_private_key_rejections(text):
    with pytest.raises(IdentityError):
        parse_private_key(text)


def test_generated_keys_round_trip():
    key = PrivateKey.generate()
    again = parse_private_key(str(key))
    assert again.seed == key.seed
    assert parse_public_key(str(key.public)) == key.public


def test_a_parsed_public_key_keeps_its_string_and_equals_the_same_key_from_bytes():
    """A parsed key keeps the string it came from (a flow names its key many times); the
    kept string is no part of the key's identity."""
    text = str(PrivateKey.generate().public)
    parsed = parse_public_key(text)
    from_bytes = PublicKey(parsed.raw)
    assert str(parsed) == str(from_bytes) == text
    assert parsed == from_bytes
    assert hash(parsed) == hash(from_bytes)
    assert {parsed: 1}[from_bytes] == 1
    assert repr(parsed) == repr(from_bytes)  # the kept string is not shown twice
    other = PrivateKey.generate().public
    assert str(replace(parsed, raw=other.raw)) == str(other)  # no stale string


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"type": "Buffer", "data": [0, 1, 255]}, b"\x00\x01\xff"),
        ([0, 1, 255], b"\x00\x01\xff"),
        ([], b""),
    ],
)
def test_decode_bytes_buffer_and_array(value, expected):
    assert decode_bytes(value) == expected


def test_decode_bytes_base64_only_when_allowed():
    sig = bytes(range(64))
    assert decode_bytes(base64.b64encode(sig).decode(), allow_base64=True) == sig
    assert decode_bytes(base64.urlsafe_b64encode(sig).decode().rstrip("="), allow_base64=True) == sig
    with pytest.raises(SignatureError):
        decode_bytes(base64.b64encode(sig).decode())


@pytest.mark.parametrize(
    "value",
    [
        {"type": "Buffer", "data": [256]},
        {"type": "Buffer", "data": [-1]},
        {"type": "Buffer", "data": [1.0]},
        {"type": "Buffer", "data": [True]},
        {"type": "Buffer", "data": "AAEC"},
        {"type": "Buffer", "data": [1], "extra": 1},
        {"data": [1]},
        ["1"],
        "***",
        "QUJD=X",
        None,
        42,
    ],
)
def test_decode_bytes_rejections(value):
    with pytest.raises(SignatureError) as info:
        decode_bytes(value, allow_base64=True)
    assert info.value.code == "invalid_sig_encoding"


def test_encode_buffer_is_node_buffer_json():
    assert encode_buffer(b"\x00\xff") == {"type": "Buffer", "data": [0, 255]}


def test_verify_rejects_wrong_length_and_wrong_signature():
    with pytest.raises(SignatureError) as info:
        verify_signature(public_key=PUB, message=CHALLENGE, signature=SIGNATURE[:63])
    assert info.value.code == "invalid_sig_length"
    for i in (0, 31, 32, 63):
        bad = bytearray(SIGNATURE)
        bad[i] ^= 1
        with pytest.raises(SignatureError) as info:
            verify_signature(public_key=PUB, message=CHALLENGE, signature=bytes(bad))
        assert info.value.code == "bad_signature"
    with pytest.raises(SignatureError):
        verify_signature(public_key=PUB, message=CHALLENGE + b"x", signature=SIGNATURE)


def test_supercop_vectors_from_cryptography_vectors():
    """All 1,024 SUPERCOP Ed25519 vectors (sign.input, shipped by PyPI's cryptography-vectors):
    key strings round-trip, signatures match byte for byte, and verification accepts them and
    refuses a flipped bit."""
    import cryptography_vectors

    count = 0
    with cryptography_vectors.open_vector_file("asymmetric/Ed25519/sign.input", "r") as fh:
        for line in fh:
            sk, pk, msg, signed, _ = line.strip().split(":")
            seed, pub = bytes.fromhex(sk)[:32], bytes.fromhex(pk)
            message, sig = bytes.fromhex(msg), bytes.fromhex(signed)[:64]
            key = parse_private_key(format_private_key(seed))
            assert key.public.raw == pub
            assert parse_public_key(format_public_key(pub)).raw == pub
            assert key.sign(message) == sig
            verify_signature(public_key=pub, message=message, signature=sig)
            bad = bytearray(sig)
            bad[count % 64] ^= 0x80
            with pytest.raises(SignatureError):
                verify_signature(public_key=pub, message=message, signature=bytes(bad))
            count += 1
    assert count == 1024


# -- Project Wycheproof (tests/vectors/README.md) ---------------------------------

WYCHEPROOF = Path(__file__).parent / "vectors" / "wycheproof-ed25519_test.json"
WYCHEPROOF_SHA256 = "752d2ea7d7c6cf4736381b6cbacb61f8182b126ab7cd9b058f00c50084975536"
#: Flags of behaviour our verifier refuses by design (docs/PROTOCOL.md: strict verification,
#: no small-order keys, no non-canonical encodings): an "acceptable" vector with one of
#: these must be refused; any other "acceptable" vector may go either way.
STRICT_REFUSALS = frozenset(
    {"SignatureMalleability", "InvalidEncoding", "CompressedSignature", "SmallOrderPublicKey", "LowOrderR"}
)


def _verdict(verify: Any) -> str:
    """``"valid"`` if ``verify()`` returns, ``"invalid"`` if it raises SignatureError."""
    try:
        verify()
    except SignatureError:
        return "invalid"
    return "valid"


def test_wycheproof_ed25519_vectors():
    """Every Wycheproof Ed25519 vector through verify_signature and PublicKey.verify."""
    data = WYCHEPROOF.read_bytes()
    assert hashlib.sha256(data).hexdigest() == WYCHEPROOF_SHA256
    suite = json.loads(data)
    assert suite["algorithm"] == "EDDSA"
    counts: Counter[str] = Counter()
    seen: set[int] = set()
    for group in suite["testGroups"]:
        assert group["type"] == "EddsaVerify"
        assert group["publicKey"]["curve"] == "edwards25519"
        pub = bytes.fromhex(group["publicKey"]["pk"])
        for vector in group["tests"]:
            assert vector["tcId"] not in seen
            seen.add(vector["tcId"])
            message, sig = bytes.fromhex(vector["msg"]), bytes.fromhex(vector["sig"])
            expected, where = vector["result"], f"tcId {vector['tcId']} {vector['flags']}"
            counts[expected] += 1
            if len(pub) != 32:  # not a key at all: the project's errors, whatever the vector says
                with pytest.raises(IdentityError):
                    format_public_key(pub)
                with pytest.raises(SignatureError):
                    verify_signature(public_key=pub, message=message, signature=sig)
                counts["bad_key"] += 1
                continue
            got = _verdict(lambda: verify_signature(public_key=pub, message=message, signature=sig))  # noqa: B023
            assert _verdict(lambda: PublicKey(pub).verify(message, sig)) == got, where  # noqa: B023
            if expected == "acceptable":
                if STRICT_REFUSALS & set(vector["flags"]):
                    assert got == "invalid", where
            else:
                assert got == expected, where
    assert len(seen) == suite["numberOfTests"] == 151
    assert counts == {"valid": 88, "invalid": 63}


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_a_public_key_that_is_not_32_bytes_is_refused(length):
    """What the vectors test expects of a key of the wrong length (none in this file has one)."""
    sig = parse_private_key(VECTOR_PRIVATE).sign(CHALLENGE)
    key = (PUB + bytes(32))[:length]  # the vector key, cut short or padded
    with pytest.raises(SignatureError) as info:
        verify_signature(public_key=key, message=CHALLENGE, signature=sig)
    assert info.value.code == "bad_signature"
    with pytest.raises(SignatureError):
        PublicKey(key).verify(CHALLENGE, sig)
    with pytest.raises(IdentityError, match="32 bytes"):
        format_public_key(key)


def test_a_private_key_that_is_no_key_string_says_why_without_quoting_it():
    with pytest.raises(IdentityError, match="must be a string"):
        parse_private_key(None)  # type: ignore[arg-type]
    truncated = str(PrivateKey.generate())[:-3]
    with pytest.raises(IdentityError, match="110 characters, not 107") as refused:
        parse_private_key(truncated)
    assert truncated[7:] not in str(refused.value)
