"""Speed, measured side by side in one invocation: tiny-slm against the Hugging Face anchor it replaces.

    python bench/speed.py --quick                        # CPU, meant to take < 10 minutes on 2 idle cores
    python bench/speed.py --device cuda --shapes smollm2-135m,qwen2.5-0.5b --tokenizer T --data-dir D

Two halves, each printed as a table; the run ends with one JSON line of ratios and the absolute figures
behind them (the keys of the first shape and target set at top level, every case under ``cases``).

**Evaluation.** What ``tiny-slm-eval`` runs (``--engine fast``: continuous batching over a slot KV cache,
``--eval-batch-size`` slots) against HF ``generate`` in length-sorted fixed batches of the same size, on the
same GSM8K prompts, greedily, with the same stop rule, so both produce the same tokens (checked, the
``same tokens`` column). On a CPU with the edge extra installed, a third row: the same weights as an F32
GGUF decoded by llama.cpp through the same loop (``--backend llama-cpp``), same threads. Speed = generated
(non-pad) tokens/s. A shape whose real weights are installed
offline (``smollm2-135m`` -> the ``smollm2-135m-instruct`` alias) is evaluated with them; other shapes get
random weights, which never write an answer line, so every row runs to ``--max-new-tokens``: that
measures the per-step cost only, not the gain from dropping finished rows.

**Training.** For each method (full, LoRA, DoRA) and target set, the anchor, HF ``Trainer`` (+ ``peft``
``get_peft_model`` for LoRA/DoRA), against ``tinyslm.train.recipe.train``, each in its own process (so peak
memory is per run and neither inherits the other's state), on

* the same weights: a model built from the shape's config with random weights (seed 0), saved once to a
  temporary directory with the SmolLM2 tokenizer; the hub is unreachable on the benchmark machines, and
  throughput does not depend on the weights' values;
* the same data: the first rows of GSM8K train, encoded by :func:`tinyslm.data.training.encode_examples`
  (the evaluation prompt + target, completion-only labels), in the order tiny-slm's recipe takes them, so
  optimizer step ``s`` sees the same rows on both sides (the anchor's sampler is made sequential over
  rows pre-arranged in that order). The ``loss@1`` column shows it: both sides' first-step losses agree,
  and with full fine-tuning (no dropout) so do the last step's: both do the same optimisation;
* the same protocol: effective batch, micro-batch and gradient accumulation, AdamW, lr (tiny-slm's
  per-method default), cosine schedule with the same warmup steps, weight decay 0.01, clipping at 1.0,
  LoRA r=8, alpha=32, dropout 0.05, bf16 autocast with fp32 master weights on CUDA, fp32 on CPU.

The anchor is what a user would write: ``DataCollatorForSeq2Seq`` padding each micro-batch to its
longest row, the model's own loss over full-vocabulary logits. tiny-slm sorts each step's rows by length
into micro-batches and projects only the positions that predict target tokens onto the vocabulary.

Timing: wall time from the end of the ``--warmup-steps`` untimed steps to the end of the last step, so
model loading, first-step costs (allocator warm-up, lazy initialisation) and saving are excluded; samples/s and real (non-pad)
tokens/s over that window. Both sides see the same rows, so their token counts are equal. Peak memory:
CUDA max allocated, or the process's peak resident set size on CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tinyslm.evaluate.generation import decode_rows, eos_ids  # noqa: E402

# The real architectures of the study's models (from their hub config.json), for random-weight runs.
# "tiny" is a 2-layer toy for checking the benchmark itself in seconds; its figures mean nothing.
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "smollm2-135m": (
        "llama",
        dict(
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            vocab_size=49152,
            tie_word_embeddings=True,
            rope_theta=100000.0,
            rms_norm_eps=1e-5,
            max_position_embeddings=8192,
        ),
    ),
    "smollm2-360m": (
        "llama",
        dict(
            hidden_size=960,
            intermediate_size=2560,
            num_hidden_layers=32,
            num_attention_heads=15,
            num_key_value_heads=5,
            vocab_size=49152,
            tie_word_embeddings=True,
            rope_theta=100000.0,
            rms_norm_eps=1e-5,
            max_position_embeddings=8192,
        ),
    ),
    "qwen2.5-0.5b": (
        "qwen2",
        dict(
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            vocab_size=151936,
            tie_word_embeddings=True,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
            max_position_embeddings=32768,
        ),
    ),
    "tiny": (
        "llama",
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=49152,
            tie_word_embeddings=True,
            initializer_range=0.2,
        ),
    ),  # a large init: losses differ from row to row
}
REAL_WEIGHTS = {"smollm2-135m": "smollm2-135m-instruct"}  # shape -> offline alias with the real weights
METHODS = ("full", "lora", "dora")
TOKENIZER_ALIAS = "smollm2-135m-instruct"


# ---------------------------------------------------------------------------------------------------
# Models and data shared by both halves.


def load_bench_tokenizer(path: str | None) -> Any:
    """``--tokenizer DIR``, else the installed SmolLM2 alias's (a GPU box has no alias: pass a copied one)."""
    from tinyslm.models.load import load_tokenizer, resolve_model
    from tinyslm.models.zoo import is_installed

    if path:  # tokenizer files only (no config.json), so not through load_tokenizer's checkpoint check
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer
    if not is_installed(TOKENIZER_ALIAS):
        sys.exit(
            f"the {TOKENIZER_ALIAS} alias is not installed here; pass --tokenizer DIR (a copy of its "
            "tokenizer files)"
        )
    return load_tokenizer(resolve_model(TOKENIZER_ALIAS))


