"""The dashboard's top failing addresses: a failure counts for the address its input came
from (the answer's, else the asker's), its link lists those rows, and the ranking reads the
covering index alone."""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape
from io import StringIO
from urllib.parse import urlsplit

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone

from challenges import reports
from tests.test_dashboard import KEY_A, KEY_B, URL, attempt, rows_of

pytestmark = pytest.mark.django_db


def test_failures_count_for_the_address_their_input_came_from(admin_client):
    """Any connection may answer a challenge: a stranger's forged answers to others'
    challenges rank the stranger, not the users who asked, and the link lists those rows."""
    forged = [
        attempt("bad_signature", ago=timedelta(minutes=2 + n), key=KEY_A, ip=victim, answer_ip="10.0.0.66")
        for n, victim in enumerate(("10.0.0.4", "10.0.0.5", "10.0.0.6"))
    ]
    attempt("bad_signature", ago=timedelta(minutes=6), key=KEY_B, ip="10.0.0.4", answer_ip="10.0.0.4")
    attempt("challenge_timeout", ago=timedelta(minutes=7), key=KEY_B, ip="10.0.0.5")  # never answered
    attempt("success", ago=timedelta(minutes=8), key=KEY_B, ip="10.0.0.7", answer_ip="10.0.0.66")
    html = admin_client.get(URL).content.decode()
    assert rows_of("top-addresses", html) == [("10.0.0.66", 3), ("10.0.0.4", 1), ("10.0.0.5", 1)]
    link = unescape(re.search(r'href="([^"]+input_from=10.0.0.66[^"]*)"', html).group(1))
    page = admin_client.get(link).content.decode()
    listed = {int(pk) for pk in re.findall(r'name="_selected_action" value="(\d+)"', page)}
    assert listed == {row.id for row in forged}
    export_url = reverse("admin:challenges_challengeattempt_export")
    export = admin_client.get(f"{export_url}?{urlsplit(link).query}")
    assert len(b"".join(export.streaming_content).splitlines()) == 1 + 3  # the header and the rows
    # A value that is no address is the admin's invalid lookup, never a 500.
    changelist = reverse("admin:challenges_challengeattempt_changelist")
    assert admin_client.get(changelist, {"input_from": "not-an-ip"})["Location"].endswith("?e=1")
    assert admin_client.get(export_url, {"input_from": "not-an-ip"}).status_code == 400


@pytest.mark.django_db(transaction=True)  # sqlmigrate's schema editor: outside a transaction
def test_top_failing_addresses_are_read_from_the_covering_index():
    """The ranking by where the input came from reads the index alone (it gained
    ``answer_ip``), and the migration that built it did so CONCURRENTLY on PostgreSQL, so
    flows kept writing audit rows while a large table was indexed."""
    window = reports.preset_window("24h", now=timezone.now())
    query = reports.top_failing_query(window, "input_from")
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("SET LOCAL enable_bitmapscan = off")
            sql, params = query.query.sql_with_params()
            cursor.execute(f"EXPLAIN {sql}", params)
            assert "Index Only Scan using attempt_report2_idx" in str(cursor.fetchall())
        else:
            sql, params = query.query.sql_with_params()
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
            assert "USING COVERING INDEX attempt_report2_idx" in str(cursor.fetchall())
    concurrently = connection.vendor == "postgresql"
    for migration, statement in (
        ("0006", 'CREATE INDEX CONCURRENTLY "attempt_report2_idx"'),
        ("0007", 'DROP INDEX CONCURRENTLY IF EXISTS "attempt_report_idx"'),
    ):
        out = StringIO()
        call_command("sqlmigrate", "challenges", migration, stdout=out)
        assert (statement in out.getvalue()) is concurrently, out.getvalue()
        # What migrate prints is true on either database.
        assert "(concurrently on PostgreSQL)" in out.getvalue(), out.getvalue()
        assert "Concurrently" not in out.getvalue(), out.getvalue()
    # Backwards to the former index and forwards again, on this database.
    call_command("migrate", "challenges", "0005", verbosity=0)
    assert "attempt_report_idx" in indexes()
    assert "attempt_report2_idx" not in indexes()
    call_command("migrate", "challenges", verbosity=0)
    assert "attempt_report2_idx" in indexes()
    assert "attempt_report_idx" not in indexes()


def indexes() -> set[str]:
    with connection.cursor() as cursor:
        return set(connection.introspection.get_constraints(cursor, "challenges_challengeattempt"))
