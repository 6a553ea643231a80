"""Configuration: system checks, the development key, commands."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.checks import run_checks

from challenges.clients import ClientPolicy, daphne_forwarded_header
from challenges.config import RuntimeConfig
from challenges.errors import Code
from challenges.identity import PrivateKey, parse_private_key
from challenges.keys import AuthorityKeyMissing, AuthorityKeys
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


def test_malformed_verification_keys_are_check_errors_that_name_the_entry(settings):
    secret = str(PrivateKey.generate())  # pasted where a public key belongs: never quoted
    settings.AUTHORITY_PREVIOUS_KEYS = [str(PrivateKey.generate().public), "garbage", secret]
    settings.UPSTREAM_PUBLIC_KEY = "bbaareq"
    found = [e for e in run_checks() if e.id == "challenges.E016"]
    assert [e.msg.split(" is not")[0] for e in found] == [
        "UPSTREAM_PUBLIC_KEY",
        "AUTHORITY_PREVIOUS_KEYS entry 2",
        "AUTHORITY_PREVIOUS_KEYS entry 3",
    ]
    assert all(secret not in e.msg and "garbage" not in e.msg for e in found)
    settings.AUTHORITY_PREVIOUS_KEYS = [str(PrivateKey.generate().public)]
    settings.UPSTREAM_PUBLIC_KEY = ""
    assert "challenges.E016" not in errors_ids(settings)


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


def manage_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``manage.py check`` in a process of its own, with ``env``."""
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=servers.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_manage_check_fails_in_production_without_secrets(tmp_path):
    env = servers.base_env(tmp_path, DEBUG="false", ALLOWED_HOSTS="example.com")
    for name in ("SECRET_KEY", "AUTHORITY_PRIVATE_KEY"):
        env.pop(name, None)
    out = manage_check(env)
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


def _project_copy(tmp_path: Path, dotenv: str) -> Path:
    """The project's code in ``tmp_path`` with ``dotenv`` as its ``.env``."""
    root = tmp_path / "project"
    ignore = shutil.ignore_patterns("__pycache__", "node_modules")
    for package in ("tokensite", "challenges"):
        shutil.copytree(servers.ROOT / package, root / package, ignore=ignore)
    shutil.copy(servers.ROOT / "manage.py", root)
    (root / ".env").write_text(dotenv)
    return root


def test_env_example_copied_to_dotenv_runs_as_with_nothing_set(tmp_path):
    """Its ``NAME=`` lines are the defaults they document, and a value in .env is read
    (VAR_DIR too, which the development key's path comes from)."""
    elsewhere = tmp_path / "elsewhere"
    example = (servers.ROOT / ".env.example").read_text()
    root = _project_copy(tmp_path, example.replace("\nVAR_DIR=\n", f"\nVAR_DIR={elsewhere}\n"))
    clean = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}  # nothing from this test run
    check = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=root,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    engine, name, worker, var_dir, level, debug, _ = _settings_of(root, clean)
    assert (engine, name) == ("django.db.backends.sqlite3", str(root / "db.sqlite3"))
    assert worker.startswith(socket.gethostname() + ":")
    assert worker.split(":")[-1].isdigit()
    assert (var_dir, level, debug) == (str(elsewhere), "INFO", True)


def _settings_of(root: Path, env: dict[str, str]) -> list[Any]:
    code = (
        "import json, django; django.setup(); from django.conf import settings as s;"
        " print(json.dumps([s.DATABASES['default']['ENGINE'], str(s.DATABASES['default']['NAME']),"
        " s.WORKER_ID, str(s.VAR_DIR), s.LOGGING['root']['level'], s.DEBUG, s.AUTHORITY_PREVIOUS_KEYS]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env=env | {"DJANGO_SETTINGS_MODULE": "tokensite.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout))


def test_an_empty_variable_is_filled_by_dotenv_and_an_empty_debug_is_false(tmp_path):
    old = str(PrivateKey.generate().public)
    root = _project_copy(tmp_path, f"LOG_LEVEL=WARNING\nAUTHORITY_PREVIOUS_KEYS={old}, \n")
    clean = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    *_, level, debug, previous = _settings_of(root, clean | {"LOG_LEVEL": "", "DEBUG": ""})
    assert (level, debug) == ("WARNING", False)  # .env fills the empty one; DEBUG= fails closed
    assert _settings_of(root, clean)[5] is True  # DEBUG absent: development
    # The blank entry of the list is skipped by the key set and by the check alike.
    assert previous == [old, " "]
    assert [str(k) for k in AuthorityKeys.build(signer=None, previous=previous).verifiers] == [old]


