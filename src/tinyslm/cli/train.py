"""``tiny-slm train`` / ``tiny-slm-train`` / ``python -m tinyslm.cli.train``: fine-tune under the protocol.

``torchrun --nproc_per_node N -m tinyslm.cli.train ...`` and ``accelerate launch -m tinyslm.cli.train ...``
run this module in every process (data parallel); the study's distributed launch does the same.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, fields
from typing import Any

from tinyslm.cli.args import Parser, float_at_least, int_at_least, run_command
from tinyslm.settings import base_type
from tinyslm.train import TrainConfig, train


def add_train_args(p: argparse.ArgumentParser) -> None:
    """One flag per :class:`~tinyslm.train.TrainConfig` field, generated from the field: its type, default,
    bounds, choices and help are written once, on the field (as TRL's ``make_parser`` does for its configs)."""
    for f in fields(TrainConfig):
        add_setting_arg(p, TrainConfig, f)


def add_setting_arg(p: argparse.ArgumentParser, cls: type, f: Field) -> None:
    """The flag of one config field: ``--field-name`` (or its ``flag``), typed and bounded by its metadata."""
    m = f.metadata
    flag = m.get("flag") or "--" + f.name.replace("_", "-")
    if m.get("negate"):  # --no-progress sets progress=False
        p.add_argument(flag, dest=f.name, action="store_false", help=m["help"])
        return
    kwargs: dict[str, Any] = {"help": m["help"]}
    typ = base_type(cls, f.name)
    if typ is bool:
        kwargs["action"] = "store_true"
    else:
        kwargs["type"] = flag_type(f, typ)
        if m.get("choices"):
            kwargs["choices"] = m["choices"]
    if f.default is not MISSING:
        kwargs["default"] = f.default
    elif m.get("cli_default", MISSING) is not MISSING:
        kwargs["default"] = m["cli_default"]
    else:
        kwargs["required"] = True
    p.add_argument(flag, **kwargs)


def flag_type(f: Field, typ: type) -> Callable[[str], Any]:
    """The argparse type of a field: its bounds checked as the value is parsed (plain ``typ`` without bounds)."""
    m = f.metadata
    if typ is int and (m.get("ge") is not None or m.get("gt") is not None):
        lo = m["ge"] if m.get("ge") is not None else m["gt"] + 1
        return int_at_least(lo, m.get("le"))
    if typ is float and (m.get("ge") is not None or m.get("gt") is not None):
        strict = m.get("ge") is None
        return float_at_least(m["gt"] if strict else m["ge"], strict=strict, below=m.get("lt"))
    return typ


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
