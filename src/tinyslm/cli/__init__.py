"""Command-line entry points: ``tiny-slm <command>`` and the short ``tiny-slm-eval``, ``tiny-slm-train``,
``tiny-slm-report``.

One module per command (``tinyslm.cli.eval``, ``score``, ``train``, ``run``, ``report``, ``analyze``, ``export``,
``models``, ``benchmarks``), each with ``add_<command>_args`` and ``cmd_<command>``; shared argument helpers
in :mod:`tinyslm.cli.args`. The library never imports this package: commands import the library, inside the
command where it is heavy, so that ``--help`` is instant.

Every command validates its input and turns bad input into one line on stderr and exit code 2
(:class:`~tinyslm.core.errors.UserError`, argparse errors); a traceback means a bug in tiny-slm.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tinyslm.cli.args import Parser, run_command


def build_parser() -> argparse.ArgumentParser:
    from tinyslm.cli.analyze import add_analyze_args, cmd_analyze
    from tinyslm.cli.benchmarks import cmd_benchmarks
    from tinyslm.cli.eval import add_eval_args, cmd_eval
    from tinyslm.cli.export import add_export_args, cmd_export
    from tinyslm.cli.models import add_models_args, cmd_models
    from tinyslm.cli.report import add_report_args, cmd_report
    from tinyslm.cli.run import add_run_args, cmd_run
    from tinyslm.cli.score import add_score_args, cmd_score
    from tinyslm.cli.train import add_train_args, cmd_train

    p = Parser(
        prog="tiny-slm",
        description=(
            "Compare zero-shot, few-shot, full fine-tuning, LoRA and DoRA on small language models, "
            "scored by exact match on math-reasoning benchmarks."
        ),
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    e = sub.add_parser(
        "eval",
        help="evaluate a model on benchmarks (also: tiny-slm-eval)",
        description="Batched greedy evaluation with exact-match scoring; rerunning resumes.",
    )
    add_eval_args(e)
    e.set_defaults(func=cmd_eval)

    t = sub.add_parser(
        "train",
        help="full fine-tuning, LoRA or DoRA under the study's protocol (also: tiny-slm-train)",
        description="Train with the paper's protocol defaults; every value can be overridden.",
    )
    add_train_args(t)
    t.set_defaults(func=cmd_train)

    r = sub.add_parser(
        "run",
        help="run a study: models x methods x seeds from one YAML config, then its report",
        description="Each cell (model x method x seed) is a run directory made by the same code as "
        "tiny-slm-train and tiny-slm-eval. Finished cells are skipped, killed ones "
        "resume, failing ones are recorded with their reason while the grid goes on.",
    )
    add_run_args(r)
    r.set_defaults(func=cmd_run)

    rp = sub.add_parser(
        "report",
        help="tables, paired statistics and figures from runs (also: tiny-slm-report)",
        description="Read study cells, tiny-slm-train and tiny-slm-eval directories; write report.md, "
        "a self-contained report.html, figures/ and results.csv.",
    )
    add_report_args(rp)
    rp.set_defaults(func=cmd_report)

    x = sub.add_parser(
        "export",
        help="a trained model -> GGUF files quantised by llama.cpp (f16, q8_0, q4_k_m, ...), optionally scored",
        description="Merge the adapter, write a GGUF with the tokenizer and chat template, quantise it with "
        "llama.cpp's own quantiser, and with --score evaluate each file with the llama-cpp backend under "
        "the run's own evaluation settings (needs the edge extra: pip install 'tiny-slm[edge]').",
    )
    add_export_args(x)
    x.set_defaults(func=cmd_export)

    a = sub.add_parser(
        "analyze",
        help="forgetting and stability diagnostics of a training run -> RUN_DIR/diagnostics.json",
        description="Compare a fine-tuned run with its base model: general-knowledge probes, weight "
        "displacement, intruder dimensions, sharpness, repetition and arithmetic errors "
        "in its outputs, gradient-norm spikes.",
    )
    add_analyze_args(a)
    a.set_defaults(func=cmd_analyze)

    s = sub.add_parser(
        "score",
        help="(re)score a predictions JSONL made by any tool",
        description="Each input line needs id, output and reference; the output repeats every line "
        "with extracted, correct and strict_correct added. A JSON summary goes to stdout.",
    )
    add_score_args(s)
    s.set_defaults(func=cmd_score)

    b = sub.add_parser("benchmarks", help="list the benchmark registry")
    b.set_defaults(func=cmd_benchmarks)

    m = sub.add_parser("models", help="list offline model aliases, or `models install NAME`")
    add_models_args(m)
    m.set_defaults(func=cmd_models)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``tiny-slm``."""
    return run_command(build_parser(), argv)


def eval_main(argv: Sequence[str] | None = None) -> int:
    """``tiny-slm-eval`` (kept here for the console entry point; the command is :mod:`tinyslm.cli.eval`)."""
    from tinyslm.cli.eval import main as eval_command

    return eval_command(argv)


if __name__ == "__main__":
    sys.exit(main())
