"""API keys and signatures against the vectors of docs/PROTOCOL.md (pure, no Django)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest

from challenges import apikeys
from challenges.errors import API_KEY_MESSAGES, ApiKeyError

SECRET = "baaaqeayeaudaocajbifqydiob4ibceqtcqkrmfy"
MSG = "2020-10-10T12:00:00.000Z"
HMAC = "7965beb5e1a5dd0adf410c24299adf444f6f83660fee481c92904d8c0b80a929"
SIG = "bpfs35npbuxoqvx2bbqsctgw7irhw7a3gb7xeqhessbgyyc4aveuq"
BEFORE = datetime(2020, 10, 10, 11, 30, tzinfo=UTC)


def test_the_secret_decodes_to_bytes_0_to_23():
    assert apikeys.decode_secret(SECRET) == bytes(range(24))


def test_signature_vector():
    assert hmac.new(bytes(range(24)), MSG.encode(), hashlib.sha256).hexdigest() == HMAC
    assert apikeys.sign_message(secret=SECRET, msg=MSG) == SIG


def test_make_signature_dates_ahead_like_to_iso_string():
    signed = apikeys.make_signature(secret=SECRET, now=datetime(2020, 10, 10, 11, 55, tzinfo=UTC))
    assert signed.msg == MSG
    assert signed.sig == SIG
    assert SECRET not in repr(signed)


def test_verify_accepts_the_vector_before_its_date():
    apikeys.verify_signature(secret=SECRET, msg=MSG, sig=SIG, now=BEFORE)


@pytest.mark.parametrize(
    ("msg", "sig", "now", "code"),
    [
        (None, SIG, BEFORE, "api_sig_required"),
        (MSG, None, BEFORE, "api_sig_required"),
        (MSG, "", BEFORE, "api_sig_required"),
        (MSG, SIG[:-1] + "a", BEFORE, "api_sig_bad"),
        (MSG, SIG.upper(), BEFORE, "api_sig_bad"),
        ("2020-10-10T12:00:00.001Z", SIG, BEFORE, "api_sig_bad"),  # sig of another message
        (MSG, SIG, datetime(2020, 10, 10, 12, 0, 1, tzinfo=UTC), "api_sig_bad"),  # in the past
        (MSG, SIG, datetime(2020, 10, 10, 12, 0, tzinfo=UTC), "api_sig_bad"),  # exactly now
        (MSG, SIG, datetime(2020, 10, 10, 10, 59, 59, tzinfo=UTC), "api_sig_bad"),  # > 1 h ahead
        ("yesterday", SIG, BEFORE, "api_sig_bad"),
        ("2020-10-10 12:00:00Z", SIG, BEFORE, "api_sig_bad"),
        ("2" * 100, SIG, BEFORE, "api_sig_bad"),
    ],
)
def test_verify_refuses(msg, sig, now, code):
    with pytest.raises(ApiKeyError) as info:
        apikeys.verify_signature(secret=SECRET, msg=msg, sig=sig, now=now)
    assert info.value.code == code
    assert info.value.message == API_KEY_MESSAGES[code]
    assert SECRET not in str(info.value)
    assert SIG not in str(info.value)


def test_one_hour_ahead_is_the_limit():
    apikeys.verify_signature(secret=SECRET, msg=MSG, sig=SIG, now=datetime(2020, 10, 10, 11, tzinfo=UTC))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MSG, datetime(2020, 10, 10, 12, tzinfo=UTC)),
        ("2020-10-10T14:00:00+02:00", datetime(2020, 10, 10, 12, tzinfo=UTC)),
        ("2020-10-10T12:00:00.123456789Z", datetime(2020, 10, 10, 12, 0, 0, 123456, tzinfo=UTC)),
    ],
)
def test_parse_date_reads_rfc3339(text, expected):
    assert apikeys.parse_date(text) == expected


def test_new_api_key_has_the_hub_format():
    key = apikeys.new_api_key(rand=lambda n: bytes(range(n)))
    assert key.secret == SECRET
    assert len(key.key) == 27
    assert key.key.startswith("b")
    assert apikeys.decode_secret(apikeys.new_api_key().secret).__len__() == 24
    assert SECRET not in repr(key)


def test_check_api_key_order_of_refusals():
    keys = {"bkey": SECRET, "bopen": ""}
    now = BEFORE
    assert apikeys.check_api_key(keys, key="bopen", msg=None, sig=None, now=now) == "bopen"
    assert apikeys.check_api_key(keys, key="bkey", msg=MSG, sig=SIG, now=now) == "bkey"
    for key, msg, sig, code in [
        (None, MSG, SIG, "api_key_required"),
        ("", MSG, SIG, "api_key_required"),
        ("bother", MSG, SIG, "api_key_not_found"),
        ("bkey", None, None, "api_sig_required"),
        ("bkey", MSG, "bnope", "api_sig_bad"),
    ]:
        with pytest.raises(ApiKeyError) as info:
            apikeys.check_api_key(keys, key=key, msg=msg, sig=sig, now=now)
        assert info.value.code == code


def test_parse_api_keys():
    assert apikeys.parse_api_keys("") == {}
    assert apikeys.parse_api_keys(f" bkey:{SECRET} , bopen ") == {"bkey": SECRET, "bopen": ""}
    with pytest.raises(ValueError, match="entry 2") as info:
        apikeys.parse_api_keys(f"bkey:{SECRET},bbad:not-base32!")
    assert "not-base32" not in str(info.value)
    with pytest.raises(ValueError, match="entry 1"):
        apikeys.parse_api_keys("bad key:x")


def test_expired_by_a_delta_is_refused():
    signed = apikeys.make_signature(secret=SECRET, now=BEFORE, ahead=timedelta(seconds=5))
    with pytest.raises(ApiKeyError):
        apikeys.verify_signature(
            secret=SECRET, msg=signed.msg, sig=signed.sig, now=BEFORE + timedelta(seconds=6)
        )
