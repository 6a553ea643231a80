"""The benchmark's harness, run short: every configuration, the load point, the idle
sockets and the audit rate, so ``make bench`` cannot rot between the runs that matter.

The figures of so short a run mean nothing (40 flows a point on a machine running the
suite); what is checked is that every part ran, no flow failed, and the report and the
charts were written.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.run import CONFIGS
from tests import servers

pytestmark = [pytest.mark.server, pytest.mark.bench]


def test_a_short_benchmark_writes_its_report_and_charts(tmp_path):
    database = os.environ.get("DATABASE_URL", "")
    postgres = ["--postgres", database] if database.startswith(("postgres://", "postgresql://")) else []
    out = subprocess.run(
        [
            sys.executable, "-m", "bench", "--flows", "40", "--repeats", "1", "--concurrency", "1,4",
            "--idle", "30", "--hold", "1", "--settle", "0.2", "--load", "8", "--audit-rows", "300",
            "--capacity-flows", "100",
            "--out", str(tmp_path),
            *postgres,
        ],
        cwd=servers.ROOT, capture_output=True, text=True, timeout=420,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = (tmp_path / "REPORT.md").read_text()
    assert "<!-- begin bench -->" in report
    assert "<!-- end bench -->" in report
    for name in CONFIGS:
        rows = [line for line in report.splitlines() if line.startswith(f"| {name} | ")]
        assert len(rows) >= 3, (name, rows)  # the summary and a row per concurrency
    assert "| 8 concurrent clients: no error | 0 errors | yes |" in report
    databases = ["SQLite", "PostgreSQL"] if postgres else ["SQLite"]
    for database in databases:  # the figure of so short a run may miss: its row is what is checked
        assert f"| audit rows/s into {database} while a worker serves flows: >= 5,000 | " in report
    assert "30 idle sockets" in report
    assert "## What a flow costs" in report
    # The relay beside the bare gRPC exchange on the same core: a row per concurrency, all figures.
    assert "## The relay's CPU, and what gRPC alone costs" in report
    relay = [line for line in report.splitlines() if line.startswith(("| c=1 | ", "| c=4 | "))]
    assert len(relay) == 2, relay
    for line in relay:
        cells = [cell.strip() for cell in line.strip("|").split("|")][1:]
        assert all(float(cell.replace(",", "")) > 0 for cell in cells), line
    scaling = [line for line in report.splitlines() if line.startswith(("| 1 | ", "| 2 | "))]
    assert len(scaling) == 2, scaling
    audit = [line for line in report.splitlines() if line.startswith(("| SQLite |", "| PostgreSQL |"))]
    assert len(audit) == 1 + bool(postgres), audit
    for chart in ("chart-flows.png", "chart-p99.png", "chart-memory.png"):
        data = (tmp_path / chart).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n"), chart
        assert len(data) > 10_000, chart
        assert f"]({chart})" in report


def test_profile_writes_a_flame_graph_without_the_venv_on_path(tmp_path):
    """``python -m bench profile`` finds the py-spy installed beside its interpreter, as
    ``.venv/bin/python -m bench profile`` is run without the virtualenv activated."""
    out_svg = tmp_path / "flame.svg"
    env = dict(os.environ, PATH="/usr/bin:/bin")
    out = subprocess.run(
        [sys.executable, "-m", "bench", "profile", "--config", "serve", "--concurrency", "4",
         "--flows", "200", "--out", str(out_svg)],
        cwd=servers.ROOT, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "200 flows" in out.stdout, out.stdout
    assert "errors {}" in out.stdout, out.stdout
    svg = out_svg.read_text()
    assert svg.startswith("<?xml")
    assert "<svg" in svg
    assert "challenges/consumers.py" in svg  # the server's own frames were sampled
