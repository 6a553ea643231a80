"""The operators' commands: ``tokens list/show``, ``audit list/show``, ``auditexport`` (with
its progress on a large export) and ``flows`` (and ``flows --follow`` against a real server,
ended with Ctrl-C)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import websockets
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from bench.auditdata import populate
from challenges import exports, tokens
from challenges.client import get_token_async
from challenges.identity import PrivateKey
from challenges.management.commands.flows import GAP_GRACE, Follower, wanted
from challenges.models import BlockedKey, ChallengeAttempt, IssuedToken, RevokedToken
from tests import servers

KEY_A = "bbaarei" + "a" * 52
KEY_B = "bbaarei" + "b" * 52


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def flow(outcome: str, *, key: str = KEY_A, ago: timedelta = timedelta(0), **fields) -> ChallengeAttempt:
    at = timezone.now() - ago
    defaults = {"client_ip": "10.1.1.1", "worker": "host:1", "transport": "ws", "upstream": "local"}
    return ChallengeAttempt.objects.create(
        created_at=at, finished_at=at + timedelta(milliseconds=25), outcome=outcome, public_key=key,
        **{**defaults, **fields},
    )  # fmt: skip


def issue(row: ChallengeAttempt, signer, *, ttl: float = 3600) -> IssuedToken:
    minted = tokens.mint_token(signer=signer, subject=PrivateKey.generate().public, ttl=60)
    return IssuedToken.objects.create(
        attempt=row, jti=minted.jti, token_sha256=minted.sha256, public_key=row.public_key, issuer="iss",
        issued_at=row.finished_at, expires_at=row.finished_at + timedelta(seconds=ttl),
    )  # fmt: skip


@pytest.fixture
def issued(authority_signer):
    """Four tokens: active, expired, revoked, and one of a blocked key."""
    active = issue(flow("success", challenged_at=timezone.now(), latency_ms=21.5), authority_signer)
    expired = issue(flow("success", ago=timedelta(days=3)), authority_signer, ttl=60)
    revoked = issue(flow("success", ago=timedelta(hours=2)), authority_signer)
    blocked = issue(flow("success", key=KEY_B, ago=timedelta(hours=1)), authority_signer)
    RevokedToken.objects.create(jti=revoked.jti, revoked_at=timezone.now(), actor="cli:ops", reason="leaked")
    BlockedKey.objects.create(public_key=KEY_B, blocked_at=timezone.now(), actor="admin:root")
    return {"active": active, "expired": expired, "revoked": revoked, "blocked": blocked}


# -- tokens list / show ------------------------------------------------------------------------


@pytest.mark.django_db
def test_tokens_list_is_a_table_newest_first_with_each_standing(issued):
    out, _ = run("tokens", "list")
    lines = out.splitlines()
    assert lines[0].split() == ["issued", "(UTC)", "jti", "key", "expires", "(UTC)", "standing"]
    jtis = [issued[name].jti for name in ("active", "blocked", "revoked", "expired")]
    assert [line.split()[2] for line in lines[1:5]] == jtis  # newest first
    assert [line.rsplit("  ", 1)[-1].strip() for line in lines[1:5]] == [
        "active",
        "key blocked",
        "revoked",
        "expired",
    ]
    assert KEY_A[:12] in out
    assert KEY_A not in out
    assert lines[-1] == "4 tokens"


@pytest.mark.django_db
def test_tokens_list_filters_and_json(issued):
    def jtis(*args: str) -> list[str]:
        return [item["jti"] for item in json.loads(run("tokens", "list", "--json", *args)[0])]

    assert jtis("--active") == [issued["active"].jti]
    assert jtis("--revoked") == [issued["blocked"].jti, issued["revoked"].jti]
    assert jtis("--key", KEY_B) == [issued["blocked"].jti]
    assert jtis("--since", "90m") == [issued["active"].jti, issued["blocked"].jti]
    assert jtis("--until", "1d") == [issued["expired"].jti]
    assert jtis("--limit", "1") == [issued["active"].jti]
    (item,) = json.loads(run("tokens", "list", "--json", "--active")[0])
    assert item["public_key"] == KEY_A
    assert item["standing"] == "active"
    assert item["expires_at"].endswith("Z")
    out, _ = run("tokens", "list", "--limit", "2")
    assert out.splitlines()[-1] == "2 tokens (the newest 2; --limit 0 for all)"
    with pytest.raises(CommandError, match="--since: not a time"):
        run("tokens", "list", "--since", "last tuesday")


@pytest.mark.django_db
def test_tokens_show_prints_the_standing_and_the_timeline(issued):
    out, _ = run("tokens", "show", issued["active"].jti)
    facts = dict(re.findall(r"^(\w[\w ]*?)\s{2,}(.+)$", out, re.M))
    assert facts["standing"] == "active"
    assert facts["key"] == KEY_A
    assert facts["revoked"] == "no"
    assert facts["key blocked"] == "no"
    assert facts["latency"] == "21.5 ms"
    assert "on worker host:1" in facts["attempt"]
    steps = re.findall(r"^  (asked|challenged|answered|success)\s", out, re.M)
    assert steps == ["asked", "challenged", "success"]
    revoked, _ = run("tokens", "show", issued["revoked"].jti)
    assert re.search(r"^standing\s+revoked$", revoked, re.M)
    assert re.search(r"^revoked\s+yes, .* by cli:ops \(leaked\)$", revoked, re.M)
    blocked, _ = run("tokens", "show", issued["blocked"].jti)
    assert re.search(r"^standing\s+key blocked$", blocked, re.M)
    assert re.search(r"^key blocked\s+yes, .* by admin:root$", blocked, re.M)
    expired, _ = run("tokens", "show", issued["expired"].jti)
    assert re.search(r"^standing\s+expired$", expired, re.M)
    (item,) = json.loads(run("tokens", "show", issued["revoked"].jti, "--json")[0])
    assert item["revoked"]["actor"] == "cli:ops"
    assert [s["step"] for s in item["timeline"]] == ["asked", "success"]
    assert item["attempt"]["id"] == issued["revoked"].attempt_id
    with pytest.raises(CommandError, match="no issued token has the jti 'nope'"):
        run("tokens", "show", "nope")


@pytest.mark.django_db
def test_a_jti_that_begins_with_a_dash_is_shown_and_revoked(authority_signer):
    """One jti in 64 begins with '-': argparse took it for an unknown option ('the following
    arguments are required: jti'), so such a token could be neither shown nor revoked."""
    token = issue(flow("success"), authority_signer)
    IssuedToken.objects.filter(pk=token.pk).update(jti="-Kc10jnCIYdtx1gkVrvqwg")
    out, _ = run("tokens", "show", "-Kc10jnCIYdtx1gkVrvqwg")
    assert re.search(r"^jti\s+-Kc10jnCIYdtx1gkVrvqwg$", out, re.M)
    (item,) = json.loads(run("tokens", "show", "-Kc10jnCIYdtx1gkVrvqwg", "--json")[0])
    assert item["jti"] == "-Kc10jnCIYdtx1gkVrvqwg"
    run("tokens", "revoke", "--reason", "leaked", "-Kc10jnCIYdtx1gkVrvqwg")
    assert RevokedToken.objects.get().jti == "-Kc10jnCIYdtx1gkVrvqwg"
    with pytest.raises(CommandError, match="unrecognized arguments: --nope"):
        run("tokens", "show", "x", "--nope")  # a name that is no option's is still refused


# -- audit list / show -------------------------------------------------------------------------


@pytest.fixture
def attempts():
    rows = {
        "ok": flow("success", latency_ms=12.25),
        "bad": flow("bad_signature", key=KEY_B, client_ip="10.2.2.2", worker="host:2", latency_ms=30.0),
        "json": flow("invalid_json", key="", client_ip="10.3.3.3", count=17, ago=timedelta(minutes=1)),
        "old": flow("bad_signature", ago=timedelta(days=2)),
    }
    return rows


@pytest.mark.django_db
def test_audit_list_filters_and_shows_counts(attempts):
    out, _ = run("audit", "list")
    lines = out.splitlines()
    assert lines[0].split() == [
        "time",
        "(UTC)",
        "outcome",
        "count",
        "via",
        "worker",
        "key",
        "address",
        "latency",
    ]
    assert [line.split()[2] for line in lines[1:5]] == [
        "bad_signature",
        "success",
        "invalid_json",
        "bad_signature",
    ]
    assert re.search(r"invalid_json\s+17\s+ws", out)
    assert "12.2 ms" in out or "12.3 ms" in out

    def ids(*args: str) -> list[int]:
        return [item["id"] for item in json.loads(run("audit", "list", "--json", *args)[0])]

    assert ids("--outcome", "failure", "--since", "1h") == [attempts["bad"].pk, attempts["json"].pk]
    assert ids("--outcome", "success", "--outcome", "invalid_json") == [
        attempts["ok"].pk,
        attempts["json"].pk,
    ]
    assert ids("--address", "10.3.3.3") == [attempts["json"].pk]
    assert ids("--key", KEY_B) == [attempts["bad"].pk]
    assert ids("--worker", "host:2") == [attempts["bad"].pk]
    assert ids("--until", "1d") == [attempts["old"].pk]
    (item,) = json.loads(run("audit", "list", "--json", "--address", "10.3.3.3")[0])
    assert item["count"] == 17
    assert item["latency_ms"] is None


@pytest.mark.django_db
def test_an_answer_from_another_address_is_listed_under_both_addresses(attempts, authority_signer):
    stranger = flow("bad_signature", key=KEY_B, client_ip="10.4.4.4", answer_ip="10.5.5.5")
    same = flow("success", key=KEY_B, client_ip="10.5.5.5", answer_ip="10.5.5.5")

    def ids(address: str) -> list[int]:
        return [item["id"] for item in json.loads(run("audit", "list", "--json", "--address", address)[0])]

    assert ids("10.5.5.5") == [same.pk, stranger.pk]  # asked from it, or answered from it
    assert ids("10.4.4.4") == [stranger.pk]
    out, _ = run("audit", "list", "--address", "10.5.5.5")
    assert "10.4.4.4 (answered from 10.5.5.5)" in out
    assert "(answered from" not in out.splitlines()[1]  # the newest: asked and answered from one address
    shown, _ = run("audit", "show", str(stranger.pk))
    assert re.search(r"^address\s+10\.4\.4\.4 \(answered from 10\.5\.5\.5\)$", shown, re.M)
    (item,) = json.loads(run("audit", "show", str(stranger.pk), "--json")[0])
    assert (item["client_ip"], item["answer_ip"]) == ("10.4.4.4", "10.5.5.5")
    last_two = run("flows", "--last", "2")[0].splitlines()
    assert last_two[0].endswith("  answered from 10.5.5.5")
    assert "answered from" not in last_two[1]
    # A user who asked on one network and answered on another: the token's flow says both.
    moved = issue(flow("success", client_ip="10.6.6.6", answer_ip="2001:db8::6"), authority_signer)
    token, _ = run("tokens", "show", moved.jti)
    attempt = re.search(r"^attempt\s+#\d+: ws from (.+?) \(Origin", token, re.M)
    assert attempt is not None, token
    assert attempt.group(1) == "10.6.6.6 (answered from 2001:db8::6)"


@pytest.mark.django_db
def test_audit_show_prints_an_attempt_and_its_aggregated_count(attempts):
    out, _ = run("audit", "show", str(attempts["json"].pk))
    assert re.search(r"^count\s+17 refusals aggregated: first seen ", out, re.M)
    assert re.search(r"^token\s+none$", out, re.M)
    assert re.findall(r"^  (\w+)\s+\d{4}-", out, re.M) == ["asked", "invalid_json"]
    with pytest.raises(CommandError, match="no attempt has the id 999999"):
        run("audit", "show", "999999")


# -- auditexport ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_auditexport_streams_the_admins_csv_with_progress_on_a_large_export(admin_client):
    written = populate(20_000, end=timezone.now(), days=5, keys=100, addresses=100, method="direct")
    out, err = run("auditexport")
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == list(exports.ATTEMPT_COLUMNS)
    assert len(rows) == 20_001
    assert sum(int(r[6]) for r in rows[1:]) == sum(v for k, v in written.items() if k.endswith(":sum"))
    progress = [line for line in err.splitlines() if line.startswith("exporting attempts [")]
    assert len(progress) == 10  # a line per tenth, not a line per chunk, off a terminal
    assert "100% 20,000/20,000" in progress[-1]
    assert err.splitlines()[-1] == "exported 20,000 attempts"
    admin = b"".join(admin_client.get("/admin/challenges/challengeattempt/export.csv").streaming_content)
    assert sorted(csv.reader(io.StringIO(admin.decode()))) == sorted(rows)  # the admin's, row for row

    failures, _ = run("auditexport", "--outcome", "failure", "--since", "2d")
    picked = list(csv.DictReader(io.StringIO(failures)))
    expected = ChallengeAttempt.objects.exclude(outcome="success").filter(
        created_at__gte=timezone.now() - timedelta(days=2)
    )
    assert {int(r["id"]) for r in picked} == set(expected.values_list("id", flat=True))
    tokens_csv, tokens_err = run("auditexport", "--tokens", "--since", "2d")
    assert next(iter(csv.reader(io.StringIO(tokens_csv)))) == list(exports.TOKEN_COLUMNS)
    assert "exported" in tokens_err
    assert " tokens" in tokens_err
    with pytest.raises(CommandError, match="--tokens takes only"):
        run("auditexport", "--tokens", "--outcome", "success")


# -- flows ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_flows_prints_the_last_rows_oldest_first(attempts):
    out, _ = run("flows", "--last", "3")
    lines = out.splitlines()
    assert [line.split()[4] for line in lines] == ["bad_signature", "invalid_json", "bad_signature"]  # by id
    assert lines[1].endswith("x17")
    assert KEY_B[:12] in lines[0]
    assert "10.2.2.2" in lines[0]
    assert "30.0 ms" in lines[0]
    only, _ = run("flows", "--outcome", "failure", "--worker", "host:2")
    assert len(only.splitlines()) == 1
    assert "bad_signature" in only


@pytest.mark.django_db
def test_the_follower_waits_for_rows_committed_out_of_order_and_watches_counts():
    now = [0.0]
    base = flow("success").pk
    follower = Follower(wanted(outcomes=None, worker=None), after=base, clock=lambda: now[0])
    # Explicit ids from here: base + 2 commits while base + 1 is still in flight.
    flow("bad_signature", id=base + 2)
    assert [line.split()[4] for line in follower.poll()] == ["bad_signature"]
    assert follower.floor == base  # waiting for base + 1
    flow("invalid_json", key="", count=1, id=base + 1)
    now[0] += 1
    assert [line.split()[4] for line in follower.poll()] == ["invalid_json"]
    assert follower.floor == base + 2
    assert not follower.seen
    assert not follower.gaps
    ChallengeAttempt.objects.filter(pk=base + 1).update(count=9)
    grown = follower.poll()
    assert len(grown) == 1
    assert "+8 invalid_json from 10.1.1.1" in grown[0]
    assert "now x9" in grown[0]
    assert follower.poll() == []  # once
    flow("success", id=base + 5)  # base + 3 and + 4 never commit (rolled back): given up in time
    assert len(follower.poll()) == 1
    assert follower.floor == base + 2
    now[0] += GAP_GRACE
    follower.poll()
    assert follower.floor == base + 5
    assert not follower.gaps
    only_failures = Follower(wanted(outcomes=["failure"], worker=None), after=base + 5)
    flow("success", id=base + 6)
    flow("too_many_pending", id=base + 7)
    assert [line.split()[4] for line in only_failures.poll()] == ["too_many_pending"]
    assert only_failures.floor == base + 7  # a filtered row is seen, not a gap


@pytest.mark.server
@pytest.mark.timeout(90)
def test_flows_follow_shows_every_outcome_as_it_happens_and_ctrl_c_ends_it(tmp_path: Path) -> None:
    errors = tmp_path / "flows.stderr"
    key = PrivateKey.generate()
    seen: list[str] = []
    with servers.running(tmp_path, kind="daphne") as server, errors.open("w") as stderr:
        command = [sys.executable, "manage.py", "flows", "--follow", "--interval", "0.2", "--last", "100"]
        with subprocess.Popen(
            command, cwd=servers.ROOT, env=server.env, stdout=subprocess.PIPE, stderr=stderr, text=True
        ) as follow:
            lines: queue.Queue[str] = queue.Queue()
            reader = threading.Thread(target=lambda: [lines.put(x) for x in follow.stdout or ()], daemon=True)
            reader.start()
            try:
                asyncio.run(_some_flows(server.ws, key))
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and not _all_seen(seen):
                    try:
                        seen.append(lines.get(timeout=0.5))
                    except queue.Empty:
                        continue
            finally:
                follow.send_signal(signal.SIGINT)  # Ctrl-C
                try:
                    code: int | None = follow.wait(10)
                except subprocess.TimeoutExpired:
                    code = None  # killed, so that closing its pipe cannot wait on the reader
                    follow.kill()
                    follow.wait(10)
                reader.join(5)
    assert _all_seen(seen), seen
    assert code == 0
    assert "Traceback" not in errors.read_text()
    success = next(line for line in seen if " success " in line)
    assert str(key.public)[:12] in success
    assert "127.0.0.1" in success
    assert success.endswith(" ms\n")


def _all_seen(lines: list[str]) -> bool:
    text = "\n".join(lines)
    return (
        text.count(" success ") >= 2
        and " bad_signature " in text
        and " invalid_json " in text
        and bool(re.search(r"x3$|now x3\)", text, re.M))  # the refusal row's count grew to 3
    )


async def _some_flows(url: str, key: PrivateKey) -> None:
    await get_token_async(url, key)
    await get_token_async(url, key)
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "token", "pub": str(key.public)}))
        json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "challenge", "sig": [0] * 64}))
        assert json.loads(await ws.recv())["code"] == "bad_signature"
        for _ in range(3):
            await ws.send("not json")
            assert json.loads(await ws.recv())["code"] == "invalid_json"


