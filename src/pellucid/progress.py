"""A one-line progress bar on stderr (downloads, hashing, perplexity windows, indexing).

Drawn only when stderr is a terminal, so logs and test output stay clean; redrawn at most ten times
a second so a tight loop pays almost nothing for it.
"""

from __future__ import annotations

import sys
import time


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class ProgressBar:
    def __init__(self, total: int, label: str, *, unit: str = "bytes", disable: bool = False, stream=None):
        self.total = max(int(total), 0)
        self.label = label
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = not disable and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done = 0
        self.start = time.perf_counter()
        self._last_draw = 0.0

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.enabled and time.perf_counter() - self._last_draw > 0.1:
            self._draw()

    def _fmt(self, n: float) -> str:
        return _human_bytes(n) if self.unit == "bytes" else f"{n:,.0f}"

    def _draw(self, final: bool = False) -> None:
        self._last_draw = time.perf_counter()
        elapsed = max(self._last_draw - self.start, 1e-9)
        rate = self.done / elapsed
        if self.total:
            frac = min(self.done / self.total, 1.0)
            width = 30
            bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
            text = f"{self.label} [{bar}] {frac * 100:5.1f}% {self._fmt(self.done)}/{self._fmt(self.total)}"
        else:
            text = f"{self.label} {self._fmt(self.done)}"
        rate_unit = "/s" if self.unit == "bytes" else f" {self.unit}/s"
        text += f" {self._fmt(rate)}{rate_unit}"
        self.stream.write("\r" + text + ("\n" if final else ""))
        self.stream.flush()

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            self._draw()
        return self

    def __exit__(self, exc_type, *rest) -> None:
        if self.enabled:
            if exc_type is None:
                self._draw(final=True)
            else:
                self.stream.write("\n")
                self.stream.flush()
