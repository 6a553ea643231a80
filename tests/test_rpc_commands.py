"""``keygen --api-key``, ``runauthority``'s refusals, and the API-key system checks."""

from __future__ import annotations

import io
import socket

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from challenges import apikeys
from challenges.checks import check_secrets
from challenges.gettoken import StreamCap
from tests.rpcutil import API_KEY, API_SECRET


def test_keygen_api_key_prints_a_hub_key_and_secret():
    out = io.StringIO()
    call_command("keygen", "--api-key", stdout=out, stderr=io.StringIO())
    lines = dict(line.split("=", 1) for line in out.getvalue().splitlines())
    assert set(lines) == {"USER_API_KEY", "USER_API_SECRET"}
    assert len(lines["USER_API_KEY"]) == 27
    assert lines["USER_API_KEY"].startswith("b")
    assert len(apikeys.decode_secret(lines["USER_API_SECRET"])) == 24


def test_runauthority_refuses_an_address_in_use(settings):
    settings.AUTHORITY_API_KEYS = f"{API_KEY}:{API_SECRET}"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(CommandError, match=r"127\.0\.0\.1"):
            call_command("runauthority", "--address", f"127.0.0.1:{busy.getsockname()[1]}")


def test_runauthority_needs_api_keys_in_production(settings):
    settings.DEBUG = False
    settings.AUTHORITY_API_KEYS = ""
    settings.USER_API_KEY = ""
    with pytest.raises(CommandError, match="no API keys"):
        call_command("runauthority", "--address", "127.0.0.1:0")


def test_runauthority_names_a_bad_key_list_without_quoting_it(settings):
    settings.AUTHORITY_API_KEYS = "bkey:not-a-secret!"
    with pytest.raises(CommandError) as info:
        call_command("runauthority", "--address", "127.0.0.1:0")
    assert "not-a-secret" not in str(info.value)


def test_checks_name_bad_api_settings_without_quoting_them(settings):
    settings.USER_API_SECRET = "zz-secret"
    settings.AUTHORITY_API_KEYS = "bkey:also-secret"
    settings.TOKEN_UPSTREAM = "grpc://hub:port"
    errors = {e.id: e.msg for e in check_secrets()}
    assert {"challenges.E004", "challenges.E006", "challenges.E007"} <= set(errors)
    assert "zz-secret" not in errors["challenges.E006"]
    assert "also-secret" not in errors["challenges.E007"]
    settings.USER_API_SECRET, settings.AUTHORITY_API_KEYS = API_SECRET, f"{API_KEY}:{API_SECRET}"
    settings.TOKEN_UPSTREAM = "grpcs://hub.example.com"
    assert not {e.id for e in check_secrets()} & {"challenges.E004", "challenges.E006", "challenges.E007"}


def test_the_stream_cap_must_be_positive(settings):
    settings.AUTHORITY_MAX_STREAMS = 0
    assert "challenges.E011" in {e.id for e in check_secrets()}
    settings.AUTHORITY_API_KEYS = f"{API_KEY}:{API_SECRET}"
    with pytest.raises(CommandError, match="at least 1"):
        call_command("runauthority", "--address", "127.0.0.1:0")
    settings.AUTHORITY_MAX_STREAMS = 1000
    with pytest.raises(CommandError, match="at least 1"):
        call_command("runauthority", "--address", "127.0.0.1:0", "--max-streams", "0")


def test_the_cap_is_shared_and_released():
    cap = StreamCap(2)
    assert (cap.acquire(), cap.acquire(), cap.acquire()) == (True, True, False)
    assert cap.active == 2
    cap.release()
    assert cap.acquire()
    with pytest.raises(ValueError, match="at least 1"):
        StreamCap(0)
