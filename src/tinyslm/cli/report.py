"""``tiny-slm report`` / ``tiny-slm-report``: tables, paired statistics and figures from runs."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from tinyslm.cli.args import Parser, add_config_args, run_command


def add_report_args(p: argparse.ArgumentParser) -> None:
    from tinyslm.report.settings import ReportSettings

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
    add_config_args(p, ReportSettings)  # default, bounds and help from the dataclass


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
