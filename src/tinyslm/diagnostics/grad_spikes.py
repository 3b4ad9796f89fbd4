"""Gradient-norm spikes: optimizer steps whose gradient norm jumps far above its recent level.

A spike is a step whose ``grad_norm`` (logged in ``metrics.jsonl`` before clipping) exceeds ``factor``
(5) times the median of all previous steps' norms. The median, not the mean, so one spike does not raise
the bar for the next; the first ``min_history`` steps are not judged (no level to compare with yet). A
non-finite norm is always a spike. Spikes are the early sign of the instabilities that clipping hides.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinyslm.core.errors import UserError
from tinyslm.core.files import read_jsonl

FACTOR = 5.0
MIN_HISTORY = 3


def find_spikes(
    steps: Sequence[int], norms: Sequence[float], factor: float = FACTOR, min_history: int = MIN_HISTORY
) -> list[dict[str, Any]]:
    """The spikes among ``norms`` (in step order): step, norm, the running median it is compared with."""
    seen: list[float] = []  # finite norms so far, sorted
    spikes = []
    for step, g in zip(steps, norms, strict=True):
        if len(seen) >= min_history:
            mid = len(seen) // 2
            median = seen[mid] if len(seen) % 2 else (seen[mid - 1] + seen[mid]) / 2
            if not math.isfinite(g) or g > factor * median:
                spikes.append(
                    {
                        "step": step,
                        "grad_norm": g,
                        "running_median": median,
                        "ratio": g / median if median else None,
                    }
                )
        if math.isfinite(g):
            bisect.insort(seen, g)
    return spikes


def grad_norm_spikes(run_dir: Path, factor: float = FACTOR, min_history: int = MIN_HISTORY) -> dict[str, Any]:
    """Spikes in the run's ``metrics.jsonl``."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{path} not found: the run has no per-step metrics")
    try:
        recs = [r for r in read_jsonl(path, tolerate_torn_tail=True) if r.get("grad_norm") is not None]
    except ValueError as e:
        raise UserError(str(e)) from None
    recs.sort(key=lambda r: int(r.get("step", 0)))
    steps = [int(r["step"]) for r in recs]
    norms = [float(r["grad_norm"]) for r in recs]
    spikes = find_spikes(steps, norms, factor, min_history)
    return {
        "definition": f"steps whose grad norm exceeds {factor:g}x the median of all previous steps' "
        f"(from step {min_history + 1} on)",
        "factor": factor,
        "min_history": min_history,
        "steps_logged": len(steps),
        "count": len(spikes),
        "steps": [s["step"] for s in spikes],
        "spikes": spikes,
        "max_grad_norm": max(norms) if norms else None,
        "median_grad_norm": statistics.median(norms) if norms else None,
    }
