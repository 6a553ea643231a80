"""The HTTP two-step flow: same validation, errors, audit and upstream as the WebSocket."""

from __future__ import annotations

import base64
import json

import pytest

from challenges import authority, runtime
from challenges.identity import PrivateKey, encode_buffer
from challenges.tokens import verify_token
from tests.asgiclient import HOST, METHOD_NOT_ALLOWED, AsgiClient
from tests.wsutil import attempts, challenge, connect, receive, tokens

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def client() -> AsgiClient:
    return AsgiClient()


async def post(client: AsgiClient, path: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    response = await client.post(
        path, data=data, content_type="application/json", headers={"user-agent": "pytest-http"}
    )
    return response.status_code, json.loads(response.content)


async def step1(client, key) -> dict:
    status, body = await post(client, "/api/token/challenge", {"pub": str(key.public)})
    assert status == 200, body
    assert body["type"] == "challenge"
    return body


async def test_two_steps_give_a_verifiable_token_and_one_audit_row(client, user_key, authority_signer):
    ch = await step1(client, user_key)
    text = authority.check_challenge_text(
        bytes(ch["value"]["data"]), audience=f"http://{HOST}", key=user_key.public
    )
    assert text.key == str(user_key.public)
    sig = base64.b64encode(user_key.sign(bytes(ch["value"]["data"]))).decode()
    status, body = await post(client, "/api/token", {"id": ch["id"], "sig": sig})
    assert status == 200
    assert body["type"] == "token"
    claims = verify_token(body["value"], issuer=authority_signer.public)
    assert claims["sub"] == str(user_key.public)
    [row] = await attempts()
    assert (row.outcome, row.transport, row.challenge_id, row.user_agent) == (
        "success",
        "http",
        ch["id"],
        "pytest-http",
    )
    [tok] = await tokens()
    assert tok.jti == claims["jti"]


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/api/token/challenge", "nope", 400, "invalid_json"),
        ("/api/token/challenge", "[]", 400, "invalid_frame"),
        ("/api/token/challenge", {}, 400, "missing_pub"),
        ("/api/token/challenge", {"pub": "bbaa"}, 400, "invalid_pub"),
        ("/api/token/challenge", "x" * 70_000, 413, "frame_too_large"),
        ("/api/token", {"id": "A" * 32}, 400, "missing_sig"),
        ("/api/token", {"id": "A" * 32, "sig": "%%%"}, 400, "invalid_sig_encoding"),
        ("/api/token", {"id": "A" * 32, "sig": [1, 2]}, 400, "invalid_sig_length"),
        ("/api/token", {"sig": [0] * 64}, 404, "unknown_challenge"),
        ("/api/token", {"sig": [1, 2]}, 404, "unknown_challenge"),  # no id: nothing to answer
        ("/api/token", {"id": "A" * 32, "sig": [0] * 64}, 404, "unknown_challenge"),
    ],
)
async def test_errors_have_codes_statuses_and_audit_rows(client, path, body, status, code):
    got_status, got = await post(client, path, body)
    assert (got_status, got["type"], got["code"]) == (status, "error", code)
    assert got["value"]
    rows = await attempts()
    assert [r.outcome for r in rows] == [code]
    assert rows[0].transport == "http"


async def test_bad_signature_is_401_and_spends_the_challenge(client, user_key):
    ch = await step1(client, user_key)
    forged = encode_buffer(PrivateKey.generate().sign(bytes(ch["value"]["data"])))
    assert (await post(client, "/api/token", {"id": ch["id"], "sig": forged}))[0] == 401
    good = encode_buffer(user_key.sign(bytes(ch["value"]["data"])))
    status, body = await post(client, "/api/token", {"id": ch["id"], "sig": good})
    assert (status, body["code"]) == (404, "unknown_challenge")
    assert [r.outcome for r in await attempts()] == ["bad_signature", "unknown_challenge"]


