"""The HTTP endpoints other than the two-step (tests/test_http_flow.py): token
verification, the demo page and the client module's asset, through Django's ASGI client."""

from __future__ import annotations

import json

import pytest
from django.test import AsyncClient

from challenges.identity import PrivateKey
from challenges.tokens import mint_token
from tests.asgiclient import METHOD_NOT_ALLOWED

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def client() -> AsyncClient:
    return AsyncClient()


async def verify(client: AsyncClient, body: bytes | str) -> tuple[int, dict]:
    response = await client.post("/api/token/verify", data=body, content_type="application/json")
    return response.status_code, json.loads(response.content)


async def test_verify_says_active_with_the_claims_of_our_token(client, authority_signer, user_key):
    token = mint_token(signer=authority_signer, subject=user_key.public, ttl=60).token
    status, body = await verify(client, json.dumps({"token": token}))
    assert (status, body["active"], body["claims"]["sub"]) == (200, True, str(user_key.public))


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (
            lambda signer, user: mint_token(signer=PrivateKey.generate(), subject=user, ttl=60).token,
            "invalid_token",
        ),
        (lambda signer, user: mint_token(signer=signer, subject=user, ttl=-120).token, "token_expired"),
        (lambda signer, user: "not.a.token", "invalid_token"),
    ],
)
async def test_verify_says_inactive_with_the_reason(client, authority_signer, user_key, make, code):
    status, body = await verify(client, json.dumps({"token": make(authority_signer, user_key.public)}))
    assert (status, body["active"], body["code"]) == (200, False, code)
    assert "claims" not in body


@pytest.mark.parametrize(
    ("body", "status"),
    [("nope", 400), ("[]", 400), ('{"token": 5}', 400), ("[" * 5000, 400), ('{"token":' + "[" * 5000, 400)],
)
async def test_verify_refuses_a_body_it_cannot_use(client, body, status):
    got_status, got = await verify(client, body)
    assert (got_status, got["active"], got["code"]) == (status, False, "invalid_request")


async def test_verify_refuses_a_body_over_16_kib(client):
    """The answer the HTTP guard gives in front of a server (tests/test_httpguard.py)."""
    status, got = await verify(client, "x" * 20_000)
    assert (status, got["type"], got["code"]) == (413, "error", "frame_too_large")


async def test_verify_without_a_verification_key_is_a_clear_503(client, settings):
    """A relay (grpc upstream) in production without AUTHORITY_PRIVATE_KEY has no key to check
    tokens against: a 503 that says so, not a 500 traceback."""
    settings.DEBUG = False
    settings.AUTHORITY_PRIVATE_KEY = ""
    settings.TOKEN_UPSTREAM = "grpc://127.0.0.1:9"
    status, got = await verify(client, json.dumps({"token": "a.b.c"}))
    assert (status, got["active"], got["code"]) == (503, False, "verification_unavailable")
    assert "AUTHORITY_PRIVATE_KEY" in got["error"]


async def test_the_demo_page_is_served_with_a_strict_policy(client):
    response = await client.get("/")
    assert response.status_code == 200
    assert "default-src 'self'" in response["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in response["Content-Security-Policy"]
    assert b"token-client.js" in response.content or b"demo.js" in response.content


async def test_the_client_module_may_be_imported_from_other_origins(client):
    module = await client.get("/static/challenges/token-client.js")
    module.close()  # a file response: its file is closed here
    assert module.status_code == 200
    assert module["Access-Control-Allow-Origin"] == "*"
    css = await client.get("/static/challenges/demo.css")
    css.close()
    assert css.status_code == 200
    assert "Access-Control-Allow-Origin" not in css
    assert (await client.get("/static/challenges/../settings.py")).status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("post", "/api/health", "GET, HEAD"),
        ("post", "/.well-known/jwks.json", "GET, HEAD"),
        ("get", "/api/token/verify", "POST"),
        ("put", "/api/token/introspect", "POST"),
    ],
)
async def test_a_method_an_api_endpoint_does_not_take_is_a_json_405(method, path, allow):
    """With the CSRF check on, as a browser meets it: it does not come first (a POST to a GET
    endpoint was a 403 HTML page), and every answer is JSON (a 405 was an empty HTML page)."""
    response = await getattr(AsyncClient(enforce_csrf_checks=True), method)(path)
    assert (response.status_code, response["Allow"]) == (405, allow)
    assert response["Content-Type"] == "application/json"
    assert json.loads(response.content) == METHOD_NOT_ALLOWED[allow.split(",")[0]]


async def test_a_get_endpoint_takes_head():
    assert (await AsyncClient().head("/api/health")).status_code == 200


@pytest.mark.parametrize("path", ["/", "/static/challenges/token-client.js"])
async def test_the_pages_take_head_and_answer_other_methods_405(path):
    """HEAD works wherever GET does (it was 405); PUT, DELETE, PATCH get 405 with Allow, not the
    CSRF check's 403 page first."""
    client = AsyncClient(enforce_csrf_checks=True)
    head = await client.head(path)
    head.close()  # a file's response holds the file open until closed
    assert head.status_code == 200
    for method in ("put", "delete", "patch", "post"):
        response = await getattr(client, method)(path)
        assert (response.status_code, response["Allow"]) == (405, "GET, HEAD"), method
