"""Configuration: system checks, the development key, commands."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.core.checks import run_checks

from challenges.clients import ClientPolicy
from challenges.config import RuntimeConfig
from challenges.errors import Code
from challenges.identity import parse_private_key
from challenges.keys import AuthorityKeyMissing
from tests import servers


def errors_ids(settings) -> set[str]:
    return {e.id for e in run_checks() if e.id and e.id.startswith("challenges.")}


def test_development_needs_no_configuration(settings):
    settings.DEBUG = True
    settings.AUTHORITY_PRIVATE_KEY = ""
    assert errors_ids(settings) == set()


def test_production_without_secrets_is_a_check_error(settings):
    settings.DEBUG = False
    settings.SECRET_KEY = "insecure-development-only-secret-key"
    settings.AUTHORITY_PRIVATE_KEY = ""
    assert errors_ids(settings) == {"challenges.E001", "challenges.E002"}


def test_malformed_settings_are_check_errors_that_do_not_quote_the_key(settings):
    settings.DEBUG = True
    settings.AUTHORITY_PRIVATE_KEY = "bbaareqSECRETSECRET"
    settings.TOKEN_UPSTREAM = "http://hub"
    settings.CHALLENGE_TIMEOUT = 0
    found = run_checks()
    assert {e.id for e in found if e.id.startswith("challenges.")} == {
        "challenges.E003",
        "challenges.E004",
        "challenges.E005",
    }
    assert "SECRETSECRET" not in " ".join(e.msg for e in found)


def test_development_key_is_generated_once_and_private(settings, tmp_path):
    settings.DEBUG = True
    settings.AUTHORITY_PRIVATE_KEY = ""
    settings.AUTHORITY_KEY_FILE = tmp_path / "var" / "dev-authority.key"
    first = RuntimeConfig.from_settings().load_authority_key()
    assert RuntimeConfig.from_settings().load_authority_key() == first
    assert oct(settings.AUTHORITY_KEY_FILE.stat().st_mode & 0o777) == "0o600"
    assert parse_private_key(settings.AUTHORITY_KEY_FILE.read_text().strip()) == first


def test_production_without_key_refuses_to_mint(settings):
    settings.DEBUG = False
    settings.AUTHORITY_PRIVATE_KEY = ""
    with pytest.raises(AuthorityKeyMissing):
        RuntimeConfig.from_settings().load_authority_key()


def test_manage_check_fails_in_production_without_secrets(tmp_path):
    env = servers.base_env(tmp_path, DEBUG="false", ALLOWED_HOSTS="example.com")
    for name in ("SECRET_KEY", "AUTHORITY_PRIVATE_KEY"):
        env.pop(name, None)
    out = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=servers.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "challenges.E001" in out.stderr
    assert "challenges.E002" in out.stderr


def test_keygen_prints_a_usable_key(tmp_path):
    env = servers.base_env(tmp_path)
    out = subprocess.run(
        [sys.executable, "manage.py", "keygen"], cwd=servers.ROOT, env=env, capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    name, _, value = out.stdout.strip().partition("=")
    assert name == "AUTHORITY_PRIVATE_KEY"
    key = parse_private_key(value)
    assert str(key.public) in out.stderr


def test_env_example_lists_every_setting():
    example = (servers.ROOT / ".env.example").read_text()
    source = (servers.ROOT / "tokensite" / "settings.py").read_text()
    import re

    names = set(re.findall(r'env\.\w+\("([A-Z_]+)"', source))
    assert names, "no environment variables found in settings.py"
    missing = sorted(n for n in names if f"{n}=" not in example)
    assert not missing, f".env.example lacks {missing}"
    assert os.environ.get("AUTHORITY_PRIVATE_KEY", "") not in example or not os.environ.get(
        "AUTHORITY_PRIVATE_KEY"
    )


def test_readme_documents_every_error_code_and_variable():
    readme = (servers.ROOT / "README.md").read_text()
    assert [str(c) for c in Code if f"`{c}`" not in readme] == []
    assert "make run" in readme
    assert "make test" in readme


def test_challenge_timeout_must_be_shorter_than_the_layer_expiry(settings):
    settings.DEBUG = True
    settings.CHALLENGE_TIMEOUT = 120
    assert "challenges.E008" in errors_ids(settings)
    settings.CHALLENGE_TIMEOUT = 60
    assert "challenges.E008" not in errors_ids(settings)


@pytest.mark.parametrize(
    ("header", "proxies", "expected"),
    [
        ("203.0.113.9", 1, "203.0.113.9"),
        ("6.6.6.6, 203.0.113.9", 1, "203.0.113.9"),  # the client wrote 6.6.6.6
        ("6.6.6.6, 203.0.113.9, 10.0.0.2", 2, "203.0.113.9"),
        ("10.0.0.2", 2, "127.0.0.5"),  # fewer entries than proxies: fall back to the peer
        ("not-an-ip", 1, None),
    ],
)
def test_client_ip_counts_forwarded_entries_from_the_right(settings, header, proxies, expected):
    policy = ClientPolicy(ip_header="X-Forwarded-For", trusted_proxies=proxies)
    scope = {"client": ("127.0.0.5", 1)}
    assert policy.client_ip(scope, {"x-forwarded-for": header}) == expected
