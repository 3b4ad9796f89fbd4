"""Statistics for accuracies: pure functions, no SciPy needed for these."""

from __future__ import annotations

import math
from collections.abc import Sequence


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


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar test: p-value for ``b`` vs ``c`` discordant pairs.

    Two methods answer the same problems; only the problems where exactly one of them is right carry
    information about which is better (``b``: only the first is right, ``c``: only the second). Under
    "no difference" each discordant pair goes either way with probability 1/2, so min(b, c) is binomial
    (b + c, 1/2); the p-value doubles its lower tail (capped at 1). Exact rather than the chi-squared
    approximation because small models and small benchmark slices give a handful of discordant pairs.
    Integer arithmetic throughout, so it stays exact for thousands of pairs.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def paired_counts(first: dict[str, bool], second: dict[str, bool]) -> tuple[int, int, int]:
    """Join two per-problem verdict maps by problem id: (problems in both, only first right, only second right).

    The ids present in only one map are left out, so a method evaluated on fewer problems is compared on
    the shared ones only.
    """
    common = first.keys() & second.keys()
    b = sum(1 for k in common if first[k] and not second[k])
    c = sum(1 for k in common if second[k] and not first[k])
    return len(common), b, c


def mean(values: list[float]) -> float:
    """Arithmetic mean; raises on an empty list (an average of nothing is a bug upstream)."""
    if not values:
        raise ValueError("mean of an empty list")
    return sum(values) / len(values)


def sample_sd(values: list[float]) -> float | None:
    """Sample standard deviation (n - 1 in the denominator): the seed-to-seed spread.

    None for fewer than two values, where a spread does not exist (rather than a misleading 0).
    """
    if len(values) < 2:
        return None
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def holm_adjust(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the order given.

    The report tests every method x benchmark x seed of a model against zero-shot; at 5% each, a dozen
    true-null tests would flag something about half the time. Holm (1979) controls the chance of any false
    flag in the family at 5% without assuming independence: sort the m p-values, multiply the i-th smallest
    (i from 1) by m - i + 1, take the running maximum so the order is kept, and cap at 1. A test is
    significant at level alpha when its adjusted p is below alpha.
    """
    ps = [float(p) for p in pvalues]
    for p in ps:
        if not 0.0 <= p <= 1.0:  # also rejects NaN
            raise ValueError(f"p-values must lie in [0, 1], got {p}")
    m = len(ps)
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda j: ps[j])):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        out[i] = running
    return out
