"""What a ``--cuda-graph`` decode step is made of, measured on a CPU: the operations one fixed pass replays
and the host work around them.

    .venv/bin/python bench/graph_step.py --tokenizer runs/bench-assets/tokenizer --data-dir runs/bench-assets/data

1. Operations: one :meth:`SlotDecoder.fixed_pass` of the SmolLM2-135M shape at 256 slots, counted by aten
   op (views apart). On a GPU each is a kernel of its own, also inside a CUDA graph: the graph saves the
   launches from Python, not the kernels.
2. Host work: the real continuous-batching loop over all 1,319 GSM8K prompts x 256 new tokens at 256 slots,
   as the GPU benchmark runs it (``bench/gpu.sh --stages eval``), with the model's arithmetic taken out: the
   fixed pass returns a ready tensor and the greedy choice is a uniformly random token that is never end of
   text (random weights' output is as good as random; a row still stops early where the random tokens
   happen to spell a stop point, so there are a few more passes than on the GPU's 1,536). What remains is the loop's Python, the stop
   checks, the slots' bookkeeping and the step's small input copies. The new rows' prefill runs a 1-layer
   model with a tiny hidden size and is reported apart (on a GPU it is the real model, launched op by op).

Why on a CPU: the GPU machine's minutes go to the figures only it can give; these two do not need it.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402  (bench/speed.py: shapes, tokenizer and prompts, as the GPU benchmark builds them)

from tinyslm.evaluate import generation  # noqa: E402
from tinyslm.evaluate.decoder import SlotDecoder  # noqa: E402

VIEWS = {
    "view", "_unsafe_view", "expand", "slice", "select", "unsqueeze", "squeeze", "transpose", "t", "permute",
    "reshape", "alias", "as_strided", "detach", "split", "split_with_sizes", "unbind",
}  # fmt: skip


class OpCount(TorchDispatchMode):
    """Counts the aten ops run under it, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def random_model(shape: str | None, tokenizer: Any) -> torch.nn.Module:
    """A random Llama of ``shape`` (None: 1 layer, hidden size 64, the real vocabulary)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if shape is None:
        arch, kwargs = "llama", dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, vocab_size=len(tokenizer),
        )  # fmt: skip
    else:
        arch, kwargs = speed.SHAPES[shape]
    config = AutoConfig.for_model(arch, **kwargs, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@torch.inference_mode()
def count_ops(tokenizer: Any, slots: int, shape: str = "smollm2-135m") -> dict[str, Any]:
    """Aten ops (views apart) in one fixed pass of ``shape``."""
    model = random_model(shape, tokenizer)
    dec = SlotDecoder(model, slots=slots, capacity=512, device=torch.device("cpu"), prefix=[1, 2], graph=True)
    dec.admit([[5, 6, 7]] * slots)
    dec.fixed_step([9] * slots)  # the first step sets the fixed buffers up
    with OpCount() as count:
        dec.fixed_pass()
    real = {k: v for k, v in count.ops.items() if k not in VIEWS}
    layers = model.config.num_hidden_layers
    return {"ops": sum(real.values()), "per_layer": round(sum(real.values()) / layers, 1), "by_name": real}


def host_work(tokenizer: Any, rows: list[list[int]], slots: int, new_tokens: int) -> dict[str, Any]:
    """Seconds of the decode loop with the model's arithmetic taken out (see the module's docstring)."""
    model = random_model(None, tokenizer)
    stops = torch.tensor(sorted(generation.eos_ids(model, tokenizer)))
    vocab = model.config.vocab_size
    ready = torch.zeros(slots, 1)
    picks = torch.Generator().manual_seed(0)
    spent = collections.Counter()

    def timed(name: str, fn: Any, clock: bool = True) -> Any:
        """``fn`` counted, and timed where ``clock`` (per prefill only: a clock read per step or per token
        would be a sizeable part of what is measured)."""

        def wrapper(*args: Any) -> Any:
            spent[f"{name} calls"] += 1
            if not clock:
                return fn(*args)
            t = time.perf_counter()
            out = fn(*args)
            spent[name] += time.perf_counter() - t
            return out

        return wrapper

    def random_choice(logits: torch.Tensor) -> torch.Tensor:
        t = torch.randint(vocab, (logits.shape[0],), generator=picks)
        return torch.where(torch.isin(t, stops), (t + 1) % vocab, t)

    patches = [
        (SlotDecoder, "fixed_pass", lambda self: ready),
        (SlotDecoder, "admit", timed("prefill", SlotDecoder.admit)),
        (SlotDecoder, "step", timed("step", SlotDecoder.step, clock=False)),
        (generation, "greedy", random_choice),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, new in patches:
        setattr(owner, name, new)
    try:
        t = time.perf_counter()
        decoded = generation.decode_rows(
            model, tokenizer, rows, max_new_tokens=new_tokens, batch_size=slots, graph=True
        )
        tokens = sum(len(ids) for _, ids in decoded)
        wall = time.perf_counter() - t
    finally:
        for owner, name, old in saved:
            setattr(owner, name, old)
    host = wall - spent["prefill"]
    return {
        "prompts": len(rows),
        "tokens": tokens,
        "passes": spent["step calls"] + spent["prefill calls"],
        "wall_s": round(wall, 2),
        "prefill_s": round(spent["prefill"], 2),
        "host_ms_per_step": round(1000 * host / spent["step calls"], 2),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", help="a copy of SmolLM2's tokenizer files (default: the offline alias)")
    ap.add_argument("--data-dir", default=speed.data_dir_default(), help="offline data (GSM8K)")
    ap.add_argument("--n", type=int, default=1319, help="GSM8K test prompts (default all 1,319)")
    ap.add_argument("--slots", type=int, default=256, help="rows decoded at once (default 256)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    args = ap.parse_args(argv)
    tokenizer = speed.load_bench_tokenizer(args.tokenizer)
    ops = count_ops(tokenizer, args.slots)
    top = ", ".join(f"{k} {v}" for k, v in sorted(ops["by_name"].items(), key=lambda kv: -kv[1])[:8])
    print(
        f"fixed pass, SmolLM2-135M shape, {args.slots} slots: {ops['ops']} ops ({ops['per_layer']} a layer; {top})"
    )
    rows = speed.gsm8k_prompts(tokenizer, Path(args.data_dir), args.n)
    host = host_work(tokenizer, rows, args.slots, args.max_new_tokens)
    print(
        f"host work, {host['prompts']} prompts x {args.max_new_tokens} new tokens at {args.slots} slots: "
        f"{host['passes']} passes, {host['wall_s']} s in all, of which prefill (tiny model) {host['prefill_s']} s: "
        f"{host['host_ms_per_step']} ms of host work a step"
    )


if __name__ == "__main__":
    main()
