"""Statistics for accuracies: pure functions, no SciPy needed for these."""

from __future__ import annotations

import math


def wilson_interval(correct: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion.

    Preferred over the normal approximation because small models score near 0% and the normal
    interval then collapses to a width of zero or dips below 0.
    """
    if n <= 0:
        return (0.0, 0.0)
    if not 0 <= correct <= n:
        raise ValueError(f"correct={correct} outside [0, {n}]")
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
