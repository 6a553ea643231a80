"""Challenge texts of the embedded authority, and the client's check of them (pure, time pinned)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from challenges import authority
from challenges.errors import ChallengeTextError
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
