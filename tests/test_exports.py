"""The admin's CSV exports (the rows the list's filters and search select, streamed, under
WSGI and ASGI alike) and an attempt's page (its timeline, its token's standing, its count)."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.contrib.auth.models import User
from django.db import connection
from django.http import StreamingHttpResponse
from django.test import AsyncClient
from django.urls import reverse
from django.utils import timezone

from challenges import exports, tokens
from challenges.models import BlockedKey, ChallengeAttempt, IssuedToken, RevokedToken

ATTEMPTS = reverse("admin:challenges_challengeattempt_changelist")
EXPORT = reverse("admin:challenges_challengeattempt_export")
TOKENS_EXPORT = reverse("admin:challenges_issuedtoken_export")


def make_audit(signer, key, *, n: int = 5):
    now = timezone.now()
    made = []
    for i in range(n):
        at = now - timedelta(minutes=i)
        row = ChallengeAttempt.objects.create(
            created_at=at, finished_at=at + timedelta(milliseconds=40),
            challenged_at=at + timedelta(milliseconds=2), answered_at=at + timedelta(milliseconds=30),
            outcome="success", public_key=str(key.public), challenge_id=f"c{i:023d}", client_ip="127.0.0.1",
            origin="http://testserver", user_agent="=HYPERLINK(1)", worker="w1", upstream="local",
            upstream_status="OK", latency_ms=38.5,
        )  # fmt: skip
        # The first jti begins with "-", as one random jti in 64 does.
        jti = "-Ab3_" + "x" * 18 if i == 0 else None
        minted = tokens.mint_token(signer=signer, subject=key.public, ttl=3600, jti=jti)
        IssuedToken.objects.create(
            attempt=row, jti=minted.jti, token_sha256=minted.sha256, public_key=minted.subject,
            issuer=minted.issuer, issued_at=minted.issued_at, expires_at=minted.expires_at,
        )  # fmt: skip
        made.append((row, minted))
    ChallengeAttempt.objects.create(
        created_at=now, finished_at=now + timedelta(seconds=40), outcome="invalid_json",
        client_ip="10.9.9.9", count=42, detail="the text frame is not JSON",
    )  # fmt: skip
    return made


def read_csv(body: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body.decode())))


@pytest.mark.django_db
def test_the_list_links_to_an_export_of_its_own_filters(admin_client, authority_signer, user_key):
    make_audit(authority_signer, user_key)
    page = admin_client.get(ATTEMPTS, {"outcome": "invalid_json", "p": "0"}).content.decode()
    link = re.search(r'href="([^"]+)" class="export-csv"', page)
    assert link is not None
    assert link.group(1).replace("&amp;", "&") == f"{EXPORT}?outcome=invalid_json"  # every page, not one
    response = admin_client.get(link.group(1).replace("&amp;", "&"))
    assert isinstance(response, StreamingHttpResponse)
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="challengeattempts-')
    rows = read_csv(b"".join(response.streaming_content))
    assert [(r["outcome"], r["count"], r["client_ip"]) for r in rows] == [("invalid_json", "42", "10.9.9.9")]


@pytest.mark.django_db
def test_the_export_has_every_column_and_no_secret(admin_client, authority_signer, user_key):
    made = make_audit(authority_signer, user_key)
    body = b"".join(admin_client.get(EXPORT, {"q": str(user_key.public)}).streaming_content)
    rows = read_csv(body)
    assert list(rows[0]) == list(exports.ATTEMPT_COLUMNS)
    assert len(rows) == 5  # the search: the refusal has no key
    first, newest = rows[0], made[0][0]
    assert first["id"] == str(newest.pk)  # the list's order: newest first
    assert first["created_at"] == newest.created_at.isoformat().replace("+00:00", "Z")
    assert first["latency_ms"] == "38.500"
    assert first["user_agent"] == "'=HYPERLINK(1)"  # a spreadsheet must not run it
    text = body.decode()
    for _, minted in made:
        assert minted.token not in text
        assert minted.token.split(".")[2] not in text
    assert str(authority_signer) not in text
    tokens_csv = read_csv(b"".join(admin_client.get(TOKENS_EXPORT).streaming_content))
    assert list(tokens_csv[0]) == list(exports.TOKEN_COLUMNS)
    # A cell a spreadsheet would run is guarded, a jti beginning with "-" included.
    assert {r["jti"] for r in tokens_csv} == {exports.cell(m.jti) for _, m in made}
    assert "'" + made[0][1].jti in {r["jti"] for r in tokens_csv}
    assert {r["token_sha256"] for r in tokens_csv} == {m.sha256 for _, m in made}


@pytest.mark.django_db
def test_a_large_export_streams_in_chunks(admin_client):
    now = timezone.now()
    ChallengeAttempt.objects.bulk_create(
        [ChallengeAttempt(created_at=now, finished_at=now, outcome="bad_signature") for _ in range(4500)]
    )
    response = admin_client.get(EXPORT)
    chunks = list(response.streaming_content)
    assert len(chunks) == 1 + 3  # the header, then 2,000 rows at a time
    assert sum(c.count(b"\r\n") for c in chunks) == 4501


@pytest.mark.django_db
def test_exports_need_the_view_permission(client):
    User.objects.create_user("staff", password="pw-staff-123", is_staff=True)
    client.login(username="staff", password="pw-staff-123")
    assert client.get(EXPORT).status_code == 403
    client.logout()
    assert client.get(EXPORT).status_code == 302


@pytest.mark.django_db(transaction=True)
async def test_under_asgi_the_export_iterates_asynchronously(authority_signer, user_key):
    await database_sync_to_async(make_audit)(authority_signer, user_key, n=3)
    admin = await database_sync_to_async(User.objects.create_superuser)(
        "root", "root@example.com", "pw-root-123"
    )
    client = AsyncClient()
    await client.aforce_login(admin)
    response = await client.get(EXPORT)
    assert response.status_code == 200
    assert response.is_async  # never a list built in memory by Django
    body = b"".join([chunk async for chunk in response.streaming_content])
    assert len(read_csv(body)) == 4
    # The chunks were read on the thread-sensitive thread; the test client keeps Django from
    # closing its connection at the end of the request (a server closes it): close it here.
    await sync_to_async(lambda: connection.close(), thread_sensitive=True)()


@pytest.mark.django_db
def test_an_attempt_page_shows_its_whole_timeline_and_its_token(admin_client, authority_signer, user_key):
    (row, minted), *_ = make_audit(authority_signer, user_key)
    page = admin_client.get(
        reverse("admin:challenges_challengeattempt_change", args=[row.pk])
    ).content.decode()
    steps = re.findall(
        r'<tr data-step="(\w+)"><th scope="row">\w+</th><td>([^<]+)</td><td>\+([\d.,]+) ms</td>', page
    )
    assert [(name, ms) for name, _, ms in steps] == [
        ("asked", "0.0"), ("challenged", "2.0"), ("answered", "30.0"), ("success", "40.0")
    ]  # fmt: skip
    assert steps[0][1] == f"{row.created_at:%Y-%m-%d %H:%M:%S.%f}"[:-3] + " UTC"
    assert minted.jti in page
    assert 'data-standing="active"' in page
    for field in ("w1", "local", "OK", "38.5", "127.0.0.1"):
        assert field in page
    assert 'name="_save"' not in page  # read-only
    assert minted.token not in page

    RevokedToken.objects.create(jti=minted.jti, revoked_at=timezone.now(), actor="cli:ops", reason="leaked")
    BlockedKey.objects.create(public_key=str(user_key.public), blocked_at=timezone.now(), actor="admin:root")
    page = admin_client.get(
        reverse("admin:challenges_challengeattempt_change", args=[row.pk])
    ).content.decode()
    assert 'data-standing="revoked"' in page
    assert "by cli:ops (leaked)" in page
    assert "by admin:root" in page
    token_page = admin_client.get(
        reverse("admin:challenges_issuedtoken_change", args=[row.token.pk])
    ).content.decode()
    assert "revoked" in token_page


@pytest.mark.django_db
def test_an_aggregated_refusal_shows_its_count_and_first_and_last_seen(
    admin_client, authority_signer, user_key
):
    make_audit(authority_signer, user_key, n=1)
    refusal = ChallengeAttempt.objects.get(outcome="invalid_json")
    page = admin_client.get(
        reverse("admin:challenges_challengeattempt_change", args=[refusal.pk])
    ).content.decode()
    assert '<span data-count="42">42 refusals</span>' in page
    assert f"first seen {refusal.created_at:%Y-%m-%d %H:%M:%S}" in page
    assert f"last seen {refusal.finished_at:%Y-%m-%d %H:%M:%S}" in page
    assert "no token (this attempt released none)" in page
    steps = re.findall(r'<tr data-step="(\w+)">', page)
    assert steps == ["asked", "invalid_json"]  # no challenge, no answer


@pytest.mark.django_db
def test_the_outcome_filter_offers_any_failure(admin_client, authority_signer, user_key):
    make_audit(authority_signer, user_key, n=2)
    page = admin_client.get(ATTEMPTS, {"outcome": "failure"}).content.decode()
    ids = re.findall(r'name="_selected_action" value="(\d+)"', page)
    assert ids == [str(ChallengeAttempt.objects.get(outcome="invalid_json").pk)]
    assert "any failure (not success)" in page
