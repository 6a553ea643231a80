"""Progress of a long operation (an export, a prune), for the person at the terminal.

On a terminal, one bar redrawn in place; otherwise (a log, a pipe) a line each
tenth of the way, so the output stays short. Written to stderr: stdout stays
the operation's own output.
"""

from __future__ import annotations

import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, *, stream: TextIO, label: str, width: int = 30) -> None:
        self.total, self.stream, self.label, self.width = max(total, 0), stream, label, width
        self.done = 0
        self.started = time.monotonic()
        self._tty = bool(getattr(stream, "isatty", lambda: False)())
        self._shown_tenth = -1

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._tty:
            self._draw("\r")
        else:
            tenth = 10 * self.done // self.total if self.total else 10
            if tenth > self._shown_tenth:
                self._shown_tenth = tenth
                self._draw("")
                self.stream.write("\n")

    def finish(self) -> None:
        if self._tty:
            self._draw("\r")
            self.stream.write("\n")
        elif self._shown_tenth < 10:
            self._draw("")
            self.stream.write("\n")
        self.stream.flush()

    def _draw(self, start: str) -> None:
        fraction = min(self.done / self.total, 1.0) if self.total else 1.0
        filled = int(fraction * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = time.monotonic() - self.started
        self.stream.write(
            f"{start}{self.label} [{bar}] {fraction:4.0%} {self.done:,}/{self.total:,} ({elapsed:.1f} s)"
        )
        self.stream.flush()
