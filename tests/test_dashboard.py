"""The admin's audit dashboard: who may see it, what it counts (summed counts, not rows),
where its figures lead, its ranges, its workers, and its speed on 50,000 rows."""

from __future__ import annotations

import re
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from html import unescape
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import Permission, User
from django.db.models import Count, Sum
from django.db.models.functions import TruncDay, TruncHour, TruncMinute
from django.urls import reverse
from django.utils import timezone

from bench.auditdata import populate
from challenges import reports
from challenges.models import ChallengeAttempt, IssuedToken, WorkerStatus

pytestmark = pytest.mark.django_db
URL = "/admin/challenges/challengeattempt/dashboard/"
KEY_A = "bbaarei" + "a" * 52
KEY_B = "bbaarei" + "b" * 52


def attempt(
    outcome: str, *, ago: timedelta, key: str = "", ip: str | None = "10.0.0.1", count: int = 1, **kw
):
    at = timezone.now() - ago
    return ChallengeAttempt.objects.create(
        created_at=at, finished_at=at, outcome=outcome, public_key=key, client_ip=ip, count=count, **kw
    )


def token_for(row: ChallengeAttempt, n: int) -> IssuedToken:
    return IssuedToken.objects.create(
        attempt=row, jti=f"jti-{n}", token_sha256=f"{n:064x}", public_key=row.public_key,
        issued_at=row.finished_at, expires_at=row.finished_at + timedelta(days=1),
    )  # fmt: skip


@pytest.fixture
def audit() -> None:
    for n in range(3):
        token_for(attempt("success", ago=timedelta(minutes=5 + n), key=KEY_A), n)
    attempt("bad_signature", ago=timedelta(minutes=3), key=KEY_A, ip="10.0.0.2")
    attempt("bad_signature", ago=timedelta(minutes=4), key=KEY_B, ip="10.0.0.2")
    attempt("bad_signature", ago=timedelta(minutes=6), key=KEY_A, ip="10.0.0.3")
    attempt("invalid_json", ago=timedelta(minutes=2), ip="10.0.0.9", count=25)  # aggregated refusals
    attempt("rate_limited", ago=timedelta(minutes=1), ip=None, count=7)  # the no-address overflow row
    attempt("bad_signature", ago=timedelta(days=2), key=KEY_B, count=1)  # outside the last 24 h


def figures(html: str) -> dict[str, int]:
    return {name: int(n) for name, n in re.findall(r'data-testid="total-(\w+)" data-n="(\d+)"', html)}


def segments(html: str, chart: str) -> Counter[str]:
    svg = html[html.index(f'id="{chart}"') :]
    svg = svg[: svg.index("</svg>")]
    found: Counter[str] = Counter()
    for series, n in re.findall(r'data-series="([^"]+)" data-n="(\d+)"', svg):
        found[series] += int(n)
    return found


def rows_of(table: str, html: str) -> list[tuple[str, int]]:
    part = html[html.index(f'data-testid="{table}"') :]
    part = part[: part.index("</table>")]
    return [
        (unescape(v), int(n))
        for v, n in re.findall(r'<a href="[^"]+">([^<]+)</a></td><td class="dash-num" data-n="(\d+)"', part)
    ]


def test_only_staff_who_may_read_the_audit_see_it(client, admin_client):
    assert client.get(URL).status_code == 302  # login first
    assert "/admin/login/" in client.get(URL)["Location"]
    User.objects.create_user("plain", password="pw-plain-123")
    client.login(username="plain", password="pw-plain-123")
    refused = client.get(URL)
    assert refused.status_code == 302  # not staff: the admin's login page, saying so
    assert "/admin/login/" in refused["Location"]
    staff = User.objects.create_user("staff", password="pw-staff-123", is_staff=True)
    client.login(username="staff", password="pw-staff-123")
    assert client.get(URL).status_code == 403  # staff, but may not view the attempts
    assert b"audit-dashboard-link" not in client.get("/admin/").content
    staff.user_permissions.add(Permission.objects.get(codename="view_challengeattempt"))
    assert client.get(URL).status_code == 200
    index = admin_client.get("/admin/").content.decode()
    assert f'href="{URL}"' in index
    assert reverse("admin:challenges_dashboard") == URL


def test_figures_sum_the_counts_of_aggregated_rows(admin_client, audit):
    html = admin_client.get(URL).content.decode()
    assert figures(html) == {"attempts": 3 + 3 + 25 + 7, "successes": 3, "failures": 35, "tokens": 3}
    table = dict(re.findall(r'<tr data-outcome="(\w+)">.*?data-n="(\d+)"', html, re.S))
    assert table == {"success": "3", "bad_signature": "3", "invalid_json": "25", "rate_limited": "7"}
    assert segments(html, "attempts-chart") == {
        "success": 3,
        "bad_signature": 3,
        "invalid_json": 25,
        "rate_limited": 7,
    }
    assert segments(html, "tokens-chart") == {"tokens": 3}
    assert rows_of("top-keys", html) == [(KEY_A, 2), (KEY_B, 1)]
    assert rows_of("top-addresses", html) == [
        ("10.0.0.9", 25),
        ("(no address)", 7),
        ("10.0.0.2", 2),
        ("10.0.0.3", 1),
    ]
    assert '<title id="attempts-chart-title">Attempts by outcome' in html
    assert "38 attempts, 3 successes, 35 failures." in html  # the chart's description