def test_a_blank_verification_key_entry_is_no_check_error(settings):
    settings.AUTHORITY_PREVIOUS_KEYS = [str(PrivateKey.generate().public), " "]
    settings.UPSTREAM_PUBLIC_KEY = " "
    assert "challenges.E016" not in errors_ids(settings)


def test_readme_documents_every_error_code_and_variable():
    readme = (servers.ROOT / "README.md").read_text()
    assert [str(c) for c in Code if f"`{c}`" not in readme] == []
    codes = (servers.ROOT / "docs" / "PROTOCOL.md").read_text().split("## Error codes", 1)[1]
    assert [str(c) for c in Code if f"`{c}`" not in codes.split("\n## ", 1)[0]] == []
    assert "make run" in readme
    assert "make test" in readme


def test_redis_is_one_url_or_a_master_the_sentinels_name():
    from challenges.redisconf import RedisTarget, parse_sentinels

    one = RedisTarget(url="redis://127.0.0.1:6379/2")
    assert one.layer_host()["address"] == "redis://127.0.0.1:6379/2"
    sentinels = parse_sentinels("10.0.0.1:26379, 10.0.0.2:26380,[::1]:26381")
    assert sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("::1", 26381))
    watched = RedisTarget(url="redis://:pw@ignored:6379/3", sentinels=sentinels, master="tokens")
    host = watched.layer_host()
    assert (host["master_name"], host["sentinels"], host["db"], host["password"]) == (
        "tokens",
        list(sentinels),
        3,
        "pw",
    )
    assert watched.configured
    assert not RedisTarget().configured
    for bad in ("host", "host:port", ":1"):
        with pytest.raises(ValueError, match="host:port"):
            parse_sentinels(bad)


def test_sentinels_without_a_master_name_refuse_to_start(tmp_path):
    env = servers.base_env(tmp_path, REDIS_SENTINELS="127.0.0.1:26379")
    out = manage_check(env)
    assert out.returncode != 0
    assert "REDIS_SENTINELS needs REDIS_SENTINEL_MASTER" in out.stderr


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


@pytest.mark.parametrize(
    ("hosts", "origins", "audience", "expected"),
    [
        (["*"], [], "", {"challenges.E009"}),
        ([".example.com"], [], "", {"challenges.E009"}),
        (["tokens.example.com"], ["*"], "", {"challenges.E009", "challenges.W001"}),
        (["*"], ["*"], "https://app.example", {"challenges.W001"}),
        (["*"], [], "https://app.example", set()),
        (["tokens.example.com"], ["https://app.example"], "", set()),
    ],
)
def test_wildcard_hosts_or_origins_need_a_fixed_audience(settings, hosts, origins, audience, expected):
    settings.DEBUG = True
    settings.ALLOWED_HOSTS, settings.ALLOWED_ORIGINS, settings.TOKEN_AUDIENCE = hosts, origins, audience
    assert errors_ids(settings) == expected
    levels = {e.id: e.level for e in run_checks() if e.id in expected}
    assert all((levels[i] >= 40) is i.startswith("challenges.E") for i in expected)


@pytest.mark.parametrize("ttl", [0, -5])
def test_a_token_ttl_that_is_not_positive_is_an_error(settings, ttl):
    settings.DEBUG = True
    settings.TOKEN_TTL = ttl
    assert errors_ids(settings) == {"challenges.E010"}


def test_a_relay_in_production_needs_the_verification_key(settings):
    settings.DEBUG = False
    settings.SECRET_KEY = "a-long-random-test-secret-" + "x" * 30
    settings.TOKEN_UPSTREAM = "grpcs://hub.example.com:443"
    settings.AUTHORITY_PRIVATE_KEY = ""
    assert errors_ids(settings) == {"challenges.E011"}
    settings.UPSTREAM_PUBLIC_KEY = "  "
    assert errors_ids(settings) == {"challenges.E011"}
    # The public key of the authority relayed to is enough: a relay mints nothing.
    settings.UPSTREAM_PUBLIC_KEY = str(PrivateKey.generate().public)
    assert errors_ids(settings) == set()
    settings.UPSTREAM_PUBLIC_KEY = ""
    settings.AUTHORITY_PRIVATE_KEY = str(PrivateKey.generate())
    assert errors_ids(settings) == set()


