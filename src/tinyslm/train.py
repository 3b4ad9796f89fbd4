"""Fine-tuning recipe: full, LoRA or DoRA under one protocol, observable and resumable.

``tiny-slm-train --model M --method {full,lora,dora} --dataset D --output DIR``; ``train(TrainConfig)`` is
the same thing for the study runner. Read it top to bottom, like a torchtune recipe:

1. **Config.** :class:`TrainConfig`, the protocol defaults per method (:data:`PROTOCOL`), validation.
   Every bad input is a :class:`~tinyslm.errors.UserError` raised before the model loads.
2. **Output directory.** A finished run is never overwritten without ``--overwrite``; an unfinished one
   needs ``--resume`` (continue from its last checkpoint) or ``--overwrite``.
3. **Data.** Rows from :mod:`tinyslm.datasets`, encoded as the evaluation's zero-shot prompt + target +
   stop token, loss on target tokens only. Each epoch has a fixed order, ``randperm`` seeded with
   ``seed + epoch``; optimizer step ``s`` takes the next ``batch_size`` rows of that order, so the data
   position after step ``s`` is a function of ``s`` alone and resuming needs no iterator state.
4. **Model.** Loaded in float32 (the master weights), wrapped by ``peft`` for LoRA/DoRA (``use_dora``).
5. **Optimizer.** AdamW; weight decay on matrices only (biases, norms and DoRA magnitudes are not
   decayed, as in nanoGPT); cosine schedule with linear warmup (transformers' scheduler).
6. **Loop.** Built on ``accelerate``, so ``torchrun --nproc_per_node N -m tinyslm.cli.train ...`` or
   ``accelerate launch --multi_gpu --num_processes N -m tinyslm.cli.train ...`` (also on CPU-only hosts,
   gloo; ``accelerate launch --cpu`` starts one process) trains data-parallel with no code change: each
   rank takes its share of every batch's micro-batches. bf16 autocast on CUDA, fp32 on CPU. The loss is
   token-weighted over the whole effective batch, for any process count. Every step appends a line to
   ``DIR/metrics.jsonl``. Divergence stops the run (status ``diverged``, with the reason): a non-finite
   loss or gradient norm, non-finite weights after an update (checked before every checkpoint and after
   the last step, so non-finite weights are never saved), or a sustained blow-up (the loss above
   ``--divergence-factor`` x its early level for ``--divergence-patience`` steps in a row; see
   :class:`BlowUp`). Checkpoints every ``--save-every`` steps and on SIGTERM/SIGINT.
   ``--gradient-checkpointing`` recomputes each decoder layer's activations in the backward pass.
7. **Finish.** ``DIR/final/`` (adapter or full model, safetensors, with the tokenizer), ``DIR/merged/``
   with ``--merge``, ``DIR/run.json`` status ``finished``, then the ``--eval`` benchmarks in ``DIR/eval/``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tinyslm.errors import UserError
from tinyslm.io import JsonlAppender, atomic_write_json, exclusive_lock, read_jsonl, writing
from tinyslm.limits import MAX_SEED, seed_problem
from tinyslm.models import DEFAULT_MODEL
from tinyslm.runtime import TRAIN_DEVICES, device_problem
from tinyslm.settings import check_bounds, resumable_names, setting

METHODS = ("full", "lora", "dora")

# The early level of the loss (the blow-up check): the lowest loss of the run's first EARLY_STEPS steps.
EARLY_STEPS = 5

# The study's protocol: what differs between methods. Everything else is shared (see TrainConfig defaults).
PROTOCOL: dict[str, dict[str, float]] = {
    "full": {"lr": 2e-5, "lora_dropout": 0.0},
    "lora": {"lr": 2e-4, "lora_dropout": 0.05},
    "dora": {"lr": 2e-4, "lora_dropout": 0.05},
}

# "q,v" is shorthand for q_proj,v_proj (the LoRA paper's choice); these short names get "_proj" appended.
_SHORT_MODULES = {"q", "k", "v", "o", "gate", "up", "down"}

# Test hook: TINYSLM_TRAIN_FAULT="nan@K" sets a weight to NaN before step K (exercises the divergence guard);
# "sigkill@K" SIGKILLs this process right after step K is logged (exercises --resume after a hard kill).
FAULT_ENV = "TINYSLM_TRAIN_FAULT"


@dataclass
class TrainConfig:
    """Every training setting, once: default, bounds and help live on the field (see :mod:`tinyslm.settings`).

    The ``tiny-slm-train`` flags are generated from these fields, :func:`resolve_config` checks their bounds,
    and the study's ``train:`` and ``overrides:`` sections are built from them.
    """

    model: str = setting(
        help="offline alias, Hugging Face id, local checkpoint dir or .gguf file (default: %(default)s)",
        cli_default=DEFAULT_MODEL,
    )
    method: str = setting(
        help="full fine-tuning, LoRA, or DoRA (LoRA with weight decomposition; peft use_dora)", choices=METHODS
    )
    output: str = setting(
        help="run directory: run.json, metrics.jsonl, checkpoints/, final/ (and merged/, eval/)", resumable=True
    )
    dataset: str = setting(
        "gsm8k-train",
        help="gsm8k-train (default; offline), orcamath (Hub: seeded stratified 10k subset disjoint from the "
        "eval holdout), a .jsonl file, or a Hub dataset id owner/name (split train)",
    )
    question_field: str = setting(
        "question", help="question field of a .jsonl/Hub dataset (default %(default)s)"
    )
    answer_field: str = setting(
        "answer", help="answer field (the target; '#### <last number>' is appended when it has no '#### ' line)"
    )
    data_dir: str | None = setting(
        None, help="offline data directory (default: $TINYSLM_DATA_DIR; neither = the Hub)", resumable=True
    )
    limit: int | None = setting(None, help="train on the first N rows only", ge=1)
    epochs: int = setting(1, help="passes over the data (default %(default)s)", ge=1)
    max_steps: int | None = setting(None, help="optimizer steps; overrides --epochs", ge=1)
    lr: float | None = setting(  # None: the method's protocol default
        None, help="peak learning rate (default: full 2e-5, lora/dora 2e-4)", gt=0
    )
    warmup_ratio: float = setting(
        0.03,
        help="fraction of steps with linear warmup before the cosine decay (default %(default)s)",
        ge=0,
        lt=1,
    )
    weight_decay: float = setting(0.01, help="AdamW weight decay on matrices (default %(default)s)", ge=0)
    lora_r: int = setting(8, help="LoRA/DoRA rank (default %(default)s)", ge=1)
    lora_alpha: float = setting(32, help="LoRA/DoRA alpha (default %(default)s)", gt=0)
    lora_dropout: float | None = setting(  # None: the method's protocol default
        None, help="dropout on the adapter input (default 0.05; full fine-tuning has no adapter)", ge=0, lt=1
    )
    target_modules: str = setting(
        "all-linear",
        help="all-linear (default: every attention and MLP projection), q,v (= q_proj,v_proj), or names",
    )
    batch_size: int = setting(
        64, help="effective batch size = micro-batch x accumulation x processes (default %(default)s)", ge=1
    )
    micro_batch_size: int = setting(8, help="rows per forward pass (default %(default)s)", ge=1)
    max_length: int = setting(
        512,
        help="tokens per example, prompt + target; longer ones are cut and counted (default %(default)s)",
        ge=8,
    )
    max_grad_norm: float = setting(
        1.0, help="clip the global gradient norm (default %(default)s; 0 = off)", ge=0
    )
    seed: int = setting(
        1234,
        help="seed for adapter init, data order and dropout, 0 to 2^63-1 (default %(default)s)",
        ge=0,
        le=MAX_SEED,
    )
    save_every: int = setting(
        100, help="checkpoint every N steps (default %(default)s)", ge=1, resumable=True
    )
    keep_checkpoints: int = setting(2, help="checkpoints kept (default %(default)s)", ge=1, resumable=True)
    resume: bool = setting(
        False, help="continue an unfinished run in --output from its last checkpoint", resumable=True
    )
    overwrite: bool = setting(False, help="replace the run in --output", resumable=True)
    merge: bool = setting(
        False, help="also write the adapter merged into the base model to OUTPUT/merged", resumable=True
    )
    eval: str | None = setting(
        None,
        help="benchmarks to evaluate the result on afterwards, e.g. gsm8k,svamp (to OUTPUT/eval)",
        resumable=True,
    )
    eval_limit: int | None = setting(
        None, help="score only the first N problems of each --eval benchmark", ge=1, resumable=True
    )
    report_to: str = setting(
        "none", help="none (default), wandb, tensorboard, or both comma-separated", resumable=True
    )
    device: str = setting(
        "auto",
        help="auto (CUDA if present: bf16 autocast), cpu (fp32)",
        choices=TRAIN_DEVICES,
        resumable=True,
    )
    trust_remote_code: bool = setting(
        False, help="allow model code from the Hub (off by default)", resumable=True
    )
    progress: bool = setting(True, help="no progress bar", flag="--no-progress", negate=True, resumable=True)
    # same math, less activation memory (recomputed in the backward pass; dropout masks are replayed)
    gradient_checkpointing: bool = setting(
        False,
        help="recompute each layer's activations in the backward pass: about half the peak memory, one more "
        "forward pass, same result (may be switched on or off on --resume)",
        resumable=True,
    )
    # when to give up on a run, not what it trains
    divergence_factor: float = setting(
        3.0,
        help=f"stop as diverged when the loss stays above this x its early level (the lowest loss of steps "
        f"1-{EARLY_STEPS}) for --divergence-patience steps in a row (default 3; 0 = only NaN/inf count)",
        ge=0,
        also=(lambda v: v == 0 or v > 1, "0 (off) or > 1"),
        resumable=True,
    )
    divergence_patience: int = setting(
        5,
        help="consecutive steps above --divergence-factor x the early loss that count as diverged "
        "(default %(default)s)",
        ge=1,
        resumable=True,
    )


#: Config fields that may change between a run and its --resume (they do not change what is trained).
RESUMABLE_CHANGES = resumable_names(TrainConfig)


# ---------------------------------------------------------------------------------------------------
# 1. Config: protocol defaults and validation.


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the method's protocol defaults filled in, validated (UserError on bad values)."""
    if cfg.method not in METHODS:
        raise UserError(f"unknown method '{cfg.method}' (choose from: {', '.join(METHODS)})")
    proto = PROTOCOL[cfg.method]
    cfg = replace(
        cfg,
        lr=proto["lr"] if cfg.lr is None else cfg.lr,
        lora_dropout=proto["lora_dropout"] if cfg.lora_dropout is None else cfg.lora_dropout,
    )
    check_bounds(cfg)  # every field's bounds, written once on the field
    if cfg.batch_size % cfg.micro_batch_size:
        raise UserError(
            f"--batch-size {cfg.batch_size} is not a multiple of --micro-batch-size {cfg.micro_batch_size}"
        )
    if cfg.resume and cfg.overwrite:
        raise UserError("--resume and --overwrite contradict each other; pass one of them")
    device_error = device_problem(cfg.device, training=True)
    if device_error is not None:
        raise UserError(f"--device: {device_error}")
    parse_target_modules(cfg.target_modules)
    report_targets(cfg.report_to)
    return cfg


