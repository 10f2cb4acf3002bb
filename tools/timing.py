"""Side-by-side timing for the benchmark scripts (the machine is shared and noisy)."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def interleaved_medians_ms(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 3) -> dict[str, float]:
    """Median milliseconds of each callable, run round-robin so load changes hit all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) * 1e3 for name, v in times.items()}
