"""``tiny-slm eval`` / ``tiny-slm-eval``: batched greedy evaluation with exact-match scoring."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from tinyslm.cli.args import Parser, int_at_least, run_command
from tinyslm.limits import MAX_SEED
from tinyslm.models import DEFAULT_MODEL


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="offline alias (see `tiny-slm models`), Hugging Face id, local checkpoint dir or .gguf file "
                        f"(default: {DEFAULT_MODEL})")
    p.add_argument("--adapter", help="PEFT adapter directory (LoRA/DoRA) to apply on top of --model")
    p.add_argument("--benchmark", "--benchmarks", dest="benchmarks", default="gsm8k",
                   help="comma-separated benchmarks (see `tiny-slm benchmarks`; default: gsm8k)")
    p.add_argument("--shots", type=int_at_least(0), default=0,
                   help="worked examples in the prompt, drawn by --seed from a training split (the paper: 0 and 5)")
    p.add_argument("--limit", type=int_at_least(1), help="score only the first N problems of each benchmark")
    p.add_argument("--batch-size", type=int_at_least(1), default=16, help="prompts decoded at once (default 16): rows of a fixed batch, or slots refilled as answers finish")
    p.add_argument("--max-new-tokens", type=int_at_least(1), default=256, help="generation budget per problem (default 256)")
    p.add_argument("--seed", type=int_at_least(0, MAX_SEED), default=1234,
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


def main(argv: Sequence[str] | None = None) -> int:
    """``tiny-slm-eval``."""
    p = Parser(prog="tiny-slm-eval", description="Evaluate a model on math benchmarks (same as `tiny-slm eval`).")
    add_eval_args(p)
    p.set_defaults(func=cmd_eval)
    return run_command(p, argv)
