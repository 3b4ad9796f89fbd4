"""Fine-tuning recipe: full, LoRA or DoRA under one protocol, observable and resumable.

``tiny-slm-train --model M --method {full,lora,dora} --dataset D --output DIR``; ``train(TrainConfig)`` is
the same thing for the study runner. Read it top to bottom, like a torchtune recipe:

1. **Config.** :class:`TrainConfig`, the protocol defaults per method (:data:`PROTOCOL`), validation.
   Every bad input is a :class:`~tinyslm.core.errors.UserError` raised before the model loads.
2. **Output directory.** A finished run is never overwritten without ``--overwrite``; an unfinished one
   needs ``--resume`` (continue from its last checkpoint) or ``--overwrite``.
3. **Data.** Rows from :mod:`tinyslm.data.training`, encoded as the evaluation's zero-shot prompt + target +
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

The code follows the same order: ``_train`` plans, :class:`Recipe` prepares (its ``_setup_*`` methods), then
:meth:`Recipe.steps` (one short paragraph per phase) and :meth:`Recipe.finish`. Pieces that are not the
recipe live beside it: :mod:`tinyslm.train.checkpoint` (checkpoints, final/, merged/), :mod:`tinyslm.core.telemetry`
(peak memory, W&B/TensorBoard, progress), :mod:`tinyslm.models.loss` (the completion-token loss, shared with the
diagnostics) and :mod:`tinyslm.results.schema` (the run record and its status).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tinyslm.config.limits import seed_problem
from tinyslm.core.errors import UserError
from tinyslm.core.files import JsonlAppender, exclusive_lock
from tinyslm.core.telemetry import (
    Reporters,
    peak_memory_mib,
    progress_bar,
    release_cpu_memory,
    reset_peak_memory,
)
from tinyslm.models.loss import supports_logits_to_keep, target_loss_sum
from tinyslm.results.schema import RunRecord, Status
from tinyslm.train.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
    save_final,
    save_merged,
    truncate_metrics,
)
from tinyslm.train.config import (
    EARLY_STEPS,
    RESUMABLE_CHANGES,
    TrainConfig,
    parse_target_modules,
    report_targets,
    resolve_config,
)

# Test hook: TINYSLM_TRAIN_FAULT="nan@K" sets a weight to NaN before step K (exercises the divergence guard);
# "sigkill@K" SIGKILLs this process right after step K is logged (exercises --resume after a hard kill).
FAULT_ENV = "TINYSLM_TRAIN_FAULT"


# ---------------------------------------------------------------------------------------------------
# 2. The output directory: fresh, resumed, or refused.


def read_run(out: Path) -> dict | None:
    f = out / "run.json"
    if not f.exists():
        return None
    try:
        return RunRecord.read(f).to_json()  # any version; a file that is no JSON object is refused here
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {f} ({e}); pass --overwrite to start this run afresh") from None


def check_output(out: Path, cfg: TrainConfig) -> str:
    """What to do with ``out``: ``fresh``, ``resume`` or ``done`` (finished, and --resume). Writes nothing."""
    prev = read_run(out)
    started = prev is not None or (out / "metrics.jsonl").exists() or bool(list_checkpoints(out))
    if cfg.overwrite or not started:
        return "fresh"
    status = (prev or {}).get("status", Status.UNKNOWN)
    if status == Status.FINISHED:
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


def load_for_training(cfg: TrainConfig, notes: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """Base model (float32 master weights, train mode) and tokenizer; LoRA/DoRA adapters attached via peft.
    ``notes`` receives what loading warned of (weights missing from the checkpoint, unused ones)."""
    import torch

    from tinyslm.models.load import load_model, resolve_model

    resolved = Path(resolve_model(cfg.model))
    if (resolved / "adapter_config.json").is_file() and not (resolved / "config.json").is_file():
        raise UserError(
            f"--model {cfg.model} is a PEFT adapter; train from a full model (e.g. the adapter's "
            "merged/ directory written by --merge)"
        )
    model, tokenizer = load_model(
        cfg.model,
        dtype=torch.float32,
        device="cpu",
        trust_remote_code=cfg.trust_remote_code,
        allow_missing_weights=cfg.allow_missing_weights,
        notes=notes,
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


def make_optimizer(model: Any, cfg: TrainConfig, device_type: str = "cpu") -> Any:
    """AdamW; weight decay on weight matrices only (ndim >= 2), never on biases, norms or DoRA magnitudes.

    On CUDA the fused kernel (one launch for all parameters instead of several per tensor: what HF Trainer's
    default ``adamw_torch_fused`` uses too); on CPU the default implementation, which the committed CPU
    studies used. ``device_type`` is where the loop runs: the parameters may still be on the CPU here
    (accelerate moves them in place later), so it is passed rather than read off them.
    """
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    fused = {"fused": True} if device_type == "cuda" else {}
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, **fused
    )


def compile_layers(model: Any) -> int:
    """``torch.compile`` each decoder layer in place (regional compilation); returns how many were compiled.

    Why layers and not the whole model: the layers are identical, so one compiled graph serves all of them
    and compiling takes seconds instead of minutes; the loss and the output head (only the target positions,
    a data-dependent slice) stay eager. ``dynamic=True``: one graph for every micro-batch length. In place
    (``Module.compile``), so parameter names, checkpoints, saving and peft's unwrapping are unchanged. The
    layer class is the one transformers keeps whole when it shards a model (``_no_split_modules``); a model
    without one is compiled whole.
    """
    from tinyslm.models.load import base_model

    base = base_model(model)
    names = set(getattr(base, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if layers and not base.get_input_embeddings().weight.requires_grad:
        # with a frozen base the first layer's input needs no gradient and every later one's does, and each
        # case is a graph of its own (compiled twice, a minute or more for LoRA on a GPU); asking for the
        # embeddings' output gradient (what transformers does for PEFT with checkpointing) makes one graph
        base.enable_input_require_grads()
    if any(type(m).__name__ == "DoraLinearLayer" for m in model.modules()):
        trace_dora_weights()
    for layer in layers or [model]:
        layer.compile(dynamic=True)
    return len(layers)


def trace_dora_weights() -> None:
    """Let Dynamo trace peft's DoRA layers whole.

    A DoRA layer fetches its base weight through peft's ``dequantize_module_weight``, whose test for torchao
    weights (``type(w).__module__.startswith(...)``) Dynamo cannot trace: each DoRA projection then cuts the
    compiled layer into pieces (20 graphs for 6 Llama layers instead of one, each compiled separately). For
    a plain ``nn.Parameter`` weight that function returns the weight itself; this wraps it so that plain
    weights take that answer directly, and anything else (quantized weights) still goes through peft's own.
    Set once per process, in peft's DoRA module only.
    """
    import torch
    from peft.tuners.lora import dora

    original = dora.dequantize_module_weight
    if getattr(original, "tinyslm_plain_first", False):
        return

    def plain_first(module: Any) -> Any:
        weight = getattr(module, "weight", None)
        if type(weight) is torch.nn.Parameter and not hasattr(module, "W_q"):
            return weight
        return original(module)

    plain_first.tinyslm_plain_first = True  # type: ignore[attr-defined]
    dora.dequantize_module_weight = plain_first


def count_parameters(model: Any) -> dict[str, Any]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total, "trainable_fraction": trainable / total}


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
    from tinyslm.core.runtime import hf_progress_bars

    with hf_progress_bars(cfg.progress), contextlib.ExitStack() as locks:
        return _train(cfg, locks)


def _lock_output(locks: contextlib.ExitStack, out: Path) -> None:
    """One process per run directory (the main rank's; the others write only their RNG files into the
    checkpoint it creates), held until :func:`train` returns."""
    locks.enter_context(exclusive_lock(out, "--output"))


def _train(cfg: TrainConfig, locks: contextlib.ExitStack) -> dict:
    """plan -> prepare -> steps -> finish -> evaluate (torchtune's recipe shape; see :class:`Recipe`)."""
    # Plan: the config checked, the process layout, what the output directory holds. Nothing written yet.
    cfg = _checked(cfg)
    out = Path(cfg.output).expanduser()
    accelerator = make_accelerator(cfg.device)
    accumulation = _accumulation_steps(cfg, accelerator.num_processes)
    mode = check_output(out, cfg)
    if mode == "done":
        return _already_finished(cfg, out, accelerator.is_main_process, locks)
    if cfg.eval:
        eval_config(cfg, out)  # a bad --eval fails now, not after training
    # Prepare: data, model, optimizer, the output directory (locked), resume state, run.json "running".
    recipe = Recipe(cfg, out, mode, accelerator, accumulation, locks)
    # Steps, then finish: final/ (and merged/) and run.json "finished"; or diverged / interrupted / failed.
    run = recipe.run()
    if run["status"] != Status.FINISHED:
        return run
    # Evaluate the trained model; a failed evaluation is retried by --resume (the run itself is finished).
    recipe.release()
    if cfg.eval and accelerator.is_main_process:
        run = _evaluate(cfg, out, run)
    return run


def _checked(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the protocol defaults filled in and validated (before anything loads or is written)."""
    cfg = resolve_config(cfg)
    seed_error = seed_problem(cfg.seed)
    if seed_error is not None:  # the CLI and the study schema check it too; this guards library callers
        raise UserError(f"--seed: {seed_error}")
    return cfg


def _accumulation_steps(cfg: TrainConfig, world: int) -> int:
    """Micro-batches per rank and optimizer step: the effective batch split over ``world`` processes."""
    if cfg.batch_size % (cfg.micro_batch_size * world):
        raise UserError(
            f"--batch-size {cfg.batch_size} must be divisible by --micro-batch-size {cfg.micro_batch_size} "
            f"x {world} process(es)"
        )
    return cfg.batch_size // (cfg.micro_batch_size * world)


def _already_finished(cfg: TrainConfig, out: Path, main: bool, locks: contextlib.ExitStack) -> dict:
    """--resume of a finished run: nothing to train; only the --eval benchmarks (run again, or completed)."""
    run = read_run(out) or {}
    if main:
        print(f"{out}: this run has already finished (kept {out / 'run.json'})", file=sys.stderr)
    if cfg.eval and main:
        _lock_output(locks, out)
        run = _evaluate(cfg, out, run)
    return run


class Recipe:
    """One training run. The constructor prepares it (data, model, optimizer, output directory, resume
    state, the run record); :meth:`run` takes the optimizer steps (:meth:`steps`) and finishes
    (:meth:`finish`); :meth:`release` frees the model for the evaluation that follows.

    Every status change goes through :meth:`write_run`, which updates the record and rewrites
    ``run.json`` (main process only).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        out: Path,
        mode: str,
        accelerator: Any,
        accumulation: int,
        locks: contextlib.ExitStack,
    ) -> None:
        self.cfg, self.out, self.mode, self.accelerator, self.accumulation = (
            cfg,
            out,
            mode,
            accelerator,
            accumulation,
        )
        self.world, self.rank = accelerator.num_processes, accelerator.process_index
        self.main = accelerator.is_main_process
        # before the model is loaded, so that every large block it allocates follows the setting
        on_cpu = accelerator.device.type == "cpu"
        self.cpu_allocator = release_cpu_memory() if on_cpu and cfg.release_memory else None
        self._setup_data_and_model()
        self._setup_validation()
        self._setup_optimizer()
        self._setup_output(locks)
        self._setup_resume()
        self._setup_record()
        self._setup_loop()

    # -- prepare ------------------------------------------------------------------------------------

    def _setup_data_and_model(self) -> None:
        """Rows -> token ids with completion-only labels; the model; provenance digests (a resume from
        other files is refused here, before anything is written)."""
        from tinyslm.data.training import encode_examples, load_training_set
        from tinyslm.results.provenance import training_provenance

        cfg, out = self.cfg, self.out
        self.tset = load_training_set(
            cfg.dataset,
            data_dir=cfg.data_dir,
            question_field=cfg.question_field,
            answer_field=cfg.answer_field,
            limit=cfg.limit,
            val_size=cfg.val_size,
        )
        self.load_notes: dict[str, Any] = {}
        self.model, self.tokenizer = load_for_training(cfg, self.load_notes)
        prev = read_run(out) if self.mode == "resume" else None
        device = str(self.accelerator.device)
        self.provenance = training_provenance(cfg.model, self.tset.source, self.tokenizer, device, prev, out)
        if self.accelerator.device.type == "cpu":
            # (imported here: it imports torch, which `--help` should not wait for)
            from tinyslm.models.dropout import use_uniform_mask_dropout

            use_uniform_mask_dropout(self.model)  # same dropout, drawn ~2x faster than bernoulli_ on CPU
        self.rows, self.enc_stats = encode_examples(
            self.tokenizer, self.tset.examples, self.tset.answer_style, cfg.max_length
        )
        self.steps_per_epoch = len(self.rows) // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise UserError(
                f"{len(self.rows)} usable training examples make no full batch of {cfg.batch_size}; "
                "lower --batch-size or raise --limit"
            )
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.lengths = [len(r.input_ids) for r in self.rows]
        tok = self.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def _setup_validation(self) -> None:
        """The held-out split (``--val-size``), encoded once, measured every ``--eval-every`` steps and at the end."""
        cfg = self.cfg
        self.validator = None
        if cfg.val_size:
            from tinyslm.train.validation import Validator

            self.validator = Validator(
                self.tokenizer,
                self.tset.validation,
                self.tset.answer_style,
                max_length=cfg.max_length,
                micro_batch_size=cfg.micro_batch_size,
                keep_logits=supports_logits_to_keep(self.model),
                generate=cfg.val_generate,
                max_new_tokens=cfg.val_max_new_tokens,
            )

    def _setup_optimizer(self) -> None:
        from transformers import get_cosine_schedule_with_warmup

        self.warmup_steps = math.ceil(self.cfg.warmup_ratio * self.total_steps)
        self.optimizer = make_optimizer(self.model, self.cfg, self.accelerator.device.type)
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, self.warmup_steps, self.total_steps)
        self.params = count_parameters(self.model)

    def _setup_output(self, locks: contextlib.ExitStack) -> None:
        """Lock the output directory from the first write on (not earlier: bad input leaves no directory
        behind) and check again under the lock, in case another process wrote there meanwhile; then start
        afresh or keep what a resume needs."""
        out = self.out
        if self.main:
            _lock_output(locks, out)
            if check_output(out, self.cfg) != self.mode:
                raise UserError(
                    f"{out} was changed by another process while this one started; run the command again"
                )
        self.ckpts = list_checkpoints(out) if self.mode == "resume" else []
        if self.main:
            if self.mode == "fresh":
                clear_run(out)
            out.mkdir(parents=True, exist_ok=True)
            for stale in (out / "checkpoints").glob(".tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def _setup_resume(self) -> None:
        """Restore the newest checkpoint (weights/optimizer/scheduler now, RNG just before the loop) and
        forget the metrics logged after it; then hand model and optimizer to accelerate."""
        self.start_step, self.prior = 0, {"elapsed_s": 0.0, "train_s": 0.0, "tokens": 0}
        self.blowup = BlowUp(self.cfg.divergence_factor, self.cfg.divergence_patience)
        if self.ckpts:
            model = self.accelerator.unwrap_model(self.model)
            state = load_checkpoint(self.ckpts[-1], model, self.optimizer, self.scheduler)
            self.start_step = int(state["step"])
            self.prior = {k: state.get(k, 0) for k in self.prior}
            self.blowup.restore(state.get("blow_up"))
        if self.main and self.mode == "resume":
            truncate_metrics(self.out / "metrics.jsonl", self.start_step)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        if self.cfg.compile:
            compile_layers(self.accelerator.unwrap_model(self.model))

    def _setup_record(self) -> None:
        """The run record (``run.json``, status ``running``), the W&B/TensorBoard mirrors, the banner."""
        cfg, prev = self.cfg, read_run(self.out) if self.mode == "resume" else None
        self.record = _run_record(self, prev)
        wandb_run_id = (prev or {}).get("wandb_run_id") or None
        if wandb_run_id:
            self.record.wandb_run_id = wandb_run_id
        self.reporters = None
        if self.main:
            targets = report_targets(cfg.report_to)
            self.reporters = Reporters(targets, self.out, self.record.config, self.start_step, wandb_run_id)
            if self.reporters.wandb_run_id:
                self.record.wandb_run_id = self.reporters.wandb_run_id
        self.write_run()
        if self.main:
            _announce(self)

    def _setup_loop(self) -> None:
        """What the loop reads on every step: fault hooks, the loss path, RNG, clocks, the metrics file."""
        import torch

        cfg = self.cfg
        self.fault = _fault()
        self.keep_logits = supports_logits_to_keep(self.accelerator.unwrap_model(self.model))
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        if self.ckpts:
            restore_rng(self.ckpts[-1], self.rank, cfg.seed + self.rank + self.start_step)
        else:
            torch.manual_seed(cfg.seed + self.rank)  # dropout masks: reproducible, different per rank
        if not reset_peak_memory(self.accelerator.device):  # the peak then covers the whole process so far
            self.record.peak_mem_kind = "cpu_max_rss_process"
        self.bar = progress_bar(self.total_steps, self.start_step, cfg.progress and self.main)
        self.metrics = JsonlAppender(self.out / "metrics.jsonl") if self.main else None
        self.t_start = time.perf_counter()
        self.train_s, self.tokens_seen = self.prior["train_s"], self.prior["tokens"]
        self.step = self.last_saved = self.start_step
        self.order_epoch, self.order = -1, []

    # -- the run record -----------------------------------------------------------------------------

    def elapsed(self) -> float:
        """Wall time of the whole run, across resumed sessions."""
        return self.prior["elapsed_s"] + time.perf_counter() - self.t_start

    def write_run(self, **updates: Any) -> None:
        self.record.update(**updates)
        if self.main:
            self.record.write(self.out / "run.json")

    def diverge(self, at: int, logged: int, bad_update: int, reason: str) -> dict:
        """Record ``diverged``, seen at step ``at``; ``logged``: the last step in metrics.jsonl (its update
        applied). ``bad_update``: the first update whose weights are bad; the checkpoint named is the newest
        one before it (checkpoints are not pruned during a blow-up, and non-finite weights are never saved)."""
        good = [c for c in list_checkpoints(self.out) if int(c.name.split("-")[1]) < bad_update]
        self.write_run(
            status=Status.DIVERGED,
            step=logged,
            diverged_at_step=at,
            reason=reason,
            last_checkpoint=str(good[-1]) if good else None,
            runtime_s=round(self.elapsed(), 3),
        )
        return self.record.to_json()

    def interrupted(self, step: int, signum: int | None) -> dict:
        name = signal.Signals(int(signum)).name if signum else "a signal on another rank"
        self.write_run(
            status=Status.INTERRUPTED,
            step=step,
            reason=f"stopped by {name} after step {step}; continue with --resume",
            runtime_s=round(self.elapsed(), 3),
        )
        return self.record.to_json()

    # -- steps and finish ---------------------------------------------------------------------------

    def run(self) -> dict:
        """Steps, then finish; the record says how it ended. An exception is recorded (``failed``, or
        ``interrupted`` for Ctrl-C) and re-raised."""
        try:
            ended = self.steps()
            return ended if ended is not None else self.finish()
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                self.write_run(
                    status=Status.INTERRUPTED,
                    reason=f"KeyboardInterrupt during step {self.step}; continue with --resume "
                    f"(from step {self.last_saved})",
                )
            else:
                self.write_run(status=Status.FAILED, reason=f"{type(e).__name__}: {e}"[:500])
            raise
        finally:
            self.close()

    def steps(self) -> dict | None:
        """The optimizer steps after ``start_step``; the run record if the run diverged or was stopped."""
        import torch

        with StopSignals() as stop:
            for step in range(self.start_step + 1, self.total_steps + 1):
                self.step, t0 = step, time.perf_counter()
                # Data: this rank's micro-batches of the step, and the step's token counts over all ranks.
                batches, local, n_target, n_tokens = self._batches(step)
                if self.fault == ("nan", step):  # test hook: a NaN weight before step K
                    with torch.no_grad():
                        self.trainable[0].fill_(float("nan"))
                # Forward/backward over the micro-batches; loss and gradient norm over all ranks.
                loss, grad_norm = self._forward_backward(batches, n_target)
                # Divergence, judged before this step's update.
                diverged = self._divergence(step, loss, grad_norm)
                if diverged is not None:
                    return self.diverge(*diverged)
                # The update.
                lr = self.optimizer.param_groups[0]["lr"]
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                # Telemetry: metrics.jsonl, W&B/TensorBoard, the progress bar.
                epoch = self._log(
                    step, time.perf_counter() - t0, loss, grad_norm, lr, n_target, n_tokens, local
                )
                # Validation when due (the last step's comes with finishing).
                if self._validation_due(step):
                    self.validate(step)
                # Stop on a signal (all ranks agree), checkpoint when due or stopping.
                stopping = self._stopping(stop)
                if (step % self.cfg.save_every == 0 or stopping) and step < self.total_steps:
                    ended = self.checkpoint(step, epoch)
                    if ended is not None:
                        return ended
                if self.fault == ("sigkill", step):  # test hook: a hard kill right after step K is logged
                    os.kill(os.getpid(), signal.SIGKILL)
                if stopping and step < self.total_steps:
                    return self.interrupted(step, stop.received)
        return None

    def _batches(self, step: int) -> tuple[list[dict], Any, int, int]:
        """This rank's micro-batches of ``step``, its [target, attention] token counts, and the step's
        target and attention token counts summed over all ranks."""
        import torch

        from tinyslm.data.training import IGNORE_INDEX, collate

        cfg = self.cfg
        epoch, pos = divmod(step - 1, self.steps_per_epoch)
        if epoch != self.order_epoch:
            self.order, self.order_epoch = epoch_order(len(self.rows), cfg.seed, epoch), epoch
        chunks = step_micro_batches(
            self.order, pos, cfg.batch_size, cfg.micro_batch_size, self.rank, self.world, self.lengths
        )
        batches = [collate([self.rows[i] for i in chunk], self.pad_id) for chunk in chunks]
        local = torch.tensor(
            [
                sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches),
                sum(int(b["attention_mask"].sum()) for b in batches),
            ],
            device=self.accelerator.device,
        )
        n_target, n_tokens = (int(x) for x in self.accelerator.reduce(local.clone(), reduction="sum"))
        return batches, local, n_target, n_tokens

    def _forward_backward(self, batches: list[dict], n_target: int) -> tuple[float, float]:
        """The step's token-weighted mean loss and (clipped) gradient norm, the same on every rank."""
        acc = self.accelerator
        loss_sum = accumulate_gradients(acc, self.model, batches, n_target, self.keep_logits)
        loss = float(acc.reduce(loss_sum, reduction="sum")) / n_target
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
        return loss, float(acc.clip_grad_norm_(self.trainable, max_norm))

    def _divergence(self, step: int, loss: float, grad_norm: float) -> tuple[int, int, int, str] | None:
        """:meth:`diverge`'s arguments if the run diverged. The loss is that of the previous update's weights
        (so a NaN from update k shows at step k + 1; after the last update, and before every checkpoint, the
        weights themselves are checked)."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            what = "loss" if not math.isfinite(loss) else "gradient norm"
            return (
                step,
                step - 1,
                step,
                f"non-finite {what} at step {step} (loss {loss}, grad norm {grad_norm})",
            )
        if self.blowup.update(step, loss):
            # the first loss above the threshold came from the weights of the update before it
            bad = int(self.blowup.streak_start) - 1
            return step, step - 1, bad, self.blowup.reason(step, loss, grad_norm)
        return None

    def _log(
        self,
        step: int,
        dt: float,
        loss: float,
        grad_norm: float,
        lr: float,
        n_target: int,
        n_tokens: int,
        local: Any,
    ) -> float:
        """Append the step's metrics line (and mirror it); returns the step's epoch position."""
        self.train_s += dt
        self.tokens_seen += n_tokens
        rec = {
            "step": step,
            "epoch": round(step / self.steps_per_epoch, 4),
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": lr,
            "tokens_per_s": round(n_tokens / dt, 2),
            "samples_per_s": round(self.cfg.batch_size / dt, 3),
            "target_tokens": n_target,
            "peak_mem_mib": round(peak_memory_mib(self.accelerator.device)[0], 1),
            "elapsed_s": round(self.elapsed(), 3),
        }
        if (
            self.world > 1
        ):  # per-rank share of the step's target tokens (load balance; ranks see different rows)
            rec["rank_target_tokens"] = [int(x) for x in self.accelerator.gather(local[:1]).tolist()]
        if self.main:
            self.metrics.write(rec)
            self.reporters.log(rec)
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{n_tokens / dt:.0f}")
        return rec["epoch"]

    def _validation_due(self, step: int) -> bool:
        every = self.cfg.eval_every
        return self.validator is not None and every > 0 and step % every == 0 and step < self.total_steps

    def validate(self, step: int) -> dict[str, Any]:
        """Measure the validation split, each rank its share of it, and log the line (the same on every rank)."""
        from accelerate.utils import gather_object

        line = self.validator.measure(
            self.accelerator.unwrap_model(self.model),
            step,
            rank=self.rank,
            world=self.world,
            gather=gather_object,
        )
        if self.main:
            self.metrics.write(line)
            self.reporters.log(line)
        return line

    def _stopping(self, stop: StopSignals) -> bool:
        """Whether a stop signal reached any rank (all ranks must agree, or the collectives would hang)."""
        import torch

        stopping = stop.received is not None
        if self.world > 1:
            flag = torch.tensor([float(stopping)], device=self.accelerator.device)
            stopping = float(self.accelerator.reduce(flag, reduction="sum")) > 0
        return stopping

    def checkpoint(self, step: int, epoch: float) -> dict | None:
        """Save ``checkpoints/step-N`` (weights checked finite first: non-finite weights are never saved);
        the run record if the weights are bad (diverged)."""
        norm = weight_norm(self.trainable)
        if not math.isfinite(norm):
            why = (
                f"non-finite weights after the update of step {step} (norm {norm}); not saved as a checkpoint"
            )
            return self.diverge(step, step, step, why)
        state = {
            "step": step,
            "epoch": epoch,
            "elapsed_s": round(self.elapsed(), 3),
            "train_s": round(self.train_s, 3),
            "tokens": self.tokens_seen,
            "blow_up": self.blowup.state(),
        }
        # while the loss is above the blow-up threshold, keep the checkpoints from before it
        keep = self.cfg.keep_checkpoints if self.blowup.streak == 0 else 10**9
        ck = save_checkpoint(
            self.accelerator, self.out, self.model, self.optimizer, self.scheduler, state, keep
        )
        self.last_saved = step
        self.write_run(step=step, last_checkpoint=str(ck), runtime_s=round(self.elapsed(), 3))
        return None

    def finish(self) -> dict:
        """The trained weights (final/, merged/), then the run record ``finished``. The last update's weights
        had no next step's loss to check them, so their norm is checked: non-finite weights are never saved."""
        cfg, out, total = self.cfg, self.out, self.total_steps
        norm = weight_norm(self.trainable)
        if not math.isfinite(norm):
            why = f"non-finite weights after the update of step {total}, the last (norm {norm}); final/ not written"
            return self.diverge(total, total, total, why)
        summary = {
            "step": total,
            "runtime_s": round(self.elapsed(), 3),
            "train_s": round(self.train_s, 3),
            "samples_per_s": round(
                cfg.batch_size * (total - self.start_step) / max(self.train_s - self.prior["train_s"], 1e-9),
                3,
            ),
            "tokens_per_s": round(self.tokens_seen / max(self.train_s, 1e-9), 2),
            "peak_mem_mib": round(peak_memory_mib(self.accelerator.device)[0], 1),
        }
        if self.validator is not None:  # the final weights' validation metrics: what a sweep selects by
            line = self.validate(total)
            summary["validation"] = {
                **(self.record.get("validation") or {}),
                "loss": line["val_loss"],
                "loss_ci95": line["val_loss_ci95"],
                "n_generate": line["val_n"],
                "correct": line["val_correct"],
                "em": line["val_em"],
                "em_ci95": line.get("val_em_ci95"),
                "step": total,
            }
        if self.main:
            unwrapped = self.accelerator.unwrap_model(self.model)
            base = None if cfg.method == "full" else adapter_base_ref(cfg.model)
            save_final(unwrapped, self.tokenizer, out / "final", base)
            if cfg.merge and cfg.method == "full":
                print(
                    "--merge: nothing to merge for full fine-tuning; final/ is the full model",
                    file=sys.stderr,
                )
            elif cfg.merge:
                save_merged(unwrapped, self.tokenizer, out / "merged")
        summary["final"] = str(out / "final")
        summary["merged"] = str(out / "merged") if cfg.merge and cfg.method != "full" else None
        self.write_run(status=Status.FINISHED, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **summary)
        return self.record.to_json()

    def close(self) -> None:
        for closable in (self.bar, self.metrics, self.reporters):
            if closable is not None:
                closable.close()

    def release(self) -> None:
        """Drop the model and optimizer (and accelerate's references), so evaluation has the memory."""
        self.model = self.optimizer = None
        self.trainable = []
        self.accelerator.free_memory()
        self.accelerator.wait_for_everyone()