def parse_target_modules(spec: str) -> str | list[str]:
    """``all-linear`` (every attention and MLP projection, not the output head), ``q,v``, or module names."""
    s = spec.strip()
    if s in ("all-linear", "all"):
        return "all-linear"
    names = [t.strip() for t in s.split(",") if t.strip()]
    if not names:
        raise UserError("--target-modules is empty (e.g. all-linear, q,v or q_proj,k_proj,v_proj,o_proj)")
    return [f"{n}_proj" if n in _SHORT_MODULES else n for n in names]


def report_targets(spec: str) -> list[str]:
    """The ``--report-to`` targets; each one's package must import (checked now, not after training)."""
    names = [t.strip() for t in spec.split(",") if t.strip() and t.strip() != "none"]
    for name in names:
        if name == "wandb":
            try:
                import wandb  # noqa: F401
            except ImportError:
                raise UserError("--report-to wandb needs the 'wandb' package (pip install wandb)") from None
        elif name == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            except ImportError:
                raise UserError(
                    "--report-to tensorboard needs the 'tensorboard' package (pip install tensorboard)"
                ) from None
        else:
            raise UserError(f"unknown --report-to '{name}' (none, wandb, tensorboard)")
    return names


# ---------------------------------------------------------------------------------------------------
# 2. The output directory: fresh, resumed, or refused.


def read_run(out: Path) -> dict | None:
    f = out / "run.json"
    if not f.exists():
        return None
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {f} ({e}); pass --overwrite to start this run afresh") from None


