"""The browser client and the demo page, in Debian's Chromium against a real daphne.

The demo page's tests click through ``/`` like a person would. The module's
tests import ``token-client.js`` into a page and call it directly: against the
real server, and against :class:`tests.browser.ScriptedProvider` for the
challenges a correct provider never sends (another audience, another key, a
raw challenge, silence, a hang-up). Every client test also checks that no
timer is left running and no socket left open once the promise settles.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from challenges import authority, tokens
from challenges.identity import PrivateKey, parse_private_key
from tests import browser as helpers
from tests import servers
from tests.conftest import VECTOR_PRIVATE, VECTOR_PUBLIC

pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.timeout(60), pytest.mark.once]

ARTIFACTS = servers.ROOT / "test-artifacts"
CLIENT = "/static/challenges/token-client.js"
STORAGE_KEY = "token-provider.identity"
VECTOR = {"priv": VECTOR_PRIVATE, "pub": VECTOR_PUBLIC, "signature": helpers.VECTOR_SIGNATURE.hex()}
#: 2 s is ample to sign locally, and short enough to watch it expire.
CHALLENGE_TIMEOUT = 2


@pytest.fixture(scope="module")
def issuer() -> PrivateKey:
    return PrivateKey.generate()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, issuer: PrivateKey) -> Iterator[servers.Server]:
    tmp = tmp_path_factory.mktemp("browser")
    env = servers.base_env(tmp, CHALLENGE_TIMEOUT=str(CHALLENGE_TIMEOUT), AUTHORITY_PRIVATE_KEY=str(issuer))
    with servers.running(tmp, kind="daphne", env=env) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = helpers.launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def provider() -> Iterator[helpers.ScriptedProvider]:
    with helpers.scripted_provider() as scripted:
        yield scripted


def _context(browser: Browser, **options: Any) -> BrowserContext:
    context = browser.new_context(viewport={"width": 1100, "height": 900}, **options)
    context.set_default_timeout(10_000)
    return context


@pytest.fixture
def page(browser: Browser, server: servers.Server) -> Iterator[Page]:
    """A fresh browser profile (empty localStorage) on the demo page."""
    context = _context(browser)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.goto(f"{server.http}/")
    expect(tab.locator("#get-token")).to_be_enabled()
    yield tab
    context.close()
    assert errors == [], f"the page threw: {errors}"


@pytest.fixture(scope="module")
def module_page(browser: Browser, server: servers.Server) -> Iterator[Page]:
    """A same-origin page to import the module into, shared by the module's
    tests (each call restores what it instruments); CSP is bypassed so it may
    also reach the scripted provider on another port."""
    context = _context(browser, bypass_csp=True)
    tab = context.new_page()
    tab.goto(f"{server.http}/")
    yield tab
    context.close()


def status(page: Page) -> Any:
    return page.get_by_test_id("flow-status")


def get_token_in(page: Page, **options: Any) -> dict[str, Any]:
    """Call getToken in the page (see ``helpers.RUN_GET_TOKEN``)."""
    arg = {
        "clientUrl": CLIENT,
        "options": options.pop("options", {}),
        "signer": options.pop("signer", "webcrypto"),
        "vector": VECTOR,
        "abortAfterMs": options.pop("abort_after_ms", 0),
    }
    assert not options, options
    result: dict[str, Any] = page.evaluate(helpers.RUN_GET_TOKEN, arg)
    assert result["liveTimers"] == 0, f"a timer is still running after getToken settled: {result}"
    assert all(state in (2, 3) for state in result["socketStates"]), f"a socket is left open: {result}"
    return result


def post_verify(server: servers.Server, body: bytes, method: str = "POST") -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"{server.http}/api/token/verify",
        data=body if method == "POST" else None,
        method=method,
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        payload = error.read()
        error.close()
        return error.code, json.loads(payload) if payload.startswith(b"{") else {}


# -- the demo page ----------------------------------------------------------------


def test_demo_page_gets_a_token_that_the_server_verifies(
    page: Page, server: servers.Server, issuer: PrivateKey
) -> None:
    pub = page.get_by_test_id("public-key").inner_text()
    stored = page.evaluate(f"localStorage.getItem({STORAGE_KEY!r})")
    assert str(parse_private_key(stored).public) == pub  # the module's key string, read by PyNaCl
    expect(page.get_by_test_id("identity-origin")).to_have_text("new in this browser")

    page.click("#get-token")
    expect(status(page)).to_have_attribute("data-state", "verified")

    for step in ("connected", "challenge", "signed", "token"):
        expect(page.locator(f'#steps li[data-step="{step}"]')).to_have_attribute("data-state", "done")
    challenge = page.get_by_test_id("challenge-text").inner_text()
    assert challenge.startswith("textile-token-challenge/v1\npurpose: api-token\n")
    assert f"audience: {server.http}" in challenge
    assert f"key: {pub}" in challenge
    expect(page.locator("#signature")).to_contain_text("(64 bytes)")

    token = page.get_by_test_id("token").inner_text()
    claims = tokens.verify_token(token, issuer=issuer.public)
    assert claims["sub"] == pub
    header = json.loads(page.get_by_test_id("jwt-header").inner_text())
    assert header == {"alg": "Ed25519", "typ": "JWT", "kid": tokens.key_id(issuer.public)}
    assert json.loads(page.get_by_test_id("jwt-claims").inner_text()) == claims
    verdict = json.loads(page.get_by_test_id("verdict").inner_text())
    assert verdict == {"active": True, "claims": claims}
    expect(page.get_by_test_id("claim-facts")).to_contain_text("your public key")

    expiry = page.get_by_test_id("expiry")
    first = expiry.inner_text()
    assert re.fullmatch(r"expires in (23 h 59 min \d\d s|24 h 00 min 00 s)", first), first
    expect(expiry).not_to_have_text(first, timeout=3000)  # it counts down

    assert server.rows("select outcome from challenges_challengeattempt where public_key = ?", (pub,)) == [
        ("success",)
    ]
    expect(page.get_by_test_id("error")).to_be_hidden()

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "demo.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_a_reload_keeps_the_identity_and_forgetting_makes_a_new_one(page: Page) -> None:
    first = page.get_by_test_id("public-key").inner_text()
    page.reload()
    expect(page.get_by_test_id("identity-origin")).to_have_text("loaded from this browser")
    expect(page.get_by_test_id("public-key")).to_have_text(first)

    page.click("#forget")
    expect(page.get_by_test_id("identity-origin")).to_have_text("new in this browser")
    expect(page.get_by_test_id("public-key")).not_to_have_text(first)
    second = page.get_by_test_id("public-key").inner_text()
    assert second.startswith("bbaarei")
    assert len(second) == 59
    stored = page.evaluate(f"localStorage.getItem({STORAGE_KEY!r})")
    assert str(parse_private_key(stored).public) == second

    page.click("#get-token")  # the new identity works
    expect(status(page)).to_have_attribute("data-state", "verified")
    assert (
        authority.parse_challenge_text(page.get_by_test_id("challenge-text").inner_text().encode()).key
        == second
    )


def test_an_unanswered_challenge_shows_the_servers_timeout_code(page: Page, server: servers.Server) -> None:
    pub = page.get_by_test_id("public-key").inner_text()
    page.click("text=Try a failure")
    page.click("#try-no-answer")
    expect(page.get_by_test_id("error-code")).to_have_text(
        "challenge_timeout", timeout=CHALLENGE_TIMEOUT * 1000 + 8000
    )
    expect(page.get_by_test_id("error-message")).to_contain_text("not answered within")
    expect(status(page)).to_have_attribute("data-state", "error")
    expect(page.locator('#steps li[data-step="challenge"]')).to_have_attribute("data-state", "done")
    expect(page.locator('#steps li[data-step="signed"]')).to_have_attribute("data-state", "failed")
    expect(page.locator("#signature")).to_have_text("Waiting for the identity to sign…")
    expect(page.get_by_test_id("token")).to_be_hidden()
    assert ("challenge_timeout",) in server.rows(
        "select outcome from challenges_challengeattempt where public_key = ?", (pub,)
    )
    page.click("#get-token")  # and the page recovers
    expect(status(page)).to_have_attribute("data-state", "verified")
    expect(page.get_by_test_id("error")).to_be_hidden()


def test_a_malformed_key_shows_the_servers_code(page: Page) -> None:
    page.click("text=Try a failure")
    page.click("#try-bad-key")
    expect(page.get_by_test_id("error-code")).to_have_text("invalid_pub")
    expect(page.get_by_test_id("error-message")).to_contain_text("public key")
    expect(status(page)).to_have_attribute("data-state", "error")
    expect(page.locator('#steps li[data-step="connected"]')).to_have_attribute("data-state", "done")
    expect(page.locator('#steps li[data-step="challenge"]')).to_have_attribute("data-state", "failed")


# -- the module against the PROTOCOL vectors ---------------------------------------------


def test_the_module_matches_the_protocol_vectors(module_page: Page) -> None:
    got = module_page.evaluate(
        """async ({clientUrl, vector}) => {
            const c = await import(clientUrl);
            const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
            const fromHex = (h) => Uint8Array.from(h.match(/../g), (x) => parseInt(x, 16));
            const id = await c.Ed25519Identity.fromString(vector.priv);
            const seeded = await c.Ed25519Identity.fromSeed(fromHex(
                "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"));
            const challenge = Uint8Array.from({length: 32}, (_, i) => i);
            const sig = await id.sign(challenge);
            const refusals = {};
            for (const [name, text] of Object.entries({
                upper: vector.priv.toUpperCase(), pub: vector.pub, short: vector.priv.slice(0, -1),
                base58: "z" + vector.priv.slice(1),
                mismatched: vector.priv.slice(0, -8) + "aaaaaaaa",
            })) {
                try { await c.Ed25519Identity.fromString(text); refusals[name] = "accepted"; }
                catch (e) { refusals[name] = e.code; }
            }
            const words = ["", "f", "fo", "foo", "foob", "fooba", "foobar"];
            let nonCanonical;
            try { c.base32Decode("mzxw6yr"); nonCanonical = "accepted"; } catch { nonCanonical = "refused"; }
            return {
                pub: id.public.toString(), pubHex: hex(id.public.bytes), priv: id.toString(),
                seededPub: seeded.public.toString(), sig: hex(sig),
                verifies: await id.public.verify(challenge, sig),
                parsedPub: c.Ed25519PublicKey.fromString(vector.pub).toString(),
                json: JSON.stringify(id), refusals, nonCanonical,
                base32: words.map((w) => c.base32Encode(new TextEncoder().encode(w))),
                roundTrip: words.every((w) => {
                    const bytes = new TextEncoder().encode(w);
                    return new TextDecoder().decode(c.base32Decode(c.base32Encode(bytes))) === w;
                }),
            };
        }""",
        {"clientUrl": CLIENT, "vector": VECTOR},
    )
    assert got["pub"] == VECTOR_PUBLIC
    assert got["pubHex"] == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert got["priv"] == VECTOR_PRIVATE
    assert got["seededPub"] == VECTOR_PUBLIC
    assert got["sig"] == helpers.VECTOR_SIGNATURE.hex()
    assert got["verifies"] is True
    assert got["parsedPub"] == VECTOR_PUBLIC
    assert VECTOR_PRIVATE not in got["json"]  # JSON.stringify never leaks the seed
    assert got["refusals"] == dict.fromkeys(
        ("upper", "pub", "short", "base58", "mismatched"), "invalid_argument"
    )
    assert got["nonCanonical"] == "refused"
    assert got["base32"] == ["", "my", "mzxq", "mzxw6", "mzxw6yq", "mzxw6ytb", "mzxw6ytboi"]  # RFC 4648 §10
    assert got["roundTrip"] is True


def test_a_generated_key_signs_byte_identically_to_pynacl(module_page: Page) -> None:
    message = b"textile-token-challenge/v1\nany bytes \x00\xff"
    got = module_page.evaluate(
        """async ({clientUrl, message}) => {
            const c = await import(clientUrl);
            const id = await c.Ed25519Identity.generate();
            const again = await c.Ed25519Identity.fromString(id.toString());
            const sig = await id.sign(Uint8Array.from(message));
            return {priv: id.toString(), pub: id.public.toString(), again: again.public.toString(),
                    sig: Array.from(sig), sig2: Array.from(await again.sign(Uint8Array.from(message)))};
        }""",
        {"clientUrl": CLIENT, "message": list(message)},
    )
    key = parse_private_key(got["priv"])
    assert str(key.public) == got["pub"] == got["again"]
    assert got["pub"].startswith("bbaarei")
    assert bytes(got["sig"]) == key.sign(message) == bytes(got["sig2"])
    nacl.signing.VerifyKey(key.public.raw).verify(message, bytes(got["sig"]))


# -- the module's challenge checks --------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "accept_raw", "why"),
    [
        ("other-audience", False, "names audience https://elsewhere.example"),
        ("other-key", False, "another public key"),
        ("other-purpose", False, "for 'login'"),
        ("not-a-text", True, "not a textile-token-challenge/v1 text"),
        ("raw", False, "acceptRawChallenge"),
        ("raw-unflagged", False, "acceptRawChallenge"),
        # A server may call a relayed v1 text "raw": it is checked all the same.
        ("text-flagged-raw", True, "names audience https://elsewhere.example"),
    ],
)
def test_the_module_refuses_to_sign_a_challenge_for_another_audience_or_key(
    module_page: Page, provider: helpers.ScriptedProvider, scenario: str, accept_raw: bool, why: str
) -> None:
    result = get_token_in(
        module_page,
        options={
            "url": provider.url(scenario),
            "audience": helpers.APP_AUDIENCE,
            "acceptRawChallenge": accept_raw,
        },
    )
    assert result["ok"] is False
    assert result["isError"] is True
    assert result["code"] == "challenge_refused", result
    assert why in result["message"]
    assert result["signCalls"] == []  # the identity was never asked
    conn = provider.only(scenario)
    assert conn.closed.wait(5), "the client did not close the socket"
    assert [frame["type"] for frame in conn.received] == ["token"]  # no signature went out


@pytest.mark.parametrize("signer", ["vector", "vector-sync", "vector-buffer"])
@pytest.mark.parametrize("scenario", ["raw", "raw-unflagged"])
def test_the_module_signs_a_raw_hub_challenge_only_when_told_to(
    module_page: Page, provider: helpers.ScriptedProvider, scenario: str, signer: str
) -> None:
    before = len(provider.connections)
    result = get_token_in(
        module_page,
        signer=signer,
        options={"url": provider.url(scenario), "audience": helpers.APP_AUDIENCE, "acceptRawChallenge": True},
    )
    assert result == result | {"ok": True, "token": f"token-for-{VECTOR_PUBLIC}"}
    assert result["signCalls"] == [list(helpers.VECTOR_CHALLENGE)]
    conn = provider.connections[before]
    assert conn.closed.wait(5)
    request, answer = conn.received
    assert request == {"type": "token", "pub": VECTOR_PUBLIC}
    assert answer["sig"] == {"type": "Buffer", "data": list(helpers.VECTOR_SIGNATURE)}
    if scenario == "raw":
        assert answer == {"type": "challenge", "sig": answer["sig"], "id": "scripted-challenge-id-0001"}
    else:  # the tutorial's server sent no id; none is invented
        assert answer == {"type": "challenge", "sig": answer["sig"]}


# -- the module settles once, and cleans up --------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "extra", "code", "message"),
    [
        ("silent", {"options": {"timeoutMs": 300}}, "timeout", "no token within 300 ms"),
        ("ok", {"signer": "never", "options": {"timeoutMs": 300}}, "timeout", "no token within 300 ms"),
        ("silent", {"abort_after_ms": 100}, "aborted", "aborted"),
        ("hang-up", {}, "connection_closed", "code 1011: scripted hang-up"),
        ("error", {}, "server_error", "missing public key (pub)"),
        ("error-coded", {}, "key_blocked", "this key is blocked"),
        ("not-json", {}, "bad_frame", "not JSON"),
    ],
)
def test_the_module_rejects_once_with_a_coded_error_and_leaves_nothing_open(
    module_page: Page,
    provider: helpers.ScriptedProvider,
    scenario: str,
    extra: dict[str, Any],
    code: str,
    message: str,
) -> None:
    before = len(provider.connections)
    options = {"url": provider.url(scenario), "audience": helpers.APP_AUDIENCE, **extra.pop("options", {})}
    result = get_token_in(module_page, options=options, **extra)
    assert result["ok"] is False
    assert result["isError"] is True
    assert result["code"] == code, result
    assert message in result["message"]
    assert result["ms"] < 5000
    conn = provider.connections[before]
    assert conn.closed.wait(5), "the socket stayed open"


def test_the_module_reports_a_connection_that_never_opens(module_page: Page) -> None:
    url = f"ws://127.0.0.1:{servers.free_port()}/ws/token"
    result = get_token_in(module_page, options={"url": url, "audience": helpers.APP_AUDIENCE})
    assert (result["ok"], result["code"]) == (False, "connection_closed")
    assert result["signCalls"] == []


def test_the_module_rejects_unusable_arguments_without_connecting(module_page: Page) -> None:
    got = module_page.evaluate(
        """async (clientUrl) => {
            const c = await import(clientUrl);
            const codes = [];
            for (const options of [{}, {identity: {}}, {identity: {public: {}, sign() {}}},
                                   {identity: {public: "bbaarei", sign: 1}}]) {
                try { await c.getToken(options); codes.push("resolved"); } catch (e) { codes.push(e.code); }
            }
            const aborted = new AbortController(); aborted.abort();
            const id = await c.Ed25519Identity.generate();
            try { await c.getToken({identity: id, signal: aborted.signal}); }
            catch (e) { codes.push(e.code); }
            return codes;
        }""",
        CLIENT,
    )
    assert got == ["invalid_argument"] * 4 + ["aborted"]


def test_the_tutorial_clients_bugs_are_not_in_this_client(
    module_page: Page, provider: helpers.ScriptedProvider
) -> None:
    # The tutorial's switch falls through: an error frame goes on to sign and
    # "resolve"; here it rejects with an Error carrying the server's message.
    error = get_token_in(
        module_page, options={"url": provider.url("error"), "audience": helpers.APP_AUDIENCE}
    )
    assert (error["ok"], error["isError"], error["signCalls"]) == (False, True, [])
    assert error["message"] == "missing public key (pub)"
    # Its client sends an undefined publicKey, and resolves with the challenge:
    # here the key string goes out and the promise resolves with the token.
    before = len(provider.connections)
    ok = get_token_in(module_page, options={"url": provider.url("ok"), "audience": helpers.APP_AUDIENCE})
    assert ok["ok"] is True
    assert ok["token"] == f"token-for-{ok['pub']}"
    assert len(ok["signCalls"]) == 1
    conn = provider.connections[before]
    assert conn.closed.wait(5)
    assert conn.received[0] == {"type": "token", "pub": ok["pub"]}
    assert ok["pub"].startswith("bbaarei")


# -- the module against the real server --------------------------------------------------


def test_the_module_gets_a_token_from_the_real_server_with_its_defaults(
    module_page: Page, server: servers.Server, issuer: PrivateKey
) -> None:
    result = get_token_in(module_page)  # url and audience from the page's origin
    claims = tokens.verify_token(result["token"], issuer=issuer.public)
    assert claims["sub"] == result["pub"]
    [signed] = result["signCalls"]
    text = authority.parse_challenge_text(bytes(signed))
    assert (text.audience, text.key) == (server.http, result["pub"])


def test_the_module_passes_on_the_servers_codes(module_page: Page, server: servers.Server) -> None:
    junk = get_token_in(module_page, signer="junk-pub")
    assert (junk["ok"], junk["isError"], junk["code"]) == (False, True, "invalid_pub")
    assert junk["signCalls"] == []
    elsewhere = get_token_in(module_page, options={"audience": "https://elsewhere.example"})
    assert (elsewhere["code"], elsewhere["signCalls"]) == ("challenge_refused", [])
    unanswered = get_token_in(module_page, signer="never", options={"timeoutMs": 10_000})
    assert unanswered["code"] == "challenge_timeout"
    assert unanswered["ms"] < CHALLENGE_TIMEOUT * 1000 + 3000


# -- what the page relies on over HTTP ---------------------------------------------------


def test_the_verify_endpoint(server: servers.Server, issuer: PrivateKey) -> None:
    good = tokens.mint_token(signer=issuer, subject=PrivateKey.generate().public, ttl=60).token
    status_code, body = post_verify(server, json.dumps({"token": good}).encode())
    assert status_code == 200
    assert body["active"] is True
    assert body["claims"]["iss"] == str(issuer.public)

    stranger = tokens.mint_token(signer=PrivateKey.generate(), subject=issuer.public, ttl=60).token
    assert post_verify(server, json.dumps({"token": stranger}).encode())[1] == {
        "active": False,
        "code": "invalid_token",
        "error": "the token was issued by another authority",  # its iss names no key of ours
    }
    tampered = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    assert post_verify(server, json.dumps({"token": tampered}).encode())[1]["code"] == "invalid_token"
    assert post_verify(server, b"{not json")[0] == 400
    assert post_verify(server, b'{"token": 7}') == (
        400,
        {"active": False, "code": "invalid_request", "error": 'the body must be {"token": "<token>"}'},
    )
    assert post_verify(server, json.dumps({"token": "x" * 20_000}).encode())[0] == 413
    assert post_verify(server, b"", method="GET")[0] == 405


def test_the_page_and_module_are_served_with_safe_headers(server: servers.Server) -> None:
    with urllib.request.urlopen(f"{server.http}/", timeout=5) as response:
        csp = response.headers["Content-Security-Policy"]
        html = response.read().decode()
    assert "connect-src 'self'" in csp
    assert "script-src 'self'" in csp
    assert 'src="/static/challenges/demo.js"' in html
    with urllib.request.urlopen(f"{server.http}{CLIENT}", timeout=5) as response:
        assert response.headers["Content-Type"].split(";")[0] == "text/javascript"
        assert response.headers["Access-Control-Allow-Origin"] == "*"  # importable from an app's origin
        source = response.read().decode()
    assert "export function getToken" in source
    assert not re.search(r"^\s*import\s", source, re.MULTILINE), "the client module must have no dependency"
    for missing in ("/static/challenges/nope.js", "/static/challenges/..%2fviews.py"):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"{server.http}{missing}", timeout=5)
        assert caught.value.code == 404
        caught.value.close()


def test_the_screenshot_directory_is_ignored_by_git() -> None:
    assert "test-artifacts/" in Path(servers.ROOT / ".gitignore").read_text().splitlines()
