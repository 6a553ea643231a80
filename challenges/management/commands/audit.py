"""``manage.py audit``: the attempts in the audit, from the command line.

    python manage.py audit list [--key KEY] [--outcome CODE ...] [--address IP] [--worker W]
                                [--since 2h] [--until ...] [--limit 50] [--json]
    python manage.py audit show ID [--json]

``list`` prints the newest attempts first; an aggregated refusal (one row per address, code
and minute) shows how many it stands for. ``--outcome failure`` selects every outcome but
success. ``show`` prints one attempt's whole timeline and the token it released, if any.
For every row as CSV, see ``manage.py auditexport``.
"""

from __future__ import annotations

from typing import Any, TextIO, cast

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from challenges import cli, reports
from challenges.models import ChallengeAttempt, IssuedToken


class Command(BaseCommand):
    help = "List the audit's attempts (newest first, filtered), or show one with its timeline."

    def add_arguments(self, parser: Any) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        listing = actions.add_parser("list", help="attempts, newest first")
        cli.add_attempt_options(listing)
        listing.add_argument("--limit", type=int, default=50, help="at most this many (0: all)")
        listing.add_argument("--json", action="store_true", help="a JSON array, every field whole")
        show = actions.add_parser("show", help="one attempt: its timeline and its token")
        show.add_argument("id", type=int)
        show.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        out = cast(TextIO, self.stdout._out)  # Django's wrapper would end every write with a newline
        if options["action"] == "show":
            return self.show(options["id"], out=out, as_json=options["json"])
        limit = options["limit"]
        if limit < 0:
            raise CommandError("--limit must be >= 0")
        rows = cli.attempts(options, now=timezone.now()).order_by("-created_at", "-id")
        if options["json"]:
            chosen = rows[:limit] if limit else rows.iterator(chunk_size=2000)
            cli.write_json_array(out, (cli.attempt_dict(a) for a in chosen))
            return
        page = list(rows[: limit + 1]) if limit else list(rows)
        more = bool(limit) and len(page) > limit
        page = page[:limit] if limit else page
        lines = cli.table(
            ("time (UTC)", "outcome", "count", "via", "worker", "key", "address", "latency"),
            (
                (cli.when(a.created_at), a.outcome, str(a.count), a.transport, a.worker or "-",
                 cli.fingerprint(a.public_key), cli.addresses(a),
                 cli.latency(a.latency_ms))
                for a in page
            ),
            right=("count", "latency"),
        )  # fmt: skip
        for line in lines:
            self.stdout.write(line)
        note = f" (the newest {limit}; --limit 0 for all)" if more else ""
        self.stdout.write(f"{len(page)} row{'s' if len(page) != 1 else ''}{note}")

    def show(self, pk: int, *, out: TextIO, as_json: bool) -> None:
        attempt = ChallengeAttempt.objects.filter(pk=pk).first()
        if attempt is None:
            raise CommandError(f"no attempt has the id {pk}")
        now = timezone.now()
        token = reports.with_standing(IssuedToken.objects.filter(attempt=attempt)).first()
        if as_json:
            item = cli.attempt_dict(attempt)
            item["timeline"] = cli.timeline_dicts(attempt)
            item["token"] = cli.token_dict(token, now=now) if token else None
            cli.write_json_array(out, [item])
            return
        facts = [
            ("attempt", f"#{attempt.pk}"),
            ("outcome", attempt.outcome + (f": {attempt.detail}" if attempt.detail else "")),
            ("key", attempt.public_key or "-"),
            ("address", cli.addresses(attempt)),
            ("origin", attempt.origin or "-"),
            ("via", attempt.transport),
            ("worker", attempt.worker or "-"),
            ("upstream", cli.upstream(attempt)),
            ("latency", cli.latency(attempt.latency_ms)),
            ("token", f"{token.jti} ({reports.standing(token, now=now)})" if token else "none"),
        ]  # fmt: skip
        if attempt.count > 1:
            facts.append(
                ("count", f"{attempt.count:,} refusals aggregated: first seen {cli.when(attempt.created_at)},"
                          f" last seen {cli.when(attempt.finished_at)} UTC")
            )  # fmt: skip
        width = max(len(name) for name, _ in facts)
        for name, value in facts:
            self.stdout.write(f"{name.ljust(width)}  {value}")
        self.stdout.write("timeline")
        for line in cli.timeline_lines(attempt):
            self.stdout.write(line)
