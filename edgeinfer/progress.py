"""A dependency-free progress bar on stderr. Not on a terminal (a log file, CI) it writes one plain
line per ``QUIET_EVERY`` seconds of long work instead of redrawing, and the final line."""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
QUIET_EVERY = 30.0       # seconds between plain progress lines when stderr is not a terminal


class Progress:
    """``with Progress("calibrating", total=64) as p: p.update()``; prints to stderr with an ETA.

    ``deadline`` (a ``time.perf_counter()`` value): work that stops at a time budget; the ETA is
    then the sooner of the rate's estimate and the deadline."""

    def __init__(self, label: str, total: int, enabled: bool = True, stream=None, deadline: float | None = None):
        self.label, self.total, self.enabled = label, max(int(total), 0), enabled
        self.deadline = deadline
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = time.perf_counter()
        self._last = 0.0
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if not self.enabled:
            return
        if self.live and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            self._draw()
        elif not self.live and self.done < self.total and now - max(self._last, self.start) >= QUIET_EVERY:
            self._last = now
            self._draw(line=True)

    def _draw(self, final: bool = False, line: bool = False) -> None:
        width = 24
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        now = time.perf_counter()
        elapsed = now - self.start
        end = "\n" if final or line else "\r"
        eta = ""
        if not final and 0 < self.done < self.total:
            left = elapsed / self.done * (self.total - self.done)
            if self.deadline is not None:
                left = min(left, max(self.deadline - now, 0.0))
            eta = f" eta {left:5.0f}s"
        self.stream.write(f"{self.label:<22} [{bar}] {self.done}/{self.total} {elapsed:5.1f}s{eta}{end}")
        self.stream.flush()

    def __enter__(self) -> "Progress":
        if self.enabled and self.live:
            self._draw()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if not self.enabled:
            return
        if exc_type is None:
            self._draw(final=True)
        elif self.live:   # an error follows on its own line, without a finished-looking bar
            self.stream.write("\n")
            self.stream.flush()


def track(items: Iterable[T], label: str, total: int, enabled: bool = True) -> Iterator[T]:
    with Progress(label, total, enabled) as p:
        for item in items:
            yield item
            p.update()
