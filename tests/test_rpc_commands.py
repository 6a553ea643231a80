"""``keygen --api-key``, ``runauthority``'s refusals, and the API-key, TLS and stream-cap system checks."""

from __future__ import annotations

import io
import re
import socket

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError

from challenges import apikeys
from challenges.checks import check_secrets, check_tokens
from challenges.gettoken import StreamCap
from challenges.runtime import Runtime, RuntimeConfig
from tests.rpcutil import API_KEY, API_SECRET, make_pki


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
    # The key the relay sends (and, with no AUTHORITY_API_KEYS, the one it accepts).
    settings.USER_API_KEY = "my key, with-spaces"
    errors = {e.id: e.msg for e in check_secrets()}
    assert "challenges.E017" in errors
    assert "with-spaces" not in errors["challenges.E017"]
    settings.USER_API_KEY = API_KEY
    assert "challenges.E017" not in {e.id for e in check_secrets()}


@pytest.mark.parametrize(
    ("authority_api_keys", "user_api_key", "user_api_secret", "weak"),
    [
        # 8 bytes of secret: one observed signature, and the rest is an offline search.
        (f"{API_KEY}:{apikeys.multibase_b32(b'12345678')}", "", "", ["entry 1's secret is 8 bytes"]),
        (f"{API_KEY}:{API_SECRET},demo", "", "", ["entry 2 needs no secret and has only 4 characters"]),
        ("", "shortkey", apikeys.multibase_b32(b"secret"), ["entry 1's secret is 6 bytes"]),
        ("", "", "", []),
        (f"{API_KEY}:{API_SECRET},{'k' * 26}", "", "", []),
        (f"{'k' * 25}", "", "", ["entry 1 needs no secret and has only 25 characters"]),
        # Positions are the setting's own, a key given twice included.
        (
            f"{API_KEY}:{API_SECRET},{API_KEY}:{apikeys.multibase_b32(b'1234')}",
            "",
            "",
            ["entry 2's secret is 4 bytes"],
        ),
        # A setting of commas names no key: the keys come from USER_API_KEY.
        (" , ", "shortkey", "", ["entry 1 needs no secret and has only 8 characters"]),
        ("", API_KEY, API_SECRET, []),
        # A key with a secret needs no length of its own: the secret is what is proven.
        (f"short:{API_SECRET}", "", "", []),
    ],
)
def test_keys_a_caller_could_guess_are_a_warning_that_quotes_none(
    settings, authority_api_keys, user_api_key, user_api_secret, weak
):
    settings.AUTHORITY_API_KEYS = authority_api_keys
    settings.USER_API_KEY, settings.USER_API_SECRET = user_api_key, user_api_secret
    found = [m for m in check_tokens() if m.id == "challenges.W003"]
    assert [m.msg.split(": ", 1)[1].split("; ") for m in found] == ([weak] if weak else [])
    for message in found:
        source = "AUTHORITY_API_KEYS" if authority_api_keys.strip(" ,") else "USER_API_KEY"
        assert message.msg.startswith(f"{source} has keys a caller could guess")
        for secret in (authority_api_keys, user_api_key, user_api_secret):
            for part in filter(None, (p.strip() for p in re.split("[,:]", secret))):
                assert part not in message.msg + message.hint


# -- TLS files and the stream cap -------------------------------------------------------

JUNK = "NOT-A-PEM-BUT-SECRET-LOOKING-CONTENT"


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path / "pki")


@pytest.fixture
def junk(tmp_path):
    path = tmp_path / "junk.pem"
    path.write_text(JUNK)
    return path


def tls_errors() -> dict[str, str]:
    return {e.id: e.msg for e in check_secrets() if e.id in TLS_CHECKS}


TLS_CHECKS = {"challenges.E012", "challenges.E013", "challenges.E014"}


def test_tls_settings_pass_the_checks_when_both_files_make_a_pair(settings, pki):
    settings.AUTHORITY_TLS_CERT, settings.AUTHORITY_TLS_KEY = str(pki.cert), str(pki.key)
    settings.TOKEN_UPSTREAM_CA = str(pki.ca)
    assert tls_errors() == {}
    settings.AUTHORITY_TLS_CERT = settings.AUTHORITY_TLS_KEY = settings.TOKEN_UPSTREAM_CA = ""
    assert tls_errors() == {}


@pytest.mark.parametrize(
    ("cert", "key", "says"),
    [
        ("cert", "", "AUTHORITY_TLS_KEY is not"),
        ("", "key", "AUTHORITY_TLS_CERT is not"),
        ("cert", "missing", "cannot be read: No such file"),
        ("folder", "key", "cannot be read"),
        ("cert", "junk", "not a PEM certificate chain"),
        ("junk", "key", "not a PEM certificate chain"),
        ("ca", "key", "KEY_VALUES_MISMATCH"),  # the CA's certificate, not the key's
    ],
)
def test_tls_checks_name_the_problem_never_the_contents(settings, pki, junk, tmp_path, cert, key, says):
    paths = {
        "": "",
        "cert": str(pki.cert),
        "key": str(pki.key),
        "ca": str(pki.ca),
        "junk": str(junk),
        "missing": str(tmp_path / "missing.pem"),
        "folder": str(tmp_path),
    }
    settings.AUTHORITY_TLS_CERT, settings.AUTHORITY_TLS_KEY = paths[cert], paths[key]
    errors = tls_errors()
    assert set(errors) == {"challenges.E012"}
    assert says in errors["challenges.E012"]
    for secret in (JUNK, pki.key_pem.decode().splitlines()[1]):
        assert secret not in errors["challenges.E012"]
    # The command refuses to start the same way, before binding anything.
    settings.AUTHORITY_API_KEYS = f"{API_KEY}:{API_SECRET}"
    with pytest.raises(CommandError, match=re.escape(says)) as info:
        call_command("runauthority", "--address", "127.0.0.1:0")
    assert JUNK not in str(info.value)


def test_tls_options_override_the_settings(settings, pki, junk):
    settings.AUTHORITY_API_KEYS = f"{API_KEY}:{API_SECRET}"
    settings.AUTHORITY_TLS_CERT, settings.AUTHORITY_TLS_KEY = str(pki.cert), str(pki.key)
    with pytest.raises(CommandError, match=r"junk\.pem") as info:
        call_command("runauthority", "--address", "127.0.0.1:0", "--tls-key", str(junk))
    assert JUNK not in str(info.value)
    settings.AUTHORITY_TLS_CERT = settings.AUTHORITY_TLS_KEY = ""
    with pytest.raises(CommandError, match="AUTHORITY_TLS_KEY is not"):
        call_command("runauthority", "--address", "127.0.0.1:0", "--tls-cert", str(pki.cert))


@pytest.mark.parametrize("what", ["junk", "missing"])
def test_the_relay_ca_bundle_is_checked(settings, junk, tmp_path, what):
    settings.TOKEN_UPSTREAM_CA = str(junk if what == "junk" else tmp_path / "missing.pem")
    errors = tls_errors()
    assert set(errors) == {"challenges.E013"}
    assert "TOKEN_UPSTREAM_CA" in errors["challenges.E013"]
    assert JUNK not in errors["challenges.E013"]
    settings.TOKEN_UPSTREAM = "grpcs://hub.example.com"
    with pytest.raises(ImproperlyConfigured, match="TOKEN_UPSTREAM_CA"):
        Runtime(RuntimeConfig.from_settings(), layer=None)


def test_the_stream_cap_must_be_positive(settings):
    settings.AUTHORITY_MAX_STREAMS = 0
    assert set(tls_errors()) == {"challenges.E014"}
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
