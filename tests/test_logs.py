"""Log lines: the JSON formatter, the outcome line, the filters on uvicorn's records, and
LOG_FORMAT and LOG_LEVEL=DEBUG in real processes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import subprocess
import sys
from datetime import datetime

import pytest
import websockets

from challenges import logs, tokens
from challenges.identity import PrivateKey, encode_buffer
from challenges.logs import JsonFormatter
from tests import servers

pytestmark = pytest.mark.once


def record(msg: str, *args: object, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    made = logging.getLogger("some.logger").makeRecord(
        "some.logger", level, "file.py", 12, msg, args, None, extra=extra or None
    )
    return made


def test_a_record_is_one_json_object_with_its_fields_as_keys():
    line = JsonFormatter().format(record("flow %s for %d", "ok", 3, outcome="success", latency_ms=5.1))
    entry = json.loads(line)
    assert entry.pop("time").endswith("Z")
    assert entry == {
        "level": "INFO",
        "logger": "some.logger",
        "message": "flow ok for 3",
        "outcome": "success",
        "latency_ms": 5.1,
    }


def test_the_time_is_utc_to_the_millisecond():
    made = record("x")
    made.created = 1_800_000_000.1234
    assert json.loads(JsonFormatter().format(made))["time"] == "2027-01-15T08:00:00.123Z"
    datetime.fromisoformat(json.loads(JsonFormatter().format(record("y")))["time"].replace("Z", "+00:00"))


def test_a_traceback_and_newlines_stay_on_one_line():
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        made = logging.getLogger("t").makeRecord(
            "t", logging.ERROR, "f.py", 1, "failed:\n%s", ("two\nlines",), sys.exc_info()
        )
    line = JsonFormatter().format(made)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "failed:\ntwo\nlines"
    assert entry["exc"].startswith("Traceback (most recent call last)")
    assert "ValueError: bad\nvalue" in entry["exc"]


def test_an_object_field_is_written_as_its_type_name_and_colours_are_dropped():
    class Request:
        def __str__(self) -> str:
            return "GET /path?token=secret"

    line = JsonFormatter().format(record("m", request=Request(), color_message="\x1b[36mm\x1b[0m", n=[1, 2]))
    entry = json.loads(line)
    assert entry["request"] == "Request"
    assert "secret" not in line
    assert "color_message" not in entry
    assert entry["n"] == [1, 2]


def test_a_malformed_call_still_makes_a_line():
    entry = json.loads(JsonFormatter().format(record("%s and %s", "only one")))
    assert entry["message"] == "%s and %s"


def test_the_outcome_line_has_every_field_and_a_fingerprint_of_the_key(caplog):
    key = "bbaareigxlkmadavrbk35ks762pewibz2b3qxf462uyrsllycdjupob2rdi"
    with caplog.at_level(logging.DEBUG, logger="challenges.flows.outcome"):
        logs.outcome(
            logging.INFO,
            outcome="success",
            challenge_id="8df9f114abc-_",
            key=key,
            transport="ws",
            upstream="local",
            latency_ms=5.06,
            client="203.0.113.9",
            worker="web1:42",
        )
    (made,) = caplog.records
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:12]
    assert made.getMessage() == (
        f"flow success id=8df9f114abc-_ key={fingerprint} transport=ws upstream=local latency_ms=5.1"
        " client=203.0.113.9 worker=web1:42"
    )
    entry = json.loads(JsonFormatter().format(made))
    assert {k: entry[k] for k in ("outcome", "challenge_id", "key_fp", "latency_ms", "client", "worker")} == {
        "outcome": "success",
        "challenge_id": "8df9f114abc-_",
        "key_fp": fingerprint,
        "latency_ms": 5.1,
        "client": "203.0.113.9",
        "worker": "web1:42",
    }
    assert key not in json.dumps(entry)


@pytest.mark.parametrize(
    ("answered_from", "tail"),
    [("198.51.100.9", " answered_from=198.51.100.9"), ("203.0.113.9", ""), (None, "")],
)
def test_the_outcome_line_names_an_answer_from_another_address(caplog, answered_from, tail):
    with caplog.at_level(logging.DEBUG, logger="challenges.flows.outcome"):
        logs.outcome(
            logging.INFO, outcome="bad_signature", challenge_id="c", key="", transport="ws",
            upstream="local", latency_ms=1, client="203.0.113.9", worker="w", answered_from=answered_from,
        )  # fmt: skip
    (made,) = caplog.records
    assert made.getMessage().endswith(" client=203.0.113.9 worker=w" + tail)
    entry = json.loads(JsonFormatter().format(made))
    assert entry.get("answered_from") == (answered_from if tail else None)


def test_what_a_client_wrote_never_reaches_the_outcome_line(caplog):
    with caplog.at_level(logging.DEBUG, logger="challenges.flows.outcome"):
        logs.outcome(
            logging.DEBUG,
            outcome="unknown_challenge",
            challenge_id="x\n2026 INFO forged line" + "A" * 100,
            key="not a key\nreally",
            transport="http",
            upstream="local",
            latency_ms=0,
            client=None,
            worker="w",
        )
    (made,) = caplog.records
    assert "\n" not in made.getMessage()
    assert made.challenge_id == "x?2026?INFO?forged?line" + "A" * 41  # type: ignore[attr-defined]
    assert made.key_fp == hashlib.sha256(b"not a key\nreally").hexdigest()[:12]  # type: ignore[attr-defined]
    assert made.client == ""  # type: ignore[attr-defined]


def test_an_outcome_at_a_level_not_logged_costs_no_record(caplog):
    with caplog.at_level(logging.INFO, logger="challenges.flows.outcome"):
        logs.outcome(
            logging.DEBUG, outcome="invalid_json", challenge_id="", key="", transport="ws",
            upstream="local", latency_ms=0, client="127.0.0.1", worker="w",
        )  # fmt: skip
    assert caplog.records == []
    assert logs.fingerprint("") == ""


def _django_logs(tmp_path, **env: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import django, logging; django.setup();"
        " logging.getLogger('uvicorn.error').info('from uvicorn');"
        " logging.getLogger('django.request').warning('Not Found: %s', '/x', extra={'status_code': 404});"
        " logging.getLogger('challenges.x').info('ours', extra={'n': 1})"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=servers.ROOT,
        env=servers.base_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_log_format_json_makes_every_record_of_a_process_one_json_object(tmp_path):
    out = _django_logs(tmp_path, LOG_FORMAT="json")
    assert out.returncode == 0, out.stderr
    entries = [json.loads(line) for line in out.stderr.splitlines()]  # Django's console once, too
    assert [(e["logger"], e["message"]) for e in entries] == [
        ("uvicorn.error", "from uvicorn"),
        ("django.request", "Not Found: /x"),
        ("challenges.x", "ours"),
    ]
    assert (entries[1]["status_code"], entries[2]["n"]) == (404, 1)
    plain = _django_logs(tmp_path, LOG_FORMAT="plain")
    assert [line.split(" ", 3)[3] for line in plain.stderr.splitlines()] == [
        "uvicorn.error from uvicorn",
        "django.request Not Found: /x",
        "challenges.x ours",
    ]


def test_an_unknown_log_format_is_refused_at_once(tmp_path):
    out = _django_logs(tmp_path, LOG_FORMAT="xml")
    assert out.returncode != 0
    assert "LOG_FORMAT must be 'plain' or 'json'" in out.stderr


@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING])
def test_json_lines_are_ascii(level):
    line = JsonFormatter().format(record("clé %s", "\u2028", level=level))
    assert line.isascii()
    assert json.loads(line)["message"] == "clé \u2028"


@pytest.mark.parametrize("access_log", [False, True])
def test_uvicorns_lines_for_each_websocket_go_with_its_access_log(access_log):
    access = logging.getLogger("uvicorn.access")
    saved = access.handlers, access.propagate
    access.handlers, access.propagate = ([logging.NullHandler()] if access_log else []), False
    try:
        keep = logs.WebSocketAccessLines().filter
        lines = [
            record('%s - "WebSocket %s" [accepted]', "127.0.0.1:5000", "/ws/token"),
            record('%s - "WebSocket %s" 403', "127.0.0.1:5000", "/ws/x"),
            record("connection open"),
            record("connection closed"),
            record("connection rejected (%d %s)", 403, "Forbidden"),
        ]
        assert [keep(line) for line in lines] == [access_log] * len(lines)
        assert keep(record("Uvicorn running on %s", "http://127.0.0.1:8000"))
        assert keep(record("Exception in ASGI application", level=logging.ERROR))
        assert keep(record("connection closed unexpectedly", level=logging.WARNING))  # never a warning
    finally:
        access.handlers, access.propagate = saved


def test_websocket_handshake_headers_and_frames_are_never_logged():
    keep = logs.WebSocketProtocolLines().filter

    def line(name: str, msg: str, *args: object, level: int = logging.DEBUG) -> logging.LogRecord:
        return logging.makeLogRecord({"name": name, "levelno": level, "msg": msg, "args": args})

    for name in ("uvicorn.error", "websockets.client", "websockets.server"):
        assert not keep(line(name, "< %s %s %s", "GET", "/ws/token?x=1", "HTTP/1.1"))
        assert not keep(line(name, "< %s: %s", "cookie", "sessionid=abc"))
        assert not keep(line(name, "> %s: %s", "authorization", "Bearer abc"))
        assert not keep(line(name, "> HTTP/1.1 %d %s", 101, "Switching Protocols"))
        assert not keep(line(name, "> %s", 'TEXT \'{"type": "token", "value": "eyJ...\''))
        assert not keep(line(name, "< %s", "TEXT '{...}' [87 bytes]"))
        assert keep(line(name, "= connection is %s", "OPEN"))  # the connection's states stay
        assert keep(line(name, "> EOF"))
        assert keep(line(name, "< %s", "x", level=logging.WARNING))  # never above DEBUG
    assert keep(line("challenges.other", "< %s", "ours"))  # another logger's lines are its own


SESSION, CSRF, BEARER = "sessionid-" + "s3ss" * 8, "csrf-" + "c5rf" * 8, "bearer-" + "b3ar" * 8


async def _flow_with_credentials(server: servers.Server, user: PrivateKey) -> str:
    """A full flow over a handshake carrying what a browser (its session cookie) or an API
    client (an Authorization header) may send: the token."""
    headers = {
        "Cookie": f"sessionid={SESSION}; csrftoken={CSRF}",
        "Authorization": f"Bearer {BEARER}",
        "X-Forwarded-Proto": "https",  # through a TLS proxy: DEBUG=false refuses a plain socket
    }
    async with websockets.connect(server.ws, additional_headers=headers) as sock:
        await sock.send(json.dumps({"type": "token", "pub": str(user.public)}))
        challenge = json.loads(await asyncio.wait_for(sock.recv(), 10))
        signature = encode_buffer(user.sign(bytes(challenge["value"]["data"])))
        await sock.send(json.dumps({"type": "challenge", "sig": signature}))
        reply = json.loads(await asyncio.wait_for(sock.recv(), 10))
    assert reply["type"] == "token", reply
    return str(reply["value"])


@pytest.mark.server
@pytest.mark.parametrize(
    ("kind", "debug_line"), [("serve", " DEBUG uvicorn.error "), ("daphne", " DEBUG daphne.")]
)
def test_at_debug_no_cookie_authorization_or_token_reaches_the_log(tmp_path, kind, debug_line):
    """``make serve``'s command (uvicorn) and daphne, every logger at DEBUG: a handshake's
    Cookie and Authorization and the token's frame leave no trace in the log (not even the
    head and tail of a frame's preview), and DEBUG lines are still written."""
    authority, user = PrivateKey.generate(), PrivateKey.generate()
    env = servers.base_env(
        tmp_path, LOG_LEVEL="DEBUG", DEBUG="false", AUTHORITY_PRIVATE_KEY=str(authority),
        SECRET_KEY="a-long-random-test-secret-" + "x" * 30, ALLOWED_HOSTS="127.0.0.1",
        SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto",
    )  # fmt: skip
    with servers.running(tmp_path, kind=kind, env=env) as server:
        token = asyncio.run(_flow_with_credentials(server, user))
        server.stop()
        log = server.log()
    assert tokens.verify_token(token, issuer=authority.public)["sub"] == str(user.public)
    assert debug_line in log, log  # DEBUG was on
    assert [secret for secret in (SESSION, CSRF, BEARER) if secret in log] == []
    signed = token.split(".", 1)[1]  # past the header every token shares
    assert [signed[i : i + 12] for i in range(len(signed) - 11) if signed[i : i + 12] in log] == []
