"""Speed, measured side by side: tiny-slm's decoding engine against HF ``generate`` in one invocation.

    python bench/speed.py --quick                 # CPU, the real smollm2-135m-instruct, ~5 minutes
    python bench/speed.py --device cuda --shapes smollm2-135m,qwen2.5-0.5b --batch-size 64

Both engines decode the same GSM8K prompts at the same batch size, greedily, with the same stop rule
(EOS, end of the answer line, a new "Question:"), so they produce the same tokens (checked here too)
and the ratio of their real (non-pad) tokens/s is the speed-up. With ``--shapes`` a model is also
built from the named architecture with random weights (hub weights cannot reach a GPU box here).
Random weights never write an answer line, so those rows all run to ``--max-new-tokens``: that case
measures the per-step cost only, not the gain from dropping finished rows.

Prints a table and ends with one JSON line of ratios and the absolute figures behind them.
Training throughput (HF Trainer + PEFT against tiny-slm-train) is not measured here yet.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tinyslm.generation import ENGINES, eos_ids  # noqa: E402

SHAPES = {  # the real architectures of the study's models, for random-weight throughput runs
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "smollm2-360m": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                         num_key_value_heads=5, vocab_size=49152, tie_word_embeddings=True),
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
}


def gsm8k_prompts(tokenizer, data_dir: Path, n: int) -> list[list[int]]:
    from tinyslm.benchmarks import get_benchmark, load_examples
    from tinyslm.prompts import build_prompt

    examples = load_examples(get_benchmark("gsm8k"), data_dir).examples[:n]
    return [tokenizer(build_prompt(tokenizer, e, "number"), add_special_tokens=False)["input_ids"] for e in examples]


def run_engine(name, model, tokenizer, rows, batch_size, max_new_tokens, stop_ids, device) -> tuple[list, float]:
    decode = ENGINES[name]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    out: list = [None] * len(rows)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        gen = decode(model, tokenizer, [rows[i] for i in idx], max_new_tokens=max_new_tokens, stop_ids=stop_ids,
                     pad_id=tokenizer.pad_token_id, device=device)
        for i, g in zip(idx, gen, strict=True):
            out[i] = g
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--shapes", default="", help="comma-separated random-weight shapes ({}); default: the real "
                                                 "offline smollm2-135m-instruct".format(", ".join(SHAPES)))
    ap.add_argument("--n", type=int, default=64, help="GSM8K prompts")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--quick", action="store_true", help="a CPU run in a few minutes: 32 prompts, batch 16")
    args = ap.parse_args()
    if args.quick:
        args.n, args.batch_size = 32, 16
    from tinyslm.models import load_model

    model, tok = load_model("smollm2-135m-instruct", device=args.device)
    tok.padding_side = "left"
    rows = gsm8k_prompts(tok, Path(args.data_dir), args.n)
    cases = [("smollm2-135m-instruct (real)", model)]
    for shape in filter(None, args.shapes.split(",")):
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
        m = LlamaForCausalLM(LlamaConfig(**SHAPES[shape])).to(device=args.device, dtype=dtype).eval()
        cases.append((f"{shape} (random weights)", m))

    print(f"device={args.device} prompts={len(rows)} batch={args.batch_size} max_new_tokens={args.max_new_tokens}")
    print(f"{'model':<32} {'engine':<6} {'wall s':>8} {'tokens':>8} {'tok/s':>8} {'speed-up':>8} {'same tokens':>11}")
    summary: dict = {}
    for label, m in cases:
        stop = eos_ids(m, tok) if m is model else eos_ids(model, tok)
        res = {}
        for engine in ("hf", "fast"):
            gen, wall = run_engine(engine, m, tok, rows, args.batch_size, args.max_new_tokens, stop, args.device)
            res[engine] = (gen, wall, sum(len(g) for g in gen))
        same = res["fast"][0] == res["hf"][0]
        for engine in ("hf", "fast"):
            gen, wall, n = res[engine]
            ratio = res["hf"][1] / wall
            print(f"{label:<32} {engine:<6} {wall:8.1f} {n:8d} {n / wall:8.1f} {ratio:7.2f}x {str(same):>11}")
        key = label.split(" ")[0]
        summary[key] = {
            "hf_generate_tokens_per_s": round(res["hf"][2] / res["hf"][1], 2),
            "ours_tokens_per_s": round(res["fast"][2] / res["fast"][1], 2),
            "eval_speedup_vs_hf_generate": round(res["hf"][1] / res["fast"][1], 3),
            "identical_tokens": same,
        }
    first = next(iter(summary.values()))
    print(json.dumps({"device": args.device, "batch_size": args.batch_size, "n_prompts": len(rows),
                      "eval_speedup_vs_hf_generate": first["eval_speedup_vs_hf_generate"], "cases": summary}))


if __name__ == "__main__":
    main()
