"""The admin's audit dashboard: attempts and tokens over a time range, the top failing keys
and addresses, and every worker's pending challenges and connections.

Served by :class:`~challenges.admin.ChallengeAttemptAdmin` (staff only, and only to users who
may view the attempts). Every figure links to the admin list of the rows behind it; the
charts are inline SVG (:mod:`challenges.charts`) with their numbers in tables too; the
figures are read by :mod:`challenges.reports`, aggregated in the database.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from . import reports
from .charts import OTHER_COLOUR, PALETTE, SUCCESS_COLOUR, Series, label, stacked_bars
from .models import SUCCESS
from .reports import ANY_FAILURE, INPUT_FROM, NO_ADDRESS

DEFAULT_RANGE = "24h"


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds")


class Links:
    """The admin lists behind each figure, filtered to the window (and more)."""

    def __init__(self, window: reports.Window) -> None:
        self.window = window
        self.attempts_url = reverse("admin:challenges_challengeattempt_changelist")
        self.tokens_url = reverse("admin:challenges_issuedtoken_changelist")

    def attempts(self, start: datetime | None = None, end: datetime | None = None, /, **filters: Any) -> str:
        params = {
            "created_at__gte": _iso(start or self.window.start),
            "created_at__lt": _iso(end or self.window.end),
            **{k: v for k, v in filters.items() if v is not None},
        }
        return f"{self.attempts_url}?{urlencode(params)}"

    def tokens(self, start: datetime | None = None, end: datetime | None = None) -> str:
        params = {
            "issued_at__gte": _iso(start or self.window.start),
            "issued_at__lt": _iso(end or self.window.end),
        }
        return f"{self.tokens_url}?{urlencode(params)}"

    def bucket(self, bucket: datetime) -> tuple[datetime, datetime]:
        return max(bucket, self.window.start), min(bucket + self.window.step, self.window.end)


def choose_window(params: Mapping[str, str], *, now: datetime) -> tuple[reports.Window, str]:
    """The window the query string asks for, or the default one and why not."""
    name = params.get("range", DEFAULT_RANGE)
    if name in reports.PRESETS:
        return reports.preset_window(name, now=now), ""
    if name == "custom":
        try:
            since = reports.parse_when(params.get("since", ""), now=now)
            until = reports.parse_when(params.get("until", "") or now.isoformat(), now=now)
            return reports.custom_window(since, until), ""
        except ValueError as exc:
            return reports.preset_window(DEFAULT_RANGE, now=now), f"custom range: {exc}"
    return reports.preset_window(DEFAULT_RANGE, now=now), f"unknown range {name!r}"


def _attempt_series(
    buckets: list[datetime], by_bucket: dict[datetime, Counter[str]], links: Links
) -> tuple[list[Series], list[dict[str, Any]]]:
    totals: Counter[str] = Counter()
    for counts in by_bucket.values():
        totals.update(counts)
    failures = [o for o, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0])) if o != SUCCESS]
    shown, rest = failures[: len(PALETTE)], set(failures[len(PALETTE) :])
    colours = {SUCCESS: SUCCESS_COLOUR, **dict(zip(shown, PALETTE, strict=False))}

    def values(outcomes: set[str]) -> list[int]:
        return [sum(by_bucket.get(b, Counter())[o] for o in outcomes) for b in buckets]

    series = [
        Series(o, colours[o], values({o}), [links.attempts(*links.bucket(b), outcome=o) for b in buckets])
        for o in ([SUCCESS] if totals[SUCCESS] else []) + shown
    ]
    if rest:
        series.append(
            Series(
                "other failures",
                OTHER_COLOUR,
                values(rest),
                [links.attempts(*links.bucket(b), outcome=ANY_FAILURE) for b in buckets],
            )
        )
    grand = sum(totals.values())
    table = [
        {
            "outcome": o,
            "n": n,
            "share": f"{n / grand:.1%}" if grand else "-",
            "colour": colours.get(o, OTHER_COLOUR),
            "url": links.attempts(outcome=o),
        }
        for o, n in sorted(totals.items(), key=lambda kv: (kv[0] != SUCCESS, -kv[1], kv[0]))
    ]
    return series, table


def context(request: HttpRequest, *, now: datetime | None = None) -> dict[str, Any]:
    """Everything the dashboard shows, for the template."""
    now = now or timezone.now()
    window, error = choose_window(request.GET, now=now)
    links = Links(window)
    buckets = window.buckets()
    by_bucket = reports.attempts_by_bucket(window)
    tokens = reports.tokens_by_bucket(window)
    series, outcomes = _attempt_series(buckets, by_bucket, links)
    attempts = sum(row["n"] for row in outcomes)
    successes = sum(row["n"] for row in outcomes if row["outcome"] == SUCCESS)
    issued = sum(tokens.values())
    span = f"{window.start:%Y-%m-%d %H:%M} to {window.end:%Y-%m-%d %H:%M} UTC, per {window.unit}"
    workers = reports.workers(now=now)
    live = [w.status for w in workers if w.live]
    return {
        "window": window,
        "error": error,
        "span": span,
        "presets": [(name, f"?range={name}") for name in reports.PRESETS],
        "range": request.GET.get("range", DEFAULT_RANGE) if not error else DEFAULT_RANGE,
        "since": request.GET.get("since", f"{window.start:%Y-%m-%dT%H:%M}"),
        "until": request.GET.get("until", f"{window.end:%Y-%m-%dT%H:%M}"),
        "totals": {
            "attempts": (attempts, links.attempts()),
            "successes": (successes, links.attempts(outcome=SUCCESS)),
            "failures": (attempts - successes, links.attempts(outcome=ANY_FAILURE)),
            "tokens": (issued, links.tokens()),
        },
        "outcomes": outcomes,
        "attempts_chart": stacked_bars(
            ident="attempts-chart",
            title=f"Attempts by outcome, {span}",
            desc=f"{attempts:,} attempts, {successes:,} successes, {attempts - successes:,} failures.",
            buckets=buckets,
            unit=window.unit,
            series=series,
        ),
        "tokens_chart": stacked_bars(
            ident="tokens-chart",
            title=f"Tokens issued, {span}",
            desc=f"{issued:,} tokens issued.",
            buckets=buckets,
            unit=window.unit,
            series=[
                Series(
                    "tokens",
                    SUCCESS_COLOUR,
                    [tokens.get(b, 0) for b in buckets],
                    [links.tokens(*links.bucket(b)) for b in buckets],
                )
            ],
            height=160,
        ),
        "buckets": [
            {
                "label": label(b, window.unit),
                "attempts": sum(by_bucket.get(b, Counter()).values()),
                "failures": sum(n for o, n in by_bucket.get(b, Counter()).items() if o != SUCCESS),
                "tokens": tokens.get(b, 0),
                "url": links.attempts(*links.bucket(b)),
                "tokens_url": links.tokens(*links.bucket(b)),
            }
            for b in buckets
        ],
        "top_keys": [
            {"value": key, "n": n, "url": links.attempts(public_key=key, outcome=ANY_FAILURE)}
            for key, n in reports.top_failing(window, "public_key")
        ],
        "top_addresses": [
            {
                "value": address or "(no address)",
                "n": n,
                "url": links.attempts(outcome=ANY_FAILURE, **_address_filter(address)),
            }
            for address, n in reports.top_failing(window, "input_from")
        ],
        "workers": [
            {"w": w.status, "live": w.live, "url": links.attempts(worker=w.status.worker)} for w in workers
        ],
        "live_pending": sum(w.pending for w in live),
        "live_connections": sum(w.connections for w in live),
        "live_count": len(live),
        "gone_after": int(reports.GONE_AFTER.total_seconds()),
        "workers_url": reverse("admin:challenges_workerstatus_changelist"),
        "now": now,
    }


def _address_filter(address: str | None) -> dict[str, str]:
    return {INPUT_FROM: address or NO_ADDRESS}


def view(request: HttpRequest, *, site_context: dict[str, Any]) -> TemplateResponse:
    return TemplateResponse(
        request,
        "admin/challenges/dashboard.html",
        {**site_context, "title": "Audit dashboard", **context(request)},
    )