async def test_expired_challenge(client, user_key, settings):
    import asyncio

    settings.CHALLENGE_TIMEOUT = 0.2
    ch = await step1(client, user_key)
    await asyncio.sleep(0.5)
    good = encode_buffer(user_key.sign(bytes(ch["value"]["data"])))
    status, body = await post(client, "/api/token", {"id": ch["id"], "sig": good})
    assert (status, body["code"]) == (404, "unknown_challenge")
    assert [r.outcome for r in await attempts()] == ["challenge_timeout", "unknown_challenge"]


async def test_too_many_pending_is_429(client, user_key, settings):
    settings.MAX_PENDING_PER_KEY = 1
    await step1(client, user_key)
    status, body = await post(client, "/api/token/challenge", {"pub": str(user_key.public)})
    assert (status, body["code"]) == (429, "too_many_pending")


async def test_foreign_origin_is_403(client, user_key):
    response = await client.post(
        "/api/token/challenge", data={"pub": str(user_key.public)}, content_type="application/json",
        headers={"origin": "https://evil.example"},
    )  # fmt: skip
    assert response.status_code == 403
    assert json.loads(response.content)["code"] == "origin_not_allowed"


@pytest.mark.parametrize("path", ["/api/token", "/api/token/challenge"])
async def test_get_is_refused_with_a_json_405(client, path):
    response = await client.get(path)
    assert (response.status_code, response["allow"], response["content-type"]) == (
        405,
        "POST",
        "application/json",
    )
    assert response.json() == METHOD_NOT_ALLOWED["POST"]


async def test_websocket_challenge_answered_over_http_reaches_the_socket(client, user_key):
    """A challenge asked for on a socket, answered over HTTP: both get the token."""
    comm = await connect()
    ch = await challenge(comm, user_key)
    sig = encode_buffer(user_key.sign(bytes(ch["value"]["data"])))
    status, body = await post(client, "/api/token", {"id": ch["id"], "sig": sig})
    assert status == 200
    pushed = await receive(comm)
    assert pushed == {"type": "token", "value": body["value"]}
    assert len(await tokens()) == 1
    await comm.disconnect()


async def test_a_malformed_content_length_is_refused_not_a_500(client, user_key):
    response = await client.post(
        "/api/token/challenge", data=json.dumps({"pub": str(user_key.public)}),
        headers={"content-length": "twelve"},
    )  # fmt: skip
    assert (response.status_code, json.loads(response.content)["code"]) == (400, "invalid_request")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/token/challenge", '{"pub":' + "[" * 5000),
        ("/api/token/challenge", "[" * 5000),
        ("/api/token", '{"id": "' + "A" * 32 + '", "sig":' + "[" * 5000 + "]" * 5000 + "}"),
    ],
)
async def test_deeply_nested_json_is_a_400_not_a_500(client, path, body):
    status, got = await post(client, path, body)
    assert (status, got["code"]) == (400, "invalid_json")
    assert [r.outcome for r in await attempts()] == ["invalid_json"]


@pytest.fixture
def https_only(settings):
    """Production's https settings, behind a TLS proxy that says so in X-Forwarded-Proto."""
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_HSTS_PRELOAD = False
    return settings


@pytest.mark.parametrize("path", ["/api/token/challenge", "/api/token"])
async def test_plain_http_is_redirected_to_https_with_the_method_kept(client, user_key, https_only, path):
    """SECURE_SSL_REDIRECT covers the two-step as it does Django's pages (they were answered,
    token included, over plain http): 308, so the POST and its body go to the https URL."""
    response = await client.post(path + "?v=1", {"pub": str(user_key.public)})
    assert response.status_code == 308
    assert response["location"] == f"https://testserver{path}?v=1"
    assert response.content == b""
    assert await attempts() == []  # nothing was asked: no challenge, no row
    # Behind a TLS proxy that does not say so, a page's https Origin is not its http one:
    # redirected all the same (what is wrong is the transport), as Django's pages are.
    foreign = await client.post(path, {"pub": str(user_key.public)}, headers={"origin": "https://testserver"})
    assert foreign.status_code == 308
    https_only.SECURE_SSL_HOST = "tokens.example.com"
    await runtime.stop()  # the next request's runtime reads the settings again
    response = await client.post(path, {"pub": str(user_key.public)})
    assert response["location"] == f"https://tokens.example.com{path}"
    https_only.SECURE_REDIRECT_EXEMPT = [r"^api/token"]  # as Django's pages honour it
    await runtime.stop()
    assert (await client.post(path, {"pub": str(user_key.public)})).status_code != 308


