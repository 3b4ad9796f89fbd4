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
training encodes them (:mod:`tinyslm.data.training`), token-weighted completion-only cross-entropy
(:func:`tinyslm.models.loss.target_loss_sum`, which sends only the completion span through the output head).

Memory: the graph of ``∇L`` (kept for the second backward) holds every activation of the forward pass and
of its backward, several times the memory of a training step; for a batch of 8 training rows of a 135M
model that was over 20 GB. The loss is a sum over micro-batches, ``L = Σ_j S_j / N`` with ``S_j`` the
summed token loss of micro-batch j and ``N`` the target tokens of the whole batch, and ``Hv`` is linear in
it: ``Hv = Σ_j H_j v`` with ``H_j`` the Hessian of ``S_j / N``. So each product is accumulated over
micro-batches, one graph alive at a time, and equals the full-batch product up to rounding; memory scales
with the micro-batch, time with the batch (each product redoes every micro-batch's forward and backward). The parameter space is the one that was trained: the adapter's
for LoRA/DoRA, all parameters for full fine-tuning. So λmax is comparable between base and tuned model of
one run, and between LoRA and DoRA runs, but not between PEFT and full fine-tuning.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any


def power_iteration(
    matvec: Callable[[list[Any]], list[Any]],
    v: list[Any],
    *,
    shift: float,
    iters: int,
    tol: float,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Power iteration on ``H + shift·I`` given ``matvec(v) = Hv``; Rayleigh quotients reported without the shift.

    Converged: the estimate λ changed by less than ``tol·|λ|`` *and* ``v`` is nearly an eigenvector,
    ``‖Hv − λv‖ ≤ √tol·|λ|`` (the Rayleigh quotient's error is about the residual squared). The residual
    test matters: with two eigenvalues of opposite sign and equal size the estimate stops changing at a
    mixture of both, which is no eigenvalue; that run stops as ``stalled``. ``norm``, the last ``‖Hv‖`` for a
    unit ``v``, tends to the spectral radius in every case. ``on_step(i, λ)`` is called after iteration i
    (1-based), for progress lines: one Hessian-vector product can take many seconds on a CPU.
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
        if on_step is not None:
            on_step(len(history), history[-1])
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
    loss_fn: Callable[[], Any] | Sequence[Callable[[], Any]],
    params: Sequence[Any],
    *,
    iters: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """λmax, the largest (most positive) eigenvalue of the Hessian of ``loss_fn()`` w.r.t. ``params``.

    ``loss_fn`` is one callable, or a sequence of callables whose values sum to the loss (micro-batches):
    then each Hessian-vector product is the sum of the terms' products, computed one term at a time, so
    only one term's double-backward graph is in memory (see the module docstring). One callable keeps its
    graph for all products (no forward pass is repeated).

    Power iteration finds the eigenvalue of largest magnitude (``dominant``). When that one converges and is
    positive, it is λmax. Otherwise (a negative dominant eigenvalue, or a ± pair of equal size, which is what
    a LoRA adapter at B = 0 has: its Hessian is [[0, C], [Cᵀ, D]]) a second power iteration runs on
    ``H + ρI``, with ρ the dominant magnitude, whose top eigenvalue λmax + ρ now dominates. ``iters`` and
    ``tol`` apply to each phase. The start vector is Gaussian, drawn with ``seed`` on the CPU, so results repeat.
    ``progress`` gets one line per iteration with the current estimate.
    """
    import torch

    params = list(params)
    if not params:
        raise ValueError("no parameters to take the Hessian over")
    gen = torch.Generator().manual_seed(seed)
    start = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p) for p in params]
    hvp, loss = hessian_vector_product(loss_fn, params)

    def reporter(phase: str) -> Callable[[int, float], None] | None:
        if progress is None:
            return None
        t0 = time.perf_counter()

        def report(i: int, estimate: float) -> None:
            progress(f"{phase} iteration {i}/{iters}: λ ≈ {estimate:.6g} ({time.perf_counter() - t0:.1f} s)")

        return report

    dominant = power_iteration(hvp, start, shift=0.0, iters=iters, tol=tol, on_step=reporter("dominant"))
    result = {"dominant": dominant, "shift": None, "shifted": None}
    top = dominant
    if not (dominant["converged"] and dominant["eigenvalue"] >= 0) and math.isfinite(dominant["norm"]):
        shift = abs(dominant["eigenvalue"]) if dominant["converged"] else dominant["norm"]
        top = power_iteration(hvp, start, shift=shift, iters=iters, tol=tol, on_step=reporter("shifted"))
        result.update(shift=shift, shifted=top)
    return {
        "eigenvalue": top["eigenvalue"],
        "converged": top["converged"],
        "iterations": dominant["iterations"] + (top["iterations"] if top is not dominant else 0),
        "relative_change": _relative_change(top["history"]),
        "loss": loss(),
        **result,
    }


def hessian_vector_product(
    loss_fn: Callable[[], Any] | Sequence[Callable[[], Any]], params: Sequence[Any]
) -> tuple[Callable[[list[Any]], list[Any]], Callable[[], float]]:
    """``(hvp, loss)``: ``hvp(v)`` is ``Hv`` for the Hessian of the loss (one callable, or the sum of several);
    ``loss()`` is the loss's value (of the last product, for several terms; they are all equal).

    One term: ``∇L`` is built once with ``create_graph=True`` and every product is one more backward through
    it. Several: each product runs every term's forward, backward and double backward in turn, adding the
    terms' products, and frees each term's graph before the next one is built.
    """
    import torch

    params = list(params)
    terms = [loss_fn] if callable(loss_fn) else list(loss_fn)
    if not terms:
        raise ValueError("no loss terms to take the Hessian of")
    if len(terms) == 1:
        value = terms[0]()
        grads = torch.autograd.grad(value, params, create_graph=True)

        def hvp_once(v: list[Any]) -> list[Any]:
            return list(torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True))

        return hvp_once, lambda: float(value.detach())

    last = {"loss": float("nan")}

    def hvp_summed(v: list[Any]) -> list[Any]:
        total: list[Any] | None = None
        loss_sum = 0.0
        for term in terms:
            value = term()
            grads = torch.autograd.grad(value, params, create_graph=True)
            part = torch.autograd.grad(grads, params, grad_outputs=v)
            loss_sum += float(value.detach())
            del value, grads  # this term's graph goes before the next term's is built
            if total is None:
                total = list(part)
            else:
                for t, h in zip(total, part, strict=True):
                    t.add_(h)
        last["loss"] = loss_sum
        assert total is not None
        return total

    def loss() -> float:
        if math.isnan(last["loss"]):  # no product computed yet
            with torch.no_grad():
                last["loss"] = sum(float(term()) for term in terms)
        return last["loss"]

    return hvp_summed, loss


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
    from tinyslm.data.training import collate, encode_examples, load_training_set

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
        from tinyslm.core.errors import UserError

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


