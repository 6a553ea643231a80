"""``python -m bench [options]`` runs the benchmark; ``python -m bench soak --minutes N`` the soak;
``python -m bench profile --out F.svg`` records a flame graph of a server under load;
``python -m bench dashboard`` times the admin's audit dashboard on a million audit rows."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path


def _bench_parser() -> argparse.ArgumentParser:
    from .memory import SETTLE_SECONDS
    from .run import CONFIGS

    parser = argparse.ArgumentParser(prog="python -m bench", description="Token-flow load benchmark.")
    parser.add_argument("--flows", type=int, default=1000, help="flows per point (default 1000)")
    parser.add_argument(
        "--quick", action="store_true", help="200 flows per point, 300 idle sockets held 10 s, load 128"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per point; the median is reported")
    parser.add_argument("--concurrency", default="1,16,128", help="comma-separated client counts")
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {','.join(CONFIGS)}"
    )
    parser.add_argument(
        "--idle", type=int, default=10_000, help="idle sockets for the memory figure (0: skip)"
    )
    parser.add_argument("--hold", type=float, default=300, help="seconds make serve holds them (default 300)")
    parser.add_argument(
        "--settle",
        type=float,
        default=SETTLE_SECONDS,
        help=f"seconds RSS settles before each idle-socket reading (default {SETTLE_SECONDS:g})",
    )
    parser.add_argument("--load", type=int, default=512, help="one more point at this many clients (0: skip)")
    parser.add_argument(
        "--audit-rows",
        type=int,
        default=20_000,
        help="audit rows per database for the audit figure (0: skip)",
    )
    parser.add_argument(
        "--postgres", default=os.environ.get("POSTGRES_URL", ""), help="PostgreSQL URL for the audit figure"
    )
    parser.add_argument(
        "--capacity-flows", type=int, default=2000, help="flows for the capacity figures (0: skip)"
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin servers and client to separate CPUs"
    )
    parser.add_argument(
        "--no-report", action="store_true", help="print only; leave bench/REPORT.md and its charts alone"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="where REPORT.md and the charts go (default bench/)"
    )
    return parser


def _soak_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench soak", description="Idle-socket soak, Redis layer."
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the sockets stay idle")
    parser.add_argument("--sockets", type=int, default=50, help="idle sockets per worker")
    parser.add_argument("--settings", default="tokensite.settings", help="the workers' settings module")
    parser.add_argument("--no-report", action="store_true", help="print only; leave bench/REPORT.md alone")
    return parser


def _profile_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench profile", description="A flame graph under load.")
    parser.add_argument(
        "--config", default="serve", help="serve (make serve), daphne, floor or relay (both its processes)"
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--flows", type=int, default=3000)
    parser.add_argument("--mode", default="one", help="one (a WebSocket flow) or http (the two-step)")
    parser.add_argument("--out", type=Path, required=True, help="the SVG to write")
    return parser


def _dashboard_parser() -> argparse.ArgumentParser:
    from .dashboard import DEFAULT_DB

    parser = argparse.ArgumentParser(
        prog="python -m bench dashboard", description="The audit dashboard on a million rows (SQLite)."
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="audit rows (default 1,000,000)")
    parser.add_argument(
        "--db", type=Path, default=DEFAULT_DB, help=f"the SQLite file, kept and reused (default {DEFAULT_DB})"
    )
    parser.add_argument("--runs", type=int, default=5, help="timed requests per range (default 5)")
    parser.add_argument("--no-report", action="store_true", help="print only; leave bench/REPORT.md alone")
    return parser


def main(argv: list[str]) -> int:
    # A SIGTERM (or a SIGINT to a background job, which ignores it) must still unwind through
    # the finally blocks that stop every server and redis-server this run started.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit)
    if argv[:1] == ["profile"]:
        args = _profile_parser().parse_args(argv[1:])
        from .profile import profile

        return profile(
            config=args.config, concurrency=args.concurrency, flows=args.flows, out=args.out, mode=args.mode
        )
    if argv[:1] == ["dashboard"]:
        args = _dashboard_parser().parse_args(argv[1:])
        if not 1 <= args.rows <= 50_000_000 or not 1 <= args.runs <= 100:
            raise SystemExit("--rows must be in [1, 50,000,000] and --runs in [1, 100]")
        from .dashboard import dashboard

        return dashboard(rows=args.rows, db=args.db, runs=args.runs, write_report=not args.no_report)
    if argv[:1] == ["soak"]:
        args = _soak_parser().parse_args(argv[1:])
        if not 0 < args.minutes <= 24 * 60 or not 0 < args.sockets <= 5000:
            raise SystemExit("--minutes must be in (0, 1440] and --sockets in (0, 5000]")
        from .soak import soak

        return soak(
            minutes=args.minutes,
            per_worker=args.sockets,
            settings=args.settings,
            write_report=not args.no_report,
        )
    args = _bench_parser().parse_args(argv)
    from .run import Options, bench

    options = Options(
        flows=200 if args.quick else args.flows,
        idle=min(args.idle, 300) if args.quick else args.idle,
        hold=min(args.hold, 10) if args.quick else args.hold,
        settle=args.settle,
        repeats=args.repeats,
        concurrency=[int(c) for c in args.concurrency.split(",") if c],
        configs=[c for c in args.configs.split(",") if c],
        load=min(args.load, 128) if args.quick else args.load,
        pin=not args.no_pin,
        write_report=not args.no_report,
        audit_rows=min(args.audit_rows, 2000) if args.quick else args.audit_rows,
        postgres=args.postgres,
        capacity_flows=min(args.capacity_flows, 300) if args.quick else args.capacity_flows,
    )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        options.out = args.out
    return bench(options)


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