def check_output(out: Path, cfg: TrainConfig) -> str:
    """What to do with ``out``: ``fresh``, ``resume`` or ``done`` (finished, and --resume). Writes nothing."""
    prev = read_run(out)
    started = prev is not None or (out / "metrics.jsonl").exists() or bool(list_checkpoints(out))
    if cfg.overwrite or not started:
        return "fresh"
    status = (prev or {}).get("status", "unknown")
    if status == "finished":
        if cfg.resume:
            return "done"
        raise UserError(
            f"{out} holds a finished run; pass --overwrite to replace it, or choose another --output"
        )
    if not cfg.resume:
        raise UserError(
            f"{out} holds an unfinished run (status {status}); pass --resume to continue it "
            "or --overwrite to start afresh"
        )
    if prev is not None:
        old, new = prev.get("config", {}), asdict(cfg)
        diff = sorted(k for k in new if k not in RESUMABLE_CHANGES and k in old and old[k] != new[k])
        if diff:
            raise UserError(
                f"{out} was started with different settings ({', '.join(diff)}); resume it with the same "
                "settings, or pass --overwrite to start afresh"
            )
    return "resume"


def clear_run(out: Path) -> None:
    """Remove what a previous run wrote (only the names this recipe writes; other files are left alone)."""
    for name in ("run.json", "metrics.jsonl"):
        (out / name).unlink(missing_ok=True)
    for name in (
        "checkpoints",
        "final",
        "merged",
        "eval",
        "tensorboard",
        "wandb",
        ".final.tmp",
        ".merged.tmp",
    ):
        shutil.rmtree(out / name, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# 3. Data order: a fixed permutation per epoch; each step's batch split into micro-batches per rank.


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order of the ``n`` rows in ``epoch``: reproducible from (seed, epoch) alone, so resumable."""
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()


def step_micro_batches(
    order: Sequence[int],
    step_in_epoch: int,
    batch_size: int,
    micro: int,
    rank: int,
    world: int,
    lengths: Sequence[int],
) -> list[list[int]]:
    """Row indices of this rank's micro-batches for one optimizer step.

    The step's ``batch_size`` rows are sorted by length (so micro-batches hold rows of similar length and
    little compute goes to padding) and cut into micro-batches, dealt round-robin to the ranks. The loss
    is a token-weighted sum over the whole step's batch, so how rows are grouped does not change the update:
    one process and N processes take the same step.
    """
    rows = order[step_in_epoch * batch_size : (step_in_epoch + 1) * batch_size]
    rows = sorted(rows, key=lambda i: (-lengths[i], i))
    chunks = [rows[c : c + micro] for c in range(0, len(rows), micro)]
    return chunks[rank::world]


# ---------------------------------------------------------------------------------------------------
# 4./5. Model, adapters, optimizer, schedule.


def adapter_base_ref(ref: str) -> str:
    """What an adapter records as its base model: the user's reference, absolute if it is a local path."""
    p = Path(ref).expanduser()
    return str(p.resolve()) if p.exists() else ref


def load_for_training(cfg: TrainConfig) -> tuple[Any, Any]:
    """Base model (float32 master weights, train mode) and tokenizer; LoRA/DoRA adapters attached via peft."""
    import torch

    from tinyslm.models import load_model, resolve_model

    resolved = Path(resolve_model(cfg.model))
    if (resolved / "adapter_config.json").is_file() and not (resolved / "config.json").is_file():
        raise UserError(
            f"--model {cfg.model} is a PEFT adapter; train from a full model (e.g. the adapter's "
            "merged/ directory written by --merge)"
        )
    model, tokenizer = load_model(
        cfg.model, dtype=torch.float32, device="cpu", trust_remote_code=cfg.trust_remote_code
    )
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model, cfg.model)
    torch.manual_seed(cfg.seed)  # adapter initialisation (lora_A) is seeded, identical on every rank
    if cfg.method in ("lora", "dora"):
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=parse_target_modules(cfg.target_modules),
            use_dora=cfg.method == "dora",
            bias="none",
            task_type="CAUSAL_LM",
        )
        try:
            # peft asks transformers 5 for a renamed attribute; a warning the user cannot act on
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
                model = get_peft_model(model, lcfg)
        except ValueError as e:
            raise UserError(
                f"--target-modules {cfg.target_modules}: {str(e).splitlines()[0][:300]}"
            ) from None
        model.peft_config["default"].base_model_name_or_path = adapter_base_ref(cfg.model)
    model.config.use_cache = False
    model.train()
    return model, tokenizer


def enable_gradient_checkpointing(model: Any, ref: str) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them.

    Called on the base model before peft wraps it. Non-reentrant ``torch.utils.checkpoint``
    (``use_reentrant=False``, what torch, transformers and peft recommend): it gives gradients to parameters
    inside a layer even when the layer's input needs none (frozen base + adapters), and it replays the RNG
    state, so dropout masks and hence the losses and gradients equal those without checkpointing.
    ``enable_input_require_grads`` makes the embeddings' output require grad too (what transformers does for
    PEFT; needed by the reentrant variant, harmless here).
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise UserError(f"--gradient-checkpointing: {type(model).__name__} ({ref}) does not support it")
    kwargs = {"use_reentrant": False}
    # transformers 5 renamed it activation_checkpointing_enable (the old name warns); 4.x has only the old one
    enable = getattr(model, "activation_checkpointing_enable", None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*gradient_checkpointing", FutureWarning)
        if enable is not None:
            enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.enable_input_require_grads()


def make_optimizer(model: Any, cfg: TrainConfig) -> Any:
    """AdamW; weight decay on weight matrices only (ndim >= 2), never on biases, norms or DoRA magnitudes."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)


def count_parameters(model: Any) -> dict[str, Any]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total, "trainable_fraction": trainable / total}


def supports_logits_to_keep(model: Any) -> bool:
    """Whether the model's forward can project only chosen positions onto the vocabulary (most can)."""
    from tinyslm.models import base_model

    return "logits_to_keep" in inspect.signature(type(base_model(model)).forward).parameters


def target_loss_sum(model: Any, batch: dict[str, Any], keep_logits: bool) -> Any:
    """Summed next-token cross-entropy over the target tokens of ``batch``, in float32.

    The caller normalises by the token count of the whole step. With ``keep_logits`` only the span of
    positions that predict a target token goes through the output head (``logits_to_keep``): prompt
    positions need no vocabulary-sized logits, which saves time and most of the logits' memory.
    """
    import torch
    import torch.nn.functional as F

    from tinyslm.datasets import IGNORE_INDEX

    labels = batch["labels"][:, 1:]  # position t predicts token t + 1
    kwargs: dict[str, Any] = {}
    if keep_logits:
        cols = (labels != IGNORE_INDEX).any(0).nonzero().squeeze(1)
        keep = torch.arange(int(cols[0]), int(cols[-1]) + 1, device=labels.device)
        kwargs["logits_to_keep"] = keep
        labels = labels[:, keep]
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False, **kwargs
    ).logits
    if not keep_logits:
        logits = logits[:, :-1]
    mask = labels != IGNORE_INDEX
    return F.cross_entropy(logits[mask].float(), labels[mask], reduction="sum")


