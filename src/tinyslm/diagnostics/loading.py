"""The run directory being diagnosed, and the two models compared: the base and the fine-tuned one.

A run directory is what ``tiny-slm-train --output DIR`` writes: ``run.json`` (status, method, model_ref, the
TrainConfig), ``final/`` (a PEFT adapter for LoRA/DoRA, a full model for full fine-tuning), ``metrics.jsonl``
and optionally ``eval/<benchmark>/predictions.jsonl``. Anything else is refused with one clear line
(:class:`~tinyslm.core.errors.UserError`) before a model is loaded.

Both models are loaded in float32 with eager attention, whatever the device: the diagnostics compare small
differences (weights, log-likelihoods) and take second derivatives, and fused SDPA kernels have no double
backward. The fine-tuned PEFT model is loaded trainable (``is_trainable=True``) so that its adapter
parameters carry gradients for the Hessian; it is only ever run in eval mode (no dropout).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinyslm.config.methods import PEFT_METHODS
from tinyslm.config.methods import TRAINED_METHODS as METHODS
from tinyslm.core.errors import UserError
from tinyslm.core.files import read_json_object
from tinyslm.results.schema import RunRecord, Status

_LAYER = re.compile(r"\.layers\.(\d+)\.")


@dataclass(frozen=True)
class RunInfo:
    """What the diagnostics need to know about a finished training run."""

    run_dir: Path
    run: RunRecord  # run.json as written by train
    method: str  # full | lora | dora
    base: str  # the base model reference (--base, else run.json's model_ref)
    final: Path  # final/: adapter dir (PEFT) or model dir (full)

    @property
    def peft(self) -> bool:
        return self.method in PEFT_METHODS

    @property
    def config(self) -> dict:
        return self.run.get("config") or {}


def read_run_dir(run_dir: str | Path, base: str | None = None) -> RunInfo:
    """Validate ``run_dir`` as a finished training run; UserError naming what is wrong otherwise."""
    d = Path(run_dir).expanduser()
    if not d.is_dir():
        raise UserError(f"run directory not found: {d}")
    run_json = d / "run.json"
    if not run_json.is_file():
        raise UserError(f"{d} has no run.json; pass a run directory written by tiny-slm-train --output")
    try:
        run = RunRecord.from_json(read_json_object(run_json))
    except ValueError as e:
        raise UserError(str(e)) from None
    status = run.get("status", Status.UNKNOWN.value)
    if status != Status.FINISHED:
        raise UserError(
            f"{d} holds an unfinished run (status {status}); finish it first (tiny-slm-train ... --resume)"
        )
    method = run.get("method")
    if method not in METHODS:
        raise UserError(f"{run_json}: unknown method {method!r} (expected one of {', '.join(METHODS)})")
    final = d / "final"
    if not final.is_dir():
        raise UserError(
            f"{d} has no final/ directory (the trained weights); was it written by tiny-slm-train?"
        )
    marker = "adapter_config.json" if method in PEFT_METHODS else "config.json"
    if not (final / marker).is_file():
        raise UserError(f"{final} has no {marker}: not the {method} weights that tiny-slm-train writes")
    base_ref = base or run.get("model_ref") or (run.get("config") or {}).get("model")
    if not base_ref:
        raise UserError(f"{run_json} names no base model (model_ref); pass --base")
    return RunInfo(d, run, method, str(base_ref), final)


def _eager_float32(ref: str, device: str) -> tuple[Any, Any]:
    """A plain model in float32 with eager attention (differentiable twice), in eval mode, and its tokenizer."""
    import torch

    from tinyslm.models.load import load_model

    model, tokenizer = load_model(ref, dtype=torch.float32, device=device)
    model.set_attn_implementation("eager")
    model.config.use_cache = False
    return model, tokenizer


def load_base(info: RunInfo, device: str) -> tuple[Any, Any]:
    """The base model the run started from (``--base``), as the 'before' of every comparison."""
    return _eager_float32(info.base, device)


def load_tuned(info: RunInfo, device: str) -> tuple[Any, Any]:
    """The fine-tuned model: base + trainable adapter from ``final/`` (PEFT), or ``final/`` itself (full).

    The tokenizer saved in ``final/`` wins, as in evaluation (training may have added tokens).
    """
    from tinyslm.models.load import load_tokenizer

    if not info.peft:
        return _eager_float32(str(info.final), device)
    from peft import PeftModel

    model, tokenizer = _eager_float32(info.base, device)
    if (info.final / "tokenizer_config.json").is_file():
        tokenizer = load_tokenizer(str(info.final))
    model = PeftModel.from_pretrained(model, str(info.final), is_trainable=True)
    model.eval()
    return model, tokenizer


def block_linear_weights(model: Any) -> dict[str, Any]:
    """The weight matrices of the transformer blocks' linear layers, by parameter name, on the CPU.

    Embeddings and the output head are left out: LoRA/DoRA (``all-linear``) never adapt them, so every
    method is measured on the same matrices. A PEFT model must be merged first (its wrapped layers hold the
    unchanged base weight plus the adapter).
    """
    import torch

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and _LAYER.search(f".{name}."):
            out[f"{name}.weight"] = module.weight.detach().to("cpu", torch.float32)
    return out


def layer_and_type(name: str) -> tuple[int | None, str]:
    """``model.layers.3.self_attn.q_proj.weight`` -> (3, "q_proj")."""
    m = _LAYER.search(f".{name}")
    parts = name.split(".")
    kind = parts[-2] if parts[-1] == "weight" and len(parts) > 1 else parts[-1]
    return (int(m[1]) if m else None), kind
