"""``tiny-slm analyze RUN_DIR``: the command-line face of :func:`tinyslm.diagnostics.analyze`."""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

from tinyslm.cli.args import add_config_args


def add_analyze_args(p: argparse.ArgumentParser) -> None:
    from tinyslm.diagnostics.settings import AnalyzeSettings

    p.add_argument(
        "run_dir", metavar="RUN_DIR", help="a finished run directory written by tiny-slm-train --output"
    )
    add_config_args(p, AnalyzeSettings)  # every other flag: default, bounds and help from the dataclass


def cmd_analyze(args: argparse.Namespace) -> int:
    from tinyslm.diagnostics import OUTPUT_NAME, analyze
    from tinyslm.diagnostics.settings import AnalyzeSettings

    result = analyze(args.run_dir, **{f.name: getattr(args, f.name) for f in fields(AnalyzeSettings)})
    width = max(len(k) for k in result["summary"])
    for key, value in result["summary"].items():
        print(f"{key:<{width}}  {_show(value)}")
    print(f"-> {args.run_dir.rstrip('/')}/{OUTPUT_NAME}")
    return 0


def _show(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
