"""Sharpness: the top eigenvalue of the training loss's Hessian, λmax, before and after fine-tuning.

A large λmax means the loss rises fast along some direction of parameter space: the model sits in a sharp
valley, where the same learning rate is closer to instability (gradient descent with step size η is
unstable along directions with λ > 2/η) and where small perturbations of the weights cost more.

How: power iteration on Hessian-vector products. ``Hv`` is the gradient of ``⟨∇L, v⟩``, one extra
backward pass through the graph of ``∇L`` (``torch.autograd.grad`` with ``create_graph=True``), so the
Hessian itself (n² entries) is never formed. Each iteration sets ``v ← Hv / ‖Hv‖`` and reads the Rayleigh
quotient ``λ = vᵀHv``; it stops when λ changes by less than ``tol`` (relative) or after ``iters``
iterations. Power iteration finds the eigenvalue of largest *magnitude*; near a minimum that is the top
(positive) one, and a negative result means the loss is far from a minimum along that direction.

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


def top_hessian_eigenvalue(
    loss_fn: Callable[[], Any],
    params: Sequence[Any],
    *,
    iters: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """λmax of the Hessian of ``loss_fn()`` w.r.t. ``params`` by power iteration on Hessian-vector products.

    Returns the eigenvalue estimate, the iterations run, whether the relative change of the estimate fell
    below ``tol``, and every iteration's estimate (the convergence history). The start vector is Gaussian,
    drawn with ``seed`` on the CPU, so results repeat.
    """
    import torch

    params = list(params)
    if not params:
        raise ValueError("no parameters to take the Hessian over")
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p) for p in params]
    v = _normalise(v)
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    history: list[float] = []
    converged = False
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        estimate = float(sum((h.double() * x.double()).sum() for h, x in zip(hv, v, strict=True)))
        history.append(estimate)
        if not math.isfinite(estimate):
            break
        if len(history) > 1 and abs(estimate - history[-2]) <= tol * max(abs(estimate), 1e-12):
            converged = True
            break
        if all(float(h.abs().max()) == 0 for h in hv):  # Hv = 0: v is in the null space, λ = 0 along it
            break
        v = _normalise([h.detach() for h in hv])
    del grads
    return {
        "eigenvalue": history[-1] if history else float("nan"),
        "iterations": len(history),
        "converged": converged,
        "relative_change": abs(history[-1] - history[-2]) / max(abs(history[-1]), 1e-12)
        if len(history) > 1
        else None,
        "history": history,
        "loss": float(loss.detach()),
    }


def _normalise(vs: list[Any]) -> list[Any]:
    norm = math.sqrt(sum(float((x.double() ** 2).sum()) for x in vs))
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

    from tinyslm.train import supports_logits_to_keep, target_loss_sum

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
