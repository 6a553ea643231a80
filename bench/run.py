"""The benchmark: every configuration at every concurrency, repeated, interleaved.

All servers under test run at once, pinned to the server CPU(s); the load
generator runs in its own process on the remaining CPU. Each repeat visits
every concurrency and, within it, every configuration in turn, so slow drifts
of a shared machine fall on all configurations alike; each configuration's
figure is compared with its baseline's **in the same run** (the floor for a
server, the same-worker answers for routed ones, one WebSocket flow for the
HTTP two-step and the relay), a ratio steadier than the figure itself.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from challenges.identity import PrivateKey

from . import auditrate, capacity, charts, grpcfloor, memory, procs, report, servers
from .loadgen import Result, Spec
from .servers import ROOT, Server


@dataclass(frozen=True)
class Config:
    name: str
    description: str
    #: The servers it runs against (started once, shared by the configurations that name them).
    group: str
    #: The load generator's mode (bench.loadgen).
    mode: str = "one"
    #: The configuration its figures are compared with, in the same run.
    baseline: str | None = None


CONFIGS = {
    c.name: c
    for c in (
        Config("floor", "plain `websockets` server doing the same flow (the floor)", "floor"),
        Config("serve", "`make serve`: uvicorn, one worker, in-memory layer", "serve", baseline="floor"),
        Config(
            "asyncio",
            "`make serve` on asyncio's event loop and h11 instead of uvloop and httptools",
            "asyncio",
            baseline="floor",
        ),
        Config("daphne", "daphne (what `make run` serves), one worker", "daphne", baseline="floor"),
        Config(
            "http",
            "`make serve`, the HTTP two-step on one kept-alive connection per client",
            "serve",
            "http",
            "serve",
        ),
        Config(
            "same",
            "two `make serve` workers + Redis; the answer on a second socket to the same worker",
            "cluster",
            "same",
        ),
        Config(
            "other",
            "the same two workers; the answer on a second socket to the other worker (routed through Redis)",
            "cluster",
            "other",
            "same",
        ),
        Config(
            "grpcweb",
            "`make serve`, `GetToken` over gRPC-Web as the Hub's JavaScript client frames it",
            "serve",
            "grpcweb",
            "serve",
        ),
        Config(
            "relay",
            "`make serve` relaying every flow to `runauthority` over gRPC",
            "relay",
            baseline="serve",
        ),
        Config(
            "remote",
            "the same relay with `runauthority` on the load generator's CPU, off the provider's core,"
            " as an authority on its own host is",
            "remote",
            baseline="serve",
        ),
    )
}
WARMUP_FLOWS = 100


@dataclass
class Options:
    flows: int = 1000
    idle: int = 10_000
    #: Seconds the idle sockets of make serve are held (none may drop).
    hold: float = 300.0
    #: Seconds RSS is left to settle before each idle-socket reading.
    settle: float = memory.SETTLE_SECONDS
    repeats: int = 3
    concurrency: list[int] = field(default_factory=lambda: [1, 16, 128])
    configs: list[str] = field(default_factory=lambda: list(CONFIGS))
    #: One extra point at this many clients against make serve (0: skip).
    load: int = 512
    pin: bool = True
    write_report: bool = True
    out: Path = report.REPORT.parent
    #: Audit rows pushed per database for the audit-rate figure (0: skip).
    audit_rows: int = 20_000
    #: A PostgreSQL server URL for the audit figure (empty: SQLite only).
    postgres: str = ""
    #: Flows for the capacity figures (cost of a routed flow, one and two workers; 0: skip).
    capacity_flows: int = 2000


@dataclass
class Target:
    name: str
    urls: list[str]
    #: Every server-side process of the configuration: its CPU time is the server's cost.
    pids: list[int]
    logs: list[Path]
    #: What each of ``pids`` is, for the CPU breakdown.
    roles: list[str] = field(default_factory=list)
    redis_port: int | None = None
    mode: str = "one"
    api_key: str = ""


@dataclass
class Run:
    rate: float
    p50: float
    p99: float
    server_cpu_ms: float
    client_cpu: float
    ok: int
    errors: dict[str, int]
    extensions: str
    #: Server CPU ms per flow of each process (by role), and Redis commands per flow.
    cpu_by_role: dict[str, float] = field(default_factory=dict)
    redis_commands: float | None = None
    #: Audit batches during the run: mean rows per batch and mean commit time (ms).
    audit_batch_rows: float | None = None
    audit_commit_ms: float | None = None


@dataclass
class Point:
    config: str
    concurrency: int
    runs: list[Run] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return float(statistics.median(getattr(r, attr) for r in self.runs))

    @property
    def errors(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for r in self.runs:
            for kind, n in r.errors.items():
                total[kind] = total.get(kind, 0) + n
        return total


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN when there is nothing to rank."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def drive(target: Target, *, concurrency: int, flows: int, cpu: int | None, issuer: str) -> Run:
    """One point: the load generator in its own process; server CPU read around it."""
    spec = Spec(
        urls=target.urls,
        concurrency=concurrency,
        flows=flows,
        cpu=cpu,
        issuer=issuer,
        mode=target.mode,
        api_key=target.api_key,
    )
    before = [procs.cpu_seconds(pid) for pid in target.pids]
    commands = procs.redis_commands(target.redis_port) if target.redis_port else 0
    audit = procs.audit_metrics(target.urls) if target.name != "floor" else None
    out = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", json.dumps(asdict(spec))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=spec.run_timeout + 60,
        check=False,
    )
    used = [procs.cpu_seconds(pid) - cpu for pid, cpu in zip(target.pids, before, strict=True)]
    if target.redis_port:
        commands = procs.redis_commands(target.redis_port) - commands
    batches = rows = commit = None
    after = procs.audit_metrics(target.urls) if audit is not None else None
    if audit is not None and after is not None and after[0] > audit[0]:
        count = after[0] - audit[0]
        rows, commit = (after[1] - audit[1]) / count, (after[2] - audit[2]) * 1000 / count
        batches = count
    if out.returncode != 0:
        raise RuntimeError(f"the load generator failed ({out.returncode}):\n{out.stderr[-3000:]}")
    result = Result(**json.loads(out.stdout))
    flows = max(result.ok, 1)
    return Run(
        rate=result.ok / result.elapsed if result.elapsed else 0.0,
        p50=percentile(result.latencies_ms, 0.50),
        p99=percentile(result.latencies_ms, 0.99),
        server_cpu_ms=sum(used) * 1000 / flows,
        client_cpu=result.client_cpu,
        ok=result.ok,
        errors=result.errors,
        extensions=result.extensions,
        cpu_by_role={role: u * 1000 / flows for role, u in zip(target.roles, used, strict=False)},
        redis_commands=commands / flows if target.redis_port else None,
        audit_batch_rows=rows if batches else None,
        audit_commit_ms=commit if batches else None,
    )


def _start_groups(
    stack: contextlib.ExitStack,
    tmp: Path,
    groups: set[str],
    authority: PrivateKey,
    cpus: set[int] | None,
    other_cpus: set[int] | None = None,
) -> dict[str, Target]:
    """The servers of each group, started once: a template Target per group. Every server
    process is pinned to ``cpus``, but the ``remote`` group's authority, to ``other_cpus``."""

    def started(server: Server, on: set[int] | None = cpus) -> Server:
        stack.callback(server.stop)
        procs.pin(server.process.pid, on)
        return server

    found: dict[str, Target] = {}
    for group in sorted(groups):
        where = tmp / group
        if group in ("floor", "serve", "asyncio", "daphne"):
            extra = {"AUTHORITY_API_KEYS": procs.BENCH_API_KEY} if group != "floor" else {}
            server = started(procs.start_config(where, group, authority=authority, **extra))
            found[group] = Target(
                group,
                [server.ws],
                [server.process.pid],
                [server.log_path],
                [group],
                api_key=procs.BENCH_API_KEY,
            )
        elif group == "cluster":
            redis = stack.enter_context(servers.redis_server(where / "redis"))
            assert redis.process is not None
            procs.pin(redis.process.pid, cpus)
            where.mkdir(parents=True, exist_ok=True)
            env = procs.bench_env(where, authority=authority, redis_url=redis.url)
            a = started(servers.start(where / "a", kind="serve", env=dict(env, WORKER_ID="A")))
            b = started(
                servers.start(where / "b", kind="serve", env=dict(env, WORKER_ID="B"), migrate_db=False)
            )
            found[group] = Target(
                group,
                [a.ws, b.ws],
                [a.process.pid, b.process.pid, redis.process.pid],
                [a.log_path, b.log_path],
                ["worker A", "worker B", "redis-server"],
                redis.port,
            )
        elif group in ("relay", "remote"):
            hub, relay = procs.start_relay(where, authority=authority)
            started(hub, cpus if group == "relay" else other_cpus)
            started(relay)
            found[group] = Target(
                group,
                [relay.ws],
                [relay.process.pid, hub.process.pid],
                [relay.log_path, hub.log_path],
                ["provider", "runauthority"],
            )
        else:
            raise SystemExit(f"unknown server group {group!r}")
    return found


