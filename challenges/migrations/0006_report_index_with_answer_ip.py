"""The dashboard's covering index gains ``answer_ip``: failures rank by the address their
input came from. Built beside the old one (CONCURRENTLY on PostgreSQL); the next migration
drops the old one, so each step is recorded on its own."""

from django.db import migrations, models

from challenges.migrations._online import AddIndexOnline


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("challenges", "0005_attempt_answer_ip"),
    ]

    operations = [
        AddIndexOnline(
            model_name="challengeattempt",
            index=models.Index(
                fields=["created_at", "outcome", "count", "public_key", "client_ip", "answer_ip"],
                name="attempt_report2_idx",
            ),
        ),
    ]