def _run_record(r: Recipe, prev: dict | None) -> RunRecord:
    """The run record as training starts (status ``running``): what is trained, on what, how, and where from.
    ``prev``: the record of the run being resumed (its start time and resume history carry over)."""
    from tinyslm.evaluate.runner import package_versions

    cfg = r.cfg
    return RunRecord(
        status=Status.RUNNING,
        config=asdict(cfg),
        model=_model_name(cfg.model),
        model_ref=cfg.model,
        method=cfg.method,
        parameters=r.params,
        data=_data_section(r),
        schedule=_schedule_section(r),
        precision="bf16 autocast, fp32 master weights" if r.accelerator.mixed_precision == "bf16" else "fp32",
        device=str(r.accelerator.device),
        peak_mem_kind=peak_memory_mib(r.accelerator.device)[1],
        cpu_allocator=r.cpu_allocator,
        step=r.start_step,
        resumed_from_steps=[
            *((prev or {}).get("resumed_from_steps") or []),
            *([r.start_step] if r.mode == "resume" else []),
        ],
        argv=sys.argv,
        versions=package_versions(),
        provenance=r.provenance,
        started_at=(prev or {}).get("started_at") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **({"validation": _validation_section(r)} if r.validator is not None else {}),
        **({"load_notes": r.load_notes} if r.load_notes else {}),
    )