def _flows(
    options: Options, tmp: Path, authority: PrivateKey
) -> tuple[list[Point], dict[str, dict[str, int]]]:
    server_cpus, client_cpus = procs.cpu_split(not options.pin)
    cpu = min(client_cpus) if client_cpus else None
    issuer = str(authority.public)
    configs = [CONFIGS[name] for name in options.configs]
    points = {(c, cfg.name): Point(cfg.name, c) for c in options.concurrency for cfg in configs}
    with contextlib.ExitStack() as stack:
        groups = _start_groups(
            stack, tmp, {cfg.group for cfg in configs}, authority, server_cpus, client_cpus
        )
        targets = {
            cfg.name: Target(**{**asdict(groups[cfg.group]), "name": cfg.name, "mode": cfg.mode})
            for cfg in configs
        }
        warmup: dict[str, dict[str, int]] = {}
        warm = min(WARMUP_FLOWS, options.flows)  # a short run needs no longer warm-up than its points
        for name, target in targets.items():
            warmup[name] = drive(target, concurrency=16, flows=warm, cpu=cpu, issuer=issuer).errors
        for repeat in range(options.repeats):
            for c in options.concurrency:
                for name, target in targets.items():
                    run = drive(target, concurrency=c, flows=options.flows, cpu=cpu, issuer=issuer)
                    points[(c, name)].runs.append(run)
                    print(
                        f"bench: run {repeat + 1}/{options.repeats} c={c:<3} {name:<7}"
                        f" {run.rate:7.0f} flows/s  p50 {run.p50:6.1f} ms  p99 {run.p99:6.1f} ms"
                        f"  server {run.server_cpu_ms:.2f} ms/flow"
                        f"  client cpu {run.client_cpu:.0%}  errors {run.errors or 0}",
                        file=sys.stderr,
                    )
        if options.load and "serve" in targets:
            load = Point("serve", options.load)
            load.runs.append(
                drive(
                    targets["serve"],
                    concurrency=options.load,
                    flows=max(options.flows, options.load * 4),
                    cpu=cpu,
                    issuer=issuer,
                )
            )
            points[(options.load, "load")] = load
            print(
                f"bench: load c={options.load}: {load.runs[0].rate:.0f} flows/s errors {load.errors or 0}",
                file=sys.stderr,
            )
    logs = {name: procs.log_counts(*t.logs) for name, t in targets.items()}
    for name, errors in warmup.items():
        logs[name]["warm-up errors"] = sum(errors.values())
    return list(points.values()), logs