def test_every_figure_leads_to_its_rows(admin_client, audit):
    html = admin_client.get(URL).content.decode()
    changelist = reverse("admin:challenges_challengeattempt_changelist")

    def listed(url: str) -> set[int]:
        page = admin_client.get(unescape(url))
        assert page.status_code == 200, url
        return {int(pk) for pk in re.findall(r'name="_selected_action" value="(\d+)"', page.content.decode())}

    links = {unescape(u) for u in re.findall(rf'href="({re.escape(changelist)}\?[^"]+)"', html)}
    queries = {u: parse_qs(urlsplit(u).query) for u in links}
    # The whole window's lists, not a bar's (a bar links to its own hour: rows a few minutes
    # apart may sit in two hours, and which link came last once depended on set order).
    start = min(q["created_at__gte"][0] for q in queries.values())
    end = max(q["created_at__lt"][0] for q in queries.values())
    by_outcome = {
        q.get("outcome", [""])[0]: u
        for u, q in queries.items()
        if (q["created_at__gte"][0], q["created_at__lt"][0]) == (start, end)
        and not any(name.startswith(("public_key", "input_from", "worker")) for name in q)
    }
    window = ChallengeAttempt.objects.filter(created_at__gte=timezone.now() - timedelta(hours=23))
    for outcome in ("success", "bad_signature", "invalid_json"):
        assert listed(by_outcome[outcome]) == set(window.filter(outcome=outcome).values_list("id", flat=True))
    assert listed(by_outcome["failure"]) == set(
        window.exclude(outcome="success").values_list("id", flat=True)
    )
    key_link = next(u for u in links if KEY_A in u)
    assert listed(key_link) == set(
        window.filter(public_key=KEY_A).exclude(outcome="success").values_list("id", flat=True)
    )
    nowhere = next(u for u in links if "input_from=none" in u)
    assert listed(nowhere) == set(
        ChallengeAttempt.objects.filter(client_ip__isnull=True, answer_ip__isnull=True).values_list(
            "id", flat=True
        )
    )
    tokens = reverse("admin:challenges_issuedtoken_changelist")
    token_link = re.search(rf'href="({re.escape(tokens)}\?[^"]+)" data-testid="total-tokens"', html)
    assert token_link is not None
    assert admin_client.get(unescape(token_link.group(1))).content.decode().count(">jti-") == 3


@pytest.mark.parametrize(
    ("name", "unit", "buckets"),
    [("1h", "minute", 60), ("24h", "hour", 24), ("7d", "hour", 168), ("30d", "day", 30), ("90d", "day", 90)],
)
def test_each_range_is_cut_to_fit(admin_client, audit, name, unit, buckets):
    response = admin_client.get(URL, {"range": name})
    assert response.status_code == 200
    assert response.context["window"].unit == unit
    assert len(response.context["buckets"]) == buckets
    expected = {"1h": 3 + 3 + 25 + 7, "24h": 38, "7d": 39, "30d": 39, "90d": 39}[name]
    assert figures(response.content.decode())["attempts"] == expected
    assert 'aria-current="page"' in response.content.decode()


