"""A real ``manage.py runauthority`` for the tests, and a hand-made GetToken client.

:func:`authority` starts the command as a subprocess on ``127.0.0.1:0`` with
its own SQLite audit and reads the bound port from its ``listening on`` line.

The hand-made client does not use the generated stubs: it frames requests per
docs/PROTOCOL.md "Vectors" (``0a <len> key``, ``12 40 signature``) over grpc's generic
``stream_stream`` with no serializers, and parses replies byte by byte.

:func:`make_pki` writes a private CA and a server certificate it signed (SAN
``IP:127.0.0.1``), made with ``cryptography`` for each test run.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import ipaddress
import re
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests import servers

METHOD = "/threads.pb.API/GetToken"
TWIN = "/threads.net.pb.API/GetToken"
#: A fixed Hub-format API key and the vectors' secret (bytes 00..17).
API_KEY = "bqgtbbn4yk5lmpqlgxcfbhq7gdq"
API_SECRET = "baaaqeayeaudaocajbifqydiob4ibceqtcqkrmfy"
OPEN_KEY = "bopenkeyneedsnosignature"


@dataclass
class Authority(servers.Server):
    """A ``manage.py runauthority`` process (its log, audit and stop as a server's)."""

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        return super().stop(sig, timeout)


def start_authority(
    tmp: Path,
    *args: str,
    env: dict[str, str] | None = None,
    migrate: bool = True,
    address: str = "127.0.0.1:0",
) -> Authority:
    tmp.mkdir(parents=True, exist_ok=True)
    env = env or servers.base_env(tmp)
    if migrate:
        servers.migrate(env)
    process, log_path = servers.launch(
        [sys.executable, "manage.py", "runauthority", "--address", address, *args],
        env=env,
        log_path=tmp / f"authority-{time.monotonic_ns()}.log",
    )

    def listening() -> int | None:
        match = re.search(r"^listening on 127\.0\.0\.1:(\d+)$", log_path.read_text(), re.MULTILINE)
        return int(match.group(1)) if match else None

    port = servers.wait_ready(process, log_path, listening, timeout=30, what="runauthority")
    return Authority(process=process, port=port, env=env, log_path=log_path)


@contextlib.contextmanager
def authority(tmp: Path, *args: str, **kwargs: Any) -> Iterator[Authority]:
    server = start_authority(tmp, *args, **kwargs)
    try:
        yield server
    finally:
        server.stop()


# -- the hand-made client ----------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def key_frame(key: str) -> bytes:
    data = key.encode()
    return b"\x0a" + varint(len(data)) + data


def signature_frame(sig: bytes) -> bytes:
    return b"\x12" + varint(len(sig)) + sig


def parse_reply(data: bytes) -> tuple[str, bytes]:
    """One GetTokenReply: ``("challenge", bytes)`` or ``("token", bytes)``."""
    tag, pos, length, shift = data[0], 1, 0, 0
    while True:
        byte = data[pos]
        length |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            break
    assert len(data) == pos + length, data
    return {0x0A: "challenge", 0x12: "token"}[tag], data[pos:]


def api_sig(secret: str, msg: str) -> str:
    body = secret[1:].upper()
    raw = base64.b32decode(body + "=" * (-len(body) % 8))
    mac = hmac.new(raw, msg.encode(), hashlib.sha256).digest()
    return "b" + base64.b32encode(mac).decode().lower().rstrip("=")


def api_metadata(
    key: str = API_KEY, secret: str | None = API_SECRET, ahead: timedelta = timedelta(minutes=5)
) -> list[tuple[str, str]]:
    entries = [("x-textile-api-key", key)]
    if secret:
        msg = (datetime.now(UTC) + ahead).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        entries += [("x-textile-api-sig-msg", msg), ("x-textile-api-sig", api_sig(secret, msg))]
    return entries


class RawCall:
    """One GetToken stream of raw bytes."""

    def __init__(self, channel: grpc.aio.Channel, metadata: list[tuple[str, str]], method: str = METHOD):
        multi = channel.stream_stream(method, request_serializer=None, response_deserializer=None)
        self.call: Any = multi(metadata=metadata, timeout=20)

    async def send(self, frame: bytes) -> None:
        await self.call.write(frame)

    async def reply(self) -> tuple[str, bytes] | None:
        data = await self.call.read()
        return None if data is grpc.aio.EOF else parse_reply(data)

    async def reply_or_error(self) -> tuple[str, bytes] | None:
        """The next reply, or None when the stream ended (with any status)."""
        try:
            return await self.reply()
        except grpc.aio.AioRpcError:
            return None

    async def status(self) -> tuple[grpc.StatusCode, str]:
        return await self.call.code(), await self.call.details()


# -- certificates --------------------------------------------------------------


@dataclass
class Pki:
    """A private CA and a server certificate it signed, as PEM files in a folder."""

    ca: Path
    cert: Path
    key: Path

    @property
    def ca_pem(self) -> bytes:
        return self.ca.read_bytes()

    @property
    def key_pem(self) -> bytes:
        return self.key.read_bytes()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_pki(folder: Path, *, common_name: str = "tokens test CA") -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("runauthority"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(ca=folder / "ca.pem", cert=folder / "server.pem", key=folder / "server.key")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pki.key.chmod(0o600)
    return pki
