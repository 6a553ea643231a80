"""A staff user's filters that no database takes are an invalid lookup, as Django's admin
answers one (the list redirects to ``?e=1``, its "Export CSV" is a 400), never a 500: the
same on SQLite and PostgreSQL. The dashboard's custom range says what is wrong with it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from challenges.models import ChallengeAttempt

pytestmark = pytest.mark.django_db

ATTEMPT = [
    {"outcome": "\x00"},  # OutcomeFilter: PostgreSQL refuses NUL in text
    {"outcome": "bad_\x00signature"},
    {"transport": "\x00"},
    {"upstream": "\x00"},
    {"public_key": "\x00"},
    {"detail__contains": "\x00"},
    {"q": "\x00"},
    {"client_ip": "not-ip"},  # PostgreSQL's inet
    {"client_ip": "\x00"},
    {"client_ip": "10.0.0.1%eth0"},
    {"client_ip__in": "10.0.0.1,not-ip"},
    {"client_ip__gt": "not-ip"},
    {"client_ip__range": "a,b"},  # SQLite: a bindings count error
    {"client_ip__endswith": "\x00"},
    {"public_key__regex": "("},  # each database's own regex error
    {"public_key__iregex": "["},
    {"created_at__year": "9999"},  # the drill-down's end is in the year 10000
    {"created_at__year": "9999", "created_at__month": "12"},
    {"created_at__lt": "9999-12-31T23:59:59-14:00"},  # SQLite: past the year 9999 in UTC
    {"created_at__gte": "0001-01-01T00:00:00+14:00"},
]
TOKEN = [
    {"jti": "\x00"},
    {"public_key": "\x00"},
    {"public_key__regex": "("},
    {"issued_at__year": "9999"},
    {"q": "\x00"},
]
OTHERS = [
    ("blockedkey", {"public_key": "\x00"}),
    ("revokedtoken", {"jti": "\x00"}),
    ("revocationevent", {"action": "\x00"}),
    ("workerstatus", {"tag": "\x00"}),
]
LISTS = (
    [("challengeattempt", q) for q in ATTEMPT] + [("issuedtoken", q) for q in TOKEN] + OTHERS
)  # fmt: skip


@pytest.fixture
def staff() -> Client:
    """A staff user who may view the audit, not a superuser."""
    user = User.objects.create_user("auditor", password="pw-auditor-123", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__startswith="view_"))
    client = Client()
    client.force_login(user)
    now = datetime.now(UTC)
    ChallengeAttempt.objects.create(created_at=now, finished_at=now, outcome="success", client_ip="fe80::1")
    return client


@pytest.mark.parametrize(("model", "query"), LISTS, ids=repr)
def test_a_filter_no_database_takes_is_an_invalid_lookup(staff, model, query):
    url = reverse(f"admin:challenges_{model}_changelist")
    response = staff.get(url, query)
    assert (response.status_code, response.get("Location")) == (302, f"{url}?e=1")
    assert staff.get(f"{url}?e=1").status_code == 200


@pytest.mark.parametrize(
    ("model", "query"), [m for m in LISTS if m[0] in ("challengeattempt", "issuedtoken")], ids=repr
)
def test_its_export_is_a_400(staff, model, query):
    response = staff.get(reverse(f"admin:challenges_{model}_export"), query)
    assert response.status_code == 400


@pytest.mark.parametrize(
    "query",
    [
        {"client_ip": "fe80::1"},
        {"client_ip": "FE80::1%eth0"},  # as the audit stores addresses: the zone dropped
        {"client_ip__in": "10.9.9.9,fe80::1"},
        {"client_ip__startswith": "fe80"},
        {"outcome": "success", "transport": "ws"},
    ],
)
def test_good_address_filters_still_select_their_rows(staff, query):
    url = reverse("admin:challenges_challengeattempt_changelist")
    response = staff.get(url, query)
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == list(ChallengeAttempt.objects.all())
    export = staff.get(reverse("admin:challenges_challengeattempt_export"), query)
    assert len(b"".join(export.streaming_content).splitlines()) == 2  # the header and the row


@pytest.mark.parametrize(
    ("since", "until", "says"),
    [
        ("0001-01-01T00:00:00+14:00", "", "years 1 to 9999"),
        ("2020-01-01", "9999-12-31T23:59:59-14:00", "years 1 to 9999"),
        ("9999-12-31T00:00", "9999-12-31T23:59", "before the last day of the year 9999"),
    ],
)
def test_a_dashboard_range_past_the_calendar_says_so(staff, since, until, says):
    response = staff.get(
        reverse("admin:challenges_dashboard"), {"range": "custom", "since": since, "until": until}
    )
    assert response.status_code == 200
    page = response.content.decode()
    assert 'data-testid="range-error"' in page
    assert says in page