def accumulate_gradients(
    accelerator: Any, model: Any, batches: list[dict], n_target: int, keep_logits: bool
) -> Any:
    """Forward/backward over this rank's micro-batches of one optimizer step; returns their summed token loss.

    Each micro-batch contributes its summed loss divided by the step's target-token count over all ranks,
    times the number of ranks (DDP averages gradients over ranks): the gradient is then exactly that of the
    token-weighted mean loss over the whole effective batch, however it is split. Gradients are synchronised
    between ranks once, on the last micro-batch.
    """
    import torch

    world = accelerator.num_processes
    loss_sum = torch.zeros((), device=accelerator.device)
    for j, b in enumerate(batches):
        sync = contextlib.nullcontext() if j == len(batches) - 1 else accelerator.no_sync(model)
        with sync:
            s = target_loss_sum(model, {k: v.to(accelerator.device) for k, v in b.items()}, keep_logits)
            accelerator.backward(s * world / n_target)
            loss_sum += s.detach()
    return loss_sum


# ---------------------------------------------------------------------------------------------------
# 6. Checkpoints: trainable weights + optimizer + scheduler + per-rank RNG + step, written atomically.


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a directory appears only by rename, once fully written)."""
    d = out / "checkpoints"
    if not d.is_dir():
        return []
    done = [
        p for p in d.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / "state.json").is_file()
    ]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def _trainable_state(model: Any) -> dict[str, Any]:
    return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _rng_state() -> dict[str, Any]:
    import torch

    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _fsync_tree(d: Path) -> None:
    """Flush a freshly written checkpoint to disk before it is renamed into place."""
    for f in d.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    accelerator: Any, out: Path, model: Any, optimizer: Any, scheduler: Any, state: dict, keep: int
) -> Path:
    """Write ``checkpoints/step-N`` via a temp dir + rename, then keep only the newest ``keep`` checkpoints.

    Only trainable weights are stored (for LoRA/DoRA that is the adapter; the base comes from --model again).
    Every rank stores its own RNG state; the main process writes the rest, ``state.json`` last.
    """
    from safetensors.torch import save_file

    ckdir = out / "checkpoints"
    final = ckdir / f"step-{state['step']:07d}"
    tmp = ckdir / f".tmp-step-{state['step']:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    _torch_save(_rng_state(), tmp / f"rng-rank{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        with writing(tmp / "trainable.safetensors"):
            save_file(_trainable_state(accelerator.unwrap_model(model)), tmp / "trainable.safetensors")
        _torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
        _torch_save(scheduler.state_dict(), tmp / "scheduler.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / "state.json", state)
        with writing(tmp):
            _fsync_tree(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a Python file object, so that a full disk is an ``OSError`` (and, through
    :func:`~tinyslm.io.writing`, one line naming ``path``) rather than torch's "unexpected pos" error."""
    import torch

    with writing(path), open(path, "wb") as f:
        torch.save(obj, f)


def _torch_load(path: Path) -> Any:
    """A checkpoint file, read with ``weights_only=True``: tensors, numbers, strings and containers only.

    A checkpoint directory is data the tool did not just write (it may have been copied, shared or
    tampered with); a full unpickler would run whatever code a crafted file names on ``--resume``.
    Anything the restricted unpickler refuses, or a damaged file, is one UserError naming the file.
    """
    import torch

    advice = "delete that checkpoint directory to resume from an older one, or pass --overwrite to start afresh"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        if type(e).__name__ != "UnpicklingError":  # missing or unreadable file, damaged archive
            first = (text.strip().splitlines() or [""])[0][:200]
            raise UserError(f"cannot load {path} ({type(e).__name__}: {first}); {advice}") from None
        # torch's own message suggests weights_only=False, which is exactly what must not happen here
        named = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        what = (f"it names {named.group(1)}, which loading would run or build" if named
                else "it holds pickle instructions a checkpoint never holds")
        raise UserError(f"refusing to load {path}: not a plain checkpoint file ({what}); {advice}") from None


def load_checkpoint(ck: Path, model: Any, optimizer: Any, scheduler: Any) -> dict:
    """Restore trainable weights, optimizer and scheduler from ``ck``; returns its state.json.

    Every file is read by a loader that cannot run code: safetensors, JSON, and ``torch.load`` with
    ``weights_only=True`` (:func:`_torch_load`).
    """
    import torch
    from safetensors.torch import load_file

    try:
        weights = load_file(ck / "trainable.safetensors")
        state = json.loads((ck / "state.json").read_text(encoding="utf-8"))
    except Exception as e:  # damaged safetensors header or JSON, unreadable file
        raise UserError(
            f"cannot read checkpoint {ck} ({type(e).__name__}: {str(e)[:200]}); "
            "delete it to resume from an older one, or pass --overwrite to start afresh"
        ) from None
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != set(params):
        raise UserError(
            f"{ck} does not match this model/method (different trainable parameters); "
            "pass --overwrite to start afresh"
        )
    optimizer_state = _torch_load(ck / "optimizer.pt")
    scheduler_state = _torch_load(ck / "scheduler.pt")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(weights[n])
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(scheduler_state)
    return state


