"""Argument helpers shared by every command: the one-line-error parser, bounded number types, the runner.

These are public so that each command module (``tinyslm.cli.<command>``) uses them by name; nothing in the
library imports this package.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, fields
from typing import Any

from tinyslm.config.settings import base_type
from tinyslm.core.errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse prints the whole usage block first)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def int_at_least(lo: int, at_most: int | None = None) -> Callable[[str], int]:
    """argparse type: an integer >= lo, and <= ``at_most`` when given."""

    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{s}'") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        if at_most is not None and v > at_most:
            raise argparse.ArgumentTypeError(f"must be <= {at_most}, got {v}")
        return v

    return parse


def float_at_least(lo: float, *, strict: bool = False, below: float | None = None) -> Callable[[str], float]:
    """argparse type: a finite float >= lo (> lo with ``strict``), and < ``below`` when given."""

    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got '{s}'") from None
        if not math.isfinite(v) or v < lo or (strict and v == lo):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {lo:g}, got {s}")
        if below is not None and v >= below:
            raise argparse.ArgumentTypeError(f"must be < {below:g}, got {s}")
        return v

    return parse


def add_config_args(p: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of config dataclass ``cls`` (see :mod:`tinyslm.config.settings`), in field order."""
    for f in fields(cls):
        add_setting_arg(p, cls, f)


def add_setting_arg(p: argparse.ArgumentParser, cls: type, f: Field) -> None:
    """The flag of one config field: ``--field-name`` (or its ``flag``), typed and bounded by its metadata."""
    m = f.metadata
    flag = m.get("flag") or "--" + f.name.replace("_", "-")
    flags = (flag,) if isinstance(flag, str) else tuple(flag)  # ("--benchmark", "--benchmarks"): aliases
    if m.get("negate"):  # --no-progress sets progress=False
        p.add_argument(*flags, dest=f.name, action="store_false", help=m["help"])
        return
    kwargs: dict[str, Any] = {"help": m["help"]}
    typ = base_type(cls, f.name)
    if not flags[0].startswith("-"):  # a positional argument: ``tiny-slm export SOURCE``
        p.add_argument(f.name, metavar=flags[0].upper(), type=flag_type(f, typ), **kwargs)
        return
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
    p.add_argument(*flags, dest=f.name, **kwargs)


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


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv`` and run the chosen command; bad input is one line on stderr and exit code 2."""
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"{parser.prog}: interrupted; finished work is on disk, rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    except OSError as e:  # unwritable output dir, disk full, ...: the user's environment, not our bug
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
