"""The figures the benchmark is held to: the table at the top of the report, each target
with what the run measured and whether it was met."""

from __future__ import annotations

import statistics
from typing import Any


def table(
    by: dict[Any, Any],
    idle: list[Any],
    options: Any,
    ratio: Any,
    ceilings: dict[str, dict[int, float]],
    audit: list[Any],
) -> list[str]:
    """The figures the benchmark is held to, each with what this run measured."""
    rows: list[tuple[str, str, bool | None]] = []

    def check(what: str, value: float | None, ok: Any, shown: str, note: str = "") -> None:
        rows.append(
            (
                what,
                "-" if value is None else shown.format(value) + note,
                None if value is None else bool(ok(value)),
            )
        )

    def ceiling(config: str, c: int) -> str:
        found = ceilings[config].get(c)
        return "" if found is None else f" (ceiling {found:.2f}x)"

    for c in (16, 128):
        check(f"make serve at c={c}: >= 0.45x the floor", ratio("serve", c), lambda v: v >= 0.45, "{:.2f}x")
    if ("serve", 16) in by:
        floor = by.get(("floor", 16))
        check(
            "make serve p99 at c=16: <= 30 ms",
            by[("serve", 16)].median("p99"),
            lambda v: v <= 30,
            "{:.1f} ms",
            "" if floor is None else f" (the floor's: {floor.median('p99'):.1f} ms)",
        )
    for c in (16, 128):
        check(
            f"answers on the other worker at c={c}: >= 0.8x the same worker",
            ratio("other", c),
            lambda v: v >= 0.8,
            "{:.2f}x",
        )
    for c, bound in ((1, 5), (16, 10)):
        if ("other", c) in by and ("same", c) in by:
            extra = by[("other", c)].median("p50") - by[("same", c)].median("p50")
            check(f"routed p50 at c={c}: at most +{bound} ms", extra, lambda v, b=bound: v <= b, "{:+.1f} ms")
    commands = [
        p.median("redis_commands")
        for key, p in by.items()
        if key[0] == "other" and p.runs and p.runs[0].redis_commands is not None
    ]
    if commands:
        check(
            "Redis commands per routed flow, rate limits off (a test counts 5 per answer with them): <= 6",
            statistics.median(commands),
            lambda v: v <= 6,
            "{:.1f}",
        )
    for c in (16, 128):
        check(
            f"HTTP two-step at c={c}: >= 0.8x the WebSocket flow",
            ratio("http", c),
            lambda v: v >= 0.8,
            "{:.2f}x",
        )
        check(
            f"gRPC relay at c={c}, the authority off the provider's core (remote; its ceiling,"
            " the local flow plus the bare gRPC client: see below): >= 0.6x the local upstream",
            ratio("remote", c),
            lambda v: v >= 0.6,
            "{:.2f}x",
            ceiling("remote", c),
        )
        one_core = ratio("relay", c)
        if one_core is not None:
            rows.append(
                (
                    f"gRPC relay at c={c}, both processes on the one server core (relay; its ceiling,"
                    " the local flow plus bare gRPC: see below)",
                    f"{one_core:.2f}x{ceiling('relay', c)}",
                    None,
                )
            )
    for c in (16, 128):
        value = ratio("grpcweb", c)
        rows.append(
            (
                f"gRPC-Web GetToken at c={c}: its ratio to /ws/token",
                "-" if value is None else f"{value:.2f}x",
                None,
            )
        )
    load = by.get(("serve", options.load))
    if options.load and load is not None and options.load not in options.concurrency:
        check(
            f"{options.load} concurrent clients: no error",
            float(sum(load.errors.values())),
            lambda v: v == 0,
            "{:.0f} errors",
        )
    for m in idle:
        if m.server == "serve" and m.held_seconds:
            check(
                f"{m.sockets:,} idle sockets held {duration(m.held_seconds)}: none dropped, <= 30 KB each",
                m.per_socket_kib * 1.024,
                lambda v, m=m: v <= 30 and not m.failures,
                "{:.1f} KB, " + f"{sum(m.errors.values())} dropped",
            )
    for a in audit:
        check(
            f"audit rows/s into {a.database} while a worker serves flows: >= 5,000",
            a.per_second,
            lambda v: v >= 5000,
            "{:,.0f}",
        )
    lines = ["| target | measured | met |", "|---|---|---|"]
    for what, measured, ok in rows:
        lines.append(f"| {what} | {measured} | {'-' if ok is None else 'yes' if ok else '**no**'} |")
    return lines


def duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"