def restore_rng(ck: Path, rank: int, fallback_seed: int) -> bool:
    """This rank's RNG state from ``ck`` (dropout continues exactly); reseeds if ``ck`` had fewer ranks.

    The file holds tensors and Python's ``random`` state (a tuple of ints), all of which the
    ``weights_only`` loader accepts, so checkpoints written before that loader was enforced still resume.
    """
    import torch

    f = ck / f"rng-rank{rank}.pt"
    if not f.exists():
        torch.manual_seed(fallback_seed)
        return False
    state = _torch_load(f)
    try:
        torch.set_rng_state(state["torch"])
        random.setstate(tuple(state["python"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise UserError(
            f"{f} does not hold an RNG state ({type(e).__name__}: {str(e)[:200]}); "
            "delete that checkpoint directory to resume from an older one, or pass --overwrite"
        ) from None
    return True


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the metrics of steps 1..last_step only: the steps after the checkpoint run (and log) again."""
    if not path.exists():
        return
    keep = [r for r in read_jsonl(path, tolerate_torn_tail=True) if int(r.get("step", 0)) <= last_step]
    from tinyslm.io import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep))


# ---------------------------------------------------------------------------------------------------
# Telemetry helpers.


def reset_peak_memory(device: Any) -> bool:
    """Start a fresh peak-memory window; returns whether the CPU peak could be reset.

    CUDA: the allocator's peak statistics. CPU: the kernel's resident-set high-water mark (VmHWM), reset
    by writing 5 to /proc/self/clear_refs (Linux >= 4.0). Without the reset, a process that ran other work
    first (the study runs cells one after another in one process) would report that work's peak.
    """
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory_mib(device: Any) -> tuple[float, str]:
    """Peak memory since :func:`reset_peak_memory`: CUDA max allocated on GPU; on CPU the resident-set
    high-water mark (``cpu_peak_rss``), or where /proc is missing the process's lifetime peak
    (``cpu_max_rss_process``, an upper bound)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10, "cpu_peak_rss"
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return (rss / 2**20 if sys.platform == "darwin" else rss / 2**10), "cpu_max_rss_process"


class Reporters:
    """Mirror each metrics line to W&B and/or TensorBoard (imported lazily; both are optional)."""

    def __init__(self, names: list[str], out: Path, run: dict, start_step: int):
        self.wandb = self.tb = None
        if "wandb" in names:
            import wandb

            run.setdefault("wandb_run_id", wandb.util.generate_id())
            self.wandb = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "tiny-slm"),
                name=out.name,
                dir=str(out),
                id=run["wandb_run_id"],
                resume="allow",
                config=run["config"],
            )
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run logged after its last checkpoint, as metrics.jsonl does
            self.tb = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=start_step + 1)

    def log(self, rec: dict) -> None:
        nums = {k: v for k, v in rec.items() if isinstance(v, (int, float)) and k != "step"}
        if self.wandb is not None:
            self.wandb.log({f"train/{k}": v for k, v in nums.items()}, step=rec["step"])
        if self.tb is not None:
            for k, v in nums.items():
                self.tb.add_scalar(f"train/{k}", v, rec["step"])

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
        if self.tb is not None:
            self.tb.close()


