"""Reads for operators: the audit over a time window (the admin's dashboard), a flow's timeline
and a token's standing (the admin's detail pages and ``manage.py tokens``).

Every figure is aggregated in the database: attempts by time bucket and outcome, tokens by
time bucket, and the top failing keys and addresses are one query each, whatever the number
of rows.
Refusals are aggregated rows (one per address, code and minute, with a ``count``): figures
sum ``count``, never count rows.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Exists, OuterRef, Q, QuerySet, Sum
from django.db.models.functions import Coalesce

from .models import SUCCESS, BlockedKey, ChallengeAttempt, IssuedToken, RevokedToken, WorkerStatus

UNITS = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}
#: The dashboard's ranges: how far back, and the bucket that fits it.
PRESETS = {
    "1h": (timedelta(hours=1), "minute"),
    "24h": (timedelta(hours=24), "hour"),
    "7d": (timedelta(days=7), "hour"),
    "30d": (timedelta(days=30), "day"),
    "90d": (timedelta(days=90), "day"),
}
#: The longest custom range (in day buckets).
MAX_SPAN = timedelta(days=400)
#: What the filters (the admin's outcome filter, ``--outcome``) read as "any outcome but success".
ANY_FAILURE = "failure"
#: The admin list's filter by the address a row's input came from (:func:`from_address`),
#: and its value for rows from no known address.
INPUT_FROM = "input_from"
NO_ADDRESS = "none"
#: A worker that has not reported for this long stopped or died.
GONE_AFTER = timedelta(seconds=20)


@dataclass(frozen=True)
class Window:
    """A time range cut into buckets of one ``unit``: ``start`` inclusive, ``end`` exclusive."""

    start: datetime
    end: datetime
    unit: str

    @property
    def step(self) -> timedelta:
        return UNITS[self.unit]

    def buckets(self) -> list[datetime]:
        first = floor(self.start, self.unit)
        return [first + i * self.step for i in range(-(-(self.end - first) // self.step))]


def floor(when: datetime, unit: str) -> datetime:
    when = when.astimezone(UTC)
    if unit == "day":
        return when.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "hour":
        return when.replace(minute=0, second=0, microsecond=0)
    return when.replace(second=0, microsecond=0)


def unit_for(span: timedelta) -> str:
    """The bucket that cuts ``span`` into a readable number of bars (at most ~200)."""
    if span <= timedelta(hours=3):
        return "minute"
    if span <= timedelta(days=8):
        return "hour"
    return "day"


def preset_window(name: str, *, now: datetime) -> Window:
    """The last ``name`` (``PRESETS``) up to ``now``, in whole buckets (the last one so far)."""
    span, unit = PRESETS[name]
    end = floor(now, unit) + UNITS[unit]
    return Window(start=end - span, end=end, unit=unit)


def custom_window(since: datetime, until: datetime) -> Window:
    if until <= since:
        raise ValueError("the end must be after the start")
    if until - since > MAX_SPAN:
        raise ValueError(f"at most {MAX_SPAN.days} days")
    window = Window(start=since, end=until, unit=unit_for(until - since))
    if until > datetime.max.replace(tzinfo=UTC) - window.step:  # its last bucket would end past it
        raise ValueError("the end must be before the last day of the year 9999")
    return window


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, *, now: datetime) -> datetime:
    """A time from the command line or a form: ``30m``, ``2h``, ``7d`` (that long ago), or an
    ISO date or date and time (UTC unless it says otherwise). Raises ValueError."""
    text = text.strip()
    relative = _RELATIVE.match(text.lower())
    if relative:
        try:
            return now - timedelta(seconds=float(relative.group(1)) * _SECONDS[relative.group(2)])
        except OverflowError:
            raise ValueError(f"too far back: {text[:40]!r} (before the year 1)") from None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (e.g. 2h, 7d, 2026-11-29 or 2026-11-29T12:00)") from None
    try:
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00, 9999-12-31T23:00-02:00
        raise ValueError(f"not a time in UTC's years 1 to 9999: {text[:40]!r}") from None


# -- aggregated in the database ----------------------------------------------------------
#
# A series is one query: a UNION ALL of one ``GROUP BY`` per bucket, each a range scan of the
# covering index (created_at, outcome, count, public_key, client_ip). On a million rows in
# SQLite (``python -m bench dashboard``, bench/REPORT.md) that is ten times faster than
# one GROUP BY on a truncated time (TruncDay & co.), which computes the bucket of every row
# and sorts them all; both give the same figures (the tests compare them). The parts differ
# only in their bounds, so the SQL is written once, not compiled by the ORM up to 400 times
# (most of a short range's time).


def _per_bucket(window: Window, model: Any, field: str, group: str | None, total: str) -> list[Any]:
    """``(bucket, group value, total)`` rows (``(bucket, total)`` without ``group``) of
    ``model`` per bucket of ``field``, in one query. Names come from the model, never a client."""
    buckets = window.buckets()
    if not buckets:
        return []
    ops = connection.ops
    table = ops.quote_name(model._meta.db_table)
    column = _column(model, field)
    grouped = _column(model, group) if group else ""
    part = (
        f"SELECT %s AS b{', ' + grouped if group else ''}, {total} AS n FROM {table}"  # noqa: S608 (names from the model)
        f" WHERE {column} >= %s AND {column} < %s{' GROUP BY ' + grouped if group else ''}"
    )
    params: list[Any] = []
    for i, bucket in enumerate(buckets):
        start, end = max(bucket, window.start), min(bucket + window.step, window.end)
        params += [i, ops.adapt_datetimefield_value(start), ops.adapt_datetimefield_value(end)]
    with connection.cursor() as cursor:
        cursor.execute(" UNION ALL ".join([part] * len(buckets)), params)
        return [(buckets[row[0]], *row[1:]) for row in cursor.fetchall()]


def _column(model: Any, field: str) -> str:
    return str(connection.ops.quote_name(str(model._meta.get_field(field).column)))


def attempts_in(window: Window) -> QuerySet[ChallengeAttempt]:
    return ChallengeAttempt.objects.filter(created_at__gte=window.start, created_at__lt=window.end)


def attempts_by_bucket(window: Window) -> dict[datetime, Counter[str]]:
    """Refusals and flows per bucket and outcome (counts summed)."""
    series: dict[datetime, Counter[str]] = {}
    total = f"SUM({_column(ChallengeAttempt, 'count')})"
    for bucket, outcome, n in _per_bucket(window, ChallengeAttempt, "created_at", "outcome", total):
        series.setdefault(bucket, Counter())[outcome] += n
    return series


def tokens_by_bucket(window: Window) -> dict[datetime, int]:
    rows = _per_bucket(window, IssuedToken, "issued_at", None, "COUNT(*)")
    return {bucket: n for bucket, n in rows if n}


def top_failing(window: Window, field: str, *, limit: int = 10) -> list[tuple[Any, int]]:
    """The ``field`` values with the most failures: ``public_key``, or ``input_from``, the
    address a failure's input came from (:func:`input_from`)."""
    return [(value, n) for value, n in top_failing_query(window, field, limit=limit)]


