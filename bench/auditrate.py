"""Audit rows per second into SQLite and PostgreSQL, while token flows run.

A ``make serve`` worker serves flows (16 clients, its own audit rows going to
the database) while another process pushes rows through the same
:class:`~challenges.audit.AuditWriter` the workers use, from 500 concurrent
writers, half of them with a token row; each ``record`` returns only once its
row is committed, as a flow's token waits for its row. ``python -m
bench.auditrate URL ROWS WRITERS`` is that writer process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from challenges.identity import PrivateKey

from . import procs, servers
from .loadgen import Spec


@dataclass
class AuditRate:
    database: str
    rows: int
    seconds: float
    flows_meanwhile: int

    @property
    def per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def measure(tmp: Path, *, authority: PrivateKey, postgres: str = "", rows: int = 20_000) -> list[AuditRate]:
    results = []
    (tmp / "SQLite").mkdir(parents=True, exist_ok=True)
    targets = [("SQLite", f"sqlite:///{tmp / 'SQLite' / 'audit.sqlite3'}")]
    if postgres:
        targets.append(("PostgreSQL", postgres))
    for label, url in targets:
        with _database(url) as database:
            results.append(_one(tmp / label, label, database, authority, rows))
    return results


def _one(tmp: Path, label: str, url: str, authority: PrivateKey, rows: int) -> AuditRate:
    tmp.mkdir(parents=True, exist_ok=True)
    server = servers.start(tmp, kind="serve", env=procs.bench_env(tmp, authority=authority, DATABASE_URL=url))
    spec = Spec(
        urls=[server.ws], concurrency=16, flows=1_000_000, issuer=str(authority.public), run_timeout=600
    )
    load = subprocess.Popen(
        [sys.executable, "-m", "bench.loadgen", json.dumps(asdict(spec))],
        cwd=servers.ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(2)  # the flows are under way
        before = _audited(server)
        env = {**server.env, "DATABASE_URL": url}
        out = subprocess.run(
            [sys.executable, "-m", "bench.auditrate", url, str(rows), "500"],
            cwd=servers.ROOT, env=env, capture_output=True, text=True, timeout=600, check=True,
        )  # fmt: skip
        measured = json.loads(out.stdout.strip().splitlines()[-1])
        flows = _audited(server) - before - rows
    finally:
        load.terminate()
        load.wait(30)
        server.stop()
    return AuditRate(label, measured["rows"], measured["seconds"], max(flows, 0))


def _audited(server: servers.Server) -> int:
    return int(server.rows("SELECT COUNT(*) FROM challenges_challengeattempt")[0][0])


@contextlib.contextmanager
def _database(url: str):  # type: ignore[no-untyped-def]
    """A fresh PostgreSQL database of the run's own (SQLite: the file, created on migrate)."""
    if not url.startswith(("postgres://", "postgresql://")):
        yield url
        return
    import psycopg

    name = f"bench_audit_{os.getpid()}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _writer(rows: int, writers: int) -> dict[str, float]:
    """In this process (Django set up on the database): push ``rows`` rows, ``writers`` at once."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokensite.settings")
    django.setup()
    from datetime import UTC, datetime

    from challenges.audit import AuditWriter
    from challenges.services import AuditRecord
    from challenges.tokens import mint_token

    signer, user = PrivateKey.generate(), PrivateKey.generate()
    minted = [mint_token(signer=signer, subject=user.public, ttl=60) for _ in range(rows // 2)]

    async def push() -> float:
        writer, gate = AuditWriter(), asyncio.Semaphore(writers)

        async def one(n: int) -> None:
            async with gate:
                now = datetime.now(UTC)
                token = minted[n // 2] if n % 2 == 0 else None
                await writer.record(
                    AuditRecord(
                        outcome="success" if token else "bad_signature", created_at=now, finished_at=now,
                        public_key=str(user.public), challenge_id=f"bench{n}", client_ip="127.0.0.1",
                        transport="ws", worker="bench", token=token,
                    )
                )  # fmt: skip

        started = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(rows)))
        elapsed = time.perf_counter() - started
        await writer.close()
        return elapsed

    return {"rows": rows, "seconds": asyncio.run(push())}


if __name__ == "__main__":
    print(json.dumps(_writer(int(sys.argv[2]), int(sys.argv[3]))))
