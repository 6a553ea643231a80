"""System checks: a missing or malformed secret or file, or a setting that would make the
service unsafe or useless, is an error (``manage.py check``), not a crash or a hole at first
request."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, register
from django.core.checks import Warning as CheckWarning

from .access import parse_networks
from .apikeys import api_key_entries, api_keys_source, decode_secret, is_api_key, parse_api_keys
from .clients import wildcard_hosts
from .errors import IdentityError
from .identity import parse_private_key
from .keys import verification_key
from .upstream import relays


@register()
def check_secrets(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    errors: list[Error] = []
    if not settings.DEBUG:
        if settings.SECRET_KEY.startswith("insecure-"):
            errors.append(
                Error(
                    "SECRET_KEY is not set", hint="Set SECRET_KEY in the environment.", id="challenges.E001"
                )
            )
        if not settings.AUTHORITY_PRIVATE_KEY and settings.TOKEN_UPSTREAM == "local":
            errors.append(
                Error(
                    "AUTHORITY_PRIVATE_KEY is not set",
                    hint="Generate one with 'manage.py keygen' and set it in the environment.",
                    id="challenges.E002",
                )
            )
    if settings.AUTHORITY_PRIVATE_KEY:
        try:
            parse_private_key(settings.AUTHORITY_PRIVATE_KEY)
        except IdentityError as exc:  # the message never quotes the key
            errors.append(Error(f"AUTHORITY_PRIVATE_KEY is invalid: {exc.message}", id="challenges.E003"))
    upstream = settings.TOKEN_UPSTREAM
    if upstream != "local" and not relays(upstream):
        errors.append(
            Error(
                "TOKEN_UPSTREAM must be 'local', 'grpc://host:port' or 'grpcs://host:port',"
                f" not {upstream!r}",
                id="challenges.E004",
            )
        )
    errors += _check_verification_keys()
    errors += _check_api_keys()
    errors += _check_tls()
    if settings.CHALLENGE_TIMEOUT <= 0 or settings.CHALLENGE_TIMEOUT > 600:
        errors.append(Error("CHALLENGE_TIMEOUT must be between 0 and 600 seconds", id="challenges.E005"))
    return errors


@register()
def check_tokens(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Settings under which tokens or their challenges would be wrong."""
    messages: list[CheckMessage] = []
    any_origin = "*" in settings.ALLOWED_ORIGINS
    if (wildcard_hosts(settings.ALLOWED_HOSTS) or any_origin) and not settings.TOKEN_AUDIENCE:
        messages.append(
            Error(
                "ALLOWED_HOSTS or ALLOWED_ORIGINS has a wildcard and TOKEN_AUDIENCE is not set: the Host"
                " header, which the client writes, would choose the audience challenges name",
                hint="Set TOKEN_AUDIENCE to the origin tokens are for, or list the hosts and origins.",
                id="challenges.E009",
            )
        )
    if any_origin:
        messages.append(
            CheckWarning(
                "ALLOWED_ORIGINS=* lets any web page get tokens from here for its visitors' keys",
                hint="List the origins of your apps instead.",
                id="challenges.W001",
            )
        )
    if settings.TOKEN_TTL <= 0:
        messages.append(
            Error(
                "TOKEN_TTL must be a positive number of seconds: tokens would be born expired",
                id="challenges.E010",
            )
        )
    relay = relays(settings.TOKEN_UPSTREAM)
    keyless = not settings.AUTHORITY_PRIVATE_KEY and not settings.UPSTREAM_PUBLIC_KEY.strip()
    if relay and not settings.DEBUG and keyless:
        messages.append(
            Error(
                "neither UPSTREAM_PUBLIC_KEY nor AUTHORITY_PRIVATE_KEY is set: POST /api/token/verify"
                " has no key to check the relayed tokens against",
                hint="Set UPSTREAM_PUBLIC_KEY to the public key of the authority that signs them"
                " (runauthority's), or AUTHORITY_PRIVATE_KEY to its private key.",
                id="challenges.E011",
            )
        )
    messages += _weak_api_keys()
    return messages


