"""Sharpness: the top eigenvalue of the training loss's Hessian, λmax, before and after fine-tuning.

A large λmax means the loss rises fast along some direction of parameter space: the model sits in a sharp
valley, where the same learning rate is closer to instability (gradient descent with step size η is
unstable along directions with λ > 2/η) and where small perturbations of the weights cost more.

How: power iteration on Hessian-vector products. ``Hv`` is the gradient of ``⟨∇L, v⟩``, one extra
backward pass through the graph of ``∇L`` (``torch.autograd.grad`` with ``create_graph=True``), so the
Hessian itself (n² entries) is never formed. Each iteration sets ``v ← Hv / ‖Hv‖`` and reads the Rayleigh
quotient ``λ = vᵀHv``; it stops when λ changes by less than ``tol`` (relative) or after ``iters``
iterations. Power iteration finds the eigenvalue of largest *magnitude*; when that is negative or does not
settle, a second, shifted run finds the most positive one (see :func:`top_hessian_eigenvalue`).

The loss is the training loss on a fixed batch: the first rows of the run's dataset, encoded exactly as
training encodes them (:mod:`tinyslm.datasets`), token-weighted completion-only cross-entropy
(:func:`tinyslm.train.target_loss_sum`). The parameter space is the one that was trained: the adapter's
for LoRA/DoRA, all parameters for full fine-tuning. So λmax is comparable between base and tuned model of
one run, and between LoRA and DoRA runs, but not between PEFT and full fine-tuning.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any


def power_iteration(
    matvec: Callable[[list[Any]], list[Any]], v: list[Any], *, shift: float, iters: int, tol: float
) -> dict[str, Any]:
    """Power iteration on ``H + shift·I`` given ``matvec(v) = Hv``; Rayleigh quotients reported without the shift.

    Converged: the estimate λ changed by less than ``tol·|λ|`` *and* ``v`` is nearly an eigenvector,
    ``‖Hv − λv‖ ≤ √tol·|λ|`` (the Rayleigh quotient's error is about the residual squared). The residual
    test matters: with two eigenvalues of opposite sign and equal size the estimate stops changing at a
    mixture of both, which is no eigenvalue; that run stops as ``stalled``. ``norm``, the last ``‖Hv‖`` for a
    unit ``v``, tends to the spectral radius in every case.
    """
    history: list[float] = []
    converged = stalled = False
    norm = float("nan")
    v = _normalise(v)
    for _ in range(iters):
        hv = [h.detach() + shift * x for h, x in zip(matvec(v), v, strict=True)]
        estimate = _dot(hv, v)
        norm = math.sqrt(_dot(hv, hv))
        history.append(estimate - shift)
        if not math.isfinite(estimate) or norm == 0:  # norm 0: v is in the null space, λ = 0 along it
            break
        # Judged on the unshifted eigenvalue: relative to the shifted one, any λ much smaller than the shift
        # would pass at once. The residual is the same with or without the shift.
        scale = max(abs(history[-1]), 1e-12)
        if len(history) > 1 and abs(history[-1] - history[-2]) <= tol * scale:
            residual = math.sqrt(max(norm**2 - estimate**2, 0.0))
            converged = residual <= math.sqrt(tol) * scale
            stalled = not converged
            break
        v = [h / norm for h in hv]
    return {
        "eigenvalue": history[-1] if history else float("nan"),
        "iterations": len(history),
        "converged": converged,
        "stalled": stalled,
        "history": history,
        "norm": norm,
    }


def top_hessian_eigenvalue(
    loss_fn: Callable[[], Any],
    params: Sequence[Any],
    *,
    iters: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """λmax, the largest (most positive) eigenvalue of the Hessian of ``loss_fn()`` w.r.t. ``params``.

    Power iteration finds the eigenvalue of largest magnitude (``dominant``). When that one converges and is
    positive, it is λmax. Otherwise (a negative dominant eigenvalue, or a ± pair of equal size, which is what
    a LoRA adapter at B = 0 has: its Hessian is [[0, C], [Cᵀ, D]]) a second power iteration runs on
    ``H + ρI``, with ρ the dominant magnitude, whose top eigenvalue λmax + ρ now dominates. ``iters`` and
    ``tol`` apply to each phase. The start vector is Gaussian, drawn with ``seed`` on the CPU, so results repeat.
    """
    import torch

    params = list(params)
    if not params:
        raise ValueError("no parameters to take the Hessian over")
    gen = torch.Generator().manual_seed(seed)
    start = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p) for p in params]
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)

    def hvp(v: list[Any]) -> list[Any]:
        return list(torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True))

    dominant = power_iteration(hvp, start, shift=0.0, iters=iters, tol=tol)
    result = {"dominant": dominant, "shift": None, "shifted": None}
    top = dominant
    if not (dominant["converged"] and dominant["eigenvalue"] >= 0) and math.isfinite(dominant["norm"]):
        shift = abs(dominant["eigenvalue"]) if dominant["converged"] else dominant["norm"]
        top = power_iteration(hvp, start, shift=shift, iters=iters, tol=tol)
        result.update(shift=shift, shifted=top)
    return {
        "eigenvalue": top["eigenvalue"],
        "converged": top["converged"],
        "iterations": dominant["iterations"] + (top["iterations"] if top is not dominant else 0),
        "relative_change": _relative_change(top["history"]),
        "loss": float(loss.detach()),
        **result,
    }


def _relative_change(history: list[float]) -> float | None:
    if len(history) < 2:
        return None
    return abs(history[-1] - history[-2]) / max(abs(history[-1]), 1e-12)


def _dot(a: list[Any], b: list[Any]) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b, strict=True)))


def _normalise(vs: list[Any]) -> list[Any]:
    norm = math.sqrt(_dot(vs, vs))
    return [x / norm for x in vs] if norm > 0 else vs


def training_batch(info: Any, tokenizer: Any, n_examples: int, data_dir: str | None) -> tuple[dict, dict]:
    """The fixed batch: the first ``n_examples`` usable rows of the run's dataset, encoded as in training.

    Same dataset, fields, ``--limit`` and ``--max-length`` as the run (from run.json's config), same prompt
    and completion-only labels. Returns the collated batch and a description for diagnostics.json.
    """
    from tinyslm.datasets import collate, encode_examples, load_training_set

    cfg = info.config
    tset = load_training_set(
        cfg.get("dataset", "gsm8k-train"),
        data_dir=data_dir if data_dir is not None else cfg.get("data_dir"),
        question_field=cfg.get("question_field", "question"),
        answer_field=cfg.get("answer_field", "answer"),
        limit=cfg.get("limit"),
    )
    rows, _ = encode_examples(
        tokenizer, tset.examples[: 4 * n_examples], tset.answer_style, int(cfg.get("max_length", 512))
    )
    rows = rows[:n_examples]
    if not rows:
        from tinyslm.errors import UserError

        raise UserError(f"dataset '{tset.name}' gave no usable training example for the sharpness batch")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch = collate(rows, pad)
    target_tokens = int((batch["labels"][:, 1:] != -100).sum())
    about = {
        "dataset": tset.name,
        "source": tset.source,
        "examples": [r.example_id for r in rows],
        "tokens": sum(len(r.input_ids) for r in rows),
        "target_tokens": target_tokens,
        "max_length": int(cfg.get("max_length", 512)),
    }
    return batch, about


def model_sharpness(
    model: Any, batch: dict, *, iters: int, tol: float, seed: int, params: Sequence[Any] | None = None
) -> dict[str, Any]:
    """λmax of the mean completion-token loss of ``model`` on ``batch`` over its trainable parameters."""
    import torch

    from tinyslm.loss import supports_logits_to_keep, target_loss_sum

    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    n_target = int((batch["labels"][:, 1:] != -100).sum())
    keep = supports_logits_to_keep(model)
    params = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    model.eval()  # no dropout: the loss must be the same function at every Hessian-vector product

    def loss() -> Any:
        return target_loss_sum(model, batch, keep) / n_target

    start = time.perf_counter()
    with torch.enable_grad():
        result = top_hessian_eigenvalue(loss, params, iters=iters, tol=tol, seed=seed)
    result["parameters"] = sum(p.numel() for p in params)
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result


def fresh_adapter_sharpness(
    base_model: Any, info: Any, batch: dict, *, iters: int, tol: float, seed: int
) -> tuple[dict[str, Any], Any]:
    """λmax of the base model in the adapter's parameter space at its initialisation (B = 0).

    The run's own adapter config (rank, alpha, target modules, DoRA or not) is attached to the base model
    with the run's seed, exactly as training initialised it (``torch.manual_seed(seed)`` before
    ``get_peft_model``): A random, B = 0, so the function is still the base model's. The adapter is removed
    again (``unload``), and the untouched base model is returned with the result.
    """
    import torch
    from peft import PeftConfig, get_peft_model

    config = PeftConfig.from_pretrained(str(info.final))
    config.inference_mode = False
    torch.manual_seed(int(info.config.get("seed", 0)))
    wrapped = get_peft_model(base_model, config)
    try:
        result = model_sharpness(wrapped, batch, iters=iters, tol=tol, seed=seed)
    finally:
        base_model = wrapped.unload()
    return result, base_model