def _validation_section(r: Recipe) -> dict[str, Any]:
    """run.json's ``validation`` as training starts: which rows are held out (their ids), by which seed."""
    from tinyslm.data.training import VAL_SEED

    return {"size": len(r.validator.ids), "seed": VAL_SEED, "ids": r.validator.ids}


def _data_section(r: Recipe) -> dict[str, Any]:
    """run.json's ``data``: which rows, how many were used, cut or dropped, and how they were prompted."""
    cfg, rows, enc_stats, tset = r.cfg, r.rows, r.enc_stats, r.tset
    whole = next((x for x in rows if not x.truncated), None)  # the token that ends a complete target
    return {
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
        if getattr(r.tokenizer, "chat_template", None)
        else "evaluation zero-shot prompt, base format",
        "stop_token": r.tokenizer.convert_ids_to_tokens(whole.labels[-1]) if whole else None,
        "order": "torch.randperm seeded with seed + epoch; last partial batch of an epoch dropped",
    }


def _schedule_section(r: Recipe) -> dict[str, Any]:
    """run.json's ``schedule``: steps, warmup, optimizer and how the effective batch is split."""
    cfg = r.cfg
    return {
        "steps_per_epoch": r.steps_per_epoch,
        "total_steps": r.total_steps,
        "epochs": round(r.total_steps / r.steps_per_epoch, 4),
        "warmup_steps": r.warmup_steps,
        "lr_schedule": "cosine with linear warmup",
        "optimizer": "AdamW(betas=(0.9, 0.999), eps=1e-8); weight decay on matrices only",
        "effective_batch_size": cfg.batch_size,
        "micro_batch_size": cfg.micro_batch_size,
        "gradient_accumulation_steps": r.accumulation,
        "num_processes": r.world,
        "loss": "token-weighted mean over the effective batch (completion tokens only)",
    }


