"""What one flow costs each shared component, and what more workers give:
the figures ``docs/CAPACITY.md`` builds its model on.

* **Cost of a routed flow** (the costliest kind: the challenge on worker A,
  the answer on worker B): two ``make serve`` workers and a redis-server of
  the run's own, the rate limits on (their buckets live in Redis too), the
  audit in the given database. Measured around a run of flows: each
  process's CPU, Redis's commands (``INFO commandstats``) and bytes in and
  out (``INFO stats``), audit rows and the bytes the two tables grew by.
* **Workers**: ``make serve`` with ``WORKERS=1``, then ``WORKERS=2`` (one
  port, Redis between them), the same load; flows/s and the CPU of every
  process (the supervisor's workers included), beside what the per-flow CPU
  predicts.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from challenges.identity import PrivateKey

from . import procs, servers
from .servers import Server

#: Rate limits on, but never reached by one address's load: each charge still runs in Redis.
RATE_ON = {"RATE_LIMIT_PER_MINUTE": "100000000", "RATE_LIMIT_BURST": "100000000"}


@dataclass
class FlowCost:
    database: str
    flows: int
    rate: float
    worker_cpu_ms: float
    redis_cpu_ms: float
    redis_commands: float
    redis_bytes_in: float
    redis_bytes_out: float
    audit_rows: float
    audit_bytes: float


@dataclass
class Scaling:
    workers: int
    rate: float
    cpu_ms: float
    #: CPU used per second of the run, all server processes (1.0: one core busy).
    cores_busy: float
    #: Of ``cpu_ms``, redis-server's (the rate limits' charges and the heartbeats).
    redis_cpu_ms: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)


def measure(
    tmp: Path, *, authority: PrivateKey, database: str, flows: int = 2000, concurrency: int = 32
) -> tuple[FlowCost, list[Scaling]]:
    cost = _routed_cost(tmp / "routed", authority, database, flows, concurrency)
    scaling = [_scaling(tmp / f"workers-{n}", authority, database, n, flows, concurrency) for n in (1, 2)]
    return cost, scaling


def _routed_cost(tmp: Path, authority: PrivateKey, database: str, flows: int, concurrency: int) -> FlowCost:
    from .run import Target, drive

    with servers.redis_server(tmp / "redis") as redis, contextlib.ExitStack() as stack:
        assert redis.process is not None
        env = procs.bench_env(tmp, authority=authority, redis_url=redis.url, DATABASE_URL=database, **RATE_ON)
        a = servers.start(tmp / "a", kind="serve", env=dict(env, WORKER_ID="A"))
        stack.callback(a.stop)
        b = servers.start(tmp / "b", kind="serve", env=dict(env, WORKER_ID="B"), migrate_db=False)
        stack.callback(b.stop)
        target = Target(
            "other",
            [a.ws, b.ws],
            [a.process.pid, b.process.pid, redis.process.pid],
            [a.log_path, b.log_path],
            ["A", "B", "redis"],
            redis.port,
            mode="other",
        )
        drive(target, concurrency=concurrency, flows=200, cpu=None, issuer=str(authority.public))  # warm-up
        rows, size = _audit_size(a)
        stats = _redis_info(redis.port)
        run = drive(target, concurrency=concurrency, flows=flows, cpu=None, issuer=str(authority.public))
        after = _redis_info(redis.port)
        rows_after, size_after = _audit_size(a)
    done = max(run.ok, 1)
    return FlowCost(
        database="PostgreSQL" if database.startswith("postgres") else "SQLite",
        flows=run.ok,
        rate=run.rate,
        worker_cpu_ms=run.cpu_by_role["A"] + run.cpu_by_role["B"],
        redis_cpu_ms=run.cpu_by_role["redis"],
        redis_commands=run.redis_commands or 0.0,
        redis_bytes_in=(after["total_net_input_bytes"] - stats["total_net_input_bytes"]) / done,
        redis_bytes_out=(after["total_net_output_bytes"] - stats["total_net_output_bytes"]) / done,
        audit_rows=(rows_after - rows) / done,
        audit_bytes=(size_after - size) / done,
    )


def _scaling(
    tmp: Path, authority: PrivateKey, database: str, workers: int, flows: int, concurrency: int
) -> Scaling:
    from .run import Target, drive

    with servers.redis_server(tmp / "redis") as redis:
        env = procs.bench_env(
            tmp,
            authority=authority,
            redis_url=redis.url,
            DATABASE_URL=database,
            WORKERS=str(workers),
            **RATE_ON,
        )
        server = servers.start(tmp, kind="serve", env=env)
        try:
            _wait_workers(server, workers)
            pids = [server.process.pid, *_children(server.process.pid)]
            assert redis.process is not None
            roles = ["serve", *(f"worker {n}" for n in range(1, len(pids))), "redis"]
            target = Target("serve", [server.ws], [*pids, redis.process.pid], [server.log_path], roles)
            drive(target, concurrency=concurrency, flows=200, cpu=None, issuer=str(authority.public))
            started = time.monotonic()
            run = drive(target, concurrency=concurrency, flows=flows, cpu=None, issuer=str(authority.public))
            elapsed = time.monotonic() - started
        finally:
            server.stop()
    return Scaling(
        workers=workers,
        rate=run.rate,
        cpu_ms=run.server_cpu_ms,
        cores_busy=run.server_cpu_ms * run.ok / 1000 / elapsed if elapsed else 0.0,
        redis_cpu_ms=run.cpu_by_role.get("redis", 0.0),
        errors=run.errors,
    )


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for tid in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (tid / "children").read_text().split()]
    return found


def _wait_workers(server: Server, workers: int) -> None:
    """uvicorn's supervisor answers once one worker is up: wait for every one."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if len(re.findall(r"Application startup complete", server.log())) >= workers:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{workers} workers did not start:\n{server.log()[-2000:]}")


def _audit_size(server: Server) -> tuple[int, int]:
    """Audit rows (attempts + tokens) and the bytes the two tables and their indexes take."""
    count = (
        "SELECT (SELECT COUNT(*) FROM challenges_challengeattempt)"
        " + (SELECT COUNT(*) FROM challenges_issuedtoken)"
    )
    rows = int(server.rows(count)[0][0])
    if server.env["DATABASE_URL"].startswith("postgres"):
        size = (
            "SELECT pg_total_relation_size('challenges_challengeattempt')"
            " + pg_total_relation_size('challenges_issuedtoken')"
        )
    else:  # the tables' and indexes' pages (dbstat), WAL frames included once read through
        size = (
            "SELECT SUM(pgsize) FROM dbstat WHERE name LIKE 'challenges_challengeattempt%'"
            " OR name LIKE 'challenges_issuedtoken%'"
        )
    return rows, int(server.rows(size)[0][0] or 0)


def _redis_info(port: int) -> dict[str, int]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"INFO stats\r\n")
        data = b""
        while not data.endswith(b"\r\n\r\n") and len(data) < 1_000_000:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if b"total_net_output_bytes" in data and data.endswith(b"\r\n"):
                break
    return {k.decode(): int(v) for k, v in re.findall(rb"^(total_net_\w+_bytes):(\d+)", data, re.MULTILINE)}
