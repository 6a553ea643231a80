"""The dashboard's former covering index, replaced by ``attempt_report2_idx``: dropped
(CONCURRENTLY on PostgreSQL)."""

from django.db import migrations

from challenges.migrations._online import RemoveIndexOnline


class Migration(migrations.Migration):
    atomic = False  # DROP INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("challenges", "0006_report_index_with_answer_ip"),
    ]

    operations = [
        RemoveIndexOnline(model_name="challengeattempt", name="attempt_report_idx"),
    ]
