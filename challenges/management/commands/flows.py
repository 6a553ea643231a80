"""``manage.py flows [--follow]``: outcomes as they happen, across every worker.

    python manage.py flows                      # the last 10 outcomes
    python manage.py flows --follow             # and every new one, until Ctrl-C (or SIGTERM)
    python manage.py flows -f --outcome bad_signature --outcome failure

One line per audit row: time (UTC), worker, transport, outcome, the key's fingerprint (its
first 12 characters), client address, latency; an aggregated refusal shows ``xN`` for the
refusals it stands for, and a line ``+N`` each time its count grows. Every worker writes to
the same audit table, so following it shows them all.

Following polls the table by id every ``--interval`` seconds (0.5). Rows of concurrent
transactions may commit out of id order: an id missing below the newest one seen is waited
for (``GAP_GRACE``) before it is given up, so no row is skipped. Memory stays bounded: only
ids above the last fully seen one, and the refusal rows of the last two minutes, are kept.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any, TextIO, cast

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from challenges import cli
from challenges.clients import answered_elsewhere
from challenges.models import SUCCESS, ChallengeAttempt

#: Seconds an id missing below the newest seen is waited for (a transaction still committing).
GAP_GRACE = 5.0
#: Seconds an aggregated refusal row is watched for its count to grow (its minute, and a flush).
WATCH_FOR = 120.0
MAX_WATCHED = 5000
#: Ids a follower may hold above its floor; past it the oldest gaps are given up.
MAX_SPAN = 10_000
BATCH = 1000
FIELDS = (
    "id",
    "created_at",
    "worker",
    "transport",
    "outcome",
    "public_key",
    "client_ip",
    "answer_ip",
    "latency_ms",
    "count",
)


def line(row: dict[str, Any]) -> str:
    count = f"  x{row['count']:,}" if row["count"] > 1 else ""
    answered = answered_elsewhere(row["client_ip"], row["answer_ip"])
    return (
        f"{cli.when(row['created_at'])}  {(row['worker'] or '-'):<16}  {row['transport']:<4}  "
        f"{row['outcome']:<22}  {cli.fingerprint(row['public_key']):<12}  {(row['client_ip'] or '-'):<15}  "
        f"{cli.latency(row['latency_ms']):>10}{count}{f'  answered from {answered}' if answered else ''}"
    ).rstrip()


def wanted(*, outcomes: list[str] | None, worker: str | None) -> Callable[[dict[str, Any]], bool]:
    """The rows ``--outcome`` and ``--worker`` ask for (``cli.ANY_FAILURE``: every failure)."""
    chosen = set(outcomes or [])
    failures = cli.ANY_FAILURE in chosen

    def keep(row: dict[str, Any]) -> bool:
        if worker and row["worker"] != worker:
            return False
        if not chosen:
            return True
        return row["outcome"] in chosen or (failures and row["outcome"] != SUCCESS)

    return keep


class Follower:
    """Rows past id ``after``, each once (those ``keep`` accepts printed), and the growth of
    aggregated counts. Every id is tracked, printed or not, so a filter is never a gap."""

    def __init__(
        self,
        keep: Callable[[dict[str, Any]], bool],
        *,
        after: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keep, self.floor, self.clock = keep, after, clock
        self.seen: set[int] = set()
        self.gaps: dict[int, float] = {}
        self.watched: dict[int, tuple[int, float]] = {}

    def poll(self) -> list[str]:
        now = self.clock()
        out = []
        fresh = ChallengeAttempt.objects.filter(id__gt=self.floor).order_by("id").values(*FIELDS)[:BATCH]
        for row in fresh:
            if row["id"] in self.seen:
                continue
            self.seen.add(row["id"])
            if not self.keep(row):
                continue
            out.append(line(row))
            self.watch(row, now)
        out.extend(self._grown(now))
        self._advance(now)
        return out

    def watch(self, row: dict[str, Any], now: float | None = None) -> None:
        """Follow ``row``'s count if it is a refusal (no flow, so no latency): it may grow."""
        if row["latency_ms"] is None:
            self.watched[row["id"]] = (row["count"], self.clock() if now is None else now)

    def _grown(self, now: float) -> list[str]:
        for pk, (_, since) in list(self.watched.items()):
            if now - since > WATCH_FOR:
                del self.watched[pk]
        while len(self.watched) > MAX_WATCHED:
            del self.watched[next(iter(self.watched))]
        if not self.watched:
            return []
        out = []
        rows = ChallengeAttempt.objects.filter(id__in=list(self.watched)).values(*FIELDS)
        for row in rows:
            before, since = self.watched[row["id"]]
            if row["count"] > before:
                self.watched[row["id"]] = (row["count"], since)
                out.append(
                    f"{cli.when(row['created_at'])}  +{row['count'] - before:,} {row['outcome']} from "
                    f"{row['client_ip'] or '-'} (row {row['id']}, now x{row['count']:,})"
                )
        return out

    def _advance(self, now: float) -> None:
        top = max(self.seen, default=self.floor)
        if top - self.floor > MAX_SPAN:  # give the oldest gaps up rather than grow
            self.floor = top - MAX_SPAN
        for pk in range(self.floor + 1, top):  # every missing id waits from when it was first missed
            if pk not in self.seen:
                self.gaps.setdefault(pk, now)
        while self.floor < top:
            nxt = self.floor + 1
            if nxt in self.seen or now - self.gaps[nxt] >= GAP_GRACE:
                self.floor = nxt
                continue
            break
        self.seen = {pk for pk in self.seen if pk > self.floor}
        self.gaps = {pk: at for pk, at in self.gaps.items() if pk > self.floor}


class Command(BaseCommand):
    help = "Outcomes as they happen, across workers: one line per audit row (--follow; Ctrl-C ends it)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("-f", "--follow", action="store_true", help="keep printing new rows")
        parser.add_argument(
            "--outcome",
            action="append",
            type=cli.outcome,
            help=f"only this outcome (repeat; '{cli.ANY_FAILURE}': not success)",
        )
        parser.add_argument("--worker", help="only this worker")
        parser.add_argument("--last", type=int, default=10, help="rows already there to print first (10)")
        parser.add_argument("--interval", type=float, default=0.5, help="seconds between polls (0.5)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["last"] < 0 or not 0.05 <= options["interval"] <= 60:
            raise CommandError("--last must be >= 0 and --interval within [0.05, 60]")
        out = cast(TextIO, self.stdout._out)  # raw: each line flushed as it comes
        if options["follow"]:
            # Ctrl-C and SIGTERM end it cleanly from here on, even when started from a script
            # that ignores SIGINT (a background job of a non-interactive shell inherits it so).
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, _interrupt)
        try:
            self._show(out, options)
        except KeyboardInterrupt:
            out.flush()

    def _show(self, out: TextIO, options: dict[str, Any]) -> None:
        selected = {"outcome": options["outcome"], "worker": options["worker"]}
        rows = cli.attempts(selected, now=timezone.now())
        newest = ChallengeAttempt.objects.order_by("-id").values_list("id", flat=True).first() or 0
        recent = list(rows.filter(id__lte=newest).order_by("-id").values(*FIELDS)[: options["last"]])
        for row in reversed(recent):
            out.write(line(row) + "\n")
        out.flush()
        if not options["follow"]:
            return
        follower = Follower(wanted(outcomes=options["outcome"], worker=options["worker"]), after=newest)
        for row in recent:
            follower.watch(row)
        while True:
            for text in follower.poll():
                out.write(text + "\n")
            out.flush()
            time.sleep(options["interval"])


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