def build_random_model(shape: str, tokenizer: Any, dest: Path) -> Path:
    """Save a seeded random-weight model of ``shape`` (float32) with ``tokenizer`` to ``dest``, for both sides."""
    from transformers import AutoConfig, AutoModelForCausalLM

    arch, kwargs = SHAPES[shape]
    config = AutoConfig.for_model(
        arch,
        **kwargs,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


class ModelDirs:
    """``model_dirs[shape]``: the shape's random-weight checkpoint, built on first use (a 0.5B model takes a while)."""

    def __init__(self, tokenizer: Any, root: Path) -> None:
        self.tokenizer, self.root, self.built = tokenizer, root, {}

    def __getitem__(self, shape: str) -> Path:
        if shape not in self.built:
            self.built[shape] = build_random_model(shape, self.tokenizer, self.root / f"model-{shape}")
        return self.built[shape]


def data_dir_default() -> str:
    return os.environ.get("TINYSLM_DATA_DIR") or str(ROOT.parent / "shared" / "data")


# ---------------------------------------------------------------------------------------------------
# Evaluation: our decode loop against HF generate.


def gsm8k_prompts(tokenizer: Any, data_dir: Path, n: int, shots: int = 0) -> list[list[int]]:
    """The first ``n`` GSM8K test prompts as ``tiny-slm-eval`` builds them (``shots`` exemplars, seed 1234)."""
    from tinyslm.data.benchmarks import get_benchmark, load_examples, plan_fewshot
    from tinyslm.data.prompts import build_prompt

    plan = plan_fewshot(load_examples(get_benchmark("gsm8k"), data_dir), shots, 1234, data_dir)
    return [
        tokenizer(build_prompt(tokenizer, e, "number", plan.exemplars), add_special_tokens=False)["input_ids"]
        for e in plan.eval_examples[:n]
    ]


# Our decoding engines the evaluation table can run beside HF generate: name, row label, JSON key prefix.
EVAL_ENGINES = (("fast", "ours", "ours"), ("graph", "ours graph", "ours_graph"))
EVAL_ENGINES += (("graph-compile", "ours g+comp", "ours_graph_compile"),)


def run_engine(
    name: str,
    model: Any,
    tokenizer: Any,
    rows: list[list[int]],
    batch_size: int,
    max_new_tokens: int,
    stop_ids: list[int],
    device: str,
) -> tuple[list[list[int]], float]:
    """Decode ``rows`` with one engine at the same batch size; the generated ids per row and the wall time.

    ``hf`` decodes length-sorted fixed batches through ``model.generate``; ``fast`` is what ``tiny-slm-eval``
    runs (continuous batching with ``batch_size`` slots on Llama-family models); ``graph`` is ``fast`` with
    ``--cuda-graph`` (fixed-shape steps, replayed from a CUDA graph on a GPU, eagerly elsewhere);
    ``graph-compile`` is ``graph`` with the step compiled by ``torch.compile`` before it is captured.
    """
    out: list = [None] * len(rows)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i, g in decode_rows(
        model,
        tokenizer,
        rows,
        engine="fast" if name.startswith("graph") else name,
        graph=name.startswith("graph"),
        compile_step=name == "graph-compile",
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        stop_ids=stop_ids,
    ):
        out[i] = g
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def llama_cpp_f32(
    model: Any, tokenizer: Any, rows: list[list[int]], args: argparse.Namespace, stop: list[int]
) -> tuple[list[list[int]], float, int] | None:
    """The third column on a CPU where the edge extra is installed: the same weights written to an F32 GGUF
    and decoded by llama.cpp through the same loop (``--backend llama-cpp``), at the same batch size and
    thread count as torch. None when llama-cpp-python is missing or the architecture cannot be exported."""
    import tempfile

    from tinyslm.core.errors import UserError
    from tinyslm.evaluate.llamacpp import LlamaCppModel
    from tinyslm.export.gguf import write_gguf

    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as d:
        try:
            write_gguf(model, tokenizer, Path(d) / "m.gguf", ftype="f32")
        except UserError as e:
            print(f"(no llama.cpp column: {e})")
            return None
        gguf_model = LlamaCppModel(Path(d) / "m.gguf", threads=torch.get_num_threads())
        run_engine(
            "fast", gguf_model, tokenizer, rows[: args.eval_batch_size], args.eval_batch_size, 2, stop, "cpu"
        )
        gen, wall = run_engine(
            "fast", gguf_model, tokenizer, rows, args.eval_batch_size, args.max_new_tokens, stop, "cpu"
        )
        gguf_model.close()
    return gen, wall, sum(len(g) for g in gen)


def agreement(ours: list[list[int]], anchor: list[list[int]]) -> dict[str, Any]:
    """How far two engines' greedy outputs agree, row by row: identical rows, and the mean share of each
    anchor row that ours reproduces before the first differing token (on random bf16 weights the top two
    logits are often within rounding of each other, so the first near-tie decides where rows part)."""
    same_prefix = []
    for a, b in zip(ours, anchor, strict=False):
        n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        same_prefix.append(n / max(len(b), 1))
    return {
        "rows": len(same_prefix),
        "identical_rows": sum(a == b for a, b in zip(ours, anchor, strict=False)),
        "mean_prefix_agreement": round(sum(same_prefix) / max(len(same_prefix), 1), 4),
    }


def bench_eval(args: argparse.Namespace, tokenizer: Any, model_dirs: ModelDirs) -> dict[str, dict]:
    """The evaluation table; returns per-case figures keyed by shape.

    ``--anchor-n K`` decodes only the first K prompts with HF ``generate`` (same batch size): its tokens/s
    is then measured on those, ours on all ``--n``, and agreement on the K rows both decoded.
    """
    from transformers import AutoModelForCausalLM

    from tinyslm.models.load import load_model
    from tinyslm.models.zoo import is_installed

    tokenizer.padding_side = "left"
    rows = gsm8k_prompts(tokenizer, Path(args.data_dir), args.n, args.shots)
    anchor_rows = rows[: args.anchor_n or len(rows)]
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    print(
        f"\n== evaluation: device={args.device} prompts={len(rows)} (HF generate: {len(anchor_rows)}) "
        f"shots={args.shots} batch={args.eval_batch_size} max_new_tokens={args.max_new_tokens}"
    )
    print(
        f"{'model':<36} {'engine':<11} {'prompts':>7} {'wall s':>8} {'tokens':>8} {'tok/s':>8} "
        f"{'speed-up':>8} {'same tokens':>11}"
    )
    summary: dict[str, dict] = {}
    for shape in args.shapes:
        alias = REAL_WEIGHTS.get(shape)
        if alias and is_installed(alias) and not args.random_eval:
            model, _ = load_model(alias, dtype=dtype, device=args.device)
            label = f"{alias} (real)"
        else:
            model = AutoModelForCausalLM.from_pretrained(model_dirs[shape], dtype=dtype).to(args.device)
            label = f"{shape} (random weights)"
        model.eval()
        stop = eos_ids(model, tokenizer)
        res, warm = {}, {}
        engines = [("hf", anchor_rows)] + [(e, rows) for e in args.engines]
        for engine, todo in engines:
            try:  # on a GPU one engine's failure must not cost the others' figures
                # untimed warm-up: first-call costs would fall on whichever runs first. A compiled step
                # is compiled for its exact shapes (slots x capacity), which the whole run fixes: its
                # warm-up is the whole run, and its wall time (compiling included) is reported apart.
                t_warm = time.perf_counter()
                whole = engine == "graph-compile"
                run_engine(
                    engine,
                    model,
                    tokenizer,
                    todo if whole else todo[: args.eval_batch_size],
                    args.eval_batch_size,
                    args.max_new_tokens if whole else 2,
                    stop,
                    args.device,
                )
                warm[engine] = time.perf_counter() - t_warm
                gen, wall = run_engine(
                    engine,
                    model,
                    tokenizer,
                    todo,
                    args.eval_batch_size,
                    args.max_new_tokens,
                    stop,
                    args.device,
                )
            except Exception as e:  # noqa: BLE001 - reported, and the run goes on
                if engine == "hf" or not args.keep_going:
                    raise
                print(f"{engine} engine failed: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            res[engine] = (gen, wall, sum(len(g) for g in gen))
        llama = llama_cpp_f32(model, tokenizer, rows, args, stop) if args.device == "cpu" else None
        if llama is not None:
            res["llama"] = llama
        rate = {engine: n / wall for engine, (_, wall, n) in res.items()}
        agree = {engine: agreement(gen, res["hf"][0]) for engine, (gen, _, _) in res.items()}
        names = [("hf", "HF generate"), *((e, label) for e, label, _ in EVAL_ENGINES), ("llama", "llama.cpp")]
        for engine, name in names:
            if engine not in res:
                continue
            gen, wall, n = res[engine]
            same = agree[engine]
            same_col = (
                "True"
                if same["identical_rows"] == same["rows"]
                else f"{same['identical_rows']}/{same['rows']} rows"
            )
            print(
                f"{label:<36} {name:<11} {len(gen):7d} {wall:8.1f} {n:8d} {rate[engine]:8.1f} "
                f"{rate[engine] / rate['hf']:7.2f}x {same_col:>11}"
            )
        summary[shape] = {"model": label, "n_prompts": len(rows), "hf_generate_prompts": len(anchor_rows)}
        summary[shape]["hf_generate_tokens_per_s"] = round(rate["hf"], 2)
        for engine, _, key in EVAL_ENGINES:
            if engine not in args.engines:  # not asked for
                continue
            if engine not in res:
                summary[shape][f"{key}_failed"] = True
                continue
            summary[shape].update(
                {
                    f"{key}_eval_tokens_per_s": round(rate[engine], 2),
                    f"{key}_eval_wall_s": round(res[engine][1], 2),
                    f"{key}_eval_speedup_vs_hf_generate": round(rate[engine] / rate["hf"], 3),
                    f"{key}_identical_tokens": agree[engine]["identical_rows"] == agree[engine]["rows"],
                    f"{key}_agreement_with_hf_generate": agree[engine],
                    **({f"{key}_first_run_s": round(warm[engine], 2)} if engine == "graph-compile" else {}),
                }
            )
        if "fast" in res:  # the names the CPU table and the README have always used
            summary[shape]["eval_speedup_vs_hf_generate"] = summary[shape]["ours_eval_speedup_vs_hf_generate"]
            summary[shape]["identical_tokens"] = summary[shape]["ours_identical_tokens"]
        if llama is not None:
            summary[shape].update(
                {
                    "llama_cpp_f32_tokens_per_s": round(rate["llama"], 2),
                    **(
                        {"ours_speedup_vs_llama_cpp_f32": round(rate["fast"] / rate["llama"], 3)}
                        if "fast" in rate
                        else {}
                    ),
                    "llama_cpp_f32_identical_tokens": llama[0] == res["hf"][0],
                    "llama_cpp_f32_identical_rows": agree["llama"]["identical_rows"],
                }
            )
        del model
    return summary


# ---------------------------------------------------------------------------------------------------
# Training: HF Trainer + PEFT against tinyslm.train, each run in a worker process.


def step_ordered_rows(tokenizer: Any, spec: dict) -> list:
    """The encoded rows in the order tiny-slm's recipe consumes them (epoch 0), ``steps x batch`` of them.

    Exactly what ``train()`` does: the first ``limit`` GSM8K train rows, :func:`encode_examples`, then
    :func:`epoch_order` with the run's seed. Step ``s`` takes rows ``[s * batch, (s + 1) * batch)``.
    """
    from tinyslm.data.training import encode_examples, load_training_set
    from tinyslm.train.recipe import epoch_order

    tset = load_training_set("gsm8k-train", data_dir=spec["data_dir"], limit=spec["limit"])
    rows, _ = encode_examples(tokenizer, tset.examples, tset.answer_style, spec["max_length"])
    need = spec["steps"] * spec["batch_size"]
    if len(rows) < need:
        raise SystemExit(
            f"only {len(rows)} of the first {spec['limit']} GSM8K train rows fit --max-length "
            f"{spec['max_length']} with a target token left; raise --max-length"
        )
    order = epoch_order(len(rows), spec["seed"], 0)
    return [rows[i] for i in order[:need]]


def _peak_mib(device: str) -> float:
    from tinyslm.core.telemetry import peak_memory_mib

    return peak_memory_mib(torch.device(device))[0]


def anchor_worker(spec: dict) -> dict:
    """HF Trainer (+ peft) as a user would set it up; returns step end times, losses and peak memory."""
    from torch.utils.data import SequentialSampler
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from tinyslm.data.training import IGNORE_INDEX
    from tinyslm.train.config import PROTOCOL, parse_target_modules

    cuda = spec["device"] == "cuda"
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    tokenizer.padding_side = "right"
    rows = step_ordered_rows(tokenizer, spec)
    dataset = [
        {"input_ids": r.input_ids, "attention_mask": [1] * len(r.input_ids), "labels": r.labels} for r in rows
    ]
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    method = spec["method"]
    if method != "full":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=8,
            lora_alpha=32,
            lora_dropout=0.05,
            target_modules=parse_target_modules(spec["targets"]),
            use_dora=method == "dora",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)

    class StepClock(TrainerCallback):
        """Wall time at the end of every optimizer step (after the GPU has finished it)."""

        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

    class InOrderTrainer(Trainer):
        """Takes the rows as given (tiny-slm's order), so that both sides train on the same batches."""

        def _get_train_sampler(self, *args: Any, **kwargs: Any) -> SequentialSampler:
            return SequentialSampler(self.train_dataset)

    targs = TrainingArguments(
        output_dir=str(Path(spec["out"]) / "hf"),
        per_device_train_batch_size=spec["anchor_micro_batch_size"],
        gradient_accumulation_steps=spec["batch_size"] // spec["anchor_micro_batch_size"],
        max_steps=spec["steps"],
        learning_rate=PROTOCOL[method]["lr"],
        lr_scheduler_type="cosine",
        warmup_steps=spec["lr_warmup_steps"],
        weight_decay=0.01,
        max_grad_norm=1.0,
        bf16=cuda,
        use_cpu=not cuda,
        optim="adamw_torch_fused" if cuda else "adamw_torch",  # as ours: one fused kernel on a GPU
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=spec["seed"],
        remove_unused_columns=False,
    )
    clock = StepClock()
    trainer = InOrderTrainer(
        model=model,
        args=targs,
        train_dataset=dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=IGNORE_INDEX),
        processing_class=tokenizer,
        callbacks=[clock],
    )
    from tinyslm.core.telemetry import reset_peak_memory

    reset_peak_memory(
        torch.device(spec["device"])
    )  # the same window as tinyslm.train's: the loop, not the load
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"step_ends": clock.ends, "losses": losses, "peak_mem_mib": _peak_mib(spec["device"])}


