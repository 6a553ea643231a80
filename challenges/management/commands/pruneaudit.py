"""``manage.py pruneaudit --older-than DAYS``: delete audit rows past retention, in batches.

A row whose token is still live (not expired, or with no expiry at all, as a
relayed Hub token may have) is never deleted: it is what introspection and
operators need to find that token. Each batch is one transaction.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, TextIO, cast

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from challenges.models import ChallengeAttempt, IssuedToken
from challenges.progress import Progress


class Command(BaseCommand):
    help = "Delete audit rows older than --older-than DAYS (never one whose token is still live)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--older-than", type=float, required=True, metavar="DAYS")
        parser.add_argument("--batch-size", type=int, default=2000)
        parser.add_argument("--dry-run", action="store_true", help="count what would go, delete nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        days, batch = options["older_than"], options["batch_size"]
        if not days >= 0 or batch < 1:  # (NaN is not >= 0)
            raise CommandError("--older-than must be >= 0 and --batch-size >= 1")
        try:
            cutoff = timezone.now() - timedelta(days=days)
        except OverflowError:
            raise CommandError("--older-than goes back before the year 1: nothing is that old") from None
        candidates = prunable(cutoff=cutoff, now=timezone.now())
        total = candidates.count()
        if options["dry_run"]:
            self.stdout.write(f"{total} audit rows older than {cutoff:%Y-%m-%d %H:%M} UTC would be deleted")
            return
        # The raw stream: Django's wrapper would end every write with a newline.
        progress = Progress(total, stream=cast(TextIO, self.stderr._out), label="pruning")
        deleted = 0
        while True:
            ids = list(candidates.order_by("id").values_list("id", flat=True)[:batch])
            if not ids:
                break
            with transaction.atomic():
                IssuedToken.objects.filter(attempt_id__in=ids).delete()
                ChallengeAttempt.objects.filter(id__in=ids).delete()
            deleted += len(ids)
            progress.advance(len(ids))
        progress.finish()
        self.stdout.write(f"deleted {deleted} audit rows older than {cutoff:%Y-%m-%d %H:%M} UTC")


def prunable(*, cutoff: Any, now: Any) -> QuerySet[ChallengeAttempt]:
    """Rows older than ``cutoff`` whose token (if any) is no longer live at ``now``."""
    live = Q(token__isnull=False) & (Q(token__expires_at__isnull=True) | Q(token__expires_at__gt=now))
    return ChallengeAttempt.objects.filter(created_at__lt=cutoff).exclude(live)
