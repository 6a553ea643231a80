"""``python -m bench dashboard``: the admin's audit dashboard on a million audit rows (SQLite).

Fills a SQLite database of its own with ``--rows`` attempts spread over 90 days (and the
token of each success) by ``bulk_create`` in batches, then times the dashboard's page, as a
staff user gets it through Django's test client, for every range: a warm-up, then
``--runs`` timed requests, median and slowest. It also times the same pages without the
covering index (dropped, then rebuilt), and the series query against one GROUP BY on a
truncated time, the measurements behind those two choices (``challenges/reports.py``).
Writes its figures to ``bench/REPORT.md`` (section ``dashboard``) unless ``--no-report``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

from .servers import ROOT

DEFAULT_DB = ROOT / "var" / "bench-dashboard.sqlite3"
URL = "/admin/challenges/challengeattempt/dashboard/"


def _setup(db: Path) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    os.environ["DJANGO_SETTINGS_MODULE"] = "tokensite.settings"
    os.environ["DATABASE_URL"] = f"sqlite:///{db}"
    os.environ["ALLOWED_HOSTS"] = "testserver"
    os.environ["DEBUG"] = "true"  # plain http; the query log is cleared after every batch
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _fill(rows: int) -> tuple[int, float]:
    from django.db import reset_queries

    from bench.auditdata import populate
    from challenges.models import ChallengeAttempt
    from challenges.progress import Progress

    have = ChallengeAttempt.objects.count()
    if have >= rows:
        return have, 0.0
    if have:
        raise SystemExit(f"the database holds {have:,} rows, fewer than --rows: delete it or pass --db")
    progress = Progress(rows, stream=sys.stderr, label="bulk_create")

    def batch(n: int) -> None:
        reset_queries()
        progress.advance(n)

    started = time.perf_counter()
    populate(rows, end=datetime.now(UTC), days=90, method="bulk_create", batch=5000, on_batch=batch)
    progress.finish()
    return rows, time.perf_counter() - started


def _time_pages(client: Any, runs: int) -> dict[str, dict[str, float]]:
    from django.db import connection, reset_queries
    from django.utils import timezone

    from challenges import reports

    figures = {}
    for name in reports.PRESETS:
        client.get(URL, {"range": name})  # warm: templates, SQLite's page cache
        times, cpu = [], []
        for _ in range(runs):
            reset_queries()
            started, used = time.perf_counter(), time.process_time()
            response = client.get(URL, {"range": name})
            times.append(time.perf_counter() - started)
            cpu.append(time.process_time() - used)  # SQLite runs in this process: all of it
            assert response.status_code == 200, response.status_code
        window = reports.preset_window(name, now=timezone.now())
        figures[name] = {
            "median_ms": statistics.median(times) * 1000,
            "max_ms": max(times) * 1000,
            "cpu_ms": statistics.median(cpu) * 1000,
            "queries": len(connection.queries),
            "kib": len(response.content) / 1024,
            "rows": reports.attempts_in(window).count(),
            "buckets": len(window.buckets()),
        }
        f = figures[name]
        print(
            f"  {name:>4}: median {f['median_ms']:.0f} ms (CPU {f['cpu_ms']:.0f}), max {f['max_ms']:.0f} ms"
        )
    return figures


def _series_choice(runs: int) -> dict[str, tuple[float, float]]:
    """Per range: the per-bucket series (ms) against one GROUP BY on TruncMinute/Hour/Day."""
    from collections import Counter

    from django.db.models import Sum
    from django.db.models.functions import TruncDay, TruncHour, TruncMinute

    from challenges import reports
    from challenges.models import ChallengeAttempt

    trunc = {"minute": TruncMinute, "hour": TruncHour, "day": TruncDay}
    now = _newest()
    out = {}
    for name in reports.PRESETS:
        window = reports.preset_window(name, now=now)

        def grouped(window: reports.Window = window) -> dict[datetime, Counter[str]]:
            series: dict[datetime, Counter[str]] = {}
            rows = (
                ChallengeAttempt.objects.filter(created_at__gte=window.start, created_at__lt=window.end)
                .annotate(b=trunc[window.unit]("created_at", tzinfo=UTC))
                .values_list("b", "outcome")
                .annotate(n=Sum("count"))
                .order_by()
            )
            for bucket, outcome, n in rows:
                series.setdefault(bucket, Counter())[outcome] += n
            return series

        ours = _best(lambda w=window: reports.attempts_by_bucket(w), runs)
        theirs = _best(grouped, max(1, runs // 2))
        assert reports.attempts_by_bucket(window) == grouped(), name  # the same figures
        out[name] = (ours, theirs)
        print(f"  {name:>4}: per-bucket {ours:.0f} ms, truncated GROUP BY {theirs:.0f} ms")
    return out


def _best(work: Any, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def _newest() -> datetime:
    from challenges.models import ChallengeAttempt

    newest = ChallengeAttempt.objects.order_by("-created_at").values_list("created_at", flat=True).first()
    return newest or datetime.now(UTC)


def _the_index() -> Any:
    """The attempts' one index: the dashboard's covering index."""
    from challenges.models import ChallengeAttempt

    (index,) = ChallengeAttempt._meta.indexes
    return index


def _index(create: bool) -> float:
    from django.db import connection

    from challenges.models import ChallengeAttempt

    index = _the_index()
    started = time.perf_counter()
    with connection.schema_editor() as editor:
        (editor.add_index if create else editor.remove_index)(ChallengeAttempt, index)
    return time.perf_counter() - started


def dashboard(*, rows: int, db: Path, runs: int, write_report: bool) -> int:
    _setup(db)
    from django.contrib.auth.models import User
    from django.test import Client

    have, filled = _fill(rows)
    print(f"{have:,} attempts in {db}" + (f" (bulk_create: {filled:.0f} s)" if filled else " (reused)"))
    user, _ = User.objects.get_or_create(username="bench", defaults={"is_staff": True, "is_superuser": True})
    client = Client()
    client.force_login(user)
    now = _newest()  # the data ends there: "the last 24 h" of the data, whenever it is measured
    with mock.patch("django.utils.timezone.now", return_value=now):
        print("the dashboard, with the covering index:")
        pages = _time_pages(client, runs)
        print("without it:")
        dropped = _index(create=False)
        try:
            bare = _time_pages(client, max(1, runs // 2))
        finally:
            rebuilt = _index(create=True)
        print("the series query:")
        series = _series_choice(runs)
    if write_report:
        from . import report

        report.write_section(
            "dashboard", _markdown(have, filled, runs, pages, bare, series, dropped, rebuilt)
        )
        print(f"figures written to {report.REPORT.relative_to(ROOT)}")
    return 0


def _markdown(
    have: int,
    filled: float,
    runs: int,
    pages: dict[str, dict[str, float]],
    bare: dict[str, dict[str, float]],
    series: dict[str, tuple[float, float]],
    dropped: float,
    rebuilt: float,
) -> str:
    from . import report

    lines = [
        "## The audit dashboard on a million rows",
        "",
        report.machine_facts(),
        "",
        f"`python -m bench dashboard`: {have:,} attempts spread over 90 days (70 % successes, each with its"
        " token; aggregated refusals with counts up to 60), written by `bulk_create` in batches of 5,000"
        + (f" in {filled:.0f} s" if filled else "")
        + f"; SQLite. Each page is the dashboard as a staff user gets it (Django's test client: queries,"
        f" template, SVG), after a warm-up; median and slowest of {runs} requests, and the median CPU"
        " time of the process (SQLite runs in it: all the page's work, whatever else the shared machine"
        " runs). Without the index: the same pages with the covering index dropped.",
        "",
        "| range | buckets | rows in range | median | CPU | slowest | queries | page | without the index |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, f in pages.items():
        cells = [
            name,
            f"{f['buckets']:.0f} x {name_unit(name)}",
            f"{f['rows']:,.0f}",
            f"{f['median_ms']:.0f} ms",
            f"{f['cpu_ms']:.0f} ms",
            f"{f['max_ms']:.0f} ms",
            f"{f['queries']:.0f}",
            f"{f['kib']:.0f} KiB",
            f"{bare[name]['median_ms']:.0f} ms",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"The covering index (`{_the_index().name}`) took {rebuilt:.1f} s to build on these rows"
        f" (dropping it {dropped:.1f} s).",
        "",
        "The series (attempts per bucket and outcome), median ms: one `GROUP BY outcome` per bucket in one"
        " UNION ALL query (what the dashboard runs) against one `GROUP BY` on `TruncMinute/Hour/Day`"
        " (Django's own; on SQLite a Python function per row). Both give the same figures (checked).",
        "",
        "| range | per bucket | truncated GROUP BY |",
        "|---|---|---|",
        *[f"| {name} | {ours:.0f} ms | {theirs:.0f} ms |" for name, (ours, theirs) in series.items()],
    ]
    return "\n".join(lines)


def name_unit(name: str) -> str:
    from challenges import reports

    return reports.PRESETS[name][1]