def split_batch(batch: dict, micro_batch_size: int) -> list[dict]:
    """The batch's rows in micro-batches of ``micro_batch_size``, each cut to its own longest row.

    Padding is on the right (:func:`tinyslm.data.training.collate`), so the columns after a micro-batch's
    longest row are padding in every row of it and dropping them changes no real token's output.
    Micro-batches without a target token (none reach here: encoding drops such rows) are left out.
    """
    from tinyslm.data.training import IGNORE_INDEX

    n = len(batch["input_ids"])
    out = []
    for lo in range(0, n, micro_batch_size):
        mb = {k: v[lo : lo + micro_batch_size] for k, v in batch.items()}
        width = int(mb["attention_mask"].sum(1).max())
        mb = {k: v[:, :width] for k, v in mb.items()}
        if (mb["labels"][:, 1:] != IGNORE_INDEX).any():
            out.append(mb)
    return out


def loss_terms(model: Any, batch: dict, micro_batch_size: int | None = None) -> list[Callable[[], Any]]:
    """The mean completion-token loss of ``model`` on ``batch`` as a sum of one callable per micro-batch.

    Token-weighted over the whole batch: each micro-batch of ``micro_batch_size`` rows (None: the whole
    batch at once) returns its summed token loss divided by the *batch's* target-token count, as
    :func:`tinyslm.train.recipe.accumulate_gradients` does; the terms add up to the full-batch mean however the
    batch is split (a mean per micro-batch would weight a short row's tokens more).
    """
    from tinyslm.data.training import IGNORE_INDEX
    from tinyslm.models.loss import supports_logits_to_keep, target_loss_sum

    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    n_target = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    keep = supports_logits_to_keep(model)

    def term(mb: dict) -> Callable[[], Any]:
        return lambda: target_loss_sum(model, mb, keep) / n_target

    return [term(mb) for mb in split_batch(batch, micro_batch_size or len(batch["input_ids"]))]


def model_sharpness(
    model: Any,
    batch: dict,
    *,
    iters: int,
    tol: float,
    seed: int,
    micro_batch_size: int | None = None,
    params: Sequence[Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """λmax of the mean completion-token loss of ``model`` on ``batch`` over its trainable parameters.

    Hessian-vector products accumulated over micro-batches of ``micro_batch_size`` rows (:func:`loss_terms`).
    """
    import torch

    params = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    terms = loss_terms(model, batch, micro_batch_size)
    model.eval()  # no dropout: the loss must be the same function at every Hessian-vector product

    start = time.perf_counter()
    with torch.enable_grad():
        result = top_hessian_eigenvalue(terms, params, iters=iters, tol=tol, seed=seed, progress=progress)
    result["parameters"] = sum(p.numel() for p in params)
    result["micro_batches"] = len(terms)
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result


def fresh_adapter_sharpness(base_model: Any, info: Any, batch: dict, **kw: Any) -> tuple[dict[str, Any], Any]:
    """λmax of the base model in the adapter's parameter space at its initialisation (B = 0).

    The run's own adapter config (rank, alpha, target modules, DoRA or not) is attached to the base model
    with the run's seed, exactly as training initialised it (``torch.manual_seed(seed)`` before
    ``get_peft_model``): A random, B = 0, so the function is still the base model's. The adapter is removed
    again (``unload``), and the untouched base model is returned with the result. ``kw`` go to
    :func:`model_sharpness`.
    """
    import torch
    from peft import PeftConfig, get_peft_model

    config = PeftConfig.from_pretrained(str(info.final))
    config.inference_mode = False
    torch.manual_seed(int(info.config.get("seed", 0)))
    wrapped = get_peft_model(base_model, config)
    try:
        result = model_sharpness(wrapped, batch, **kw)
    finally:
        base_model = wrapped.unload()
    return result, base_model