def _bare_grpc(options: Options, tmp: Path) -> tuple[list[grpcfloor.GrpcCost], list[grpcfloor.GrpcCost]]:
    """What gRPC alone takes out of the relay's budget: the bare exchange laid out as ``relay``
    runs (both sides on the server CPUs) and as ``remote`` does (its server on the load
    generator's CPU); each measured only when its configuration runs."""
    server_cpus, client_cpus = procs.cpu_split(not options.pin)

    def measure(name: str, config: str, apart: set[int] | None) -> list[grpcfloor.GrpcCost]:
        if config not in options.configs or (config == "remote" and not apart):
            return []  # not run; or unpinned, where remote runs as relay does
        return grpcfloor.measure(
            tmp / name,
            concurrency=options.concurrency,
            repeats=options.repeats,
            # /proc counts CPU in 10 ms ticks: enough calls for a figure to the percent.
            calls=max(options.flows, 1000),
            cpus=server_cpus,
            server_cpus=apart,
        )

    return measure("grpc", "relay", None), measure("grpc-apart", "remote", client_cpus)


def bench(options: Options) -> int:
    """Run everything, print the Markdown report, write REPORT.md and the charts; 1 if a flow failed."""
    procs.raise_fd_limit()
    authority = PrivateKey.generate()
    facts = report.machine_facts()
    with tempfile.TemporaryDirectory(prefix="bench-") as name:
        tmp = Path(name)
        try:
            points, logs = _flows(options, tmp, authority)
            grpc, grpc_apart = _bare_grpc(options, tmp)
            idle = (
                memory.measure(
                    tmp / "memory",
                    authority=authority,
                    count=options.idle,
                    hold=options.hold,
                    settle=options.settle,
                )
                if options.idle
                else []
            )
            audit = (
                auditrate.measure(
                    tmp / "audit", authority=authority, postgres=options.postgres, rows=options.audit_rows
                )
                if options.audit_rows
                else []
            )
            costs = (
                capacity.measure(
                    tmp / "capacity",
                    authority=authority,
                    database=options.postgres or f"sqlite:///{tmp / 'capacity.sqlite3'}",
                    flows=options.capacity_flows,
                )
                if options.capacity_flows
                else None
            )
        finally:
            servers.drop_server_databases()
    # --no-report leaves the committed report and its charts alone.
    drawn = (
        charts.draw(points=points, idle=idle, options=options, names=CONFIGS, out=options.out)
        if options.write_report
        else []
    )
    text = report.render_bench(
        points=points,
        logs=logs,
        idle=idle,
        audit=audit,
        capacity=costs,
        grpc=grpc,
        grpc_apart=grpc_apart,
        options=options,
        facts=facts,
        configs=CONFIGS,
        charts=drawn,
    )
    print(text)
    if options.write_report:
        report.write_section("bench", text, path=options.out / "REPORT.md")
    failed = sum(sum(p.errors.values()) for p in points) + sum(m.failures for m in idle)
    failed += sum(counts.get("warm-up errors", 0) for counts in logs.values())
    return 1 if failed else 0
