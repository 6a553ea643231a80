"""No secret leaks: flows of every outcome, with every logger at DEBUG, on real processes (a
provider relaying to ``runauthority``, and one with the embedded authority), in both log
formats, and then the logs, every error frame and body, the metrics and the admin's pages
are searched for the tokens issued, the API secret and the HMACs made with it, the
introspection token, the metrics token and the authority key. The logs have one outcome
line per flow (and per refusal, at DEBUG), with the fields the README lists."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.cookiejar
import json
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import grpc.aio
import pytest
import websockets

from challenges.identity import PrivateKey, encode_buffer
from tests import servers
from tests.rpcutil import (
    API_KEY,
    API_SECRET,
    RawCall,
    api_metadata,
    key_frame,
    signature_frame,
    start_authority,
)

pytestmark = pytest.mark.server
AUTHORITY = PrivateKey.generate()
INTROSPECTION = "introspection-" + "s3cr3t" * 8
METRICS = "metrics-" + "t0k3n" * 8
PASSWORD = "admin-password-for-the-secrets-test"


class Seen:
    """Everything a client or operator got to see, and every secret that must not be in it."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.secrets = {
            "API secret": API_SECRET,
            "introspection token": INTROSPECTION,
            "metrics token": METRICS,
            "authority key": str(AUTHORITY),
            "authority seed (hex)": AUTHORITY.seed.hex(),
            "authority seed (base64url)": base64.urlsafe_b64encode(AUTHORITY.seed).decode().rstrip("="),
        }

    def token(self, token: str) -> None:
        self.secrets[f"token {len(self.secrets)}"] = token
        self.secrets[f"token signature {len(self.secrets)}"] = token.rsplit(".", 1)[1]

    def leaks(self) -> list[str]:
        everything = "\n".join(self.texts)
        return [name for name, secret in self.secrets.items() if secret and secret in everything]