def ours_worker(spec: dict) -> dict:
    """``tinyslm.train.recipe.train`` on the same model, data and settings; step times from its metrics.jsonl."""
    from tinyslm.core.files import read_jsonl
    from tinyslm.train.config import TrainConfig
    from tinyslm.train.recipe import train

    out = Path(spec["out"]) / "ours"
    cfg = TrainConfig(
        model=spec["model_dir"],
        method=spec["method"],
        output=str(out),
        dataset="gsm8k-train",
        data_dir=spec["data_dir"],
        limit=spec["limit"],
        max_steps=spec["steps"],
        target_modules=spec["targets"],
        batch_size=spec["batch_size"],
        micro_batch_size=spec["micro_batch_size"],
        max_length=spec["max_length"],
        seed=spec["seed"],
        device=spec["device"],
        save_every=10**9,
        overwrite=True,
        progress=False,
        compile=spec.get("compile", False),
    )
    run = train(cfg)
    if run.get("status") != "finished":
        raise SystemExit(f"tiny-slm training did not finish: {run.get('status')} {run.get('reason', '')}")
    assert run["schedule"]["warmup_steps"] == spec["lr_warmup_steps"], "lr schedules differ"
    metrics = list(read_jsonl(out / "metrics.jsonl"))
    return {
        "step_ends": [m["elapsed_s"] for m in metrics],
        "losses": [m["loss"] for m in metrics],
        "peak_mem_mib": run["peak_mem_mib"],
    }