async def test_https_answers_carry_hsts_and_a_foreign_host_is_not_redirected(client, user_key, https_only):
    proxied = {"x-forwarded-proto": "https"}
    response = await client.post("/api/token/challenge", {"pub": str(user_key.public)}, headers=proxied)
    assert response.status_code == 200
    assert response["strict-transport-security"] == "max-age=3600; includeSubDomains"
    # A Host outside ALLOWED_HOSTS is refused, never written into a redirect.
    response = await client.post(
        "/api/token/challenge", {"pub": str(user_key.public)}, headers={"host": "evil.example"}
    )
    assert response.status_code == 403
    assert response.json()["code"] == "invalid_host"
    assert "location" not in response.headers


@pytest.mark.parametrize(
    ("forwarded", "peer"),
    [
        ("fe80::1%eth0", ("10.0.0.2", 0)),  # a proxy passed a scoped address on
        (None, ("fe80::1%eth0", 0)),  # the peer itself, on a link-local address
    ],
)
async def test_a_scoped_ipv6_client_is_audited_without_its_zone(settings, user_key, forwarded, peer):
    """The zone id (``%eth0``) means something only on the host that saw it: PostgreSQL's
    inet column refuses it, which lost the attempts' rows (and answered a token's 500)."""
    settings.CLIENT_IP_HEADER = "X-Forwarded-For" if forwarded else ""
    client = AsgiClient(client=peer)
    headers = {"x-forwarded-for": forwarded} if forwarded else {}

    async def send(path: str, body: dict) -> tuple[int, dict]:
        response = await client.post(path, data=body, headers=headers)
        return response.status_code, response.json()

    status, got = await send("/api/token/challenge", {"pub": "bbaa"})
    assert (status, got["code"]) == (400, "invalid_pub")
    status, ch = await send("/api/token/challenge", {"pub": str(user_key.public)})
    assert status == 200, ch
    forged = encode_buffer(PrivateKey.generate().sign(bytes(ch["value"]["data"])))
    assert (await send("/api/token", {"id": ch["id"], "sig": forged}))[0] == 401
    status, ch = await send("/api/token/challenge", {"pub": str(user_key.public)})
    assert status == 200, ch
    status, got = await send(
        "/api/token", {"id": ch["id"], "sig": encode_buffer(user_key.sign(bytes(ch["value"]["data"])))}
    )
    assert (status, got["type"]) == (200, "token"), got
    rows = await attempts()
    assert [(r.outcome, r.client_ip) for r in rows] == [
        ("invalid_pub", "fe80::1"),
        ("bad_signature", "fe80::1"),
        ("success", "fe80::1"),
    ]
    [tok] = await tokens()
    assert tok.attempt_id == rows[-1].id


@pytest.mark.parametrize("path_has_root", [True, False], ids=["uvicorn", "daphne"])
async def test_below_a_root_path_the_guard_and_the_two_step_read_the_applications_path(
    client, user_key, path_has_root
):
    """Mounted at /tok: uvicorn's path includes the root path, daphne's does not. The two-step
    was answered only in daphne's form, and the probe's Host exemption likewise."""
    prefix = "/tok" if path_has_root else ""
    body = json.dumps({"pub": str(user_key.public)}).encode()
    response = await client.request(
        "POST", f"{prefix}/api/token/challenge", body, {"content-type": "application/json"}, root_path="/tok"
    )
    assert response.status_code == 200
    assert response.json()["type"] == "challenge"
    worker = {"host": "10.0.0.5:8000"}  # a probe at the worker's own address
    probe = await client.request("GET", f"{prefix}/api/health", headers=worker, root_path="/tok")
    assert probe.status_code == 200