def post(
    server: servers.Server, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        server.http + path, data=data, headers={"content-type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def ws_flows(server: servers.Server, seen: Seen, *, raw: bool) -> None:
    user = PrivateKey.generate()
    async with websockets.connect(server.ws) as sock:

        async def say(frame: Any) -> dict[str, Any]:
            await sock.send(frame if isinstance(frame, str) else json.dumps(frame))
            reply = json.loads(await asyncio.wait_for(sock.recv(), 10))
            if reply["type"] == "error":  # a token frame goes to its owner: that is no leak
                seen.texts.append(json.dumps(reply))
            return reply

        for signer in (user, PrivateKey.generate()):  # a token, then a bad signature
            challenge = await say({"type": "token", "pub": str(user.public)})
            sig = encode_buffer(signer.sign(bytes(challenge["value"]["data"])))
            reply = await say({"type": "challenge", "sig": sig})
            if reply["type"] == "token":
                seen.token(reply["value"])
        for junk in (
            "{nope",
            "[]",
            {"type": "token"},
            {"type": "token", "pub": "bbaa"},
            {"type": "challenge"},
        ):
            await say(junk)
        await say({"type": "challenge", "sig": [0] * 64, "id": "A" * 32})
        await say({"type": "token", "pub": str(user.public)})  # left to expire (CHALLENGE_TIMEOUT=1)
        seen.texts.append(str(await asyncio.wait_for(sock.recv(), 10)))


def http_flows(server: servers.Server, seen: Seen) -> None:
    user = PrivateKey.generate()
    challenge = json.loads(post(server, "/api/token/challenge", {"pub": str(user.public)})[1])
    sig = encode_buffer(user.sign(bytes(challenge["value"]["data"])))
    _, body = post(server, "/api/token", {"id": challenge["id"], "sig": sig})
    token = json.loads(body)["value"]
    seen.token(token)
    for path, payload in (
        ("/api/token", {"id": challenge["id"], "sig": sig}),  # spent
        ("/api/token/challenge", b"{"),
        ("/api/token/verify", {"token": token}),
        ("/api/token/verify", {"token": token[:-4] + "AAAA"}),
    ):
        seen.texts.append(post(server, path, payload)[1])
    auth = {"authorization": f"Bearer {INTROSPECTION}"}
    for bearer in (auth, {"authorization": f"Bearer {INTROSPECTION[:-1]}"}, {}):
        seen.texts.append(post(server, "/api/token/introspect", {"token": token}, bearer)[1])


async def grpc_calls(hub: Any, seen: Seen) -> None:
    """Straight to the authority: a good call, a wrong HMAC, an expired one, a missing key."""
    bad = api_metadata()
    bad[2] = ("x-textile-api-sig", bad[2][1][:-3] + "aaa")
    cases = [api_metadata(), bad, api_metadata(ahead=-__import__("datetime").timedelta(minutes=1)), []]
    seen.secrets.update(
        {f"HMAC {i}": dict(meta).get("x-textile-api-sig", "") for i, meta in enumerate(cases)}
    )
    user = PrivateKey.generate()
    async with grpc.aio.insecure_channel(hub.target) as channel:
        for metadata in cases:
            call = RawCall(channel, metadata)
            await call.send(key_frame(str(user.public)))
            first = await call.reply_or_error()
            if first is not None:
                await call.send(signature_frame(user.sign(first[1])))
                await call.call.done_writing()
                reply = await call.reply_or_error()
                if reply is not None:
                    seen.token(reply[1].decode())
            seen.texts.append(repr(await call.status()))


def admin_pages(server: servers.Server, seen: Seen) -> None:
    env = {**server.env, "DJANGO_SUPERUSER_PASSWORD": PASSWORD}
    command = [
        sys.executable,
        "manage.py",
        "createsuperuser",
        "--noinput",
        "--username",
        "op",
        "--email",
        "o@x.org",
    ]
    subprocess.run(command, cwd=servers.ROOT, env=env, check=True, capture_output=True, timeout=60)
    jar = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    login = browser.open(server.http + "/admin/login/", timeout=10).read().decode()
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login).group(1)  # type: ignore[union-attr]
    form = urllib.parse.urlencode(
        {"username": "op", "password": PASSWORD, "csrfmiddlewaretoken": csrf}
    ).encode()
    browser.open(
        urllib.request.Request(server.http + "/admin/login/?next=/admin/", data=form), timeout=10
    ).read()
    pages = ["/admin/", "/admin/challenges/challengeattempt/", "/admin/challenges/issuedtoken/"]
    for path in pages:
        page = browser.open(server.http + path, timeout=10).read().decode()
        assert "Log out" in page or "logout" in page, path
        seen.texts.append(page)
        for detail in re.findall(r'href="(/admin/challenges/\w+/\d+/change/)"', page)[:30]:
            seen.texts.append(browser.open(server.http + detail, timeout=10).read().decode())


def scrape(server: servers.Server) -> str:
    request = urllib.request.Request(server.http + "/metrics", headers={"authorization": f"Bearer {METRICS}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


@pytest.mark.parametrize("log_format", ["plain", "json"])
async def test_no_secret_in_logs_frames_bodies_or_admin_pages(tmp_path: Path, log_format: str) -> None:
    seen = Seen()
    debug = {
        "LOG_LEVEL": "DEBUG",
        "LOG_FORMAT": log_format,
        "AUTHORITY_PRIVATE_KEY": str(AUTHORITY),
        "INTROSPECTION_TOKEN": INTROSPECTION,
        "METRICS_TOKEN": METRICS,
    }
    hub = start_authority(
        tmp_path,
        env=servers.base_env(
            tmp_path, AUTHORITY_API_KEYS=f"{API_KEY}:{API_SECRET}", WORKER_ID="hub", **debug
        ),
    )
    relay_env = servers.base_env(
        tmp_path,
        TOKEN_UPSTREAM=f"grpc://{hub.target}",
        USER_API_KEY=API_KEY,
        USER_API_SECRET=API_SECRET,
        CHALLENGE_TIMEOUT="1",
        WORKER_ID="relay",
        **debug,
    )
    relay = servers.start(tmp_path, kind="uvicorn", env=relay_env, migrate_db=False)
    local = servers.start(
        tmp_path / "local",
        kind="daphne",
        env=servers.base_env(tmp_path / "local", CHALLENGE_TIMEOUT="1", WORKER_ID="local", **debug),
    )
    try:
        await ws_flows(relay, seen, raw=True)
        await ws_flows(local, seen, raw=False)
        await asyncio.to_thread(http_flows, local, seen)
        await grpc_calls(hub, seen)
        await asyncio.to_thread(admin_pages, local, seen)
        await asyncio.to_thread(admin_pages, relay, seen)  # the relay's audit is shared with the hub
        for server in (relay, local):
            seen.texts.append(await asyncio.to_thread(scrape, server))
    finally:
        for process in (relay, local, hub):
            process.stop()
    seen.texts += [relay.log(), local.log(), hub.log()]
    assert sum(name.startswith("token ") for name in seen.secrets) >= 4  # the flows did issue tokens
    assert "DEBUG" in local.log()  # every logger was at DEBUG
    assert seen.leaks() == []
    for server, worker in ((relay, "relay"), (local, "local")):
        check_outcome_lines(server, worker, log_format)
    if log_format == "json":  # every record is one JSON object on one line
        for server in (relay, local):
            assert [line for line in server.log().splitlines() if not _json(line)] == []
        # runauthority prints where it listens, and nothing else but records.
        assert [ln for ln in hub.log().splitlines() if not _json(ln)] == [f"listening on {hub.target}"]
    probe = Seen()  # and the search does find a secret where there is one
    probe.texts = [f"... {API_SECRET} ..."]
    assert probe.leaks() == ["API secret"]


FIELDS = {"outcome", "challenge_id", "key_fp", "transport", "upstream", "latency_ms", "client", "worker"}
#: A plain outcome line: ``<date> <time> LEVEL challenges.flows.outcome flow <outcome> id=... ...``.
PLAIN = re.compile(
    r"^\S+ \S+ (?P<level>[A-Z]+) challenges\.flows\.outcome flow (?P<outcome>\S+) (?P<rest>.*)$"
)
NAMES = {"id": "challenge_id", "key": "key_fp"}


def _json(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def outcome_lines(log: str, log_format: str) -> list[dict[str, Any]]:
    """The outcome lines of a log, as their fields (and ``level``)."""
    lines = []
    for line in log.splitlines():
        if log_format == "json":
            record = _json(line)
            if record is None or record["logger"] != "challenges.flows.outcome":
                continue
            assert {"time", "level", "logger", "message"} | FIELDS <= record.keys(), record
            assert record["message"].startswith(f"flow {record['outcome']} id="), record
        else:
            match = PLAIN.match(line)
            if match is None:
                continue
            pairs = (pair.split("=", 1) for pair in match["rest"].split(" "))
            record = {NAMES.get(name, name): value for name, value in pairs}
            record.update(outcome=match["outcome"], level=match["level"])
            assert record.keys() >= FIELDS, line
            record["latency_ms"] = float(record["latency_ms"])
        lines.append(record)
    return lines


def check_outcome_lines(server: servers.Server, worker: str, log_format: str) -> None:
    """One INFO line per flow of this worker's audit rows, with the row's fields; and one DEBUG
    line per refusal, as many as the aggregated rows count."""
    lines = outcome_lines(server.log(), log_format)
    rows = server.rows(
        "SELECT challenge_id, outcome, count, public_key, transport, upstream, client_ip, challenged_at"
        " FROM challenges_challengeattempt WHERE worker = ?",
        (worker,),
    )
    flows = {row[0]: row for row in rows if row[7] is not None}  # a flow's row says when it was challenged
    assert len(flows) >= 3, rows
    info = [line for line in lines if line["level"] == "INFO"]
    assert sorted(line["challenge_id"] for line in info) == sorted(flows)  # one line per flow
    for line in info:
        _, outcome, _, key, transport, upstream, client, _ = flows[line["challenge_id"]]
        assert line["outcome"] == outcome
        assert line["key_fp"] == hashlib.sha256(key.encode()).hexdigest()[:12]
        assert (line["transport"], line["upstream"], line["client"]) == (transport, upstream, client)
        assert line["worker"] == worker
        assert line["latency_ms"] >= 0
    refusals: Counter[str] = Counter()
    for row in rows:
        if row[7] is None:
            refusals[row[1]] += row[2]
    assert sum(refusals.values()) >= 5, rows
    assert Counter(line["outcome"] for line in lines if line["level"] == "DEBUG") == refusals
