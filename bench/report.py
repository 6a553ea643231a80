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
        "relay": _ceiling(by, costs, both_sides=True),
        "remote": _ceiling(by, apart, both_sides=False),
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
        *_targets(by, idle, options, ratio_value, ceilings, audit),
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
    lines += _relay(by, costs, apart, ceilings, ratio)
    lines += _memory(idle)
    lines += _audit(audit)
    lines += _capacity(capacity)
    lines += ["", "## Server logs", "", "| configuration | tracebacks | warm-up failures |", "|---|---|---|"]
    for name in names:
        counts = logs.get(name, {})
        lines.append(f"| {name} | {counts.get('tracebacks', 0)} | {counts.get('warm-up errors', 0)} |")
    lines += ["", *METHOD]
    return "\n".join(lines)


def _targets(
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
                f"{m.sockets:,} idle sockets held {_duration(m.held_seconds)}: none dropped, <= 30 KB each",
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


def _ceiling(by: dict[Any, Any], costs: dict[int, Any], *, both_sides: bool) -> dict[int, float]:
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


def _relay(
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


def _capacity(measured: Any) -> list[str]:
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


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _audit(audit: list[Any]) -> list[str]:
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


def _memory(idle: list[Any]) -> list[str]:
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
