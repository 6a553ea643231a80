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
#: RFC 8037 appendix A.3: the thumbprint of the RFC 8032 test key 1.
RFC8037_KID = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def b64url_json(part: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_token_from_the_vector_key_matches_go_threads_shape(vector_key):
    user = PrivateKey.generate().public
    tok = tokens.mint_token(signer=vector_key, subject=user, ttl=3600, audience=AUD, now=NOW, jti="j1")
    header, claims, sig = tok.token.split(".")
    # go-threads' header (docs/PROTOCOL.md "Vectors"), then the key's RFC 7638 thumbprint,
    # which for this key is RFC 8037 appendix A.3's.
    assert header.startswith("eyJhbGciOiJFZDI1NTE5IiwidHlwIjoiSldUI")
    assert b64url_json(header) == {"alg": "Ed25519", "typ": "JWT", "kid": RFC8037_KID}
    assert list(b64url_json(header)) == ["alg", "typ", "kid"]
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


def test_key_id_and_jwk_of_the_vector_key_are_rfc_8037s(vector_key):
    assert tokens.key_id(vector_key.public) == RFC8037_KID
    assert tokens.jwk(vector_key.public) == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",  # RFC 8037 A.2
        "kid": RFC8037_KID,
        "use": "sig",
        "alg": "Ed25519",
    }


def test_a_go_threads_token_without_kid_still_verifies(vector_key):
    header = base64.urlsafe_b64encode(b'{"alg":"Ed25519","typ":"JWT"}').rstrip(b"=").decode()
    body = {
        "iat": int(NOW.timestamp()),
        "iss": VECTOR_PUBLIC,
        "sub": VECTOR_PUBLIC,
        "exp": int(NOW.timestamp()) + 60,
    }
    claims = base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).rstrip(b"=").decode()
    sig = base64.urlsafe_b64encode(vector_key.sign(f"{header}.{claims}".encode())).rstrip(b"=").decode()
    assert (
        tokens.verify_token(f"{header}.{claims}.{sig}", issuer=vector_key.public, now=NOW)["sub"]
        == VECTOR_PUBLIC
    )


def test_rotated_keys_verify_their_own_tokens_and_a_wrong_kid_is_refused(vector_key):
    new = PrivateKey.generate()
    old_token = tokens.mint_token(signer=vector_key, subject=new.public, ttl=60, now=NOW).token
    new_token = tokens.mint_token(signer=new, subject=new.public, ttl=60, now=NOW).token
    both = [new.public, vector_key.public]
    assert tokens.verify_token(old_token, issuer=both, now=NOW)["iss"] == VECTOR_PUBLIC
    assert tokens.verify_token(new_token, issuer=both, now=NOW)["iss"] == str(new.public)
    with pytest.raises(TokenError, match="another authority"):
        tokens.verify_token(old_token, issuer=[new.public], now=NOW)
    # A header naming another key than the one that signed it is not ours.
    _, claims, sig = old_token.split(".")
    other = {"alg": "Ed25519", "typ": "JWT", "kid": tokens.key_id(new.public)}
    forged_header = (
        base64.urlsafe_b64encode(json.dumps(other, separators=(",", ":")).encode()).rstrip(b"=").decode()
    )
    with pytest.raises(TokenError):
        tokens.verify_token(f"{forged_header}.{claims}.{sig}", issuer=both, now=NOW)


@pytest.mark.parametrize("token", ["a.b.c", "e30.W10.x", "bnVsbA.e30.x"])
def test_a_token_whose_parts_are_not_json_objects_is_called_malformed_not_foreign(vector_key, token):
    # "a.b.c", a header {} with claims [], a header null with claims {}
    with pytest.raises(TokenError, match="not base64url JSON objects"):
        tokens.verify_token(token, issuer=vector_key.public, now=NOW)


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


def test_a_minted_token_is_the_compact_jws_joserfc_makes_of_the_same_header_and_claims():
    """mint_token writes the compact serialization itself (so the key pair is derived once);
    a JOSE library given the same protected header and payload makes the same bytes."""
    from joserfc import jws
    from joserfc.jwk import OKPKey

    signer, user = PrivateKey.generate(), PrivateKey.generate()
    minted = tokens.mint_token(signer=signer, subject=user.public, ttl=60, audience="https://app.example")
    header_b64, payload_b64, _ = minted.token.split(".")
    header = json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
    payload = base64.urlsafe_b64decode(payload_b64 + "=" * (-len(payload_b64) % 4))
    jwk = {"kty": "OKP", "crv": "Ed25519", "d": _b64(signer.seed), "x": _b64(signer.public.raw)}
    key = OKPKey.import_key(jwk)
    assert jws.serialize_compact(header, payload, key, algorithms=["Ed25519"]) == minted.token


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")
