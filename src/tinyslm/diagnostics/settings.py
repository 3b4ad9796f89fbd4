"""The settings of one analysis, once: ``tiny-slm analyze``'s flags, :func:`tinyslm.diagnostics.analyze`'s
defaults and the study's ``diagnostics:`` section are all generated from :class:`AnalyzeSettings`. Light on
purpose (no torch), so the study config and the CLI can import it cheaply."""

from __future__ import annotations

from dataclasses import dataclass

from tinyslm.config.settings import setting

MEASURES = (
    "forgetting",
    "weight_displacement",
    "intruder_dimensions",
    "sharpness",
    "repetition_rate",
    "arithmetic_error_rate",
    "grad_norm_spikes",
)
# The sharpness budget when none is given: (power iterations per phase, training examples in the batch).
# A Hessian-vector product costs a forward, a backward and a double backward per example: on a GPU the
# full budget takes a minute; on an idle 2-core CPU about 2 s per example and product for a 135M model
# (many times more when other processes compete for the cores), and a LoRA run needs up to four phases of
# `iters` products (base and tuned, each maybe shifted). The CPU budget keeps the sharpness of a 135M run
# near 1.5 minutes; `λmax converged` says whether it was enough (--hvp-iters, --hvp-batch for more).
HVP_DEFAULTS = {"gpu": (20, 8), "cpu": (6, 2)}


@dataclass
class AnalyzeSettings:
    """Every setting of ``tiny-slm analyze`` but the run directory (default, bounds and help on the field)."""

    base: str | None = setting(
        None, help="base model to compare with (default: the run's --model, from run.json)"
    )
    probe_limit: int = setting(
        200,
        ge=1,
        help="items per forgetting probe, ARC-Easy and MMLU (default %(default)s; fixed seeded subsets)",
    )
    device: str = setting("auto", help="auto (CUDA if present), cpu, cuda, cuda:N; always float32")
    data_dir: str | None = setting(
        None,
        help="offline data directory with arc_easy/ and mmlu/ (default: the run's, else $TINYSLM_DATA_DIR)",
    )
    measures: str = setting(
        "all", help=f"comma list of measures to (re)compute (default all: {','.join(MEASURES)})"
    )
    hvp_iters: int | None = setting(
        None,
        ge=1,
        help="sharpness: power iterations per phase "
        f"(default {HVP_DEFAULTS['gpu'][0]} on a GPU, {HVP_DEFAULTS['cpu'][0]} on a CPU)",
    )
    hvp_tol: float = setting(
        1e-3,
        gt=0,
        help="sharpness: stop when the eigenvalue estimate changes by less than this, relative "
        "(default %(default)s)",
    )
    hvp_batch: int | None = setting(
        None,
        ge=1,
        help="sharpness: training examples in the batch "
        f"(default {HVP_DEFAULTS['gpu'][1]} on a GPU, {HVP_DEFAULTS['cpu'][1]} on a CPU)",
    )
    hvp_micro_batch: int = setting(
        1,
        ge=1,
        help="sharpness: examples per forward/double-backward pass; memory grows with it, the result does not "
        "change (default %(default)s)",
    )
    progress: bool = setting(True, flag="--no-progress", negate=True, help="no progress messages or bars")