WORKERS = {"anchor": anchor_worker, "ours": ours_worker}


def run_worker(kind: str, spec: dict, timeout: float | None = None, keep_going: bool = False) -> dict | None:
    """Run one side in a fresh interpreter; its output is shown only if it fails. With ``keep_going`` a
    failure or a timeout is printed and returns None (a GPU run keeps the cases that worked)."""
    result = Path(spec["out"]) / f"{kind}.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        kind,
        "--spec",
        json.dumps(spec),
        "--result",
        str(result),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        why = f"{kind} worker ({spec['method']}, {spec['targets']}) ran past {timeout:.0f} s"
        if not keep_going:
            sys.exit(why)
        print(why, file=sys.stderr)
        return None
    if proc.returncode != 0:
        why = f"{kind} worker failed ({spec['method']}, {spec['targets']}):\n{(proc.stdout + proc.stderr)[-4000:]}"
        if not keep_going:
            sys.exit(why)
        print(why, file=sys.stderr)
        return None
    return json.loads(result.read_text())


def throughput(res: dict, rows: list, spec: dict) -> dict:
    """samples/s and real tokens/s between the end of the warm-up steps and the end of the last step."""
    w, b = spec["warmup_steps"], spec["batch_size"]
    ends = res["step_ends"]
    if len(ends) != spec["steps"]:
        raise SystemExit(f"expected {spec['steps']} step times, got {len(ends)}")
    wall = ends[-1] - ends[w - 1]
    tokens = sum(len(r.input_ids) for r in rows[w * b :])
    samples = (spec["steps"] - w) * b
    return {
        "samples_per_s": round(samples / wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "timed_s": round(wall, 2),
        "peak_mem_mib": round(res["peak_mem_mib"], 1),
        "loss_first": round(res["losses"][0], 4),
        "loss_last": round(res["losses"][-1], 4),
    }


def bench_train(
    args: argparse.Namespace, tokenizer: Any, model_dirs: ModelDirs, work: Path, save: Any = None
) -> dict[str, dict]:
    """The training table; returns per-case figures keyed by ``shape/targets``.

    ``--ours compile,eager`` runs tiny-slm once per variant (``compile``: ``--compile``); the first variant
    listed is the one the ratios name ``ours_*``, the others are kept as ``ours_<variant>_*``. With
    ``--keep-going`` a variant that fails is reported and the next one listed stands in for it. ``save``
    is called with the summary after every case, so a run cut short keeps what it measured.
    """
    steps = args.warmup_steps + args.train_steps
    print(
        f"\n== training: device={args.device} batch={args.batch_size} micro={args.micro_batch_size} "
        f"(anchor {args.anchor_micro_batch_size or args.micro_batch_size}) "
        f"max_length={args.max_length} steps={args.warmup_steps} warm-up + {args.train_steps} timed "
        f"({'bf16 autocast' if args.device == 'cuda' else 'fp32'}); ours: {', '.join(args.ours)}"
    )
    print(
        f"{'shape':<14} {'targets':<10} {'method':<6} {'side':<16} {'samples/s':>9} {'real tok/s':>10} "
        f"{'speed-up':>8} {'peak MiB':>9} {'loss@1':>8} {f'loss@{steps}':>8}"
    )
    summary: dict[str, dict] = {}
    for shape in args.shapes:
        for targets in args.targets:
            case: dict[str, Any] = {}
            summary[f"{shape}/{targets}"] = case
            for method in args.methods:
                spec = {
                    "model_dir": str(model_dirs[shape]),
                    "method": method,
                    "targets": targets,
                    "data_dir": args.data_dir,
                    "limit": steps * args.batch_size,
                    "steps": steps,
                    "warmup_steps": args.warmup_steps,
                    "lr_warmup_steps": math.ceil(0.03 * steps),
                    "batch_size": args.batch_size,
                    "micro_batch_size": args.micro_batch_size,
                    "anchor_micro_batch_size": args.anchor_micro_batch_size or args.micro_batch_size,
                    "max_length": args.max_length,
                    "seed": args.seed,
                    "device": args.device,
                    "out": str(work / f"{shape}-{targets}-{method}"),
                }
                Path(spec["out"]).mkdir(parents=True, exist_ok=True)
                rows = step_ordered_rows(tokenizer, spec)
                timeout, keep = args.worker_timeout, args.keep_going
                got = run_worker("anchor", spec, timeout, keep)
                # an anchor that fails (out of memory, say) still lets ours run: its figures stand alone
                anchor = throughput(got, rows, spec) if got is not None else None
                case[f"hf_trainer_{method}"] = anchor or {"failed": True}
                lines = [("HF Trainer", anchor)] if anchor else []
                for variant in [*args.ours, *args.fallback]:
                    if variant in args.fallback and f"ours_{method}" in case:
                        break  # a fallback runs only where every --ours variant failed
                    got = run_worker("ours", {**spec, "compile": variant == "compile"}, timeout, keep)
                    key = f"ours_{method}" if f"ours_{method}" not in case else f"ours_{variant}_{method}"
                    if got is None:
                        case[f"ours_{variant}_{method}_failed"] = True
                        continue
                    ours = {**throughput(got, rows, spec), "variant": variant}
                    case[key] = ours
                    lines.append((f"ours ({variant})", ours))
                    if anchor and abs(ours["loss_first"] - anchor["loss_first"]) > 1e-2 * abs(
                        anchor["loss_first"]
                    ):
                        print(
                            f"warning: first-step losses differ ({anchor['loss_first']} vs {ours['loss_first']}): "
                            "the two sides did not train on the same rows",
                            file=sys.stderr,
                        )
                for side, r in lines:
                    x = f"{r['samples_per_s'] / anchor['samples_per_s']:7.2f}x" if anchor else f"{'-':>8}"
                    print(
                        f"{shape:<14} {targets:<10} {method:<6} {side:<16} {r['samples_per_s']:9.3f} "
                        f"{r['tokens_per_s']:10.1f} {x} {r['peak_mem_mib']:9.0f} {r['loss_first']:8.4f} {r['loss_last']:8.4f}"
                    )
                case.update(case_ratios(case))
                if save is not None:
                    save(summary)
    return summary


def case_ratios(case: dict) -> dict[str, float]:
    """Each method's ratios against the anchor of the same case: its own method's samples/s and peak
    memory, and the anchor's full fine-tuning (whichever order the methods ran in); none against a side
    that failed."""
    out: dict[str, float] = {}
    for method in ("full", "lora", "dora"):
        ours = case.get(f"ours_{method}")
        if not ours:
            continue
        for ref in dict.fromkeys((method, "full")):
            anchor = case.get(f"hf_trainer_{ref}", {})
            if "samples_per_s" in anchor:
                out[f"{method}_speedup_vs_hf_trainer_{ref}"] = round(
                    ours["samples_per_s"] / anchor["samples_per_s"], 3
                )
        anchor = case.get(f"hf_trainer_{method}", {})
        if "peak_mem_mib" in anchor:
            out[f"{method}_peak_mem_vs_hf_trainer_{method}"] = round(
                ours["peak_mem_mib"] / anchor["peak_mem_mib"], 3
            )
    return out


def flat_figures(eval_summary: dict, train_summary: dict) -> dict[str, Any]:
    """The first case of each half as flat keys: the ratios and the absolute figures behind them."""
    flat: dict[str, Any] = {}
    if eval_summary:
        first = next(iter(eval_summary.values()))
        flat.update(
            {
                k: first[k]
                for k in (
                    "eval_speedup_vs_hf_generate",
                    "hf_generate_tokens_per_s",
                    "ours_eval_tokens_per_s",
                    "identical_tokens",
                    "llama_cpp_f32_tokens_per_s",
                    "ours_speedup_vs_llama_cpp_f32",
                    "llama_cpp_f32_identical_tokens",
                )
                if k in first
            }
        )
    if train_summary:
        for key, value in next(iter(train_summary.values())).items():
            if isinstance(value, dict):
                if "samples_per_s" not in value:
                    continue
                flat[f"{key}_samples_per_s"] = value["samples_per_s"]
                flat[f"{key}_tokens_per_s"] = value["tokens_per_s"]
            else:
                flat[key] = value
    return flat


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument(
        "--shapes",
        default="smollm2-135m",
        help=f"comma-separated architectures ({', '.join(SHAPES)}; default smollm2-135m)",
    )
    ap.add_argument("--parts", default="eval,train", help="eval, train or both (default)")
    ap.add_argument(
        "--tokenizer", help="tokenizer directory (default: the installed smollm2-135m-instruct alias)"
    )
    ap.add_argument("--data-dir", default=data_dir_default(), help="offline data (default $TINYSLM_DATA_DIR)")
    ap.add_argument("--seed", type=int, default=1234)
    g = ap.add_argument_group("evaluation")
    g.add_argument("--n", type=int, default=64, help="GSM8K test prompts (default 64)")
    g.add_argument(
        "--eval-batch-size", type=int, default=16, help="decoding batch, both engines (default 16)"
    )
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument(
        "--anchor-n",
        type=int,
        default=0,
        help="HF generate decodes only the first K prompts (default: all --n); tokens/s compared",
    )
    g.add_argument("--shots", type=int, default=0, help="few-shot exemplars in each prompt (default 0)")
    g.add_argument(
        "--random-eval", action="store_true", help="evaluate random weights even where real ones exist"
    )
    g.add_argument(
        "--graph",
        action="store_true",
        help="a third row: ours with --cuda-graph (fixed-shape steps; CUDA graphs on a GPU, eager elsewhere)",
    )
    g.add_argument(
        "--engines",
        default="fast",
        help="our engines to run beside HF generate, comma-separated: fast, graph (as --graph), graph-compile "
        "(graph with the step compiled by torch.compile before capture; its warm-up is a whole untimed run, "
        "whose wall time, compiling included, is reported as first_run_s). Default fast",
    )
    g = ap.add_argument_group("training")
    g.add_argument("--methods", default="full,lora,dora", help="comma-separated (default full,lora,dora)")
    g.add_argument(
        "--targets",
        action="append",
        help="LoRA/DoRA target modules: all-linear (default) or e.g. q,v; repeat for several sets",
    )
    g.add_argument("--batch-size", type=int, default=64, help="effective batch (default 64)")
    g.add_argument("--micro-batch-size", type=int, default=8, help="rows per forward pass (default 8)")
    g.add_argument(
        "--anchor-micro-batch-size",
        type=int,
        help="the anchor's rows per forward pass, where its best differs (default: --micro-batch-size)",
    )
    g.add_argument("--max-length", type=int, default=512, help="tokens per example (default 512)")
    g.add_argument("--warmup-steps", type=int, default=1, help="untimed steps first (default 1)")
    g.add_argument(
        "--ours",
        default="eager",
        help="tiny-slm variants, comma-separated, each run: eager (default), compile (--compile); the first "
        "that succeeds is the one the ratios use",
    )
    g.add_argument("--train-steps", type=int, default=5, help="timed optimizer steps (default 5)")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a CPU run meant to take < 10 minutes: smollm2-135m, eval 24 prompts x 256 new tokens at "
        "batch 16; training batch 8 = 2 x 4, max length 256, 1 warm-up + 2 timed steps",
    )
    ap.add_argument(
        "--fallback",
        default="",
        help="with --keep-going: a tiny-slm variant run only where every --ours variant failed (e.g. eager)",
    )
    ap.add_argument(
        "--keep-going", action="store_true", help="a failed or timed-out worker is reported, not fatal"
    )
    ap.add_argument(
        "--worker-timeout", type=float, help="seconds one training worker may take (default: no limit)"
    )
    ap.add_argument(
        "--json-out", help="also write the final JSON here, and the training figures after every case"
    )
    ap.add_argument("--worker", choices=tuple(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.device, args.n, args.eval_batch_size, args.max_new_tokens = "cpu", 24, 16, 256
        args.batch_size, args.micro_batch_size, args.max_length = 8, 4, 256
        args.warmup_steps, args.train_steps = 1, 2
    args.targets = args.targets or ["all-linear"]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    args.shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    args.engines = list(dict.fromkeys(args.engines + (["graph"] if args.graph else [])))
    known = [e for e, _, _ in EVAL_ENGINES]
    if not args.engines or set(args.engines) - set(known):
        ap.error(f"--engines: choose from {', '.join(known)} (got {','.join(args.engines) or 'none'})")
    args.ours = [v.strip() for v in args.ours.split(",") if v.strip()]
    args.fallback = [v.strip() for v in args.fallback.split(",") if v.strip()]
    bad = [s for s in args.shapes if s not in SHAPES] + [m for m in args.methods if m not in METHODS]
    bad += [v for v in args.ours + args.fallback if v not in ("eager", "compile")]
    bad += sorted(args.parts - {"eval", "train"})
    if bad:
        ap.error(f"unknown: {', '.join(bad)}")
    if (
        args.n < 1
        or args.anchor_n < 0
        or args.shots < 0
        or args.eval_batch_size < 1
        or args.max_new_tokens < 1
    ):
        ap.error("--n, --eval-batch-size and --max-new-tokens must be >= 1, --shots >= 0")
    anchor_micro = args.anchor_micro_batch_size or args.micro_batch_size
    if args.batch_size % args.micro_batch_size or args.batch_size % anchor_micro:
        ap.error("--batch-size must be a multiple of both micro-batch sizes")
    if args.warmup_steps < 1 or args.train_steps < 1:
        ap.error("warm-up and timed steps must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA GPU here")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        result = WORKERS[args.worker](json.loads(args.spec))
        Path(args.result).write_text(json.dumps(result))
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight loading/saving bars would interleave with the tables
    tokenizer = load_bench_tokenizer(args.tokenizer)
    settings: dict[str, Any] = {
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if args.device.startswith("cuda"):
        settings["gpu"] = torch.cuda.get_device_name()
        import transformers

        settings["transformers"] = transformers.__version__
    if "eval" in args.parts:
        settings["eval"] = {
            "n_prompts": args.n,
            "hf_generate_prompts": args.anchor_n or args.n,
            "shots": args.shots,
            "batch_size": args.eval_batch_size,
            "max_new_tokens": args.max_new_tokens,
        }
    if "train" in args.parts:
        settings["train"] = {
            "batch_size": args.batch_size,
            "micro_batch_size": args.micro_batch_size,
            "anchor_micro_batch_size": args.anchor_micro_batch_size or args.micro_batch_size,
            "max_length": args.max_length,
            "warmup_steps": args.warmup_steps,
            "timed_steps": args.train_steps,
            "ours": args.ours,
        }
    figures: dict[str, Any] = {"eval": {}, "train": {}}

    def report() -> dict[str, Any]:
        out = {**flat_figures(figures["eval"], figures["train"]), "settings": settings, "cases": figures}
        if args.json_out:
            from tinyslm.core.files import atomic_write_text

            atomic_write_text(Path(args.json_out), json.dumps(out, indent=1) + "\n")
        return out

    def save_train(summary: dict) -> None:
        figures["train"] = summary
        report()

    with tempfile.TemporaryDirectory(prefix="tinyslm-bench-") as tmp:
        work = Path(tmp)
        model_dirs = ModelDirs(tokenizer, work)
        if "eval" in args.parts:
            figures["eval"] = bench_eval(args, tokenizer, model_dirs)
            report()
        if "train" in args.parts:
            figures["train"] = bench_train(args, tokenizer, model_dirs, work, save_train)
    print(json.dumps(report()))


if __name__ == "__main__":
    main()
