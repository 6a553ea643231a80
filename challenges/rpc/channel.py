"""How the relay reaches its upstream: ``TOKEN_UPSTREAM`` read as a gRPC target, and the
one channel it is reached over (reconnect and keepalive options, the CAs a ``grpcs``
upstream is verified against).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import grpc.aio

_CHANNEL_OPTIONS = [
    # Come back quickly once a restarted authority listens again.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 5000),
    # Notice a Hub that vanished without closing its connection.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_receive_message_length", 64 * 1024),
]


def parse_target(spec: str) -> tuple[str, bool]:
    """``grpc://host:port`` or ``grpcs://host:port`` to ``(target, secure)``.

    The port defaults to 3006 (a self-hosted hub) for ``grpc`` and 443 for
    ``grpcs``. Raises :class:`ValueError`.
    """
    parts = urlsplit(spec)
    if parts.scheme not in ("grpc", "grpcs") or not parts.hostname:
        raise ValueError("TOKEN_UPSTREAM must look like grpc://host:port or grpcs://host:port")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError("TOKEN_UPSTREAM takes only a host and a port")
    try:
        port = parts.port or (443 if parts.scheme == "grpcs" else 3006)
    except ValueError as exc:
        raise ValueError("TOKEN_UPSTREAM has a malformed port") from exc
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}", parts.scheme == "grpcs"


def open_channel(target: str, *, secure: bool, root_certificates: bytes | None = None) -> grpc.aio.Channel:
    """A channel to ``target``: plaintext, or TLS verified against ``root_certificates``
    (PEM CAs), else the system's bundle."""
    if not secure:
        return grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
    credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates or _system_roots())
    return grpc.aio.secure_channel(target, credentials, options=_CHANNEL_OPTIONS)


def _system_roots() -> bytes | None:
    """The system's CA bundle (as the Hub's Go clients used), else grpc's own."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate).read_bytes()
    return None
