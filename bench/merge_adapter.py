"""An adapter evaluated through PEFT's layers against the same adapter folded into the weights, in one run.

    python bench/merge_adapter.py RUN_DIR [--prompts 24] [--max-new-tokens 256] [--threads 1]

RUN_DIR is a finished LoRA/DoRA study cell or ``tiny-slm-train`` directory (``final/`` adapter,
``eval/gsm8k/predictions.jsonl[.gz]``). The first ``--prompts`` GSM8K prompts it was scored on are decoded
greedily by the evaluation engine twice: with the adapter unmerged (``tiny-slm-eval --no-merge-adapter``)
and merged (the default). Prints tokens/s of both, their ratio, and how many rows gave the same tokens:
merging changes the fp32 rounding of the adapted products, so a row may differ late in a long output.
It exists because DoRA's PEFT layers recompute every adapted weight's norm at each decoding step.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from tinyslm.core.files import predictions_file, read_jsonl
from tinyslm.evaluate.generation import decode_rows, eos_ids
from tinyslm.models.load import load_model


def _prompts(run: Path, n: int) -> list[str]:
    rows = read_jsonl(predictions_file(run / "eval" / "gsm8k"))
    return [row["prompt"] for row in itertools.islice(rows, n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--model", default=None, help="the base (default: the run's run.json model)")
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = args.model or json.loads((args.run / "run.json").read_text())["config"]["model"]
    prompts = _prompts(args.run, args.prompts)
    outputs, speed = {}, {}
    for merge in (False, True):
        model, tok = load_model(base, adapter=str(args.run / "final"), merge_adapter=merge)
        rows = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        start = time.perf_counter()
        out = dict(
            decode_rows(
                model,
                tok,
                rows,
                max_new_tokens=args.max_new_tokens,
                batch_size=args.batch_size,
                stop_ids=eos_ids(model, tok),
            )
        )
        speed[merge] = sum(map(len, out.values())) / (time.perf_counter() - start)
        outputs[merge] = out
        print(f"{'merged' if merge else 'unmerged'}: {speed[merge]:.1f} tokens/s", flush=True)
    same = sum(outputs[False][i] == outputs[True][i] for i in outputs[False])
    print(
        json.dumps(
            {
                "unmerged_tok_s": round(speed[False], 1),
                "merged_tok_s": round(speed[True], 1),
                "ratio": round(speed[True] / speed[False], 2),
                "same_tokens_rows": same,
                "rows": len(prompts),
            }
        )
    )


if __name__ == "__main__":
    main()
