"""The Textile tutorial's architecture, end to end, with this service in the hosted Hub's place.

The browser: the project's module (``token-client.js``) in Debian's Chromium, on a page the
app serves. The app server: the tutorial's (``tests/node/app-server.mjs``), relaying with the
real ``@textile/hub`` client after its one-line change, ``Client.withKeyInfo(keyInfo,
<service>)``. The Hub: this service, its gRPC-Web endpoint under daphne. An app built on the
tutorial works again when this test passes.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

from tests import browser as helpers
from tests import servers
from tests.grpcwebutil import check_against_the_key_set
from tests.rpcutil import API_KEY, API_SECRET
from tests.test_hub_client import NODE_DIR, audited, node_ready

pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.timeout(120), pytest.mark.once]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Server]:
    node_ready()
    tmp = tmp_path_factory.mktemp("tutorial")
    env = servers.base_env(tmp, AUTHORITY_API_KEYS=f"{API_KEY}:{API_SECRET}")
    with servers.running(tmp, kind="daphne", env=env) as running:
        yield running
    assert "Traceback" not in running.log()


@contextmanager
def app_server(service: servers.Server, key: str, secret: str) -> Iterator[str]:
    """The tutorial's app server, pointed at ``service``; yields its URL."""
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "USER_API_KEY": key, "USER_API_SECRET": secret}
    with subprocess.Popen(
        ["node", "app-server.mjs", service.http],
        cwd=NODE_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as process:  # fmt: skip
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line, process.stderr.read() if process.stderr else "no output"
            yield f"http://127.0.0.1:{json.loads(line)['port']}"
        finally:
            process.terminate()
            process.wait(10)


def run_page(url: str) -> dict[str, Any]:
    with sync_playwright() as playwright:
        chromium = helpers.launch(playwright)
        try:
            page = chromium.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url)
            result: dict[str, Any] = page.evaluate("window.tokenResult")
            assert errors == [], errors
            return result
        finally:
            chromium.close()


def test_the_tutorial_app_gets_a_token_for_the_browser(service):
    with app_server(service, API_KEY, API_SECRET) as url:
        result = run_page(url)
    assert result["ok"] is True, result
    # The app relayed the Hub's challenge: 32 raw bytes, signed in the browser.
    assert [s["step"] for s in result["steps"]] == ["connected", "challenge", "signed", "token"]
    assert result["steps"][1] == {"step": "challenge", "bytes": 32, "raw": True}
    claims = check_against_the_key_set(service, result["token"], result["pub"])
    assert claims["sub"] == result["pub"]
    assert audited(service, result["pub"])[:4] == ("success", "OK", "grpc-web", API_KEY)


def test_the_hubs_refusal_reaches_the_browser_as_the_tutorials_error_frame(service):
    with app_server(service, "b" + "z" * 26, API_SECRET) as url:  # a key the service does not know
        result = run_page(url)
    assert result["ok"] is False, result
    assert (result["code"], result["message"]) == ("server_error", "API key not found or is invalid")
    assert audited(service, result["pub"])[:3] == ("api_key_not_found", "NOT_FOUND", "grpc-web")
