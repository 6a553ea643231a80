"""PNG charts of a benchmark run (matplotlib, no display): flows/s and p99 by concurrency for
every configuration, the floor drawn dashed, and memory per idle socket."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def draw(
    *, points: list[Any], idle: list[Any], options: Any, names: dict[str, Any], out: Path
) -> list[tuple[str, str]]:
    """Write the charts into ``out``; returns (title, file name) of each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn: list[tuple[str, str]] = []
    configs = [n for n in names if n in options.configs]
    by = {(p.config, p.concurrency): p for p in points}
    levels = list(options.concurrency)
    for attr, title, label, log in (
        ("rate", "Token flows per second, by concurrent clients", "flows/s (median of runs)", False),
        ("p99", "p99 latency of a flow, by concurrent clients", "p99 ms (median of runs)", True),
    ):
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
        for name in configs:
            values = [by[(name, c)].median(attr) for c in levels if (name, c) in by]
            if name == "floor":
                ax.plot(levels[: len(values)], values, label=name, linestyle="--", color="black")
            else:
                ax.plot(levels[: len(values)], values, label=name, marker="o")
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", ncol=2)
        fig.tight_layout()
        name = f"chart-{'flows' if attr == 'rate' else 'p99'}.png"
        fig.savefig(out / name)
        plt.close(fig)
        drawn.append((title, name))
    if idle:
        fig, ax = plt.subplots(figsize=(8, 3.5), dpi=110)
        labels = [f"{m.server}\n{'deflate offered' if m.compression else 'no deflate'}" for m in idle]
        ax.bar(labels, [m.per_socket_kib for m in idle], color="tab:blue")
        ax.axhline(30 * 1000 / 1024, color="tab:red", linestyle=":", label="30 KB target")
        ax.set_ylabel("KiB per idle socket")
        ax.set_title(f"Memory per idle WebSocket ({max(m.sockets for m in idle):,} sockets)")
        ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(out / "chart-memory.png")
        plt.close(fig)
        drawn.append(("Memory per idle WebSocket", "chart-memory.png"))
    return drawn
