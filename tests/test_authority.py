"""Challenge texts and tokens of the embedded authority (pure, time pinned)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from challenges import authority
from challenges.authority import ChallengeTextError, TokenError
from challenges.identity import PrivateKey
from tests.conftest import VECTOR_PUBLIC

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
AUD = "https://app.example"


def b64url_json(part: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_challenge_text_is_exact_and_documented(vector_key):
    ch = authority.make_challenge(
        audience=AUD, key=vector_key.public, timeout=60, now=NOW, nonce=bytes(24), challenge_id="x" * 24
    )
    assert ch.value.decode() == (
        "textile-token-challenge/v1\n"
        "purpose: api-token\n"
        "audience: https://app.example\n"
        f"key: {VECTOR_PUBLIC}\n"
        "nonce: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"
        "issued: 2026-11-29T12:00:00Z\n"
        "expires: 2026-11-29T12:01:00Z"
    )
    assert ch.expires_at == NOW + timedelta(seconds=60)
    assert ch.id == "x" * 24
    assert ch.raw is False


def test_challenges_are_unique_and_nonce_has_enough_entropy(vector_key):
    seen = {
        authority.make_challenge(audience=AUD, key=vector_key.public, timeout=60).value for _ in range(50)
    }
    assert len(seen) == 50
    ids = {authority.new_challenge_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(len(i) >= 24 for i in ids)
    with pytest.raises(ValueError, match="128 bits"):
        authority.make_challenge(audience=AUD, key=vector_key.public, timeout=60, nonce=bytes(15))


def test_fractional_timeout_rounds_the_text_expiry_up(vector_key):
    ch = authority.make_challenge(audience=AUD, key=vector_key.public, timeout=0.3, now=NOW)
    text = authority.parse_challenge_text(ch.value)
    assert text.expires == NOW + timedelta(seconds=1)
    assert ch.expires_at == NOW + timedelta(seconds=0.3)


def test_client_check_accepts_the_right_challenge(vector_key):
    ch = authority.make_challenge(audience=AUD, key=vector_key.public, timeout=60, now=NOW)
    text = authority.check_challenge_text(ch.value, audience=AUD, key=vector_key.public, now=NOW)
    assert text.key == VECTOR_PUBLIC


def test_client_check_refuses_other_audience_key_expiry_and_junk(vector_key):
    ch = authority.make_challenge(audience=AUD, key=vector_key.public, timeout=60, now=NOW)
    with pytest.raises(ChallengeTextError, match="audience"):
        authority.check_challenge_text(
            ch.value, audience="https://evil.example", key=vector_key.public, now=NOW
        )
    with pytest.raises(ChallengeTextError, match="another public key"):
        authority.check_challenge_text(ch.value, audience=AUD, key=PrivateKey.generate().public, now=NOW)
    with pytest.raises(ChallengeTextError, match="expired"):
        authority.check_challenge_text(
            ch.value, audience=AUD, key=vector_key.public, now=NOW + timedelta(minutes=5)
        )
    for junk in [bytes(range(32)), b"", b"\xff" * 10, ch.value.replace(b"purpose", b"purpos"), ch.value * 20]:
        with pytest.raises(ChallengeTextError):
            authority.check_challenge_text(junk, audience=AUD, key=vector_key.public, now=NOW)
    other_purpose = ch.value.replace(b"purpose: api-token", b"purpose: login")
    with pytest.raises(ChallengeTextError, match="login"):
        authority.check_challenge_text(other_purpose, audience=AUD, key=vector_key.public, now=NOW)


def test_token_from_the_vector_key_matches_go_threads_shape(vector_key):
    user = PrivateKey.generate().public
    tok = authority.mint_token(signer=vector_key, subject=user, ttl=3600, audience=AUD, now=NOW, jti="j1")
    header, claims, sig = tok.token.split(".")
    assert header == "eyJhbGciOiJFZDI1NTE5IiwidHlwIjoiSldUIn0"  # PROTOCOL §5
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
    assert tok.sha256 == authority.token_sha256(tok.token)
    claims_ok = authority.verify_token(tok.token, issuer=vector_key.public, audience=AUD, now=NOW)
    assert claims_ok["sub"] == str(user)


def test_no_audience_claim_when_unconfigured(vector_key):
    tok = authority.mint_token(signer=vector_key, subject=vector_key.public, ttl=60, now=NOW)
    assert "aud" not in b64url_json(tok.token.split(".")[1])
    assert authority.verify_token(tok.token, issuer=vector_key.public, now=NOW)["jti"] == tok.jti


def _flip(segment: str) -> str:
    ch = "A" if segment[5] != "A" else "B"
    return segment[:5] + ch + segment[6:]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_tampering_with_any_segment_fails(vector_key, index):
    tok = authority.mint_token(signer=vector_key, subject=vector_key.public, ttl=60, now=NOW).token
    parts = tok.split(".")
    parts[index] = _flip(parts[index])
    with pytest.raises(TokenError):
        authority.verify_token(".".join(parts), issuer=vector_key.public, now=NOW)


def test_swapped_claims_with_a_valid_encoding_fail(vector_key):
    tok = authority.mint_token(signer=vector_key, subject=vector_key.public, ttl=60, now=NOW).token
    header, claims, sig = tok.split(".")
    forged = dict(b64url_json(claims), sub=str(PrivateKey.generate().public))
    forged_part = base64.urlsafe_b64encode(json.dumps(forged).encode()).decode().rstrip("=")
    with pytest.raises(TokenError):
        authority.verify_token(f"{header}.{forged_part}.{sig}", issuer=vector_key.public, now=NOW)


def test_other_issuer_expiry_audience_and_garbage(vector_key):
    tok = authority.mint_token(
        signer=vector_key, subject=vector_key.public, ttl=60, audience=AUD, now=NOW
    ).token
    with pytest.raises(TokenError):
        authority.verify_token(tok, issuer=PrivateKey.generate().public, now=NOW)
    # exp with the leeway: fine at exp + 30 s, expired after.
    authority.verify_token(tok, issuer=vector_key.public, now=NOW + timedelta(seconds=90))
    with pytest.raises(TokenError) as info:
        authority.verify_token(tok, issuer=vector_key.public, now=NOW + timedelta(seconds=91))
    assert info.value.code == "token_expired"
    with pytest.raises(TokenError) as info:
        authority.verify_token(tok, issuer=vector_key.public, audience="https://other", now=NOW)
    assert info.value.code == "wrong_audience"
    with pytest.raises(TokenError):
        authority.verify_token(tok, issuer=vector_key.public, now=NOW - timedelta(minutes=5))  # iat ahead
    for junk in ["", "a.b", "a.b.c", "x" * 10_000, None]:
        with pytest.raises(TokenError):
            authority.verify_token(junk, issuer=vector_key.public, now=NOW)  # type: ignore[arg-type]


def test_go_threads_token_without_exp(vector_key):
    tok = authority.mint_token(signer=vector_key, subject=vector_key.public, ttl=None, now=NOW).token
    with pytest.raises(TokenError, match="no expiry"):
        authority.verify_token(tok, issuer=vector_key.public, now=NOW)
    assert "exp" not in authority.verify_token(tok, issuer=vector_key.public, now=NOW, require_exp=False)


def test_other_algorithm_header_is_refused(vector_key):
    tok = authority.mint_token(signer=vector_key, subject=vector_key.public, ttl=60, now=NOW).token
    _, claims, sig = tok.split(".")
    header = base64.urlsafe_b64encode(b'{"alg":"EdDSA","typ":"JWT"}').decode().rstrip("=")
    with pytest.raises(TokenError):
        authority.verify_token(f"{header}.{claims}.{sig}", issuer=vector_key.public, now=NOW)
