"""Uncertainty of figures measured on a few images."""
from __future__ import annotations

import math


def wilson_interval(value: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % (``z``) Wilson score interval of a proportion ``value`` (e.g. top-1 agreement) measured on
    ``n`` images; (0, 1) when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = min(max(float(value), 0.0), 1.0)
    den = 1.0 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)
