"""TLS files: ``runauthority``'s certificate and key, and the relay's CA bundle.

Each is checked before use (the system checks and the command say what is
wrong with it) and read only where it is used. A problem names the setting
and the path, never the file's contents. Standard library only: no grpc.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

CERT_SETTING = "AUTHORITY_TLS_CERT"
KEY_SETTING = "AUTHORITY_TLS_KEY"
CA_SETTING = "TOKEN_UPSTREAM_CA"


@dataclass(frozen=True, slots=True)
class ServerTls:
    """A certificate chain and its private key, both PEM (the key is secret: no repr)."""

    cert_chain: bytes
    private_key: bytes

    def __repr__(self) -> str:
        return "ServerTls(<certificate chain>, <private key>)"


def _readable(setting: str, path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        return f"{setting} ({path}) cannot be read: {exc.strerror or type(exc).__name__}"
    return None


def server_tls_problem(cert: str, key: str) -> str | None:
    """What is wrong with a certificate/key pair of paths, or None (both empty is fine:
    plaintext)."""
    if bool(cert) != bool(key):
        missing, given = (KEY_SETTING, CERT_SETTING) if cert else (CERT_SETTING, KEY_SETTING)
        return f"{given} is set but {missing} is not: TLS needs both (or neither, for plaintext)"
    if not cert:
        return None
    problem = _readable(CERT_SETTING, cert) or _readable(KEY_SETTING, key)
    if problem:
        return problem
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A callable password: an encrypted key fails here instead of prompting on a TTY.
        context.load_cert_chain(cert, key, password=lambda: b"")
    except (ssl.SSLError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        return (
            f"{CERT_SETTING} ({cert}) and {KEY_SETTING} ({key}) are not a PEM certificate chain and"
            f" its unencrypted private key ({reason})"
        )
    return None


def load_server_tls(cert: str, key: str) -> ServerTls | None:
    """The pair read from its paths (None when both are empty); :class:`ValueError` says
    what is wrong."""
    problem = server_tls_problem(cert, key)
    if problem:
        raise ValueError(problem)
    if not cert:
        return None
    return ServerTls(cert_chain=Path(cert).read_bytes(), private_key=Path(key).read_bytes())


def ca_problem(path: str) -> str | None:
    """What is wrong with a CA bundle path, or None (empty: the system roots)."""
    if not path:
        return None
    problem = _readable(CA_SETTING, path)
    if problem:
        return problem
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        return f"{CA_SETTING} ({path}) holds no PEM certificate ({reason})"
    return None


def load_ca(path: str) -> bytes | None:
    """The CA bundle's bytes (None when ``path`` is empty); :class:`ValueError` says what is
    wrong."""
    problem = ca_problem(path)
    if problem:
        raise ValueError(problem)
    return Path(path).read_bytes() if path else None
