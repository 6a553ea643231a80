"""Log lines: JSON when ``LOG_FORMAT=json``, and the one line each flow outcome gets.

:class:`JsonFormatter` (``tokensite.settings`` ``LOGGING``) makes every record,
ours and third-party ones alike, one JSON object on one line: ``time`` (UTC,
ISO 8601), ``level``, ``logger``, ``message``, every structured field the
record carries (``extra=``) as a key of its own (an object that is not data,
by its type's name), and ``exc`` / ``stack`` when there is a traceback.

:func:`outcome` writes the line of one flow outcome on the logger
``challenges.flows.outcome``: the challenge id, a fingerprint of the key
(:func:`fingerprint`, never the key a client typed), the outcome code, the
transport, the upstream, the latency in ms, the client address and the worker.
No token, secret or signature is ever a field.

The filters ``tokensite.settings`` ``LOGGING`` puts on uvicorn's records: a
client's bad UTF-8 as one INFO line (:class:`ClientFrameErrors`), the
per-WebSocket lines with the access log (:class:`WebSocketAccessLines`), and
no handshake header or frame preview at DEBUG (:class:`WebSocketProtocolLines`).

Pure module: no Django, Channels, grpc or prometheus import.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from .clients import answered_elsewhere

OUTCOME_LOGGER = logging.getLogger("challenges.flows.outcome")

#: What every LogRecord has: anything else on a record is a structured field.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
#: Fields some libraries add that say nothing new (uvicorn's message with terminal colours).
_DROPPED = _STANDARD | {"color_message"}
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")
#: Field values written as they are; any other object by its type's name only (Django's
#: ``request``, whose text would carry the URL's query string).
_DATA = (str, int, float, bool, type(None), list, tuple, dict)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:  # a malformed call still leaves a line
            message = str(record.msg)
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for key, value in record.__dict__.items():
            if key not in _DROPPED and key not in entry:
                entry[key] = value if isinstance(value, _DATA) else type(value).__name__
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


class ClientFrameErrors(logging.Filter):
    """uvicorn logs a text frame that is not UTF-8 as an ERROR with a traceback, after it
    closed the connection with 1007 as RFC 6455 says. It is a client's bad input, not the
    server's fault: one INFO line, no traceback (a client could otherwise fill the log and
    page an operator with tracebacks of its own making)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.name == "uvicorn.error"
            and isinstance(record.msg, str)
            and record.msg.startswith("Invalid UTF-8")
        ):
            record.msg, record.args = "a client sent a text frame that is not UTF-8: closed (1007)", ()
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


#: What uvicorn logs on ``uvicorn.error`` for every WebSocket: its answer to the handshake
#: ('... "WebSocket /ws/token" [accepted]', or a status) and the websockets library's
#: "connection open", "connection closed", "connection rejected (...)".
_WEBSOCKET_LINES = ('%s - "WebSocket %s"', "connection open", "connection closed", "connection rejected")


class WebSocketAccessLines(logging.Filter):
    """uvicorn's access log covers HTTP requests only: each WebSocket still gets two or three
    INFO lines on ``uvicorn.error``. They are the WebSocket side of the access log, and go
    with it: while ``uvicorn.access`` is silenced (``make serve``, or uvicorn's
    ``--no-access-log``) they are dropped. The flow's own outcome line and the audit say
    who came and what they got; a client opening sockets cannot flood the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno <= logging.INFO
            and isinstance(record.msg, str)
            and record.msg.startswith(_WEBSOCKET_LINES)
        ):
            access = logging.getLogger("uvicorn.access")
            return bool(access.handlers or access.propagate)
        return True


#: The websockets library's DEBUG lines for each handshake line and header, and for each
#: frame (with a preview of its payload), in both directions; its server and client, legacy
#: and sans-I/O, write the same ones.
_PROTOCOL_LINES = frozenset(
    {
        "< %s %s %s", "< GET %s HTTP/1.1", "> GET %s HTTP/1.1", "< HTTP/1.1 %d %s", "> HTTP/1.1 %d %s",
        "< %s: %s", "> %s: %s", "< [body] (%d bytes)", "> [body] (%d bytes)", "< %s", "> %s",
    }
)  # fmt: skip


class WebSocketProtocolLines(logging.Filter):
    """At DEBUG the websockets library logs every handshake header (a browser's session
    cookie is sent with a same-origin WebSocket handshake, an API client's Authorization too)
    and a preview of every frame (a token's head and tail): uvicorn hands it its logger
    ``uvicorn.error``, and a client in one of our processes logs on ``websockets.client``.
    Those lines are dropped; the library's other DEBUG lines (the connection's states, EOF)
    and every line above DEBUG stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno <= logging.DEBUG
            and (record.name == "uvicorn.error" or record.name.startswith("websockets."))
            and isinstance(record.msg, str)
            and record.msg in _PROTOCOL_LINES
        )


def fingerprint(key: str) -> str:
    """12 hex digits of the key string's SHA-256 (``""`` for no key): enough to follow one
    key through the logs, and nothing a client wrote is copied into them."""
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:12] if key else ""


def outcome(
    level: int,
    *,
    outcome: str,
    challenge_id: str,
    key: str,
    transport: str,
    upstream: str,
    latency_ms: float,
    client: str | None,
    worker: str,
    answered_from: str | None = None,
) -> None:
    """The one line of a flow outcome (a no-op when ``level`` is not logged). ``answered_from``
    is the answer's address, written only when it is not the client's: whoever blocks
    addresses from the log blocks the one that sent a forged answer, not its victim."""
    if not OUTCOME_LOGGER.isEnabledFor(level):
        return
    fields = {
        "outcome": outcome,
        # A refusal's id is whatever the client sent: only id characters, bounded.
        "challenge_id": _UNSAFE.sub("?", challenge_id[:64]),
        "key_fp": fingerprint(key),
        "transport": transport,
        "upstream": upstream,
        "latency_ms": round(latency_ms, 1),
        "client": client or "",
        "worker": worker,
    }
    line = "flow %s id=%s key=%s transport=%s upstream=%s latency_ms=%.1f client=%s worker=%s"
    if elsewhere := answered_elsewhere(client, answered_from):
        fields["answered_from"] = elsewhere
        line += " answered_from=%s"
    OUTCOME_LOGGER.log(level, line, *fields.values(), extra=fields)