# -- out-of-range arguments: one clear line each, never a traceback ------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args",
    [
        ("audit", "list", "--since", "800000d"),
        ("tokens", "list", "--since", "800000d"),
        ("auditexport", "--until", "99999999w"),
    ],
)
def test_a_time_before_the_year_1_is_refused_in_words(args):
    with pytest.raises(CommandError, match=r"too far back: '\d+[dw]' \(before the year 1\)"):
        run(*args)


@pytest.mark.django_db
@pytest.mark.parametrize("days", ["nan", "inf", "1000000", "-1"])
def test_pruneaudit_refuses_an_age_that_is_no_number_of_days(days):
    flow("success", ago=timedelta(days=400))
    with pytest.raises(CommandError, match="--older-than"):
        run("pruneaudit", "--older-than", days)
    assert ChallengeAttempt.objects.count() == 1


def test_gettoken_reads_a_key_file_an_editor_saved_with_a_bom_and_refuses_other_bytes(tmp_path):
    me = PrivateKey.generate()
    (tmp_path / "bom").write_bytes(b"\xef\xbb\xbf" + str(me).encode() + b"\n")
    (tmp_path / "latin").write_bytes(str(me).encode()[:-1] + b"\xe9\n")
    closed = f"ws://127.0.0.1:{servers.free_port()}/ws/token"  # nothing listens: the read is what counts
    with pytest.raises(CommandError) as read:
        run("gettoken", "--key-file", str(tmp_path / "bom"), "--url", closed, "--timeout", "2")
    assert "cannot read the private key" not in str(read.value)
    with pytest.raises(CommandError, match="a byte that is not ASCII") as refused:
        run("gettoken", "--key-file", str(tmp_path / "latin"), "--url", closed)
    assert str(me)[8:] not in str(refused.value)  # never the key
    for timeout in ("0", "nan", "inf"):
        with pytest.raises(CommandError, match="argument --timeout: must be a positive number of seconds"):
            run("gettoken", "--url", closed, "--timeout", timeout)


