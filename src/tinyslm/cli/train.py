"""``tiny-slm train`` / ``tiny-slm-train`` / ``python -m tinyslm.cli.train``: fine-tune under the protocol.

``torchrun --nproc_per_node N -m tinyslm.cli.train ...`` and ``accelerate launch -m tinyslm.cli.train ...``
run this module in every process (data parallel); the study's distributed launch does the same.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import fields

from tinyslm.cli.args import Parser, add_config_args, run_command
from tinyslm.train.config import TrainConfig
from tinyslm.train.recipe import train


def add_train_args(p: argparse.ArgumentParser) -> None:
    """One flag per :class:`~tinyslm.train.config.TrainConfig` field, generated from the field: its type, default,
    bounds, choices and help are written once, on the field (as TRL's ``make_parser`` does for its configs)."""
    add_config_args(p, TrainConfig)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})


def cmd_train(args: argparse.Namespace) -> int:
    run = train(config_from_args(args))
    status = run.get("status")
    if int(os.environ.get("RANK", "0")) != 0:  # data-parallel workers: rank 0 reports for all
        return 0 if status == "finished" else 1
    out = args.output
    if status == "finished":
        speed = f", {run['samples_per_s']:.1f} samples/s" if run.get("samples_per_s") else ""
        runtime = run.get("runtime_s", 0)
        print(
            f"{run['method']} on {run['model']}: finished {run['step']} steps in {runtime:.1f} s{speed} "
            f"-> {out}/final (run record {out}/run.json)"
        )
        for name, r in (run.get("eval") or {}).items():
            print(f"{name}: exact match {100 * r['exact_match']:.1f}% (n={r['n']}) -> {r['results']}")
        return 0
    print(f"tiny-slm-train: {status}: {run.get('reason', '')} ({out}/run.json)", file=sys.stderr)
    if status == "interrupted":
        return 143 if "SIGTERM" in run.get("reason", "") else 130
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """``tiny-slm-train``; also ``python -m tinyslm.cli.train``, which ``torchrun``/``accelerate launch`` run."""
    p = Parser(
        prog="tiny-slm-train",
        description=(
            "Fine-tune a model (full, LoRA or DoRA) on a math training set under one protocol; "
            "rerun with --resume to continue a killed run."
        ),
    )
    add_train_args(p)
    p.set_defaults(func=cmd_train)
    return run_command(p, argv)


if __name__ == "__main__":
    sys.exit(main())
