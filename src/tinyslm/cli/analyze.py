"""``tiny-slm analyze RUN_DIR``: the command-line face of :func:`tinyslm.diagnostics.analyze`."""

from __future__ import annotations

import argparse
from typing import Any

from tinyslm.cli.args import float_at_least, int_at_least


def add_analyze_args(p: argparse.ArgumentParser) -> None:
    from tinyslm.diagnostics import HVP_DEFAULTS, MEASURES

    p.add_argument(
        "run_dir", metavar="RUN_DIR", help="a finished run directory written by tiny-slm-train --output"
    )
    p.add_argument("--base", help="base model to compare with (default: the run's --model, from run.json)")
    p.add_argument(
        "--probe-limit",
        type=int_at_least(1),
        default=200,
        help="items per forgetting probe, ARC-Easy and MMLU (default 200; fixed seeded subsets)",
    )
    p.add_argument(
        "--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N; always float32"
    )
    p.add_argument(
        "--data-dir",
        help="offline data directory with arc_easy/ and mmlu/ (default: the run's, else $TINYSLM_DATA_DIR)",
    )
    p.add_argument(
        "--measures",
        default="all",
        help=f"comma list of measures to (re)compute (default all: {','.join(MEASURES)})",
    )
    p.add_argument(
        "--hvp-iters",
        type=int_at_least(1),
        help="sharpness: power iterations per phase "
        f"(default {HVP_DEFAULTS['gpu'][0]} on a GPU, {HVP_DEFAULTS['cpu'][0]} on a CPU)",
    )
    p.add_argument(
        "--hvp-tol",
        type=float_at_least(0, strict=True),
        default=1e-3,
        help="sharpness: stop when the eigenvalue estimate changes by less than this, relative (default 1e-3)",
    )
    p.add_argument(
        "--hvp-batch",
        type=int_at_least(1),
        help="sharpness: training examples in the batch "
        f"(default {HVP_DEFAULTS['gpu'][1]} on a GPU, {HVP_DEFAULTS['cpu'][1]} on a CPU)",
    )
    p.add_argument(
        "--hvp-micro-batch",
        type=int_at_least(1),
        default=1,
        help="sharpness: examples per forward/double-backward pass; memory grows with it, the result does not "
        "change (default 1)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress messages or bars")


def cmd_analyze(args: argparse.Namespace) -> int:
    from tinyslm.diagnostics import OUTPUT_NAME, analyze

    result = analyze(
        args.run_dir,
        base=args.base,
        probe_limit=args.probe_limit,
        device=args.device,
        progress=not args.no_progress,
        measures=args.measures,
        data_dir=args.data_dir,
        hvp_iters=args.hvp_iters,
        hvp_tol=args.hvp_tol,
        hvp_batch=args.hvp_batch,
        hvp_micro_batch=args.hvp_micro_batch,
    )
    width = max(len(k) for k in result["summary"])
    for key, value in result["summary"].items():
        print(f"{key:<{width}}  {_show(value)}")
    print(f"-> {args.run_dir.rstrip('/')}/{OUTPUT_NAME}")
    return 0


def _show(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
