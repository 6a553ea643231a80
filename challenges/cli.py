"""What the operators' commands share: filters read from the command line, times, a table
for the terminal and JSON for scripts (``manage.py tokens``, ``audit``, ``flows``,
``auditexport``).

Times are UTC. A key is shown by its first 12 characters on a terminal (its fingerprint);
``--json`` gives it whole.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from django.core.management.base import CommandError, CommandParser
from django.db.models import Q, QuerySet

from . import reports
from .clients import answered_elsewhere
from .errors import Code
from .models import SUCCESS, ChallengeAttempt, IssuedToken

ANY_FAILURE = reports.ANY_FAILURE


class ValueParser(CommandParser):
    """A jti is random base64url, and one in 64 begins with ``-``: argparse took it for an
    option it did not know and refused the command. Here an argument that names none of
    the parser's options is a value (``--`` still ends the options, as anywhere)."""

    def _parse_optional(self, arg_string: str) -> Any:
        name = arg_string.split("=", 1)[0]
        if (
            arg_string.startswith("-")
            and arg_string != "--"
            and not any(option.startswith(name) for option in self._option_string_actions)
        ):
            return None
        return super()._parse_optional(arg_string)


def when(at: datetime | None, *, ms: bool = False) -> str:
    if at is None:
        return "-"
    text = f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S.%f}"
    return text[:-3] if ms else text[:-7]


def fingerprint(key: str) -> str:
    return key[:12] if key else "-"


def parse_time(text: str | None, *, now: datetime, option: str) -> datetime | None:
    if not text:
        return None
    try:
        return reports.parse_when(text, now=now)
    except ValueError as exc:
        raise CommandError(f"{option}: {exc}") from None


def add_time_options(parser: Any) -> None:
    parser.add_argument("--since", help="from this time: 30m, 2h, 7d (ago), or 2026-11-29[T12:00] UTC")
    parser.add_argument("--until", help="before this time (same forms)")


def outcome(text: str) -> str:
    """An ``--outcome`` value: ``success``, an error code, or ``failure`` (every outcome but
    success). Anything else is refused: it would select nothing, silently."""
    if text in (SUCCESS, ANY_FAILURE) or Code.lookup(text) is not None:
        return text
    raise argparse.ArgumentTypeError(
        f"not an outcome: {text[:40]!r} (success, {ANY_FAILURE}, or an error code such as bad_signature)"
    )


