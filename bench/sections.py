"""The report's sections on what is measured beside the flows: memory per idle socket,
audit rows per second, and what a flow costs each shared component (the capacity model's
inputs)."""

from __future__ import annotations

from typing import Any


def capacity(measured: Any) -> list[str]:
    if not measured:
        return []
    cost, scaling = measured
    lines = [
        "",
        "## What a flow costs (the capacity model's inputs)",
        "",
        "A routed flow (challenge on worker A, answer on worker B), two `make serve` workers, rate limits"
        f" on, the audit in {cost.database}; {cost.flows:,} flows at {cost.rate:,.0f} flows/s:",
        "",
        "| worker CPU ms | Redis CPU ms | Redis commands | Redis bytes in | Redis bytes out | audit rows"
        " | audit bytes |",
        "|---|---|---|---|---|---|---|",
        f"| {cost.worker_cpu_ms:.2f} | {cost.redis_cpu_ms:.3f} | {cost.redis_commands:.1f}"
        f" | {cost.redis_bytes_in:,.0f} | {cost.redis_bytes_out:,.0f} | {cost.audit_rows:.2f}"
        f" | {cost.audit_bytes:,.0f} |",
        "",
        "`make serve` with one and two workers (one port, Redis between them), flows on one socket each:",
        "",
        "| workers | flows/s | server CPU ms/flow | of which Redis | cores busy | errors |",
        "|---|---|---|---|---|---|",
    ]
    for s in scaling:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(s.errors.items())) or "0"
        cells = f"{s.rate:,.0f} | {s.cpu_ms:.2f} | {s.redis_cpu_ms:.2f} | {s.cores_busy:.2f}"
        lines.append(f"| {s.workers} | {cells} | {errors} |")
    return lines


def audit(audit: list[Any]) -> list[str]:
    if not audit:
        return []
    lines = [
        "",
        "## Audit rows per second",
        "",
        "One process pushes rows through the workers' audit writer from 500 concurrent flows (half of them"
        " with a token row, each waiting for its commit) while a `make serve` worker on the same database"
        " serves 16 clients' flows.",
        "",
        "| database | rows | seconds | rows/s | flows served meanwhile |",
        "|---|---|---|---|---|",
    ]
    for a in audit:
        lines.append(
            f"| {a.database} | {a.rows:,} | {a.seconds:.1f} | {a.per_second:,.0f} | {a.flows_meanwhile:,} |"
        )
    return lines


def memory(idle: list[Any]) -> list[str]:
    if not idle:
        return []
    lines = [
        "",
        "## Memory per idle socket",
        "",
        "RSS (VmRSS) of a fresh, warmed-up server before, while and after holding the sockets; the client"
        " offers permessage-deflate as browsers do, or not at all.",
        "",
        "| server | client offers deflate | idle sockets | RSS before | RSS while held | RSS after close"
        " | KiB per socket | failures |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in idle:
        failures = ", ".join(f"{k} {v}" for k, v in sorted(m.errors.items())) or "0"
        lines.append(
            f"| {m.server} | {'yes' if m.compression else 'no'} | {m.sockets} | {m.before_kib / 1024:.1f} MiB"
            f" | {m.held_kib / 1024:.1f} MiB | {m.closed_kib / 1024:.1f} MiB | {m.per_socket_kib:.1f}"
            f" | {failures} |"
        )
    return lines
