"""Intruder dimensions (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion of Equivalence").

A fine-tuned weight matrix can keep the base matrix's singular vectors and only re-weight them, or it can
grow new high-ranking singular vectors that point nowhere the base matrix pointed: *intruder dimensions*.
The paper finds them in LoRA-tuned matrices (and much less in fully fine-tuned ones) and ties them to
forgetting of the pre-training distribution.

Definition used here, the paper's: among the top ``k`` (10) left singular vectors ``u_i`` of the tuned
matrix, count those whose largest absolute cosine similarity with *any* left singular vector of the base
matrix is below ``threshold`` (0.5). Left singular vectors live in the output space of the layer (the
directions it writes into the residual stream or the next projection). The base matrix's reduced SVD gives
an orthonormal basis of its column space, so a tuned vector that lies inside it always has some large
cosine, and one orthogonal to the column space has cosine 0 with every base vector.

Only what is needed is computed, on the CPU: the reduced SVD of the base matrix in float32 (all its left
singular vectors), and the top ``k`` left singular vectors of the tuned matrix (eigenvectors of its small
Gram matrix, in float64). About 0.2 s per 576 x 1536 matrix on one core; LAPACK slows down badly when
its threads compete for cores, so on a shared machine set ``OMP_NUM_THREADS`` to the free cores.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from tinyslm.diagnostics.loading import layer_and_type

TOP_K = 10
THRESHOLD = 0.5


def top_left_singular_vectors(w: Any, k: int) -> tuple[Any, Any]:
    """The ``k`` largest singular values of ``w`` and their left singular vectors (columns), in float64.

    Through the eigen-decomposition of the smaller Gram matrix (``W Wᵀ`` or ``Wᵀ W``) rather than a full SVD
    of ``w``: same vectors (up to sign), a fraction of the time. float64 keeps the squared condition number
    harmless for the top of the spectrum, which is all that is used.
    """
    import torch

    w = w.to(torch.float64)
    rows, cols = w.shape
    k = min(k, rows, cols)
    if rows <= cols:
        evals, evecs = torch.linalg.eigh(w @ w.T)
        order = torch.argsort(evals, descending=True)[:k]
        s = evals[order].clamp_min(0).sqrt()
        return s, evecs[:, order]
    evals, evecs = torch.linalg.eigh(w.T @ w)
    order = torch.argsort(evals, descending=True)[:k]
    s = evals[order].clamp_min(0).sqrt()
    u = (w @ evecs[:, order]) / s.clamp_min(torch.finfo(torch.float64).tiny)
    return s, u


def intruder_count(
    base: Any, tuned: Any, k: int = TOP_K, threshold: float = THRESHOLD
) -> tuple[int, list[float]]:
    """Intruders among the top ``k`` tuned left singular vectors, and each one's best |cos| with the base."""
    import torch

    # All left singular vectors of the base. float32 is plenty: they only enter cosines compared with 0.5.
    u_base = torch.linalg.svd(base.to(torch.float32), full_matrices=False).U.to(torch.float64)
    _, u_tuned = top_left_singular_vectors(tuned, k)
    u_tuned = u_tuned / torch.linalg.vector_norm(u_tuned, dim=0, keepdim=True)
    best = (u_base.T @ u_tuned).abs().max(dim=0).values.tolist()
    return sum(c < threshold for c in best), best


def intruder_dimensions(
    base: dict[str, Any], tuned: dict[str, Any], k: int = TOP_K, threshold: float = THRESHOLD
) -> dict[str, Any]:
    """Intruder counts per weight matrix, with totals per module type and overall."""
    per_matrix = []
    totals: dict[str, dict[str, int]] = defaultdict(
        lambda: {"matrices": 0, "intruders": 0, "with_intruders": 0}
    )
    for name in (n for n in base if n in tuned):
        layer, kind = layer_and_type(name)
        count, best = intruder_count(base[name], tuned[name], k, threshold)
        per_matrix.append(
            {"name": name, "layer": layer, "module": kind, "intruders": count, "max_abs_cos": best}
        )
        t = totals[kind]
        t["matrices"] += 1
        t["intruders"] += count
        t["with_intruders"] += int(count > 0)
    total = sum(m["intruders"] for m in per_matrix)
    return {
        "definition": f"among the top {k} left singular vectors of each tuned matrix, those whose largest "
        f"|cosine| with any left singular vector of the base matrix is below {threshold} "
        "(Shuttleworth et al. 2024)",
        "top_k": k,
        "threshold": threshold,
        "vectors": "left",
        "matrices": per_matrix,
        "by_module": dict(sorted(totals.items())),
        "total": total,
        "matrices_with_intruders": sum(m["intruders"] > 0 for m in per_matrix),
        "n_matrices": len(per_matrix),
    }
