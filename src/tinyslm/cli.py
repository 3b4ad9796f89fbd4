"""Command-line entry points: ``tiny-slm <command>`` and the short ``tiny-slm-eval``.

Every command validates its input and turns bad input into one line on stderr and exit code 2
(:class:`~tinyslm.errors.UserError`, argparse errors); a traceback means a bug in tiny-slm.
Heavy imports (torch, transformers) happen inside the commands so that ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence

from tinyslm.errors import UserError
from tinyslm.limits import MAX_SEED

DEFAULT_MODEL = "smollm2-135m-instruct"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse prints the whole usage block first)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _int_at_least(lo: int, at_most: int | None = None) -> Callable[[str], int]:
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


def _float_at_least(lo: float, *, strict: bool = False, below: float | None = None) -> Callable[[str], float]:
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


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="offline alias (see `tiny-slm models`), Hugging Face id, local checkpoint dir or .gguf file "
                        f"(default: {DEFAULT_MODEL})")
    p.add_argument("--adapter", help="PEFT adapter directory (LoRA/DoRA) to apply on top of --model")
    p.add_argument("--benchmark", "--benchmarks", dest="benchmarks", default="gsm8k",
                   help="comma-separated benchmarks (see `tiny-slm benchmarks`; default: gsm8k)")
    p.add_argument("--shots", type=_int_at_least(0), default=0,
                   help="worked examples in the prompt, drawn by --seed from a training split (the paper: 0 and 5)")
    p.add_argument("--limit", type=_int_at_least(1), help="score only the first N problems of each benchmark")
    p.add_argument("--batch-size", type=_int_at_least(1), default=16, help="prompts decoded at once (default 16): rows of a fixed batch, or slots refilled as answers finish")
    p.add_argument("--max-new-tokens", type=_int_at_least(1), default=256, help="generation budget per problem (default 256)")
    p.add_argument("--seed", type=_int_at_least(0, MAX_SEED), default=1234,
                   help="seed for exemplar choice, 0 to 2^63-1 (default 1234)")
    p.add_argument("--data-dir", help="directory with the offline benchmark files (default: $TINYSLM_DATA_DIR; "
                                      "neither set = load from the Hugging Face Hub)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N; CPU runs fp32, CUDA bf16")
    p.add_argument("--engine", choices=["fast", "hf"], default="fast",
                   help="decoding loop: fast (continuous batching over a slot KV cache) or hf (model.generate); same tokens")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the Hub (off by default)")
    p.add_argument("--allow-missing-weights", action="store_true",
                   help="evaluate a checkpoint whose config declares weights its files lack (they are then random; "
                        "refused by default)")
    p.add_argument("--overwrite", action="store_true", help="replace finished results in --output (default: keep and resume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--output", required=True, help="output directory: OUTPUT/<benchmark>/{predictions.jsonl,results.json}")


def cmd_eval(args: argparse.Namespace) -> int:
    from tinyslm.evaluate import EvalConfig, run_eval

    cfg = EvalConfig(
        model=args.model, benchmarks=args.benchmarks, output=args.output, adapter=args.adapter,
        shots=args.shots, limit=args.limit, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
        seed=args.seed, data_dir=args.data_dir, overwrite=args.overwrite, device=args.device, engine=args.engine,
        trust_remote_code=args.trust_remote_code, progress=not args.no_progress,
        allow_missing_weights=args.allow_missing_weights,
    )
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


def cmd_score(args: argparse.Namespace) -> int:
    from tinyslm.evaluate import rescore_file

    print(json.dumps(rescore_file(args.benchmark, args.predictions, args.output), indent=2))
    return 0


def cmd_benchmarks(args: argparse.Namespace) -> int:
    from tinyslm.benchmarks import BENCHMARKS

    print(f"{'name':<10} {'style':<7} {'offline file':<20} {'hub id':<40} description")
    for b in BENCHMARKS.values():
        hub = b.hub.path if b.hub else "-"
        print(f"{b.name:<10} {b.answer_style:<7} {b.local_file or '-':<20} {hub:<40} {b.description}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from tinyslm import models

    if args.action == "install":
        if not args.name:
            raise UserError("usage: tiny-slm models install NAME (see `tiny-slm models`)")
        models.cmd_models_install(args.name)
    else:
        models.cmd_models_list()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tiny-slm", description=(
        "Compare zero-shot, few-shot, full fine-tuning, LoRA and DoRA on small language models, "
        "scored by exact match on math-reasoning benchmarks."))
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    e = sub.add_parser("eval", help="evaluate a model on benchmarks (also: tiny-slm-eval)",
                       description="Batched greedy evaluation with exact-match scoring; rerunning resumes.")
    add_eval_args(e)
    e.set_defaults(func=cmd_eval)

    t = sub.add_parser("train", help="full fine-tuning, LoRA or DoRA under the study's protocol (also: tiny-slm-train)",
                       description="Train with the paper's protocol defaults; every value can be overridden.")
    from tinyslm.train import add_train_args, cmd_train

    add_train_args(t)
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("run", help="run a study: models x methods x seeds from one YAML config, then its report",
                       description="Each cell (model x method x seed) is a run directory made by the same code as "
                                   "tiny-slm-train and tiny-slm-eval. Finished cells are skipped, killed ones "
                                   "resume, failing ones are recorded with their reason while the grid goes on.")
    from tinyslm.study import add_run_args, cmd_run

    add_run_args(r)
    r.set_defaults(func=cmd_run)

    rp = sub.add_parser("report", help="tables, paired statistics and figures from runs (also: tiny-slm-report)",
                        description="Read study cells, tiny-slm-train and tiny-slm-eval directories; write report.md, "
                                    "a self-contained report.html, figures/ and results.csv.")
    from tinyslm.report import add_report_args, cmd_report

    add_report_args(rp)
    rp.set_defaults(func=cmd_report)

    a = sub.add_parser("analyze", help="forgetting and stability diagnostics of a training run -> RUN_DIR/diagnostics.json",
                       description="Compare a fine-tuned run with its base model: general-knowledge probes, weight "
                                   "displacement, intruder dimensions, sharpness, repetition and arithmetic errors "
                                   "in its outputs, gradient-norm spikes.")
    from tinyslm.diagnostics.command import add_analyze_args, cmd_analyze

    add_analyze_args(a)
    a.set_defaults(func=cmd_analyze)

    s = sub.add_parser("score", help="(re)score a predictions JSONL made by any tool",
                       description="Each input line needs id, output and reference; the output repeats every line "
                                   "with extracted, correct and strict_correct added. A JSON summary goes to stdout.")
    s.add_argument("--benchmark", required=True, help="benchmark whose answer style to score with (e.g. gsm8k, math)")
    s.add_argument("--predictions", required=True, help="input JSONL")
    s.add_argument("--output", required=True, help="output JSONL")
    s.set_defaults(func=cmd_score)

    b = sub.add_parser("benchmarks", help="list the benchmark registry")
    b.set_defaults(func=cmd_benchmarks)

    m = sub.add_parser("models", help="list offline model aliases, or `models install NAME`")
    m.add_argument("action", nargs="?", choices=["list", "install"], default="list")
    m.add_argument("name", nargs="?", help="alias to install")
    m.set_defaults(func=cmd_models)
    return p


def _run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; finished work is on disk, rerun the same command to resume", file=sys.stderr)
        return 130
    except OSError as e:  # unwritable output dir, disk full, ...: the user's environment, not our bug
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    return _run(build_parser(), argv)


def eval_main(argv: Sequence[str] | None = None) -> int:
    p = _Parser(prog="tiny-slm-eval", description="Evaluate a model on math benchmarks (same as `tiny-slm eval`).")
    add_eval_args(p)
    p.set_defaults(func=cmd_eval)
    return _run(p, argv)


if __name__ == "__main__":
    sys.exit(main())
