"""``tiny-slm report`` / ``tiny-slm-report``: tables, paired statistics and figures from runs."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from tinyslm.cli.args import Parser, float_at_least, int_at_least, run_command


def add_report_args(p: argparse.ArgumentParser) -> None:
    from tinyslm.report import DEFAULT_PRICE

    p.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="study directories (tiny-slm run), tiny-slm-train --output or tiny-slm-eval --output "
        "directories; searched recursively",
    )
    p.add_argument(
        "--output", required=True, help="report directory: report.md, report.html, figures/, results.csv"
    )
    p.add_argument(
        "--price-per-gpu-hour",
        type=float_at_least(0.0),
        default=DEFAULT_PRICE,
        help=f"USD per GPU-hour for the cost column (default {DEFAULT_PRICE:.2f}); "
        "cost = runtime hours x processes x price; CPU runs get no price",
    )
    p.add_argument(
        "--examples",
        type=int_at_least(0),
        default=3,
        help="problems shown side by side per model and benchmark (default 3)",
    )


def cmd_report(args: argparse.Namespace) -> int:
    from tinyslm.report import write_report

    html_path = write_report(
        args.run_dirs, args.output, price_per_gpu_hour=args.price_per_gpu_hour, examples=args.examples
    )
    out = html_path.parent
    print(f"report: {out / 'report.md'}, {html_path}, {out / 'results.csv'}, figures in {out / 'figures'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``tiny-slm-report``."""
    p = Parser(
        prog="tiny-slm-report",
        description="Tables, paired statistics and figures from study, training and evaluation runs.",
    )
    add_report_args(p)
    p.set_defaults(func=cmd_report)
    return run_command(p, argv)


if __name__ == "__main__":
    import sys

    sys.exit(main())
