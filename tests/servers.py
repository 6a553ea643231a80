"""The tests' real processes: the benchmark's harness (``bench/servers.py``), shared;
and what the tests read of a server's audit."""

from __future__ import annotations

from bench.servers import *  # noqa: F403
from bench.servers import ROOT, Redis, Server, drop_server_databases  # noqa: F401


def refusals(server: Server, outcome: str, transport: str | None = None) -> int:
    """Refusals with ``outcome`` in ``server``'s audit (of ``transport``, if given): refusals
    are counted per address, code and minute, a row with a count."""
    sql = "SELECT COALESCE(SUM(count), 0) FROM challenges_challengeattempt WHERE outcome = ?"
    params: tuple[str, ...] = (outcome,)
    if transport is not None:
        sql, params = sql + " AND transport = ?", (outcome, transport)
    [(count,)] = server.rows(sql, params)
    return int(count)
