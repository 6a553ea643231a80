"""``manage.py auditexport > audit.csv``: the audit as CSV on stdout, streamed, with progress.

    python manage.py auditexport [--since 30d] [--until ...] [--outcome CODE ...] [--key KEY]
                                 [--address IP] [--worker W] > attempts.csv
    python manage.py auditexport --tokens [--since ...] [--until ...] [--key KEY] > tokens.csv

The same columns as the admin's "Export CSV" (:mod:`challenges.exports`), oldest row first.
Rows are read and written a chunk at a time: memory stays flat whatever the size. Progress
goes to stderr (a bar on a terminal, a line per tenth otherwise), so stdout is the file.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO, cast

from django.core.management.base import BaseCommand, CommandError
from django.db.models import QuerySet
from django.utils import timezone

from challenges import cli, exports
from challenges.progress import Progress


class Command(BaseCommand):
    help = "Write the audit's attempts (or, with --tokens, its issued tokens) as CSV to stdout."

    def add_arguments(self, parser: Any) -> None:
        cli.add_attempt_options(parser)
        parser.add_argument("--tokens", action="store_true", help="the issued tokens instead of the attempts")
        parser.add_argument("--chunk-rows", type=int, default=exports.CHUNK_ROWS, help=argparse.SUPPRESS)

    def handle(self, *args: Any, **options: Any) -> None:
        if options["chunk_rows"] < 1:
            raise CommandError("--chunk-rows must be >= 1")
        now = timezone.now()
        rows: QuerySet[Any]
        columns: tuple[str, ...]
        if options["tokens"]:
            if options["outcome"] or options["address"] or options["worker"]:
                raise CommandError("--tokens takes only --key, --since and --until")
            rows, columns, what = cli.tokens(options, now=now), exports.TOKEN_COLUMNS, "tokens"
        else:
            rows, columns, what = cli.attempts(options, now=now), exports.ATTEMPT_COLUMNS, "attempts"
        rows = rows.order_by("id")
        # The raw streams: Django's wrapper would end every write with a newline.
        out, err = cast(TextIO, self.stdout._out), cast(TextIO, self.stderr._out)
        progress = Progress(rows.count(), stream=err, label=f"exporting {what}")
        written = 0
        try:
            for text, n in exports.csv_chunks(rows, columns, chunk_rows=options["chunk_rows"]):
                out.write(text)
                written += n
                if n:
                    progress.advance(n)
            out.flush()
        except BrokenPipeError:  # the reader went away (| head): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return
        progress.finish()
        err.write(f"exported {written:,} {what}\n")