def _announce(r: Recipe) -> None:
    """The one-line summary of what is about to be trained (stderr), and a note on truncated examples."""
    cfg, enc = r.cfg, r.enc_stats
    print(
        f"training {cfg.method} on {r.record.model}: {len(r.rows)} examples, {r.total_steps} steps of "
        f"{cfg.batch_size} ({r.world} process(es) x {r.accumulation} x {cfg.micro_batch_size}), "
        f"{r.params['trainable']:,} of {r.params['total']:,} parameters trainable"
        + (f"; resuming after step {r.start_step}" if r.start_step else ""),
        file=sys.stderr,
    )
    if enc["truncated"]:
        print(
            f"{enc['truncated']} of {enc['examples']} examples are longer than --max-length "
            f"{cfg.max_length} and were cut ({enc['dropped']} dropped: no target token left)",
            file=sys.stderr,
        )


def eval_config(cfg: TrainConfig, out: Path) -> Any:
    """The EvalConfig for the trained model, planned at once so that a bad --eval fails before training.

    Full fine-tuning: ``final/``. LoRA/DoRA: ``--model`` with the adapter in ``final/``, or with --merge the
    merged model (same weights up to rounding, and faster to decode: DoRA recomputes weight norms on
    every forward pass while unmerged).
    """
    from tinyslm.evaluate.runner import EvalConfig, plan_benchmarks

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
    from tinyslm.evaluate.runner import run_eval

    ecfg = eval_config(cfg, out)
    results = run_eval(ecfg)
    record = RunRecord.from_json(run)
    record.eval = {
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
    record.write(out / "run.json")
    return record.to_json()


def _model_name(ref: str) -> str:
    from tinyslm.models.load import model_name_for_results

    return model_name_for_results(ref)
