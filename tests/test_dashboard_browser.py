"""The audit dashboard in Debian's Chromium, against a real daphne and its own database: after a
burst of flows of several outcomes, an operator logs in, opens the dashboard from the
admin's index, and its numbers are the database's; its links lead to the rows, the list
exports them, an attempt shows its timeline; a user who is not staff is refused."""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import django.contrib.admin
import pytest
import websockets
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from challenges.client import get_token_async
from challenges.identity import PrivateKey
from tests import browser as helpers
from tests import servers

pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.timeout(120)]

ARTIFACTS = servers.ROOT / "test-artifacts"
ADMIN_STATIC = (Path(django.contrib.admin.__file__).parent / "static" / "admin").resolve()
OPERATOR, OPERATOR_PASSWORD = "ops", "correct-horse-battery-staple-42"
VIEWER, VIEWER_PASSWORD = "viewer", "not-staff-but-has-a-password-7"
DASHBOARD = "/admin/challenges/challengeattempt/dashboard/"


def manage(server: servers.Server, *args: str, **env: str) -> None:
    subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=servers.ROOT,
        env={**server.env, **env},
        check=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Server]:
    tmp = tmp_path_factory.mktemp("dashboard")
    with servers.running(tmp, kind="daphne") as running:
        manage(
            running, "createsuperuser", "--noinput", "--username", OPERATOR, "--email", "ops@example.com",
            DJANGO_SUPERUSER_PASSWORD=OPERATOR_PASSWORD,
        )  # fmt: skip
        create = f"User.objects.create_user({VIEWER!r}, password={VIEWER_PASSWORD!r})"
        manage(running, "shell", "-c", f"from django.contrib.auth.models import User; {create}")
        yield running


@pytest.fixture(scope="module")
def burst(server: servers.Server) -> list[str]:
    """Tokens, bad signatures and malformed frames; returns the tokens (never to be shown)."""
    good, bad = PrivateKey.generate(), PrivateKey.generate()

    async def run() -> list[str]:
        issued = [await get_token_async(server.ws, good) for _ in range(4)]
        async with websockets.connect(server.ws) as ws:
            for _ in range(3):
                await ws.send(json.dumps({"type": "token", "pub": str(bad.public)}))
                assert json.loads(await ws.recv())["type"] == "challenge"
                await ws.send(json.dumps({"type": "challenge", "sig": [7] * 64}))
                assert json.loads(await ws.recv())["code"] == "bad_signature"
            for frame in ["not json"] * 5 + [json.dumps({"type": "nope"})] * 2:
                await ws.send(frame)
                assert json.loads(await ws.recv())["type"] == "error"
        return issued

    # On a thread of its own: Playwright's sync API runs an event loop on this one.
    with ThreadPoolExecutor(1) as pool:
        tokens = pool.submit(lambda: asyncio.run(run())).result(timeout=60)
    # Refusals after the first of each (address, code, minute) are added to its row each second.
    assert servers.wait_for(lambda: _sums(server).get("invalid_json") == 5, timeout=10), _sums(server)
    assert servers.wait_for(
        lambda: server.rows("select count(*) from challenges_workerstatus")[0][0] == 1, timeout=10
    )
    return tokens


def _sums(server: servers.Server) -> dict[str, int]:
    rows = server.rows("select outcome, sum(count) from challenges_challengeattempt group by outcome")
    return {outcome: int(n) for outcome, n in rows}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = helpers.launch(playwright)
        yield chromium
        chromium.close()


def admin_static(route: Route) -> None:
    """The admin's CSS and JS, as nginx serves them in production (collectstatic's copy); the
    app server itself does not serve them."""
    name = urlsplit(route.request.url).path.removeprefix("/static/admin/")
    found = (ADMIN_STATIC / name).resolve()
    if found.is_relative_to(ADMIN_STATIC) and found.is_file():
        route.fulfill(path=str(found))
    else:
        route.fulfill(status=404)


