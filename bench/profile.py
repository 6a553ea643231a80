"""A flame graph of one server under load: ``python -m bench profile``.

Starts the server the way the benchmark does (production settings, its own
SQLite audit), records it with py-spy while the load generator runs complete
token flows against it, and writes the SVG flame graph. The benchmark's
report links the ones kept in ``bench/``: what guided the work, before and after.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from challenges.identity import PrivateKey

from . import procs, servers
from .loadgen import Result, Spec


def profile(
    *, config: str, concurrency: int, flows: int, out: Path, mode: str = "one", rate: int = 250
) -> int:
    authority = PrivateKey.generate()
    with tempfile.TemporaryDirectory(prefix="profile-") as name:
        tmp = Path(name)
        server = procs.start_config(tmp, config, authority=authority)
        spy = None
        try:
            spy = subprocess.Popen(
                ["py-spy", "record", "--pid", str(server.process.pid), "--rate", str(rate),
                 "--output", str(out), "--format", "raw" if out.suffix == ".txt" else "flamegraph",
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
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                _, err = spy.communicate(timeout=60)
            server.stop()
    rate_seen = result.ok / result.elapsed if result.elapsed else 0
    summary = f"{result.ok} flows, {rate_seen:.0f} flows/s, errors {result.errors}"
    print(f"profile: {config} c={concurrency}: {summary}")
    print(
        f"profile: wrote {out}" if out.exists() else f"profile: py-spy wrote nothing: {err.decode()[-500:]}"
    )
    return 0 if out.exists() and not result.errors else 1
