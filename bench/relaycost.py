"""The report's section on the relay's CPU: each relay configuration beside the bare gRPC
exchange laid out as it runs (``bench/grpcfloor.py``), and the ceilings that follow."""

from __future__ import annotations

import statistics
from typing import Any


def ceiling(by: dict[Any, Any], costs: dict[int, Any], *, both_sides: bool) -> dict[int, float]:
    """At each concurrency: the ratio a relay would reach if it cost only the local flow plus
    the bare gRPC exchange. With ``both_sides`` (``relay``: both processes on the one server
    core) serve / (serve + bare client + bare server); without (``remote``: the provider's core
    carries only the client's side) serve / (serve + bare client)."""
    found = {}
    for c, cost in costs.items():
        if ("serve", c) in by:
            local = by[("serve", c)].median("server_cpu_ms")
            found[c] = local / (local + (cost.total_ms if both_sides else cost.client_ms))
    return found


def section(
    by: dict[Any, Any],
    costs: dict[int, Any],
    apart: dict[int, Any],
    ceilings: dict[str, dict[int, float]],
    ratio: Any,
) -> list[str]:
    """Where the relay's CPU goes, beside what the bare gRPC exchange costs laid out as each
    relay configuration runs."""
    rows = [c for c in sorted({*ceilings["relay"], *ceilings["remote"]}) if _relayed(by, c)]
    if not rows:
        return []
    lines = [
        "",
        "## The relay's CPU, and what gRPC alone costs",
        "",
        "The relay runs two processes on the one server core, and each does a flow's work: the provider"
        " serves the WebSocket and audits the flow; `runauthority` checks the signature, mints the token and"
        " audits it in its own database. Between them runs the Hub's `GetToken` stream. The bare exchange"
        " (`bench/grpcfloor.py`: the same four messages on one `grpc.aio` stream per call between two"
        " processes that do nothing else; as many repeats, at least 1,000 calls a point) costs what the"
        " bare columns show, measured twice: both sides pinned to the server core, as `relay` runs, and"
        " its server on the load generator's CPU, as `remote` runs (apart, each side wakes for every"
        " message the other sends and pays more per call). The relay ceiling is the ratio `relay` would"
        " reach if it cost only the local flow plus the exchange on one core: serve / (serve + bare client"
        " + bare server). With the authority on another host, as a Hub is, the provider's core carries"
        " only the provider's share: serve / provider is the ratio its CPU alone would allow (the"
        " provider's CPU as `remote` measured it, with `runauthority` on the load generator's CPU; as"
        " `relay` did, without `remote`), the remote ceiling is serve / (serve + bare client apart), and"
        " the remote ratio is what `remote` reached. Both ceilings are estimates, not bounds: a relaying"
        " provider neither checks the signature nor mints (its upstream does), so its share of the local"
        " flow's work is a little smaller than serve's.",
        "",
        "| clients | local flow (serve) CPU ms | provider | runauthority | bare gRPC client"
        " | bare gRPC server | bare gRPC calls/s | relay ratio | relay ceiling | bare client apart"
        " | remote ceiling | serve / provider | remote ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in rows:
        local = by[("serve", c)].median("server_cpu_ms")
        relay = by.get(("relay", c))
        alone = by.get(("remote", c), relay)  # the provider with the authority off its core
        own = _role_cpu(alone, "provider")
        bare, bare_apart = costs.get(c), apart.get(c)
        cells = [
            f"c={c}",
            *_figures(local, _role_cpu(relay, "provider"), _role_cpu(relay, "runauthority")),
            *_figures(bare and bare.client_ms, bare and bare.server_ms),
            f"{bare.rate:,.0f}" if bare else "-",
            ratio("relay", c),
            *_figures(
                ceilings["relay"].get(c), bare_apart and bare_apart.client_ms, ceilings["remote"].get(c)
            ),
            *_figures(local / own if own else None),
            ratio("remote", c),
        ]
        lines.append(f"| {' | '.join(cells)} |")
    return lines


def _role_cpu(point: Any, role: str) -> float | None:
    """A process's CPU ms per flow in ``point`` (median of runs); None if it did not run."""
    return None if point is None else statistics.median(r.cpu_by_role.get(role, 0.0) for r in point.runs)


def _figures(*values: float | None) -> list[str]:
    return ["-" if v is None else f"{v:.2f}" for v in values]


def _relayed(by: dict[Any, Any], c: int) -> bool:
    """Whether a relay configuration and the local flow it is compared with ran at ``c``."""
    return ("serve", c) in by and (("relay", c) in by or ("remote", c) in by)
