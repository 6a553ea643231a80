"""Log lines: the JSON formatter, the outcome line, and LOG_FORMAT in a real process."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from datetime import datetime

import pytest

from challenges import logs
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