@register()
def check_metrics(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Who may read /metrics: a malformed address is an error; no one at all, a warning."""
    try:
        parse_networks(settings.METRICS_ALLOWED_IPS)
    except ValueError as exc:
        return [Error(f"METRICS_ALLOWED_IPS is invalid: {exc}", id="challenges.E015")]
    if not settings.DEBUG and not settings.METRICS_ALLOWED_IPS and not settings.METRICS_TOKEN:
        return [
            CheckWarning(
                "/metrics refuses everyone: neither METRICS_ALLOWED_IPS nor METRICS_TOKEN is set",
                hint="Set METRICS_ALLOWED_IPS to your Prometheus server's address, or METRICS_TOKEN.",
                id="challenges.W002",
            )
        ]
    return []


def _check_verification_keys() -> list[Error]:
    """The public keys tokens are also checked against (the key set, verification): a
    malformed one would fail every request that needs them. The value is never quoted (a
    private key pasted in by mistake is a secret)."""
    errors: list[Error] = []
    named = [("UPSTREAM_PUBLIC_KEY", settings.UPSTREAM_PUBLIC_KEY)] + [
        (f"AUTHORITY_PREVIOUS_KEYS entry {n}", text)
        for n, text in enumerate(settings.AUTHORITY_PREVIOUS_KEYS, start=1)
    ]
    for name, text in named:
        try:
            verification_key(text)
        except IdentityError as exc:
            errors.append(Error(f"{name} is not a public key string: {exc.message}", id="challenges.E016"))
    return errors


#: A secret shorter than this can be searched for offline from one observed signature
#: (HMAC-SHA256 of a date); a Hub secret is 24 random bytes.
MIN_SECRET_BYTES = 16
#: The shortest key a caller may pass with alone (no secret), a bearer credential: the 26
#: characters of 128 random bits in base32, as a Hub key carries after its 'b'.
MIN_BARE_KEY = 26


def _weak_api_keys() -> list[CheckMessage]:
    """Keys the ``GetToken`` endpoints accept that a caller could guess: a secret of fewer
    than :data:`MIN_SECRET_BYTES`, or a key that needs no secret and has fewer than
    :data:`MIN_BARE_KEY` characters. Named by their position in the setting, never quoted;
    only the length of a random string is checked, not how it was made."""
    try:
        source, text = api_keys_source(
            settings.AUTHORITY_API_KEYS,
            user_api_key=settings.USER_API_KEY,
            user_api_secret=settings.USER_API_SECRET,
        )
        entries = api_key_entries(text)
    except ValueError:
        return []  # malformed: an error of its own (challenges.E006, E007, E017)
    weak = []
    for position, key, secret in entries:
        size = len(decode_secret(secret)) if secret else 0
        if secret and size < MIN_SECRET_BYTES:
            weak.append(f"entry {position}'s secret is {size} bytes")
        elif not secret and len(key) < MIN_BARE_KEY:
            weak.append(f"entry {position} needs no secret and has only {len(key)} characters")
    if not weak:
        return []
    return [
        CheckWarning(
            f"{source} has keys a caller could guess: {'; '.join(weak)}",
            hint="Make each key with 'python manage.py keygen --api-key' (a 16-byte key, a 24-byte secret).",
            id="challenges.W003",
        )
    ]


def _check_api_keys() -> list[Error]:
    """Malformed API secrets or key lists are named, never quoted."""
    errors: list[Error] = []
    if settings.USER_API_SECRET:
        try:
            decode_secret(settings.USER_API_SECRET)
        except ValueError as exc:
            errors.append(Error(f"USER_API_SECRET is invalid: {exc}", id="challenges.E006"))
    if settings.USER_API_KEY and not is_api_key(settings.USER_API_KEY):
        errors.append(
            Error(
                "USER_API_KEY is invalid: a key is 1 to 128 of A-Z, a-z, 0-9, '_' and '-'",
                id="challenges.E017",
            )
        )
    try:
        parse_api_keys(settings.AUTHORITY_API_KEYS)
    except ValueError as exc:
        errors.append(Error(f"AUTHORITY_API_KEYS is invalid: {exc}", id="challenges.E007"))
    upstream = settings.TOKEN_UPSTREAM
    if relays(upstream):
        from .rpc.channel import parse_target

        try:
            parse_target(upstream)
        except ValueError as exc:
            errors.append(Error(str(exc), id="challenges.E004"))
    return errors


def _check_tls() -> list[Error]:
    """runauthority's certificate and key (both or neither, readable, a matching PEM pair), the
    relay's CA bundle, and the stream cap. Files are named by path, never quoted."""
    from .rpc.tls import ca_problem, server_tls_problem

    errors: list[Error] = []
    problem = server_tls_problem(settings.AUTHORITY_TLS_CERT, settings.AUTHORITY_TLS_KEY)
    if problem:
        errors.append(Error(problem, id="challenges.E012"))
    problem = ca_problem(settings.TOKEN_UPSTREAM_CA)
    if problem:
        errors.append(Error(problem, id="challenges.E013"))
    if settings.AUTHORITY_MAX_STREAMS < 1:
        errors.append(Error("AUTHORITY_MAX_STREAMS must be at least 1", id="challenges.E014"))
    return errors
