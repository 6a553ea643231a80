"""A synthetic audit for measuring the operators' reads: attempts of every kind, spread over a
span of days, with the issued token of each success.

Shaped like a busy service's audit: most attempts succeed; failures come from many keys and
addresses, a few of them noisy (what "top failing" must find); refusals that belong to no
flow are aggregated rows with a ``count``, as :mod:`challenges.refusals` writes them. Written
with ``bulk_create`` in batches, one transaction per batch.
"""

from __future__ import annotations

import hashlib
import random
import string
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import DateTimeField, Max

from challenges.models import SUCCESS, ChallengeAttempt, IssuedToken

#: (outcome, share of rows, aggregated refusal?)
OUTCOMES = [
    (SUCCESS, 0.70, False),
    ("bad_signature", 0.08, False),
    ("challenge_timeout", 0.06, False),
    ("upstream_unavailable", 0.02, False),
    ("unknown_challenge", 0.03, True),
    ("invalid_json", 0.05, True),
    ("rate_limited", 0.04, True),
    ("too_many_pending", 0.02, True),
]
_NAMES = [o for o, _, _ in OUTCOMES]
_WEIGHTS = [w for _, w, _ in OUTCOMES]
_AGGREGATED = {o for o, _, a in OUTCOMES if a}
_KEY_ALPHABET = string.ascii_lowercase + "234567"


def _key(rng: random.Random) -> str:
    return "bbaarei" + "".join(rng.choices(_KEY_ALPHABET, k=52))


def _address(rng: random.Random) -> str:
    return f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def populate(
    rows: int,
    *,
    end: datetime,
    days: float = 90,
    seed: int = 1,
    batch: int = 5000,
    keys: int = 20_000,
    addresses: int = 50_000,
    method: str = "bulk_create",
    on_batch: Callable[[int], None] | None = None,
) -> Counter[str]:
    """Insert ``rows`` attempts spread over ``days`` before ``end``, and a token per success.

    ``method``: ``bulk_create`` (the ORM, in batches) or ``direct`` (the same rows by the
    database's fast path, without the ORM's per-value work: several times faster, for the
    tests). Returns the rows per outcome and the sum of their counts (``"<outcome>:sum"``),
    so a caller can check a report against what was written.
    """
    if method not in ("bulk_create", "direct"):
        raise ValueError(method)
    rng = random.Random(seed)
    span = days * 86400
    pools = [_key(rng) for _ in range(keys)], [_address(rng) for _ in range(addresses)]
    written: Counter[str] = Counter()
    done = 0
    while done < rows:
        size = min(batch, rows - done)
        # In time order, as a service writes them (a row a little after the one before).
        attempts = [
            _attempt(rng, end - timedelta(seconds=span * (1 - (done + i + rng.random()) / rows)), pools)
            for i in range(size)
        ]
        for a in attempts:
            written[a["outcome"]] += 1
            written[f"{a['outcome']}:sum"] += a["count"]
        with transaction.atomic():
            if method == "bulk_create":
                saved = ChallengeAttempt.objects.bulk_create([ChallengeAttempt(**a) for a in attempts])
                successes = [(a.pk, a.finished_at, a.public_key) for a in saved if a.outcome == SUCCESS]
            else:
                successes = _direct(attempts)
            tokens = [_token(rng, seed, *success) for success in successes]
            if method == "bulk_create":
                IssuedToken.objects.bulk_create([IssuedToken(**t) for t in tokens])
            else:
                _insert(IssuedToken, tokens)
        done += size
        if on_batch is not None:
            on_batch(size)
    return written


def _attempt(rng: random.Random, created: datetime, pools: tuple[list[str], list[str]]) -> dict[str, Any]:
    key_pool, address_pool = pools
    outcome = rng.choices(_NAMES, _WEIGHTS)[0]
    # A third of the failures come from a few noisy keys and addresses.
    noisy = outcome != SUCCESS and rng.random() < 0.3
    key = rng.choice(key_pool[:20] if noisy else key_pool)
    flow = outcome not in _AGGREGATED
    asker = rng.choice(address_pool[:20] if noisy else address_pool)
    # An answer comes from the asker's address, but for a few failures: another connection's.
    answerer = rng.choice(address_pool[:20]) if noisy and rng.random() < 0.1 else asker
    return {
        "created_at": created,
        "finished_at": created + timedelta(milliseconds=rng.randint(5, 900)),
        "outcome": outcome,
        "detail": "",
        "public_key": key if flow or rng.random() < 0.5 else "",
        "challenge_id": f"{rng.getrandbits(96):024x}" if flow else "",
        "client_ip": asker,
        "origin": "https://app.example",
        "user_agent": "Mozilla/5.0 (bench)",
        "transport": rng.choice(("ws", "ws", "ws", "http")),
        "worker": f"bench-host:{rng.randrange(4)}",
        "upstream": "local",
        "upstream_status": "",
        "latency_ms": rng.uniform(2, 400) if flow else None,
        "challenged_at": created + timedelta(milliseconds=2) if flow else None,
        "answered_at": created + timedelta(milliseconds=50) if flow else None,
        "answer_ip": answerer if flow else None,
        "api_key": "",
        "count": 1 if flow else rng.randint(1, 60),
    }


def _token(rng: random.Random, seed: int, attempt_id: int, at: datetime, key: str) -> dict[str, Any]:
    return {
        "attempt_id": attempt_id,
        "jti": f"{attempt_id}-{rng.getrandbits(64):016x}",
        "token_sha256": hashlib.sha256(f"bench-token-{attempt_id}-{seed}".encode()).hexdigest(),
        "public_key": key,
        "issuer": "bbaareibench",
        "audience": "",
        "issued_at": at,
        "expires_at": at + timedelta(days=1),
    }


def _direct(attempts: list[dict[str, Any]]) -> list[tuple[int, datetime, str]]:
    """Insert ``attempts``; return (id, finished_at, public_key) of the successes."""
    newest = ChallengeAttempt.objects.aggregate(m=Max("id"))["m"] or 0
    _insert(ChallengeAttempt, attempts)
    return list(
        ChallengeAttempt.objects.filter(id__gt=newest, outcome=SUCCESS)
        .order_by("id")
        .values_list("id", "finished_at", "public_key")
    )


def _insert(model: Any, rows: list[dict[str, Any]]) -> None:
    """``rows`` as they are, by the database's fast path: PostgreSQL's COPY, SQLite's
    executemany (what the ORM would send, without its per-value machinery)."""
    if not rows:
        return
    ops = connection.ops
    columns = list(rows[0])
    fields = [model._meta.get_field(c) for c in columns]  # attname or name
    table = ops.quote_name(model._meta.db_table)
    names = ", ".join(ops.quote_name(f.column) for f in fields)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            with cursor.cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row([row[c] for c in columns])
            return
        adapt = [ops.adapt_datetimefield_value if isinstance(f, DateTimeField) else None for f in fields]
        sql = f"INSERT INTO {table} ({names}) VALUES ({', '.join(['%s'] * len(columns))})"  # noqa: S608 (names from the model)
        cursor.executemany(
            sql,
            [
                [row[c] if a is None else a(row[c]) for a, c in zip(adapt, columns, strict=True)]
                for row in rows
            ],
        )
