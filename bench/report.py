"""``bench/REPORT.md``: machine facts, and sections that the benchmark and the soak rewrite."""

from __future__ import annotations

import os
import platform
import re
import statistics
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from . import relaycost, sections, targets
from .grpcfloor import median_by_concurrency

REPORT = Path(__file__).resolve().parent / "REPORT.md"
PACKAGES = ("Django", "channels", "daphne", "uvicorn", "channels-redis", "redis", "websockets", "PyNaCl")
_TITLE = (
    "# Benchmark report\n\nWritten by `python -m bench` and `python -m bench soak`; see the README.\n\n"
    "<!-- begin bench -->\n(not run yet)\n<!-- end bench -->\n\n"
    "<!-- begin soak -->\n(not run yet)\n<!-- end soak -->\n"
)


def machine_facts() -> str:
    """One line: cores, CPU model, kernel, Python, package versions, date, load."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            found = re.search(r"^model name\s*:\s*(.+)$", fh.read(), re.MULTILINE)
        model = found.group(1).strip() if found else model
    except OSError:
        pass
    versions = ", ".join(f"{name} {_version(name)}" for name in PACKAGES)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} cores ({model}), Linux {platform.release()}, Python {platform.python_version()};"
        f" {versions}; {redis_version()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average {load}"
    )


def redis_version() -> str:
    import shutil
    import subprocess

    if not shutil.which("redis-server"):
        return "no redis-server"
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10).stdout
    found = re.search(r"v=(\S+)", out)
    return f"redis-server {found.group(1) if found else '?'}"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"


def write_section(name: str, body: str, path: Path = REPORT) -> None:
    """Replace (or append) the section between ``<!-- begin name -->`` and ``<!-- end name -->``."""
    text = path.read_text() if path.exists() else _TITLE
    block = f"<!-- begin {name} -->\n{body.rstrip()}\n<!-- end {name} -->"
    pattern = re.compile(rf"<!-- begin {re.escape(name)} -->.*?<!-- end {re.escape(name)} -->", re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    path.write_text(text.rstrip() + "\n")


def render_bench(
    *,
    points: list[Any],
    logs: dict[str, dict[str, int]],
    idle: list[Any],
    audit: list[Any],
    capacity: Any,
    options: Any,
    facts: str,
    configs: dict[str, Any],
    charts: list[tuple[str, str]],
    grpc: list[Any] | None = None,
    grpc_apart: list[Any] | None = None,
) -> str:
    """The benchmark section: targets, summary, details, charts, CPU, memory, logs, method."""
    concurrency: list[int] = options.concurrency
    names = [n for n in configs if n in options.configs]
    by = {(p.config, p.concurrency): p for p in points}
    costs = median_by_concurrency(grpc or [])
    apart = median_by_concurrency(grpc_apart or [])
    ceilings = {
        "relay": relaycost.ceiling(by, costs, both_sides=True),
        "remote": relaycost.ceiling(by, apart, both_sides=False),
    }

    def ratio_value(name: str, c: int, attr: str = "rate", base: str | None = None) -> float | None:
        """Median over repeats of (this run / its baseline's run of the same repeat)."""
        base = base or configs[name].baseline
        if base is None or (base, c) not in by or (name, c) not in by:
            return None
        pairs = zip(by[(name, c)].runs, by[(base, c)].runs, strict=False)
        ratios = [getattr(r, attr) / getattr(b, attr) for r, b in pairs if getattr(b, attr)]
        return statistics.median(ratios) if ratios else None

    def ratio(name: str, c: int, attr: str = "rate") -> str:
        value = ratio_value(name, c, attr)
        return "-" if value is None else f"{value:.2f}"

    lines = [
        "## Token flows",
        "",
        f"Machine: {facts}.",
        "",
        *targets.table(by, idle, options, ratio_value, ceilings, audit),
        "",
        f"{options.flows} flows per point, {options.repeats} runs each: flows/s (median) and, in brackets,"
        " the ratio to the configuration's baseline measured in the same run (median of the runs' ratios).",
        "",
        "| configuration | baseline | " + " | ".join(f"c={c}" for c in concurrency) + " |",
        "|---|---|" + "---|" * len(concurrency),
    ]
    for name in names:
        cells = [f"{by[(name, c)].median('rate'):,.0f} ({ratio(name, c)})" for c in concurrency]
        lines.append(f"| {name} | {configs[name].baseline or '-'} | " + " | ".join(cells) + " |")
    lines += ["", *[f"![{title}]({file})" for title, file in charts], ""]
    lines += [
        "| configuration | c | flows/s | range of runs | ratio to baseline | p50 ms | p99 ms"
        " | server CPU ms/flow | client CPU | flows ok | failures |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in concurrency:
        for name in names:
            p = by[(name, c)]
            rates = [r.rate for r in p.runs]
            failures = ", ".join(f"{k} {v}" for k, v in sorted(p.errors.items())) or "0"
            lines.append(
                f"| {name} | {c} | {p.median('rate'):,.0f} | {min(rates):,.0f}-{max(rates):,.0f}"
                f" | {ratio(name, c)} | {p.median('p50'):.1f} | {p.median('p99'):.1f}"
                f" | {p.median('server_cpu_ms'):.2f} | {p.median('client_cpu'):.0%}"
                f" | {sum(r.ok for r in p.runs)} | {failures} |"
            )
    lines += ["", "Configurations:", ""]
    for name in names:
        exts = sorted({r.extensions for p in points if p.config == name for r in p.runs} - {""})
        lines.append(
            f"- **{name}**: {configs[name].description} (negotiated extensions: {', '.join(exts) or '-'})."
        )
    lines += _breakdown(points, concurrency)
    lines += relaycost.section(by, costs, apart, ceilings, ratio)
    lines += sections.memory(idle)
    lines += sections.audit(audit)
    lines += sections.capacity(capacity)
    lines += ["", "## Server logs", "", "| configuration | tracebacks | warm-up failures |", "|---|---|---|"]
    for name in names:
        counts = logs.get(name, {})
        lines.append(f"| {name} | {counts.get('tracebacks', 0)} | {counts.get('warm-up errors', 0)} |")
    lines += ["", *METHOD]
    return "\n".join(lines)


def _breakdown(points: list[Any], concurrency: list[int]) -> list[str]:
    """Server CPU per flow by process, for configurations of several processes (a table per
    set of processes), and what the audit writer did during each run."""
    multi = [p for p in points if len(p.runs) and len(p.runs[0].cpu_by_role) > 1]
    lines: list[str] = []
    for roles in dict.fromkeys(tuple(p.runs[0].cpu_by_role) for p in multi):
        group = [p for p in multi if tuple(p.runs[0].cpu_by_role) == roles]
        redis = group[0].runs[0].redis_commands is not None
        lines += [
            "",
            "Server CPU ms per flow by process (median of runs) of "
            + ", ".join(sorted({p.config for p in group}))
            + (", and Redis commands run per flow (rate limits off here):" if redis else ":"),
            "",
            "| configuration | c | " + " | ".join(roles) + (" | Redis commands/flow |" if redis else " |"),
            "|---|---|" + "---|" * (len(roles) + redis),
        ]
        for p in sorted(group, key=lambda p: (p.config, p.concurrency)):
            cells = [
                f"{statistics.median(r.cpu_by_role.get(role, 0.0) for r in p.runs):.2f}" for role in roles
            ]
            if redis:
                commands = [r.redis_commands for r in p.runs if r.redis_commands is not None]
                cells.append(f"{statistics.median(commands):.1f}" if commands else "-")
            lines.append(f"| {p.config} | {p.concurrency} | " + " | ".join(cells) + " |")
    audited = [p for p in points if any(r.audit_batch_rows is not None for r in p.runs)]
    if audited:
        lines += [
            "",
            "The audit writer during each run (from the servers' `/metrics`; median of runs): rows per batch,"
            " and the time to write and commit a batch.",
            "",
            "| configuration | c | rows per batch | commit ms |",
            "|---|---|---|---|",
        ]
        for p in sorted(audited, key=lambda p: (p.config, p.concurrency)):
            rows = [r.audit_batch_rows for r in p.runs if r.audit_batch_rows is not None]
            commit = [r.audit_commit_ms for r in p.runs if r.audit_commit_ms is not None]
            median_rows, median_commit = statistics.median(rows), statistics.median(commit)
            lines.append(f"| {p.config} | {p.concurrency} | {median_rows:.1f} | {median_commit:.2f} |")
    return lines


METHOD = [
    "## Method",
    "",
    "- A flow is connect, `token` frame, challenge, Ed25519 signature, `challenge` frame, token; latency runs"
    " from the connect to the token frame (the closing handshake follows outside it). Each client slot has"
    " its own key; the first token of every run is verified against the authority key.",
    "- `same` / `other`: the challenge comes from one worker on a first socket, which is closed; the"
    " signature goes with the challenge's `id` on a second socket to the same worker, or to the other one"
    " (directions alternate), so the two differ only by the routing through Redis.",
    "- `http`: the two-step, `POST /api/token/challenge` then `POST /api/token`, on one kept-alive"
    " connection per client.",
    "- Servers run with `DEBUG=false`, SQLite audit (group-committed), the per-address caps lifted"
    " (`MAX_CONNECTIONS_PER_IP`, `MAX_PENDING_PER_IP`: all load comes from 127.0.0.1); all"
    " server-side processes (both workers and redis-server included) are pinned to the first CPU, the load"
    " generator (a separate process) to the last, so every configuration gets the same server budget of"
    " one core. Server CPU is user+system time of those processes over the run, divided by the flows"
    " (`remote`'s `runauthority` included, though it runs on the other CPU).",
    "- `relay` / `remote`: the provider relays to `runauthority` over gRPC. In `relay` both are on the"
    " server core; in `remote` `runauthority` runs on the load generator's CPU, the nearest this machine"
    " has to an authority on its own host (it takes CPU from the load generator; and it answers over"
    " loopback, where a remote authority would add the network's round trips to every flow). A relay's"
    " upstream is another service: `remote` is what the relay target is read on, and `relay` is what"
    " the pair costs together (against its ceiling). With `--no-pin`, `remote` runs as `relay` does.",
    "- Repeats are interleaved (each repeat visits every concurrency and configuration in turn); every"
    " configuration is warmed up with 100 flows first. The machine is shared: the ratio to the floor and"
    " the server CPU per flow are steadier than flows/s.",
    "- Client CPU near 100 % means the one-core Python load generator, not the server, set the pace."
    " At c=1 the server idles between frames, and on this VM those wake-ups show as more CPU per flow.",
    "- Redis commands per flow come from `INFO commandstats` (the commands inside the rate limits' script"
    " included; the workers' 1 s heartbeats too, a few per run).",
    "",
    "## Profiles",
    "",
    "py-spy flame graphs of `make serve` under 16 clients"
    " (`python -m bench profile --config serve --out F.svg`)."
    " [Before](flame-before.svg): a third of all samples in the audit writer (a new SQLite connection per"
    " batch, its pragmas run again, then closed), the list-based channel layer, a thread hop per message"
    " (Channels closing old database connections), a key pair derived per token."
    " [After](flame-after.svg): one kept connection on the writer's own thread, a batch in two statements,"
    " the pub/sub layer, no thread hop, uvloop and httptools; what is left is uvicorn's WebSocket protocol,"
    " the Ed25519 verification and signature, the audit commit and the per-flow log line.",
    "",
    "The relay under 16 clients (`python -m bench profile --config relay --out F.svg` records both"
    " processes): [the provider](flame-relay-provider.svg) spends about 14 % of its samples in grpc.aio's"
    " call methods (`_prepare_rpc`, `_write`, `_read`, `_done_writing`, where its Cython code drives"
    " gRPC's core), beside the WebSocket flow (26 %) and its audit writer's thread;"
    " [`runauthority`](flame-relay-runauthority.svg) spends 23 % in `GetToken` (10 % of it writing to the"
    " stream, 10 % checking and minting), 25 % in its own audit writer's thread and about 10 % in its"
    " other threads (gRPC's poller, the WAL checkpointer). Each process pays for an audited flow and one"
    " end of the stream, which is what the relay's table above puts in figures.",
]
