"""The ``grpc`` upstream's pure parts, its settings, and TLS (``grpcs://``)."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.core.exceptions import ImproperlyConfigured

from challenges import apikeys, tokens
from challenges.audit import AuditWriter
from challenges.config import RuntimeConfig
from challenges.rpc.channel import parse_target
from challenges.rpc.client import GrpcUpstream
from challenges.rpc.server import AuthorityConfig, AuthorityServicer
from challenges.rpc.status import upstream_error
from challenges.rpc.threads_pb2_grpc import add_APIServicer_to_server
from challenges.runtime import Runtime
from challenges.tokens import describe_token
from tests.rpcutil import API_KEY, API_SECRET

S = grpc.StatusCode


@pytest.mark.parametrize(
    ("code", "phase", "expected"),
    [
        (S.UNAVAILABLE, "key", "upstream_unavailable"),
        (S.UNAVAILABLE, "signature", "upstream_unavailable"),
        (S.DEADLINE_EXCEEDED, "signature", "upstream_deadline"),
        (S.UNKNOWN, "signature", "upstream_bad_signature"),
        (S.UNKNOWN, "key", "upstream_rejected_key"),
        (S.INVALID_ARGUMENT, "key", "upstream_rejected_key"),
        (S.INVALID_ARGUMENT, "signature", "upstream_error"),
        (S.UNAUTHENTICATED, "key", "upstream_api_key"),
        (S.NOT_FOUND, "key", "upstream_api_key"),
        (S.PERMISSION_DENIED, "key", "upstream_api_key"),
        (S.INTERNAL, "key", "upstream_error"),
        (S.RESOURCE_EXHAUSTED, "signature", "upstream_error"),
        (None, "reply", "upstream_error"),
    ],
)
def test_status_mapping(code, phase, expected):
    error = upstream_error(code, phase=phase)
    assert error.code == expected
    assert error.upstream_status == (code.name if code else "UNKNOWN")


@pytest.mark.parametrize(
    ("spec", "target", "secure"),
    [
        ("grpc://127.0.0.1:3006", "127.0.0.1:3006", False),
        ("grpc://hub.local", "hub.local:3006", False),
        ("grpcs://hub.example.com", "hub.example.com:443", True),
        ("grpcs://hub.example.com:8443/", "hub.example.com:8443", True),
        ("grpc://[::1]:3006", "[::1]:3006", False),
    ],
)
def test_parse_target(spec, target, secure):
    assert parse_target(spec) == (target, secure)


@pytest.mark.parametrize(
    "spec", ["grpc://", "http://x:1", "grpc://x:port", "grpc://x:1/path", "grpc://u:p@x:1", "grpc://x:1?a=b"]
)
def test_parse_target_refuses(spec):
    with pytest.raises(ValueError, match="TOKEN_UPSTREAM"):
        parse_target(spec)


def test_from_settings_builds_the_relay(settings):
    settings.TOKEN_UPSTREAM = "grpcs://hub.example.com"
    settings.USER_API_KEY, settings.USER_API_SECRET = API_KEY, API_SECRET
    relay = Runtime(RuntimeConfig.from_settings(), layer=None).upstream
    assert isinstance(relay, GrpcUpstream)
    assert (relay.name, relay.target, relay.secure) == (
        "grpcs://hub.example.com:443",
        "hub.example.com:443",
        True,
    )
    assert API_SECRET not in repr(relay)
    settings.TOKEN_UPSTREAM = "grpc://x:nope"
    with pytest.raises(ImproperlyConfigured):
        Runtime(RuntimeConfig.from_settings(), layer=None)


def test_metadata_signs_each_call_and_never_sends_the_secret():
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    relay = GrpcUpstream(target="x:1", secure=False, api_key=API_KEY, api_secret=API_SECRET)
    metadata = dict(relay.metadata(now=now))
    assert set(metadata) == {"x-textile-api-key", "x-textile-api-sig-msg", "x-textile-api-sig"}
    assert metadata["x-textile-api-key"] == API_KEY
    assert metadata["x-textile-api-sig-msg"] == "2030-01-01T00:05:00.000Z"
    apikeys.verify_signature(
        secret=API_SECRET, msg=metadata["x-textile-api-sig-msg"], sig=metadata["x-textile-api-sig"], now=now
    )
    assert API_SECRET not in json.dumps(metadata)
    assert "host" not in metadata
    assert GrpcUpstream(target="x:1", secure=False, api_key=API_KEY).metadata() == [
        ("x-textile-api-key", API_KEY)
    ]
    assert GrpcUpstream(target="x:1", secure=False).metadata() == []


def _jwt(claims: dict) -> str:
    def seg(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{seg({'alg': 'Ed25519', 'typ': 'JWT'})}.{seg(claims)}.c2ln"


def test_describe_token_of_this_authority(authority_signer, user_key):
    minted = tokens.mint_token(signer=authority_signer, subject=user_key.public, ttl=60, audience="a")
    described = describe_token(minted.token, subject=user_key.public)
    assert (described.jti, described.sha256, described.issuer, described.audience) == (
        minted.jti,
        minted.sha256,
        minted.issuer,
        "a",
    )
    assert described.issued_at == minted.issued_at
    assert described.expires_at == minted.expires_at


def test_describe_a_go_threads_token_without_jti_or_exp(user_key):
    token = _jwt({"iat": 1600000000, "iss": "bbaareiissuer", "sub": str(user_key.public)})
    described = describe_token(token, subject=user_key.public)
    assert described.jti == tokens.token_sha256(token)[:32]
    assert described.expires_at is None
    assert described.issued_at == dt.datetime.fromtimestamp(1600000000, dt.UTC)
    opaque = describe_token("not-a-jwt", subject=user_key.public)
    assert opaque.jti == tokens.token_sha256("not-a-jwt")[:32]


def _self_signed(tmp: Path) -> tuple[bytes, bytes, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    bundle = tmp / "ca.pem"
    bundle.write_bytes(cert_pem)
    return key_pem, cert_pem, bundle


@pytest.mark.django_db(transaction=True)
async def test_grpcs_verifies_the_server_against_the_system_roots(
    tmp_path, monkeypatch, user_key, authority_signer
):
    key_pem, cert_pem, bundle = _self_signed(tmp_path)
    signer = authority_signer
    audit = AuditWriter()
    servicer = AuthorityServicer(config=AuthorityConfig(signer=signer, ttl=60), audit=audit)
    server = grpc.aio.server()
    add_APIServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key_pem, cert_pem)]))
    await server.start()
    try:
        # Not trusted yet: the system bundle does not hold our certificate.
        relay = GrpcUpstream(target=f"127.0.0.1:{port}", secure=True)
        with pytest.raises(Exception) as refused:
            await relay.begin(key=user_key.public, audience="", timeout=2)
        assert getattr(refused.value, "code", "") == "upstream_unavailable"
        await relay.close()
        # Trusted through the system's bundle (SSL_CERT_FILE stands in for it).
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
        relay = GrpcUpstream(target=f"127.0.0.1:{port}", secure=True)
        pending = await relay.begin(key=user_key.public, audience="", timeout=5)
        token = await pending.finish(user_key.sign(pending.challenge.value))
        assert tokens.verify_token(token.token, issuer=signer.public)["sub"] == str(user_key.public)
        assert relay.open_calls == 0
        await relay.close()
    finally:
        await server.stop(None)
        await audit.close()  # its thread's database connection (left to the collector, it warns)
