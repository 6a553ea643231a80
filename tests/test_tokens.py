"""Tokens: minted by the embedded authority, checked by verify_token (pure, time pinned)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from challenges import tokens
from challenges.errors import TokenError
from challenges.identity import PrivateKey
from tests.conftest import VECTOR_PUBLIC

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
AUD = "https://app.example"


def b64url_json(part: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_token_from_the_vector_key_matches_go_threads_shape(vector_key):
    user = PrivateKey.generate().public
    tok = tokens.mint_token(signer=vector_key, subject=user, ttl=3600, audience=AUD, now=NOW, jti="j1")
    header, claims, sig = tok.token.split(".")
    assert header == "eyJhbGciOiJFZDI1NTE5IiwidHlwIjoiSldUIn0"  # docs/PROTOCOL.md "Vectors"
    assert "=" not in tok.token
    decoded = b64url_json(claims)
    assert list(decoded) == ["iat", "iss", "sub", "exp", "jti", "aud"]
    assert decoded == {
        "iat": int(NOW.timestamp()),
        "iss": VECTOR_PUBLIC,
        "sub": str(user),
        "exp": int(NOW.timestamp()) + 3600,
        "jti": "j1",
        "aud": AUD,
    }
    # The signature is plain Ed25519 by the issuer over ASCII "header.claims".
    raw_sig = base64.urlsafe_b64decode(sig + "==")
    vector_key.public.verify(f"{header}.{claims}".encode(), raw_sig)
    assert tok.sha256 == tokens.token_sha256(tok.token)
    claims_ok = tokens.verify_token(tok.token, issuer=vector_key.public, audience=AUD, now=NOW)
    assert claims_ok["sub"] == str(user)


def test_no_audience_claim_when_unconfigured(vector_key):
    tok = tokens.mint_token(signer=vector_key, subject=vector_key.public, ttl=60, now=NOW)
    assert "aud" not in b64url_json(tok.token.split(".")[1])
    assert tokens.verify_token(tok.token, issuer=vector_key.public, now=NOW)["jti"] == tok.jti


def _flip(segment: str) -> str:
    ch = "A" if segment[5] != "A" else "B"
    return segment[:5] + ch + segment[6:]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_tampering_with_any_segment_fails(vector_key, index):
    tok = tokens.mint_token(signer=vector_key, subject=vector_key.public, ttl=60, now=NOW).token
    parts = tok.split(".")
    parts[index] = _flip(parts[index])
    with pytest.raises(TokenError):
        tokens.verify_token(".".join(parts), issuer=vector_key.public, now=NOW)


def test_swapped_claims_with_a_valid_encoding_fail(vector_key):
    tok = tokens.mint_token(signer=vector_key, subject=vector_key.public, ttl=60, now=NOW).token
    header, claims, sig = tok.split(".")
    forged = dict(b64url_json(claims), sub=str(PrivateKey.generate().public))
    forged_part = base64.urlsafe_b64encode(json.dumps(forged).encode()).decode().rstrip("=")
    with pytest.raises(TokenError):
        tokens.verify_token(f"{header}.{forged_part}.{sig}", issuer=vector_key.public, now=NOW)


def test_other_issuer_expiry_audience_and_garbage(vector_key):
    tok = tokens.mint_token(signer=vector_key, subject=vector_key.public, ttl=60, audience=AUD, now=NOW).token
    with pytest.raises(TokenError):
        tokens.verify_token(tok, issuer=PrivateKey.generate().public, now=NOW)
    # exp with the leeway: fine at exp + 30 s, expired after.
    tokens.verify_token(tok, issuer=vector_key.public, now=NOW + timedelta(seconds=90))
    with pytest.raises(TokenError) as info:
        tokens.verify_token(tok, issuer=vector_key.public, now=NOW + timedelta(seconds=91))
    assert info.value.code == "token_expired"
    with pytest.raises(TokenError) as info:
        tokens.verify_token(tok, issuer=vector_key.public, audience="https://other", now=NOW)
    assert info.value.code == "wrong_audience"
    with pytest.raises(TokenError):
        tokens.verify_token(tok, issuer=vector_key.public, now=NOW - timedelta(minutes=5))  # iat ahead
    for junk in ["", "a.b", "a.b.c", "x" * 10_000, None]:
        with pytest.raises(TokenError):
            tokens.verify_token(junk, issuer=vector_key.public, now=NOW)  # type: ignore[arg-type]


def test_go_threads_token_without_exp(vector_key):
    tok = tokens.mint_token(signer=vector_key, subject=vector_key.public, ttl=None, now=NOW).token
    with pytest.raises(TokenError, match="no expiry"):
        tokens.verify_token(tok, issuer=vector_key.public, now=NOW)
    assert "exp" not in tokens.verify_token(tok, issuer=vector_key.public, now=NOW, require_exp=False)


def test_other_algorithm_header_is_refused(vector_key):
    tok = tokens.mint_token(signer=vector_key, subject=vector_key.public, ttl=60, now=NOW).token
    _, claims, sig = tok.split(".")
    header = base64.urlsafe_b64encode(b'{"alg":"EdDSA","typ":"JWT"}').decode().rstrip("=")
    with pytest.raises(TokenError):
        tokens.verify_token(f"{header}.{claims}.{sig}", issuer=vector_key.public, now=NOW)