class StopSignals:
    """SIGTERM/SIGINT ask the loop to stop after the current step (and checkpoint); a second one kills."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        self.received = signum
        signal.signal(signum, self._old.get(signum, signal.SIG_DFL))  # the next one acts immediately

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


@dataclass
class BlowUp:
    """The sustained-blow-up half of the divergence check (the other half: non-finite numbers).

    *Early level*: the lowest loss of optimizer steps 1..:data:`EARLY_STEPS` (a running minimum until
    then). A minimum, not a mean or median: a blow-up only raises the loss, so one that starts inside the
    window (``--lr 10`` does by step 2) cannot drag the level up, while a healthy run's loss falls below it.
    The run *diverged* when its loss exceeds ``factor`` x the early level at ``patience`` consecutive steps
    (a single spike that recovers does not count); ``factor`` 0 turns this off. The defaults (3 x for 5
    steps) never trigger on a healthy run, whose loss falls; with a tiny batch (a few rows) the per-step
    loss is noisy and a higher factor or 0 may be wanted. The state goes into each checkpoint, so a resumed
    run judges against the same early level.
    """

    factor: float
    patience: int
    early: float | None = None
    streak: int = 0
    streak_start: int | None = None

    def update(self, step: int, loss: float) -> bool:
        """Account for ``loss`` (finite) of ``step``; True when the blow-up has lasted ``patience`` steps."""
        if self.factor <= 0:
            return False
        if self.early is not None and loss > self.factor * self.early:
            self.streak_start = step if self.streak == 0 else self.streak_start
            self.streak += 1
        else:
            self.streak, self.streak_start = 0, None
        # A checkpoint from before this check existed has no early level: the first loss after it sets one.
        if self.early is None or step <= EARLY_STEPS:
            self.early = loss if self.early is None else min(self.early, loss)
        return self.streak >= self.patience

    def state(self) -> dict[str, Any]:
        return {"early_loss": self.early, "streak": self.streak, "streak_start": self.streak_start}

    def restore(self, state: dict[str, Any] | None) -> None:
        if state:
            self.early, self.streak = state.get("early_loss"), int(state.get("streak") or 0)
            self.streak_start = state.get("streak_start")

    def reason(self, step: int, loss: float, grad_norm: float) -> str:
        return (
            f"loss blew up: above {self.factor:g} x its early level {self.early:.4g} (the lowest loss of steps "
            f"1-{EARLY_STEPS}) at {self.streak} consecutive steps ({self.streak_start}-{step}; loss at step "
            f"{step}: {loss:.4g}, grad norm {grad_norm:.4g}); lower --lr, or see --divergence-factor"
        )


def weight_norm(params: Sequence[Any]) -> float:
    """The global L2 norm of ``params`` (float32): a cheap test that an update left every weight finite."""
    import torch

    with torch.no_grad():
        norms = [torch.linalg.vector_norm(p.detach(), dtype=torch.float32) for p in params]
        return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def _fault() -> tuple[str, int] | None:
    spec = os.environ.get(FAULT_ENV, "")
    if "@" not in spec:
        return None
    kind, _, step = spec.partition("@")
    return kind, int(step)


def make_accelerator(device: str) -> Any:
    """CPU (also several CPU processes, gloo) or CUDA; bf16 autocast with fp32 master weights on CUDA."""
    import torch
    from accelerate import Accelerator

    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available")
    cpu = device == "cpu" or not torch.cuda.is_available()
    bf16 = not cpu and torch.cuda.is_bf16_supported()
    return Accelerator(cpu=cpu, mixed_precision="bf16" if bf16 else "no")


# ---------------------------------------------------------------------------------------------------
# The recipe.


def train(cfg: TrainConfig) -> dict:
    """Train as ``cfg`` says; returns the run record (also in ``DIR/run.json``).

    Status in the record: ``finished``, ``diverged`` (non-finite loss, gradient norm or weights, or a
    sustained loss blow-up; ``reason`` says which, ``last_checkpoint`` names the newest one from before
    the bad update), ``interrupted`` (SIGTERM/SIGINT; a checkpoint was saved), or ``failed`` with a
    reason (an exception, which is re-raised). Bad input raises UserError before anything is written.
    """
    from tinyslm.runtime import hf_progress_bars

    with hf_progress_bars(cfg.progress), contextlib.ExitStack() as locks:
        return _train(cfg, locks)


def _lock_output(locks: contextlib.ExitStack, out: Path) -> None:
    """One process per run directory (the main rank's; the others write only their RNG files into the
    checkpoint it creates), held until :func:`train` returns."""
    locks.enter_context(exclusive_lock(out, "--output"))


def _train(cfg: TrainConfig, locks: contextlib.ExitStack) -> dict:
    import torch
    from transformers import get_cosine_schedule_with_warmup

    from tinyslm.datasets import IGNORE_INDEX, collate, encode_examples, load_training_set
    from tinyslm.evaluate import package_versions
    from tinyslm.provenance import training_provenance

    cfg = resolve_config(cfg)
    seed_error = seed_problem(cfg.seed)
    if seed_error is not None:  # the CLI and the study schema check it too; this guards library callers
        raise UserError(f"--seed: {seed_error}")
    out = Path(cfg.output).expanduser()
    accelerator = make_accelerator(cfg.device)
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    if cfg.batch_size % (cfg.micro_batch_size * world):
        raise UserError(
            f"--batch-size {cfg.batch_size} must be divisible by --micro-batch-size {cfg.micro_batch_size} "
            f"x {world} process(es)"
        )
    accumulation = cfg.batch_size // (cfg.micro_batch_size * world)
    mode = check_output(out, cfg)
    if mode == "done":
        run = read_run(out) or {}
        if main:
            print(f"{out}: this run has already finished (kept {out / 'run.json'})", file=sys.stderr)
        if cfg.eval and main:
            _lock_output(locks, out)
            run = _evaluate(cfg, out, run)
        return run
    if cfg.eval:
        eval_config(cfg, out)  # a bad --eval fails now, not after training

    # Data: rows -> token ids with completion-only labels.
    tset = load_training_set(
        cfg.dataset,
        data_dir=cfg.data_dir,
        question_field=cfg.question_field,
        answer_field=cfg.answer_field,
        limit=cfg.limit,
    )
    model, tokenizer = load_for_training(cfg)
    # weights/data/template digests; a resume from other files is refused here, before anything is written
    provenance = training_provenance(
        cfg.model, tset.source, tokenizer, str(accelerator.device), read_run(out) if mode == "resume" else None, out
    )
    if accelerator.device.type == "cpu":
        from tinyslm.dropout import use_uniform_mask_dropout  # imports torch: not at module import (--help)

        use_uniform_mask_dropout(model)  # same dropout, drawn ~2x faster than bernoulli_ on CPU (dropout.py)
    rows, enc_stats = encode_examples(tokenizer, tset.examples, tset.answer_style, cfg.max_length)
    steps_per_epoch = len(rows) // cfg.batch_size
    if steps_per_epoch == 0:
        raise UserError(
            f"{len(rows)} usable training examples make no full batch of {cfg.batch_size}; "
            "lower --batch-size or raise --limit"
        )
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    warmup_steps = math.ceil(cfg.warmup_ratio * total_steps)
    lengths = [len(r.input_ids) for r in rows]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    optimizer = make_optimizer(model, cfg)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    params = count_parameters(model)

    # Output directory: start afresh, or restore the newest checkpoint (weights/optimizer/scheduler now,
    # RNG just before the loop) and forget the metrics logged after it. Locked from the first write on
    # (not earlier: bad input leaves no directory behind); what was checked above is checked again under
    # the lock, in case another process wrote there meanwhile.
    if main:
        _lock_output(locks, out)
        if check_output(out, cfg) != mode:
            raise UserError(
                f"{out} was changed by another process while this one started; run the command again"
            )
    ckpts = list_checkpoints(out) if mode == "resume" else []
    if main:
        if mode == "fresh":
            clear_run(out)
        out.mkdir(parents=True, exist_ok=True)
        for stale in (out / "checkpoints").glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    start_step, prior = 0, {"elapsed_s": 0.0, "train_s": 0.0, "tokens": 0}
    blowup = BlowUp(cfg.divergence_factor, cfg.divergence_patience)
    if ckpts:
        state = load_checkpoint(ckpts[-1], accelerator.unwrap_model(model), optimizer, scheduler)
        start_step = int(state["step"])
        prior = {k: state.get(k, 0) for k in prior}
        blowup.restore(state.get("blow_up"))
    if main and mode == "resume":
        truncate_metrics(out / "metrics.jsonl", start_step)
    model, optimizer = accelerator.prepare(model, optimizer)

    peak_kind = peak_memory_mib(accelerator.device)[1]
    prev = read_run(out) if mode == "resume" else None
    whole = next((r for r in rows if not r.truncated), None)  # the token that ends a complete target
    stop_token = tokenizer.convert_ids_to_tokens(whole.labels[-1]) if whole else None
    run: dict[str, Any] = {
        "status": "running",
        "config": asdict(cfg),
        "model": _model_name(cfg.model),
        "model_ref": cfg.model,
        "method": cfg.method,
        "parameters": params,
        "data": {
            "dataset": tset.name,
            "source": tset.source,
            **tset.info,
            "examples": enc_stats["examples"],
            "used_examples": len(rows),
            "truncated_examples": enc_stats["truncated"],
            "dropped_examples": enc_stats["dropped"],
            "max_length": cfg.max_length,
            "target_tokens_per_epoch": enc_stats["target_tokens"],
            "completion_only": True,
            "prompt": "evaluation zero-shot prompt (prompts.build_prompt), chat template"
            if getattr(tokenizer, "chat_template", None)
            else "evaluation zero-shot prompt, base format",
            "stop_token": stop_token,
            "order": "torch.randperm seeded with seed + epoch; last partial batch of an epoch dropped",
        },
        "schedule": {
            "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps,
            "epochs": round(total_steps / steps_per_epoch, 4),
            "warmup_steps": warmup_steps,
            "lr_schedule": "cosine with linear warmup",
            "optimizer": "AdamW(betas=(0.9, 0.999), eps=1e-8); weight decay on matrices only",
            "effective_batch_size": cfg.batch_size,
            "micro_batch_size": cfg.micro_batch_size,
            "gradient_accumulation_steps": accumulation,
            "num_processes": world,
            "loss": "token-weighted mean over the effective batch (completion tokens only)",
        },
        "precision": "bf16 autocast, fp32 master weights"
        if accelerator.mixed_precision == "bf16"
        else "fp32",
        "device": str(accelerator.device),
        "peak_mem_kind": peak_kind,
        "step": start_step,
        "resumed_from_steps": [
            *((prev or {}).get("resumed_from_steps") or []),
            *([start_step] if mode == "resume" else []),
        ],
        "argv": sys.argv,
        "versions": package_versions(),
        "provenance": provenance,
        "started_at": (prev or {}).get("started_at") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if prev and prev.get("wandb_run_id"):
        run["wandb_run_id"] = prev["wandb_run_id"]

    def write_run(**updates: Any) -> None:
        run.update(updates)
        if main:
            atomic_write_json(out / "run.json", run)

    def diverge(at: int, logged: int, bad_update: int, reason: str) -> dict:
        """Record ``diverged``, seen at step ``at``; ``logged``: the last step in metrics.jsonl (its update
        applied). ``bad_update``: the first update whose weights are bad; the checkpoint named is the newest
        one before it (checkpoints are not pruned during a blow-up, and non-finite weights are never saved)."""
        good = [c for c in list_checkpoints(out) if int(c.name.split("-")[1]) < bad_update]
        write_run(
            status="diverged",
            step=logged,
            diverged_at_step=at,
            reason=reason,
            last_checkpoint=str(good[-1]) if good else None,
            runtime_s=round(elapsed(), 3),
        )
        return run

    reporters = Reporters(report_targets(cfg.report_to), out, run, start_step) if main else None
    write_run()
    if main:
        print(
            f"training {cfg.method} on {run['model']}: {len(rows)} examples, {total_steps} steps of "
            f"{cfg.batch_size} ({world} process(es) x {accumulation} x {cfg.micro_batch_size}), "
            f"{params['trainable']:,} of {params['total']:,} parameters trainable"
            + (f"; resuming after step {start_step}" if start_step else ""),
            file=sys.stderr,
        )
        if enc_stats["truncated"]:
            print(
                f"{enc_stats['truncated']} of {enc_stats['examples']} examples are longer than --max-length "
                f"{cfg.max_length} and were cut ({enc_stats['dropped']} dropped: no target token left)",
                file=sys.stderr,
            )

    fault = _fault()
    keep_logits = supports_logits_to_keep(accelerator.unwrap_model(model))
    trainable = [p for p in model.parameters() if p.requires_grad]
    if ckpts:
        restore_rng(ckpts[-1], rank, cfg.seed + rank + start_step)
    else:
        torch.manual_seed(cfg.seed + rank)  # dropout masks: reproducible, different per rank
    if not reset_peak_memory(accelerator.device):  # the peak then covers the whole process so far
        run["peak_mem_kind"] = "cpu_max_rss_process"
    bar = _progress(total_steps, start_step, cfg.progress and main)
    metrics = JsonlAppender(out / "metrics.jsonl") if main else None
    t_start = time.perf_counter()

    def elapsed() -> float:  # wall time of the whole run, across resumed sessions
        return prior["elapsed_s"] + time.perf_counter() - t_start

    train_s, tokens_seen, last_saved, order_epoch, order = (
        prior["train_s"],
        prior["tokens"],
        start_step,
        -1,
        [],
    )
    step = start_step
    try:
        with StopSignals() as stop:
            for step in range(start_step + 1, total_steps + 1):
                t0 = time.perf_counter()
                epoch, pos = divmod(step - 1, steps_per_epoch)
                if epoch != order_epoch:
                    order, order_epoch = epoch_order(len(rows), cfg.seed, epoch), epoch
                batches = [
                    collate([rows[i] for i in chunk], pad_id)
                    for chunk in step_micro_batches(
                        order, pos, cfg.batch_size, cfg.micro_batch_size, rank, world, lengths
                    )
                ]
                local = torch.tensor(
                    [
                        sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches),
                        sum(int(b["attention_mask"].sum()) for b in batches),
                    ],
                    device=accelerator.device,
                )
                n_target, n_tokens = (int(x) for x in accelerator.reduce(local.clone(), reduction="sum"))
                if fault == ("nan", step):
                    with torch.no_grad():
                        trainable[0].fill_(float("nan"))

                loss_sum = accumulate_gradients(accelerator, model, batches, n_target, keep_logits)
                loss = float(accelerator.reduce(loss_sum, reduction="sum")) / n_target
                max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
                grad_norm = float(accelerator.clip_grad_norm_(trainable, max_norm))
                # Divergence, judged before this step's update: the loss is that of the previous update's
                # weights (so a NaN from update k shows at step k + 1; after the last update, and before
                # every checkpoint, the weights themselves are checked below).
                if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                    what = "loss" if not math.isfinite(loss) else "gradient norm"
                    why = f"non-finite {what} at step {step} (loss {loss}, grad norm {grad_norm})"
                    return diverge(step, step - 1, step, why)
                if blowup.update(step, loss):
                    # the first loss above the threshold came from the weights of the update before it
                    bad = int(blowup.streak_start) - 1
                    return diverge(step, step - 1, bad, blowup.reason(step, loss, grad_norm))
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)

                dt = time.perf_counter() - t0
                train_s += dt
                tokens_seen += n_tokens
                rec = {
                    "step": step,
                    "epoch": round(step / steps_per_epoch, 4),
                    "loss": loss,
                    "grad_norm": grad_norm,
                    "lr": lr,
                    "tokens_per_s": round(n_tokens / dt, 2),
                    "samples_per_s": round(cfg.batch_size / dt, 3),
                    "target_tokens": n_target,
                    "peak_mem_mib": round(peak_memory_mib(accelerator.device)[0], 1),
                    "elapsed_s": round(elapsed(), 3),
                }
                if (
                    world > 1
                ):  # per-rank share of the step's target tokens (load balance; ranks see different rows)
                    rec["rank_target_tokens"] = [int(x) for x in accelerator.gather(local[:1]).tolist()]
                if main:
                    metrics.write(rec)
                    reporters.log(rec)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{n_tokens / dt:.0f}")

                # Stop on a signal (all ranks agree), checkpoint when due or stopping.
                stopping = stop.received is not None
                if world > 1:
                    flag = torch.tensor([float(stopping)], device=accelerator.device)
                    stopping = float(accelerator.reduce(flag, reduction="sum")) > 0
                if (step % cfg.save_every == 0 or stopping) and step < total_steps:
                    norm = weight_norm(trainable)
                    if not math.isfinite(norm):
                        return diverge(
                            step,
                            step,
                            step,
                            f"non-finite weights after the update of step {step} (norm {norm}); "
                            "not saved as a checkpoint",
                        )
                    state = {
                        "step": step,
                        "epoch": rec["epoch"],
                        "elapsed_s": round(elapsed(), 3),
                        "train_s": round(train_s, 3),
                        "tokens": tokens_seen,
                        "blow_up": blowup.state(),
                    }
                    # while the loss is above the blow-up threshold, keep the checkpoints from before it
                    keep = cfg.keep_checkpoints if blowup.streak == 0 else 10**9
                    ck = save_checkpoint(accelerator, out, model, optimizer, scheduler, state, keep)
                    last_saved = step
                    write_run(step=step, last_checkpoint=str(ck), runtime_s=round(elapsed(), 3))
                if fault == ("sigkill", step):
                    os.kill(os.getpid(), signal.SIGKILL)
                if stopping and step < total_steps:
                    name = (
                        signal.Signals(int(stop.received)).name
                        if stop.received
                        else "a signal on another rank"
                    )
                    write_run(
                        status="interrupted",
                        step=step,
                        reason=f"stopped by {name} after step {step}; continue with --resume",
                        runtime_s=round(elapsed(), 3),
                    )
                    return run

        # Finish: the trained weights (final/, merged/), then the run record. The last update's weights
        # had no next step's loss to check them, so their norm is checked: non-finite weights are never saved.
        norm = weight_norm(trainable)
        if not math.isfinite(norm):
            return diverge(
                total_steps,
                total_steps,
                total_steps,
                f"non-finite weights after the update of step {total_steps}, the last (norm {norm}); "
                "final/ not written",
            )
        unwrapped = accelerator.unwrap_model(model)
        summary = {
            "step": total_steps,
            "runtime_s": round(elapsed(), 3),
            "train_s": round(train_s, 3),
            "samples_per_s": round(
                cfg.batch_size * (total_steps - start_step) / max(train_s - prior["train_s"], 1e-9), 3
            ),
            "tokens_per_s": round(tokens_seen / max(train_s, 1e-9), 2),
            "peak_mem_mib": round(peak_memory_mib(accelerator.device)[0], 1),
        }
        if main:
            save_final(unwrapped, tokenizer, out / "final", cfg)
            if cfg.merge:
                if cfg.method == "full":
                    print(
                        "--merge: nothing to merge for full fine-tuning; final/ is the full model",
                        file=sys.stderr,
                    )
                else:
                    save_merged(unwrapped, tokenizer, out / "merged")
        summary["final"] = str(out / "final")
        summary["merged"] = str(out / "merged") if cfg.merge and cfg.method != "full" else None
        write_run(status="finished", finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **summary)
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            write_run(
                status="interrupted",
                reason=f"KeyboardInterrupt during step {step}; continue with --resume "
                f"(from step {last_saved})",
            )
        else:
            write_run(status="failed", reason=f"{type(e).__name__}: {e}"[:500])
        raise
    finally:
        if bar is not None:
            bar.close()
        if metrics is not None:
            metrics.close()
        if reporters is not None:
            reporters.close()

    del model, optimizer, unwrapped
    accelerator.free_memory()  # drop accelerate's references too, so evaluation has the memory
    accelerator.wait_for_everyone()
    if cfg.eval and main:  # a failed evaluation is retried by --resume (the run itself is finished)
        run = _evaluate(cfg, out, run)
    return run


def save_final(model: Any, tokenizer: Any, dest: Path, cfg: TrainConfig) -> None:
    """``final/``: the adapter (adapter_model.safetensors + adapter_config.json naming the user's --model as
    its base) or the full model, with the tokenizer; written to a temp dir and renamed into place."""
    tmp = dest.parent / f".{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    extra: dict[str, Any] = {}
    if cfg.method != "full":
        model.peft_config["default"].base_model_name_or_path = adapter_base_ref(cfg.model)
        # We never resize or target the embeddings; without this peft looks the base up on the Hub to check
        # (a network call, and a warning offline or for an alias).
        extra["save_embedding_layers"] = False
    model.save_pretrained(tmp, safe_serialization=True, **extra)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def save_merged(model: Any, tokenizer: Any, dest: Path) -> None:
    """``merged/``: the adapter folded into the base weights, a full model (final/ keeps the adapter)."""
    tmp = dest.parent / f".{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    merged = model.merge_and_unload()
    merged.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def eval_config(cfg: TrainConfig, out: Path) -> Any:
    """The EvalConfig for the trained model, planned at once so that a bad --eval fails before training.

    Full fine-tuning: ``final/``. LoRA/DoRA: ``--model`` with the adapter in ``final/``, or with --merge the
    merged model (same weights up to rounding, and faster to decode: DoRA recomputes weight norms on
    every forward pass while unmerged).
    """
    from tinyslm.evaluate import EvalConfig, plan_benchmarks

    common = dict(
        benchmarks=cfg.eval,
        output=str(out / "eval"),
        limit=cfg.eval_limit,
        seed=cfg.seed,
        data_dir=cfg.data_dir,
        device=cfg.device,
        trust_remote_code=cfg.trust_remote_code,
        progress=cfg.progress,
    )
    if cfg.method == "full":
        ecfg = EvalConfig(model=str(out / "final"), **common)
    elif cfg.merge:
        ecfg = EvalConfig(model=str(out / "merged"), **common)
    else:
        ecfg = EvalConfig(model=cfg.model, adapter=str(out / "final"), **common)
    plan_benchmarks(ecfg)
    return ecfg


def _evaluate(cfg: TrainConfig, out: Path, run: dict) -> dict:
    from tinyslm.evaluate import run_eval

    ecfg = eval_config(cfg, out)
    results = run_eval(ecfg)
    run["eval"] = {
        name: {
            "model": ecfg.model,
            "adapter": ecfg.adapter,
            "exact_match": r["exact_match"],
            "exact_match_ci95": r["exact_match_ci95"],
            "n": r["n"],
            "results": str(out / "eval" / name / "results.json"),
        }
        for name, r in results.items()
    }
    atomic_write_json(out / "run.json", run)
    return run


def _model_name(ref: str) -> str:
    from tinyslm.models import model_name_for_results

    return model_name_for_results(ref)


def _progress(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)


if __name__ == "__main__":  # the command line lives in tinyslm.cli.train; say so instead of doing nothing
    sys.exit("python -m tinyslm.train is now python -m tinyslm.cli.train (or tiny-slm-train); same arguments")
