"""``tiny-slm score``: (re)score a predictions JSONL made by any tool."""

from __future__ import annotations

import argparse
import json


def add_score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--benchmark", required=True, help="benchmark whose answer style to score with (e.g. gsm8k, math)"
    )
    p.add_argument("--predictions", required=True, help="input JSONL")
    p.add_argument("--output", required=True, help="output JSONL")


def cmd_score(args: argparse.Namespace) -> int:
    from tinyslm.evaluate.runner import rescore_file

    print(json.dumps(rescore_file(args.benchmark, args.predictions, args.output), indent=2))
    return 0