def log_in(browser: Browser, server: servers.Server, username: str, password: str) -> Page:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(15_000)
    context.route("**/static/admin/**", admin_static)
    page = context.new_page()
    page.goto(f"{server.http}/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    return page


def numbers(page: Page, selector: str) -> dict[str, int]:
    found: dict[str, int] = page.eval_on_selector_all(
        selector,
        """els => { const out = {}; for (const el of els) {
             const name = el.dataset.series || el.closest('tr').dataset.outcome;
             out[name] = (out[name] || 0) + Number(el.dataset.n); } return out; }""",
    )
    return found


def test_the_dashboard_shows_what_the_database_holds(
    browser: Browser, server: servers.Server, burst: list[str]
) -> None:
    page = log_in(browser, server, OPERATOR, OPERATOR_PASSWORD)
    page.click("#audit-dashboard-link")
    expect(page).to_have_title("Audit dashboard | Django site admin")
    sums = _sums(server)
    assert {"success", "bad_signature", "invalid_json", "unknown_type"} <= set(sums)
    total = sum(sums.values())
    expect(page.get_by_test_id("total-attempts")).to_have_attribute("data-n", str(total))
    expect(page.get_by_test_id("total-successes")).to_have_attribute("data-n", str(sums["success"]))
    expect(page.get_by_test_id("total-failures")).to_have_attribute("data-n", str(total - sums["success"]))
    (tokens,) = server.rows("select count(*) from challenges_issuedtoken")[0]
    assert tokens == 4
    expect(page.get_by_test_id("total-tokens")).to_have_attribute("data-n", "4")
    assert numbers(page, "[data-testid=outcomes] tr[data-outcome] td[data-n]") == sums  # the table
    assert numbers(page, "#attempts-chart rect[data-series]") == sums  # the chart's bars
    assert numbers(page, "#tokens-chart rect[data-series]") == {"tokens": 4}
    assert (page.locator("#attempts-chart title").first.text_content() or "").startswith(
        "Attempts by outcome"
    )
    (failing_key, failures), *_ = server.rows(
        "select public_key, sum(count) n from challenges_challengeattempt where outcome != 'success'"
        " and public_key != '' group by public_key order by n desc"
    )
    first = page.get_by_test_id("top-keys").locator("tbody tr").first
    expect(first.locator("td").first).to_have_text(failing_key)
    expect(first.locator("td[data-n]")).to_have_attribute("data-n", str(failures))
    (tag,) = server.rows("select tag from challenges_workerstatus")[0]
    worker = page.get_by_test_id("workers").locator(f"tr[data-tag='{tag}']")
    expect(worker.get_by_test_id("worker-state")).to_have_text("live")
    expect(page.get_by_test_id("live-summary")).to_contain_text("1 live worker:")
    html = page.content()
    for token in burst:
        assert token not in html
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000

    # A figure leads to its rows; the list exports them, streamed by daphne; a row shows its timeline.
    page.get_by_test_id("outcomes").locator("tr[data-outcome=bad_signature] th a").click()
    expect(page.locator("#result_list tbody tr")).to_have_count(sums["bad_signature"])
    with page.expect_download() as download:
        page.click("a.export-csv")
    with open(download.value.path(), newline="") as fh:
        exported = list(csv.DictReader(fh))
    assert [row["outcome"] for row in exported] == ["bad_signature"] * sums["bad_signature"]
    assert {row["public_key"] for row in exported} == {failing_key}
    page.locator("#result_list tbody tr th a").first.click()
    steps = page.locator("table.timeline tbody tr")
    expect(steps).to_have_count(4)
    assert [steps.nth(i).get_attribute("data-step") for i in range(4)] == [
        "asked", "challenged", "answered", "bad_signature"
    ]  # fmt: skip
    assert "StreamingHttpResponse must consume" not in server.log()
    page.context.close()


def test_a_user_who_is_not_staff_is_refused(
    browser: Browser, server: servers.Server, burst: list[str]
) -> None:
    page = log_in(browser, server, VIEWER, VIEWER_PASSWORD)
    expect(page.locator("#content")).to_contain_text(
        "Please enter the correct username and password for a staff account"
    )
    page.goto(f"{server.http}{DASHBOARD}")
    assert "/admin/login/" in page.url
    expect(page.locator("#audit-dashboard-link")).to_have_count(0)
    expect(page.get_by_test_id("total-attempts")).to_have_count(0)
    page.context.close()
    anonymous = browser.new_context().new_page()
    anonymous.context.route("**/static/admin/**", admin_static)
    anonymous.goto(f"{server.http}{DASHBOARD}")
    assert "/admin/login/?next=" in anonymous.url
    anonymous.context.close()