def address(text: str) -> str:
    """An ``--address`` value: an IPv4 or IPv6 address, as the audit records it."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {text[:40]!r}") from None


def add_attempt_options(parser: Any) -> None:
    add_time_options(parser)
    parser.add_argument("--key", help="this public key string")
    parser.add_argument(
        "--outcome",
        action="append",
        type=outcome,
        help=f"this outcome (repeat for several; '{ANY_FAILURE}' for every outcome but success)",
    )
    parser.add_argument("--address", type=address, help="this client address, as the asker or the answerer")
    parser.add_argument("--worker", help="this worker")


def attempts(options: dict[str, Any], *, now: datetime) -> QuerySet[ChallengeAttempt]:
    """The attempts the command-line filters select (any order)."""
    rows = _by_time_and_key(ChallengeAttempt.objects.all(), "created_at", options, now=now)
    if options.get("address"):
        address = options["address"]
        rows = rows.filter(Q(client_ip=address) | Q(answer_ip=address))
    if options.get("worker"):
        rows = rows.filter(worker=options["worker"])
    outcomes = set(options.get("outcome") or [])
    if ANY_FAILURE in outcomes:  # every failure, or with success too, every row
        return rows if SUCCESS in outcomes else rows.exclude(outcome=SUCCESS)
    if outcomes:
        rows = rows.filter(outcome__in=sorted(outcomes))
    return rows


def tokens(
    options: dict[str, Any], *, now: datetime, rows: QuerySet[IssuedToken] | None = None
) -> QuerySet[IssuedToken]:
    """The issued tokens the command-line filters (``--since``, ``--until``, ``--key``)
    select from ``rows`` (all tokens by default), in any order."""
    rows = IssuedToken.objects.all() if rows is None else rows
    return _by_time_and_key(rows, "issued_at", options, now=now)


def _by_time_and_key(
    rows: QuerySet[Any], field: str, options: dict[str, Any], *, now: datetime
) -> QuerySet[Any]:
    """``rows`` whose ``field`` is in ``--since`` .. ``--until`` (end excluded), of ``--key``."""
    since = parse_time(options.get("since"), now=now, option="--since")
    until = parse_time(options.get("until"), now=now, option="--until")
    if since:
        rows = rows.filter(**{f"{field}__gte": since})
    if until:
        rows = rows.filter(**{f"{field}__lt": until})
    if options.get("key"):
        rows = rows.filter(public_key=options["key"])
    return rows


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, right: Sequence[str] = ()) -> list[str]:
    """Columns padded to their widest cell; the ``right`` ones right-aligned (numbers)."""
    cells = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [
            c.rjust(w) if h in right else c.ljust(w) for c, w, h in zip(row, widths, headers, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return lines


def write_json_array(stream: TextIO, items: Iterable[dict[str, Any]]) -> int:
    """``items`` as one JSON array, written as they come (never held all at once)."""
    n = 0
    stream.write("[")
    for item in items:
        stream.write(("," if n else "") + "\n  " + json.dumps(item, default=_json_default))
        n += 1
    stream.write("\n]\n" if n else "]\n")
    stream.flush()
    return n


def _json_default(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    raise TypeError(type(value).__name__)


def attempt_dict(a: ChallengeAttempt) -> dict[str, Any]:
    return {
        "id": a.pk,
        "created_at": a.created_at,
        "challenged_at": a.challenged_at,
        "answered_at": a.answered_at,
        "finished_at": a.finished_at,
        "outcome": a.outcome,
        "count": a.count,
        "public_key": a.public_key,
        "client_ip": a.client_ip,
        "answer_ip": a.answer_ip,
        "origin": a.origin,
        "transport": a.transport,
        "worker": a.worker,
        "upstream": a.upstream,
        "upstream_status": a.upstream_status,
        "latency_ms": a.latency_ms,
        "detail": a.detail,
    }


def token_dict(t: IssuedToken, *, now: datetime) -> dict[str, Any]:
    return {
        "jti": t.jti,
        "public_key": t.public_key,
        "issuer": t.issuer,
        "audience": t.audience,
        "issued_at": t.issued_at,
        "expires_at": t.expires_at,
        "standing": reports.standing(t, now=now),
        "attempt_id": t.attempt_id,
    }


def timeline_lines(attempt: ChallengeAttempt) -> list[str]:
    rows = [
        (step.name, when(step.at, ms=True), f"+{step.after_ms:,.1f} ms") for step in reports.timeline(attempt)
    ]
    return ["  " + line for line in table(("step", "at (UTC)", "since asked"), rows, right=("since asked",))]


def timeline_dicts(attempt: ChallengeAttempt) -> list[dict[str, Any]]:
    return [{"step": s.name, "at": s.at, "after_ms": s.after_ms} for s in reports.timeline(attempt)]


def upstream(attempt: ChallengeAttempt) -> str:
    status = f" ({attempt.upstream_status})" if attempt.upstream_status else ""
    return f"{attempt.upstream or '-'}{status}"


def addresses(attempt: ChallengeAttempt) -> str:
    """Who asked, and who answered when that was another address."""
    asked = attempt.client_ip or "-"
    other = answered_elsewhere(attempt.client_ip, attempt.answer_ip)
    return f"{asked} (answered from {other})" if other else asked


def latency(ms: float | None) -> str:
    return f"{ms:,.1f} ms" if ms is not None else "-"
