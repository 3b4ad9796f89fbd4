"""Weight displacement: how far fine-tuning moved each weight matrix, relative to its size.

``‖W_tuned − W_base‖_F / ‖W_base‖_F`` per matrix (LoRA/DoRA merged into the weights first), so a 1% change
of a large matrix and of a small one read the same. Full fine-tuning moves every matrix a little; LoRA moves
fewer directions, possibly further. Reported per layer and module type, with the mean, median and max per
module type and over all matrices.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from tinyslm.diagnostics.loading import layer_and_type


def relative_displacement(base: Any, tuned: Any) -> float:
    """``‖tuned − base‖_F / ‖base‖_F`` in float64 (the difference of nearby float32 matrices loses digits)."""
    import torch

    b, t = base.to(torch.float64), tuned.to(torch.float64)
    norm = torch.linalg.matrix_norm(b).item()
    diff = torch.linalg.matrix_norm(t - b).item()
    return diff / norm if norm > 0 else (0.0 if diff == 0 else float("inf"))


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "max": max(values),
    }


def weight_displacement(base: dict[str, Any], tuned: dict[str, Any]) -> dict[str, Any]:
    """Per-matrix relative displacement and its summary per module type, over the matrices in both dicts."""
    names = [n for n in base if n in tuned]
    if not names:
        raise ValueError("the base and the tuned model share no weight matrices")
    per_matrix = []
    by_type: dict[str, list[float]] = defaultdict(list)
    for name in names:
        layer, kind = layer_and_type(name)
        r = relative_displacement(base[name], tuned[name])
        per_matrix.append({"name": name, "layer": layer, "module": kind, "relative_change": r})
        by_type[kind].append(r)
    all_values = [m["relative_change"] for m in per_matrix]
    return {
        "definition": "||W_tuned - W_base||_F / ||W_base||_F per weight matrix of the transformer blocks "
        "(LoRA/DoRA merged with peft merge_and_unload; embeddings and output head excluded)",
        "matrices": per_matrix,
        "by_module": {k: _stats(v) for k, v in sorted(by_type.items())},
        "overall": _stats(all_values),
    }
