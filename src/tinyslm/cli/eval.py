"""``tiny-slm eval`` / ``tiny-slm-eval``: batched greedy evaluation with exact-match scoring."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import fields

from tinyslm.cli.args import Parser, add_config_args, run_command
from tinyslm.evaluate.runner import EvalConfig


def add_eval_args(p: argparse.ArgumentParser) -> None:
    """One flag per :class:`~tinyslm.evaluate.runner.EvalConfig` field, generated from the field."""
    add_config_args(p, EvalConfig)


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    return EvalConfig(**{f.name: getattr(args, f.name) for f in fields(EvalConfig)})


def cmd_eval(args: argparse.Namespace) -> int:
    from tinyslm.evaluate.runner import run_eval

    cfg = config_from_args(args)
    results = run_eval(cfg)
    for name, r in results.items():
        lo, hi = r["exact_match_ci95"]
        tps = r.get("generated_tokens_per_s")
        speed = f", {tps:.0f} generated tok/s" if tps else ""
        print(
            f"{name}: exact match {100 * r['exact_match']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] "
            f"({r['correct']}/{r['n']}, strict {100 * r['strict_exact_match']:.1f}%{speed}) "
            f"-> {args.output}/{name}/results.json"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``tiny-slm-eval``."""
    p = Parser(
        prog="tiny-slm-eval", description="Evaluate a model on math benchmarks (same as `tiny-slm eval`)."
    )
    add_eval_args(p)
    p.set_defaults(func=cmd_eval)
    return run_command(p, argv)
