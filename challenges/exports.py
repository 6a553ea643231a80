"""The audit as CSV, streamed: the admin's "Export CSV" links and ``manage.py auditexport``.

Rows are read with ``.iterator(chunk_size=...)`` and written a chunk at a time, so an export
of millions of rows holds one chunk in memory, never the file. Under ASGI the response
iterates asynchronously, each chunk read on the request's own database thread (a
synchronous iterator there would make Django read the whole export into a list first).

Only the listed columns leave; the audit holds no token, no signature and no secret. Text a
client wrote (user agent, Origin, ...) that a spreadsheet would run as a formula (``=``,
``+``, ``-``, ``@``, tab, carriage return first) is exported with a leading ``'``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.db.models import QuerySet
from django.http import HttpRequest, StreamingHttpResponse

ATTEMPT_COLUMNS = (
    "id",
    "created_at",
    "challenged_at",
    "answered_at",
    "finished_at",
    "outcome",
    "count",
    "public_key",
    "challenge_id",
    "client_ip",
    "answer_ip",
    "origin",
    "user_agent",
    "transport",
    "worker",
    "upstream",
    "upstream_status",
    "latency_ms",
    "api_key",
    "detail",
)
TOKEN_COLUMNS = (
    "id",
    "attempt_id",
    "jti",
    "token_sha256",
    "public_key",
    "issuer",
    "audience",
    "issued_at",
    "expires_at",
)
CHUNK_ROWS = 2000
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, float):
        return f"{value:.3f}"
    text = str(value)
    return "'" + text if isinstance(value, str) and text.startswith(_FORMULA_START) else text


def _lines(rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows([cell(v) for v in row] for row in rows)
    return buffer.getvalue()


def csv_chunks(
    queryset: QuerySet[Any], columns: Sequence[str], *, chunk_rows: int = CHUNK_ROWS
) -> Iterator[tuple[str, int]]:
    """The CSV text of ``queryset`` (its header first), a chunk of rows at a time, with the
    number of rows in each chunk."""
    yield _lines([columns]), 0
    rows = queryset.values_list(*columns).iterator(chunk_size=chunk_rows)
    while batch := list(islice(rows, chunk_rows)):
        yield _lines(batch), len(batch)


def _text(chunks: Iterator[tuple[str, int]]) -> Iterator[str]:
    for text, _ in chunks:
        yield text


def _next(chunks: Iterator[str]) -> str | None:
    return next(chunks, None)


async def _atext(chunks: Iterator[str]) -> AsyncIterator[str]:
    # Each chunk is read on the request's own thread: the one its database connection lives on.
    step = sync_to_async(_next, thread_sensitive=True)
    while (text := await step(chunks)) is not None:
        yield text


def csv_response(
    request: HttpRequest, queryset: QuerySet[Any], columns: Sequence[str], filename: str
) -> StreamingHttpResponse:
    """``queryset`` as a streamed CSV download."""
    chunks = _text(csv_chunks(queryset, columns))
    content: Iterator[str] | AsyncIterator[str] = (
        _atext(chunks) if isinstance(request, ASGIRequest) else chunks
    )
    response = StreamingHttpResponse(content, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response
