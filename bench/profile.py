"""A flame graph of one server under load: ``python -m bench profile``.

Starts the server the way the benchmark does (production settings, its own
SQLite audit), records it with py-spy while the load generator runs complete
token flows against it, and writes the SVG flame graph. The benchmark's
report links the ones kept in ``bench/``: what guided the work, before and after.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from challenges.identity import PrivateKey

from . import procs, servers
from .loadgen import Result, Spec


def py_spy() -> str:
    """The py-spy of this interpreter's environment (``make install-dev`` puts it beside
    ``python``, which need not be on ``PATH``), else the one on ``PATH``."""
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.is_file() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("profile: py-spy is not installed (make install-dev installs it)")
    return found


def profile(
    *, config: str, concurrency: int, flows: int, out: Path, mode: str = "one", rate: int = 250
) -> int:
    """Record ``config`` under load into ``out``; ``relay`` records its two processes, into
    ``out`` with ``-provider`` and ``-runauthority`` added to its name."""
    spy_command = py_spy()
    authority = PrivateKey.generate()
    spies: dict[Path, subprocess.Popen[bytes]] = {}
    errors: dict[Path, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="profile-") as name:
        tmp = Path(name)
        if config == "relay":
            hub, server = procs.start_relay(tmp, authority=authority)
            started = [server, hub]
            recorded = {out.with_name(f"{out.stem}-{role}{out.suffix}"): s for role, s in
                        (("provider", server), ("runauthority", hub))}  # fmt: skip
        else:
            server = procs.start_config(tmp, config, authority=authority)
            started, recorded = [server], {out: server}
        try:
            for path, recorded_server in recorded.items():
                spies[path] = subprocess.Popen(
                    [spy_command, "record", "--pid", str(recorded_server.process.pid), "--rate", str(rate),
                     "--output", str(path), "--format", "raw" if path.suffix == ".txt" else "flamegraph",
                     "--threads", "--nonblocking"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                )  # fmt: skip
            spec = Spec(
                urls=[server.ws],
                concurrency=concurrency,
                flows=flows,
                issuer=str(authority.public),
                mode=mode,
            )
            run = subprocess.run(
                [sys.executable, "-m", "bench.loadgen", json.dumps(asdict(spec))],
                cwd=servers.ROOT, capture_output=True, text=True, timeout=spec.run_timeout + 60, check=True,
            )  # fmt: skip
            result = Result(**json.loads(run.stdout))
        finally:
            try:
                for spy in spies.values():
                    spy.send_signal(signal.SIGINT)
                for path, spy in spies.items():
                    try:
                        errors[path] = spy.communicate(timeout=60)[1]
                    except subprocess.TimeoutExpired:
                        spy.kill()
                        errors[path] = spy.communicate()[1]
            finally:
                for each in started:
                    each.stop()
    rate_seen = result.ok / result.elapsed if result.elapsed else 0
    summary = f"{result.ok} flows, {rate_seen:.0f} flows/s, errors {result.errors}"
    print(f"profile: {config} c={concurrency}: {summary}")
    for path, err in errors.items():
        print(
            f"profile: wrote {path}"
            if path.exists()
            else f"profile: py-spy wrote nothing: {err.decode()[-500:]}"
        )
    return 0 if all(path.exists() for path in recorded) and not result.errors else 1
