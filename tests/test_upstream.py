"""The embedded authority as an upstream, stepped with a fake clock (the gRPC relay has
its own tests: tests/test_rpc_client.py, tests/test_rpc_relay.py)."""

from __future__ import annotations

import pytest

from challenges.authority import check_challenge_text
from challenges.errors import ChallengeError, Code
from challenges.identity import PrivateKey
from challenges.tokens import verify_token
from challenges.upstream import LocalUpstream
from tests.fakeclock import FakeClock

AUDIENCE = "https://app.example"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def upstream(clock, authority_signer) -> LocalUpstream:
    return LocalUpstream(signer=authority_signer, ttl=300, clock=clock, token_audience=AUDIENCE)


async def test_a_challenge_names_the_audience_and_key_and_the_token_the_subject(upstream, clock, user_key):
    pending = await upstream.begin(key=user_key.public, audience=AUDIENCE, timeout=60)
    assert (pending.status, pending.holds_stream, pending.challenge.raw) == ("pending", False, False)
    check_challenge_text(pending.challenge.value, audience=AUDIENCE, key=user_key.public, now=clock.now())
    await clock.advance(59)
    token = await pending.finish(user_key.sign(pending.challenge.value))
    claims = verify_token(token.token, issuer=upstream.signer.public, audience=AUDIENCE, now=clock.now())
    assert claims["sub"] == str(user_key.public)
    assert claims["exp"] - claims["iat"] == 300
    assert pending.status == "OK"


async def test_a_late_answer_is_a_timeout(upstream, clock, user_key):
    pending = await upstream.begin(key=user_key.public, audience=AUDIENCE, timeout=60)
    await clock.advance(61)
    with pytest.raises(ChallengeError) as late:
        await pending.finish(user_key.sign(pending.challenge.value))
    assert (late.value.code, pending.status) == (Code.CHALLENGE_TIMEOUT, "expired")


async def test_a_wrong_signature_and_a_cancel_are_recorded_as_such(upstream, user_key):
    pending = await upstream.begin(key=user_key.public, audience=AUDIENCE, timeout=60)
    with pytest.raises(ChallengeError) as bad:
        await pending.finish(PrivateKey.generate().sign(pending.challenge.value))
    assert (bad.value.code, pending.status) == (Code.BAD_SIGNATURE, "bad_signature")
    other = await upstream.begin(key=user_key.public, audience=AUDIENCE, timeout=60)
    await other.cancel()
    assert other.status == "cancelled"
    assert other.challenge.value != pending.challenge.value