def top_failing_query(window: Window, field: str, *, limit: int = 10) -> QuerySet[Any]:
    """:func:`top_failing`'s query: ``(value, failures)`` rows, read from the covering index."""
    rows = attempts_in(window).exclude(outcome=SUCCESS)
    if field == "public_key":
        rows = rows.exclude(public_key="")
    elif field == "input_from":
        rows = rows.annotate(input_from=input_from())
    return rows.values_list(field).annotate(n=Sum("count")).order_by("-n", field)[:limit]


def input_from() -> Coalesce:
    """The address a row's input came from: its answer's (``answer_ip``, which may be a
    stranger's answer to someone else's challenge) when it had one, else the asker's."""
    return Coalesce("answer_ip", "client_ip")


def from_address(rows: QuerySet[ChallengeAttempt], address: str | None) -> QuerySet[ChallengeAttempt]:
    """The rows whose input came from ``address`` (None: from no known address), as
    :func:`top_failing` counts them."""
    if address is None:
        return rows.filter(answer_ip__isnull=True, client_ip__isnull=True)
    return rows.filter(Q(answer_ip=address) | Q(answer_ip__isnull=True, client_ip=address))


@dataclass(frozen=True)
class Worker:
    status: WorkerStatus
    live: bool


def workers(*, now: datetime, since: timedelta = timedelta(days=1)) -> list[Worker]:
    """Every worker seen in the last ``since``; ``live`` when it reported lately."""
    rows = WorkerStatus.objects.filter(last_seen__gte=now - since).order_by("-last_seen", "worker")
    return [Worker(status=row, live=now - row.last_seen <= GONE_AFTER) for row in rows]


# -- one flow, one token ---------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    name: str
    at: datetime
    #: Milliseconds since the flow was asked for.
    after_ms: float


def timeline(attempt: ChallengeAttempt) -> list[Step]:
    """Asked, challenged, answered, ended: the moments the row knows, in order."""
    moments = [
        ("asked", attempt.created_at),
        ("challenged", attempt.challenged_at),
        ("answered", attempt.answered_at),
        (attempt.outcome, attempt.finished_at),
    ]
    return [Step(name, at, (at - attempt.created_at).total_seconds() * 1000) for name, at in moments if at]


def with_standing(tokens: QuerySet[IssuedToken]) -> QuerySet[IssuedToken]:
    """Tokens annotated ``revoked`` and ``key_blocked`` (one query, whatever their number)."""
    return tokens.annotate(
        revoked=Exists(RevokedToken.objects.filter(jti=OuterRef("jti"))),
        key_blocked=Exists(BlockedKey.objects.filter(public_key=OuterRef("public_key"))),
    )


def standing(token: IssuedToken, *, now: datetime) -> str:
    """``revoked``, ``key blocked``, ``expired`` or ``active`` (the first that holds), for a
    token from :func:`with_standing`."""
    if getattr(token, "revoked", False):
        return "revoked"
    if getattr(token, "key_blocked", False):
        return "key blocked"
    if token.expires_at is not None and token.expires_at <= now:
        return "expired"
    return "active"
