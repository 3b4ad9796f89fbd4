"""How often a prompt-lookup guess is right, and what a guessing policy costs, replayed on real outputs.

    python scripts/draft_policy.py results/smollm2-135m-cpu/smollm2-135m-instruct/zero-shot/seed1234 \
        [--benchmark gsm8k] [--rows 60] [--max-tokens 256] [--step-ms 80] [--token-ms 1.8]

Reads a finished evaluation's predictions (prompt and greedy output, plain or gzipped), tokenizes them with
the model's tokenizer, and replays greedy decoding with guessing: at every step a row is fed its last
token and the guesses :class:`~tinyslm.evaluate.lookup.PromptLookup` makes from its prompt and output so
far, and keeps the guesses that equal the output's next tokens. No model runs: the outputs are greedy, so
a guess is confirmed exactly when it equals the next output token.

Prints (1) how often the ``j``-th guess is right, given the ones before it were, by the length of the
n-gram match it came from, and (2) per number of decoding rows, a modelled cost per generated token of the
engine's policy (:func:`~tinyslm.evaluate.lookup.match_limits`) beside one fixed guess count for every
row: a step costs ``--step-ms`` (reading the weights, shared by the rows) plus ``--token-ms`` per fed
token (defaults: SmolLM2-135M, 16 rows, one thread of this project's CPU, docs/decoding.md).
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import Counter
from pathlib import Path

from tinyslm.core.files import predictions_file, read_jsonl
from tinyslm.evaluate.lookup import DRAFT_TOKENS, MAX_NGRAM, PromptLookup, match_limits


def load_rows(run: Path, benchmark: str, n: int, max_tokens: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, output ids) of the first ``n`` predictions, outputs cut at ``max_tokens``, tokenized
    with the tokenizer of the model results.json names."""
    from tinyslm.models.load import load_tokenizer, resolve_model

    bench_dir = run / "eval" / benchmark
    model = json.loads((bench_dir / "results.json").read_text())["model_ref"]
    tok = load_tokenizer(resolve_model(model))
    out = []
    for row in itertools.islice(read_jsonl(predictions_file(bench_dir)), n):
        prompt = tok(row["prompt"], add_special_tokens=False)["input_ids"]
        output = tok(row["output"], add_special_tokens=False)["input_ids"][:max_tokens]
        out.append((prompt, output))
    return out


def acceptance(rows: list[tuple[list[int], list[int]]], k: int) -> tuple[Counter, Counter]:
    """(tried, right) counts keyed by (match length, guess index), drafting up to ``k`` at every position."""
    tried: Counter = Counter()
    right: Counter = Counter()
    for prompt, output in rows:
        look = PromptLookup(prompt + output[:1])
        for t in range(1, len(output)):
            n = look.match_length()
            for j, g in enumerate(look.draft(k)):
                tried[(n, j)] += 1
                if t + j >= len(output) or g != output[t + j]:
                    break
                right[(n, j)] += 1
            look.append(output[t])
    return tried, right


def replay(
    rows: list[tuple[list[int], list[int]]], limits: list[int], step_ms: float, token_ms: float, busy: int
):
    """Modelled ms per generated token and tokens per row and step when ``busy`` rows share each step."""
    cost = made = steps = 0.0
    for prompt, output in rows:
        look = PromptLookup(prompt + output[:1])
        t = 1
        while t < len(output):
            guesses = look.guess(limits)
            ok = 0
            while ok < len(guesses) and t + ok < len(output) and guesses[ok] == output[t + ok]:
                ok += 1
            cost += step_ms / busy + token_ms * (1 + len(guesses))
            for tok in output[t : t + ok + 1]:
                look.append(tok)
            t += ok + 1
            made += ok + 1
            steps += 1
    return cost / made, made / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="a finished evaluation or study cell directory (with eval/)")
    ap.add_argument("--benchmark", default="gsm8k")
    ap.add_argument("--rows", type=int, default=60)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--step-ms", type=float, default=80.0)
    ap.add_argument("--token-ms", type=float, default=1.8)
    args = ap.parse_args()
    rows = load_rows(args.run, args.benchmark, args.rows, args.max_tokens)
    tried, right = acceptance(rows, 4)
    print("match length | guess | tried | right (given the guesses before it)")
    for key in sorted(tried):
        print(f"{key[0]:12d} | {key[1] + 1:5d} | {tried[key]:5d} | {right[key] / tried[key]:.0%}")
    print("\nrows | policy | ms per token (modelled) | tokens per row and step")
    for busy in (args.slots, args.slots // 2, args.slots // 4):
        for name, limits in [
            (f"match_limits (K={DRAFT_TOKENS})", match_limits(DRAFT_TOKENS, busy, args.slots)),
            *((f"{k} guess(es) whatever the match", [0] + [k] * MAX_NGRAM) for k in (0, 1, 3)),
        ]:
            ms, per_step = replay(rows, limits, args.step_ms, args.token_ms, busy)
            print(f"{busy:4d} | {name} | {ms:.2f} | {per_step:.2f}")


if __name__ == "__main__":
    main()