@pytest.mark.parametrize(
    ("command", "says"),
    [
        (["serve", "--port", "99999"], "a port is 1 to 65535, not 99999"),
        (["serve", "--port", "http"], "not a port number: 'http'"),
        (["runauthority", "--address", "127.0.0.1:99999"], "the port must be 0 to 65535"),
    ],
)
def test_a_port_out_of_range_is_refused_not_wrapped(tmp_path, command, says):
    """The kernel took 99999 as 99999 - 65536 and the server answered there."""
    env = servers.base_env(tmp_path, DEBUG="false", SECRET_KEY="s" * 50, ALLOWED_HOSTS="127.0.0.1")
    env["AUTHORITY_PRIVATE_KEY"] = str(PrivateKey.generate())
    env["AUTHORITY_API_KEYS"] = "bopenopenopenopenopenopenop"
    out = subprocess.run(
        [sys.executable, "manage.py", *command],
        cwd=servers.ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode != 0
    assert says in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("audit", "list", "--outcome", "nosuch"), "not an outcome: 'nosuch'"),
        (("auditexport", "--outcome", "Success"), "not an outcome: 'Success'"),
        (("flows", "--outcome", "bad-signature"), "not an outcome: 'bad-signature'"),
        (("audit", "list", "--address", "not-an-ip"), "not an IP address: 'not-an-ip'"),
    ],
)
def test_a_filter_that_could_match_nothing_is_refused_not_an_empty_answer(args, says):
    with pytest.raises(CommandError, match=re.escape(says)):
        run(*args)


@pytest.mark.django_db
def test_the_filters_take_every_outcome_and_an_address_in_any_spelling():
    flow("bad_signature", client_ip="2001:db8::1")
    flow("success")
    out, _ = run("audit", "list", "--outcome", "bad_signature", "--address", "2001:DB8:0::1", "--json")
    assert [row["outcome"] for row in json.loads(out)] == ["bad_signature"]
    both, _ = run("audit", "list", "--outcome", "failure", "--outcome", "success", "--json")
    assert len(json.loads(both)) == 2  # the union (it was success among the failures: none)