def test_a_custom_range_and_a_wrong_one(admin_client, audit):
    now = timezone.now()
    since = (now - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M")
    response = admin_client.get(
        URL, {"range": "custom", "since": since, "until": now.strftime("%Y-%m-%dT%H:%M")}
    )
    assert response.context["window"].unit == "hour"
    assert figures(response.content.decode())["attempts"] in (
        38,
        39,
    )  # to the minute: the newest rows may fall after
    relative = admin_client.get(URL, {"range": "custom", "since": "3d"})
    assert figures(relative.content.decode())["attempts"] == 39
    wrong = admin_client.get(URL, {"range": "custom", "since": "yesterday"}).content.decode()
    assert 'data-testid="range-error"' in wrong
    assert "not a time" in wrong
    backwards = admin_client.get(URL, {"range": "custom", "since": "1d", "until": "2d"}).content.decode()
    assert "the end must be after the start" in backwards
    ancient = admin_client.get(URL, {"range": "custom", "since": "800000d"})  # was a 500
    assert ancient.status_code == 200
    assert "too far back" in ancient.content.decode()


def test_workers_live_and_gone(admin_client):
    now = timezone.now()
    WorkerStatus.objects.create(
        tag="aaaa0001", worker="host-a:1", pending=4, connections=9, started_at=now, last_seen=now
    )
    WorkerStatus.objects.create(
        tag="aaaa0002",
        worker="host-b:2",
        pending=2,
        connections=5,
        started_at=now,
        last_seen=now - timedelta(seconds=3),
    )
    WorkerStatus.objects.create(
        tag="aaaa0003",
        worker="host-c:3",
        pending=7,
        connections=1,
        started_at=now,
        last_seen=now - timedelta(minutes=5),
    )
    WorkerStatus.objects.create(
        tag="aaaa0004",
        worker="host-d:4",
        pending=1,
        connections=1,
        started_at=now,
        last_seen=now - timedelta(days=3),
    )
    html = admin_client.get(URL).content.decode()
    states = dict(re.findall(r'data-tag="(\w+)">.*?data-testid="worker-state">(\w+)<', html, re.S))
    assert states == {
        "aaaa0001": "live",
        "aaaa0002": "live",
        "aaaa0003": "gone",
    }  # a 3-day-old one is not listed
    assert re.search(r'data-testid="live-pending" data-n="6"', html)
    assert re.search(r'data-testid="live-connections" data-n="14"', html)
    assert "2 live workers" in html


def test_client_input_is_shown_as_text(admin_client):
    attempt("invalid_pub", ago=timedelta(minutes=1), key='<img src=x onerror="alert(1)">')
    html = admin_client.get(URL).content.decode()
    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html


@pytest.mark.parametrize("unit", ["minute", "hour", "day"])
def test_the_per_bucket_sums_equal_a_group_by_on_the_truncated_time(unit):
    end = datetime.now(UTC)
    populate(
        3000,
        end=end,
        days={"minute": 0.1, "hour": 3, "day": 40}[unit],
        keys=50,
        addresses=50,
        method="direct",
    )
    span = {"minute": timedelta(hours=2), "hour": timedelta(days=2), "day": timedelta(days=30)}[unit]
    window = reports.Window(start=end - span, end=end, unit=unit)
    trunc = {"minute": TruncMinute, "hour": TruncHour, "day": TruncDay}[unit]
    reference: dict[datetime, Counter[str]] = {}
    for bucket, outcome, n in (
        reports.attempts_in(window)
        .annotate(b=trunc("created_at", tzinfo=UTC))
        .values_list("b", "outcome")
        .annotate(n=Sum("count"))
        .order_by()
    ):
        reference.setdefault(bucket, Counter())[outcome] += n
    assert reports.attempts_by_bucket(window) == reference
    assert sum(sum(c.values()) for c in reference.values()) > 1000
    tokens = dict(
        IssuedToken.objects.filter(issued_at__gte=window.start, issued_at__lt=window.end)
        .annotate(b=trunc("issued_at", tzinfo=UTC))
        .values_list("b")
        .annotate(n=Count("id"))
        .order_by()
    )
    assert reports.tokens_by_bucket(window) == tokens


def test_fast_on_fifty_thousand_rows(admin_client):
    populate(50_000, end=timezone.now(), days=90, keys=2000, addresses=5000, method="direct")
    timings = {}
    for name in reports.PRESETS:
        admin_client.get(URL, {"range": name})  # warm: templates, the database's cache
        started = time.perf_counter()
        response = admin_client.get(URL, {"range": name})
        timings[name] = time.perf_counter() - started
        window = response.context["window"]
        expected = reports.attempts_in(window).aggregate(n=Sum("count"))["n"]
        assert figures(response.content.decode())["attempts"] == expected
    print("dashboard on 50,000 rows:", {k: f"{v * 1000:.0f} ms" for k, v in timings.items()})
    assert max(timings.values()) < 2.0, timings


def test_the_chart_scales_its_bars_and_escapes_what_it_draws():
    from challenges.charts import Series, nice_ceiling, stacked_bars

    assert [nice_ceiling(v) for v in (0, 3, 5, 11, 41, 101)] == [2, 4, 10, 20, 100, 200]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    svg = stacked_bars(
        ident="c", title="t<", desc="d&", buckets=[start, start + timedelta(hours=1)], unit="hour",
        series=[Series("a<b>", "#000", [10, 0], ["/x?a=1&b=2", "/y"]), Series("z", "#111", [30, 20])],
        height=236,
    )  # fmt: skip
    heights = {
        (name, n): float(h)
        for h, name, n in re.findall(
            r'height="([\d.]+)" fill="#\d+" data-series="([^"]+)" data-n="(\d+)"', svg
        )
    }
    assert heights == {("a&lt;b&gt;", "10"): 50.0, ("z", "30"): 150.0, ("z", "20"): 100.0}  # 200 px for 40
    assert '<a href="/x?a=1&amp;b=2">' in svg
    assert '<title id="c-title">t&lt;</title>' in svg
    assert "a<b>" not in svg
