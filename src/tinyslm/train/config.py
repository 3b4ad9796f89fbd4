"""TrainConfig: every training setting once (default, bounds and help on the field, see
:mod:`tinyslm.config.settings`), the protocol defaults per method (:data:`PROTOCOL`) and their validation.
Flags (``tiny-slm-train``) and the study's ``train:``/``overrides:`` sections are generated from it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tinyslm.config.limits import MAX_SEED
from tinyslm.config.methods import TRAINED_METHODS as METHODS
from tinyslm.config.settings import check_bounds, resumable_names, setting
from tinyslm.core.errors import UserError
from tinyslm.core.runtime import TRAIN_DEVICES, device_problem
from tinyslm.models.zoo import DEFAULT_MODEL

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


@dataclass
class TrainConfig:
    """Every training setting, once: default, bounds and help live on the field (see :mod:`tinyslm.config.settings`).

    The ``tiny-slm-train`` flags are generated from these fields, :func:`resolve_config` checks their bounds,
    and the study's ``train:`` and ``overrides:`` sections are built from them.
    """

    model: str = setting(
        help="offline alias, Hugging Face id, local checkpoint dir or .gguf file (default: %(default)s)",
        cli_default=DEFAULT_MODEL,
    )
    method: str = setting(
        help="full fine-tuning, LoRA, or DoRA (LoRA with weight decomposition; peft use_dora)",
        choices=METHODS,
    )
    output: str = setting(
        help="run directory: run.json, metrics.jsonl, checkpoints/, final/ (and merged/, eval/)",
        resumable=True,
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
        "answer",
        help="answer field (the target; '#### <last number>' is appended when it has no '#### ' line)",
    )
    data_dir: str | None = setting(
        None, help="offline data directory (default: $TINYSLM_DATA_DIR; neither = the Hub)", resumable=True
    )
    limit: int | None = setting(None, help="train on the first N rows only", ge=1)
    epochs: int = setting(1, help="passes over the data (default %(default)s)", ge=1)
    val_size: int = setting(
        0,
        help="hold out N rows of the training set as a validation split (seeded with a fixed seed, the same "
        "for every run; disjoint from the rows trained on and drawn before --limit); 0: none (default)",
        ge=0,
    )
    eval_every: int = setting(
        0,
        help="validation loss every N optimizer steps, as lines in metrics.jsonl (always once at the end "
        "when --val-size > 0); 0: only at the end (default)",
        ge=0,
        resumable=True,
    )
    val_generate: int = setting(
        0,
        help="also exact match on the first K validation problems, greedy, through the evaluation's engine, "
        "prompt and scorer, at each validation (default %(default)s: loss only)",
        ge=0,
        resumable=True,
    )
    val_max_new_tokens: int = setting(
        256, help="new-token budget of --val-generate (default %(default)s)", ge=1, resumable=True
    )
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
    # a base whose files lack weights its config declares starts with those random: only on purpose
    allow_missing_weights: bool = setting(
        False,
        help="train a checkpoint whose config declares weights its files lack (they start random, e.g. layers "
        "added on purpose; refused by default; run.json's load_notes lists them)",
    )
    progress: bool = setting(True, help="no progress bar", flag="--no-progress", negate=True, resumable=True)
    # same math, less activation memory (recomputed in the backward pass; dropout masks are replayed)
    gradient_checkpointing: bool = setting(
        False,
        help="recompute each layer's activations in the backward pass: about half the peak memory, one more "
        "forward pass, same result (may be switched on or off on --resume)",
        resumable=True,
    )
    # how fast, not what: the same loss curve up to rounding
    compile: bool = setting(
        False,
        help="torch.compile the model (dynamic shapes: one graph for every micro-batch length): fewer, fused "
        "kernels, for GPUs, where a small model's step is bound by kernel launches; the first steps pay the "
        "compilation (about a minute)",
        resumable=True,
    )
    release_memory: bool = setting(
        False,
        help="CPU: give every freed block of 1 MiB or more back to the OS at once (glibc mmap threshold), so "
        "the heap does not grow step after step: LoRA on SmolLM2-135M at 8 x 512 tokens peaks at 7.6 GB "
        "instead of 12.8 GB, 10-25%% slower (same result)",
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
    if (cfg.eval_every or cfg.val_generate) and not cfg.val_size:
        raise UserError("--eval-every and --val-generate need a validation split: pass --val-size N")
    if cfg.val_generate > cfg.val_size:
        raise UserError(f"--val-generate {cfg.val_generate} exceeds --val-size {cfg.val_size}")
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