@pytest.mark.parametrize(
    ("argv", "header"),
    [
        (["/venv/bin/daphne", "--proxy-headers", "tokensite.asgi:application"], "X-Forwarded-For"),
        (["/venv/lib/python3/site-packages/daphne/__main__.py", "-e", "tcp:port=1", "--proxy-headers", "a:b"],
         "X-Forwarded-For"),
        (["/venv/bin/daphne", "--proxy-headers", "--proxy-headers-host", "X-Real-IP", "a:b"], "X-Real-IP"),
        (["/venv/bin/daphne", "--proxy-headers-host=X-Real-IP", "--proxy-headers", "a:b"], "X-Real-IP"),
        (["/venv/bin/daphne", "tokensite.asgi:application"], ""),
        (["/venv/bin/uvicorn", "--proxy-headers", "tokensite.asgi:application"], ""),
        (["manage.py", "runserver"], ""),
        ([], ""),
    ],
)  # fmt: skip
def test_daphne_proxy_headers_are_recognised_from_the_command_line(argv, header):
    assert daphne_forwarded_header(argv) == header


def test_daphne_proxy_headers_read_the_client_from_the_right(settings, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/venv/bin/daphne", "--proxy-headers", "tokensite.asgi:application"])
    settings.CLIENT_IP_HEADER = ""
    config = RuntimeConfig.from_settings()
    assert (config.clients.ip_header, config.implied_ip_header) == ("X-Forwarded-For", True)
    settings.CLIENT_IP_HEADER = "X-Real-IP"  # the operator's choice stands
    config = RuntimeConfig.from_settings()
    assert (config.clients.ip_header, config.implied_ip_header) == ("X-Real-IP", False)


def readme_production_env() -> dict[str, str]:
    """The production environment the README gives (its ``<...>`` placeholders are secrets)."""
    readme = (servers.ROOT / "README.md").read_text()
    block = readme.split("<!-- production-env -->", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    pairs = [line.split("=", 1) for line in block.splitlines() if line and not line.startswith("#")]
    return {name: value for name, value in pairs}


def test_the_readme_production_environment_passes_check_deploy_without_any_issue(tmp_path):
    env = readme_production_env()
    assert env["DEBUG"] == "false"
    placeholders = {name for name, value in env.items() if value.startswith("<")}
    assert placeholders == {"SECRET_KEY", "AUTHORITY_PRIVATE_KEY"}
    env.update(SECRET_KEY=secrets.token_urlsafe(50), AUTHORITY_PRIVATE_KEY=str(PrivateKey.generate()))
    env.update(PATH=os.environ["PATH"], VAR_DIR=str(tmp_path / "var"))
    env["DJANGO_SETTINGS_MODULE"] = "tokensite.settings"
    out = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=servers.ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "System check identified no issues" in out.stdout, out.stdout + out.stderr
    assert "WARNING" not in out.stderr, out.stderr


def security_settings(env: dict[str, str]) -> dict[str, object]:
    names = [
        "SECURE_SSL_REDIRECT", "SECURE_REDIRECT_EXEMPT", "SECURE_HSTS_SECONDS",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD", "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE", "X_FRAME_OPTIONS", "SECURE_REFERRER_POLICY", "SECURE_PROXY_SSL_HEADER",
    ]  # fmt: skip
    code = (
        "from django.conf import settings as s; import json;"
        f" print(json.dumps({{n: getattr(s, n) for n in {names}}}))"
    )
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", code],
        cwd=servers.ROOT, env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return dict(json.loads(out.stdout.splitlines()[-1]))  # after the shell's own line


def test_production_defaults_are_the_secure_ones(tmp_path):
    """With DEBUG=false and nothing else said: HTTPS redirects (but not the load balancer's
    plain-http health probe), HSTS for a year, secure cookies, no framing."""
    assert security_settings(servers.base_env(tmp_path, DEBUG="false")) == {
        "SECURE_SSL_REDIRECT": True, "SECURE_REDIRECT_EXEMPT": [r"^api/health$"],
        "SECURE_HSTS_SECONDS": 31536000, "SECURE_HSTS_INCLUDE_SUBDOMAINS": True, "SECURE_HSTS_PRELOAD": True,
        "SESSION_COOKIE_SECURE": True, "CSRF_COOKIE_SECURE": True, "X_FRAME_OPTIONS": "DENY",
        "SECURE_REFERRER_POLICY": "same-origin", "SECURE_PROXY_SSL_HEADER": None,
    }  # fmt: skip
    chosen = security_settings(
        servers.base_env(
            tmp_path, DEBUG="false", SECURE_SSL_REDIRECT="false", SECURE_HSTS_SECONDS="60",
            SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto",
        )
    )  # fmt: skip
    assert chosen["SECURE_SSL_REDIRECT"] is False
    assert chosen["SECURE_HSTS_SECONDS"] == 60
    assert chosen["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
