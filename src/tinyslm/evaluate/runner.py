"""The evaluation runner: model + benchmarks -> predictions.jsonl and results.json per benchmark.

Read it top to bottom: resolve and validate every input (cheap) before loading the model (slow); then
for each benchmark, resume from the predictions already on disk, generate the rest in batches, score
and append each prediction as it comes, and finally write results.json atomically.

Files per benchmark, under ``OUTPUT/<benchmark>/``:

* ``run_config.json``: what the predictions depend on, settings and the sha256 of the model, adapter, data
  and chat template (``hashes``); a rerun with different settings or swapped files is refused.
* ``predictions.jsonl``: one line per problem, streamed (so a killed run loses at most one batch).
* ``results.json``: the summary, written once every planned problem has a prediction.
"""

from __future__ import annotations

import contextlib
import json
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from tinyslm.config.limits import MAX_SEED, seed_problem
from tinyslm.config.settings import setting
from tinyslm.core.errors import UserError
from tinyslm.core.files import JsonlAppender, atomic_write_json, atomic_write_text, exclusive_lock, read_jsonl
from tinyslm.core.stats import wilson_interval
from tinyslm.data.benchmarks import (
    FEWSHOT_POOLS,
    Example,
    FewShotPlan,
    LoadedBenchmark,
    load_examples,
    parse_benchmark_list,
    plan_fewshot,
    resolve_data_dir,
)
from tinyslm.evaluate.lookup import DRAFT_TOKENS
from tinyslm.models.zoo import DEFAULT_MODEL
from tinyslm.results.provenance import (
    HashCache,
    chat_template_sha256,
    data_record,
    describe_mismatch,
    hash_mismatches,
    model_provenance,
    record,
    resume_hashes,
)
from tinyslm.results.schema import EvalResult
from tinyslm.scoring.equivalence import score_output

PROMPT_VERSION = 1  # bump when prompt wording changes: old predictions then no longer resume


@dataclass
class EvalConfig:
    """Every evaluation setting, once: default, bounds and help on the field (see :mod:`tinyslm.config.settings`);
    the ``tiny-slm-eval`` flags and the study's ``eval:`` section are generated from these fields."""

    model: str = setting(
        help="offline alias (see `tiny-slm models`), Hugging Face id, local checkpoint dir or .gguf file "
        "(default: %(default)s)",
        cli_default=DEFAULT_MODEL,
    )
    benchmarks: str = setting(
        help="comma-separated benchmarks (see `tiny-slm benchmarks`), or a test set of your own: a .jsonl file "
        "or a Hugging Face dataset id (question and answer per record, else name them: PATH.jsonl:question=problem; "
        "default: %(default)s)",
        flag=("--benchmark", "--benchmarks"),
        cli_default="gsm8k",
    )
    output: str = setting(help="output directory: OUTPUT/<benchmark>/{predictions.jsonl,results.json}")
    adapter: str | None = setting(None, help="PEFT adapter directory (LoRA/DoRA) to apply on top of --model")
    shots: int = setting(
        0,
        help="worked examples in the prompt, drawn by --seed from a training split (the paper: 0 and 5)",
        ge=0,
    )
    limit: int | None = setting(None, help="score only the first N problems of each benchmark", ge=1)
    batch_size: int = setting(
        16,
        help="prompts decoded at once (default %(default)s): rows of a fixed batch, or slots refilled as "
        "answers finish",
        ge=1,
    )
    max_new_tokens: int = setting(256, help="generation budget per problem (default %(default)s)", ge=1)
    seed: int = setting(
        1234, help="seed for exemplar choice, 0 to 2^63-1 (default %(default)s)", ge=0, le=MAX_SEED
    )
    data_dir: str | None = setting(
        None,
        help="directory with the offline benchmark files (default: $TINYSLM_DATA_DIR; neither set = load "
        "from the Hugging Face Hub)",
    )
    overwrite: bool = setting(False, help="replace finished results in --output (default: keep and resume)")
    device: str = setting("auto", help="auto (CUDA if present), cpu, cuda, cuda:N; CPU runs fp32, CUDA bf16")
    # "fast" (our decode loop) or "hf" (model.generate): same greedy tokens
    engine: str = setting(
        "fast",
        help="decoding loop: fast (continuous batching over a slot KV cache) or hf (model.generate); same "
        "tokens",
        choices=("fast", "hf"),
    )
    draft_tokens: int = setting(
        DRAFT_TOKENS,
        help="fast engine: tokens guessed per row and step by prompt lookup (after a 3-token match; one fewer "
        "per shorter match, more when few rows are left) and kept where the model's own greedy choice "
        "confirms them (same tokens, fewer passes; 0 = off; default %(default)s)",
        ge=0,
        le=64,
    )
    cuda_graph: bool = setting(
        False,
        help="fast engine on a CUDA GPU: every decode step has one fixed shape and is replayed from a CUDA "
        "graph (one launch per step instead of about a thousand; prompt-lookup guesses off); same greedy "
        "choices; ignored on a CPU",
    )
    # in fp32 folding the adapter in changes rounding only; PEFT's DoRA layers recompute weight norms every pass
    merge_adapter: bool = setting(
        True,
        help="with --adapter: evaluate the adapter through PEFT's layers instead of folding it into the weights "
        "first (folded: a plain model; the study's DoRA adapter decoded 3.3x faster on CPU with the same "
        "tokens on 24 of 24 GSM8K prompts). Folded only in fp32 (CPU): in bf16 (CUDA) W + BA would be "
        "rounded to bf16, losing much of the adapter's small update, so it stays unmerged there",
        flag="--no-merge-adapter",
        negate=True,
    )
    backend: str = setting(
        "torch",
        help="torch (transformers weights, the engines above) or llama-cpp (a .gguf --model decoded by "
        "llama.cpp on the CPU: same prompts, stop rule and scorer; needs the edge extra)",
        choices=("torch", "llama-cpp"),
    )
    threads: int | None = setting(
        None, help="CPU threads for the llama-cpp backend (default: every core this process may use)", ge=1
    )
    trust_remote_code: bool = setting(False, help="allow model code from the Hub (off by default)")
    progress: bool = setting(True, help="no progress bar", flag="--no-progress", negate=True)
    # evaluate a checkpoint whose files lack weights its config declares
    allow_missing_weights: bool = setting(
        False,
        help="evaluate a checkpoint whose config declares weights its files lack (they are then random; "
        "refused by default)",
    )


@dataclass
class BenchmarkPlan:
    loaded: LoadedBenchmark
    fewshot: FewShotPlan
    examples: list[Example]  # what gets scored, after exemplar exclusion and --limit
    out_dir: Path
    fingerprint: dict[str, Any] = field(default_factory=dict)
    data: dict[str, dict[str, Any]] = field(default_factory=dict)  # provenance of the data files, by role
    provenance: dict[str, Any] = field(default_factory=dict)  # complete once the model has loaded


# run_config.json's digests: compared by provenance.hash_mismatches (unknown = accepted), not by equality.
HASHES = "hashes"


def uses_cuda_graph(cfg: EvalConfig, model_info: dict[str, Any]) -> bool:
    """``--cuda-graph`` takes effect with the fast engine of the torch backend on a CUDA device only."""
    return (
        cfg.cuda_graph
        and cfg.backend == "torch"
        and cfg.engine == "fast"
        and str(model_info.get("device", "")).startswith("cuda")
    )


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in (
        "tiny-slm",
        "torch",
        "transformers",
        "peft",
        "accelerate",
        "math-verify",
        "gguf",
        "llama-cpp-python",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def plan_benchmarks(cfg: EvalConfig) -> list[BenchmarkPlan]:
    """Load data and choose exemplars for every benchmark; all bad input surfaces here, before the model."""
    seed_error = seed_problem(cfg.seed)
    if seed_error is not None:
        raise UserError(f"--seed: {seed_error}")
    data_dir = resolve_data_dir(cfg.data_dir)
    cache = HashCache()
    plans = []
    for bench in parse_benchmark_list(cfg.benchmarks):
        loaded = load_examples(bench, data_dir)
        fewshot = plan_fewshot(loaded, cfg.shots, cfg.seed, data_dir)
        examples = fewshot.eval_examples[: cfg.limit] if cfg.limit else fewshot.eval_examples
        fingerprint = {
            "model": cfg.model,
            "adapter": cfg.adapter,
            "benchmark": bench.name,
            "source": loaded.source,
            "shots": cfg.shots,
            "seed": cfg.seed,
            "exemplar_ids": [e.id for e in fewshot.exemplars],
            "max_new_tokens": cfg.max_new_tokens,
            "prompt_version": PROMPT_VERSION,
        }
        if bench.fields:  # a user's set read from renamed fields: other questions than the default ones
            fingerprint["fields"] = list(bench.fields)
        if cfg.backend != "torch":  # absent for torch, so run_config.json files from before it still resume
            fingerprint["backend"] = cfg.backend
        data = {"benchmark": data_record(loaded.source, cache)}
        if cfg.shots and bench.fewshot_pool in FEWSHOT_POOLS:
            local, hub = FEWSHOT_POOLS[bench.fewshot_pool][:2]
            data["fewshot_pool"] = data_record(
                str(data_dir / local) if data_dir else f"hub:{hub.path}", cache
            )
        # The model's and template's digests join these once the model has loaded (run_eval).
        fingerprint[HASHES] = {f"data/{role}": rec.get("sha256") for role, rec in data.items()}
        plans.append(
            BenchmarkPlan(loaded, fewshot, examples, Path(cfg.output) / bench.name, fingerprint, data)
        )
    return plans


def check_output(plan: BenchmarkPlan, overwrite: bool) -> bool:
    """Check the benchmark's output dir (nothing is written). Returns False when its finished result
    can be reused.

    A finished result is never touched without --overwrite; predictions from a different configuration
    are never mixed with new ones.
    """
    d = plan.out_dir
    cfg_file, res_file = d / "run_config.json", d / "results.json"
    if overwrite:
        return True  # the old files are removed only once the model has loaded (evaluate_benchmark)
    if cfg_file.exists():
        old = _read_json(cfg_file)
        settings = {k: v for k, v in plan.fingerprint.items() if k != HASHES}
        old_settings = {k: v for k, v in old.items() if k != HASHES}
        if old_settings != settings:
            diff = sorted(
                k for k in set(old_settings) | set(settings) if old_settings.get(k) != settings.get(k)
            )
            raise UserError(
                f"{d} holds predictions made with different settings ({', '.join(diff)}); "
                "pass --overwrite to replace them, or choose another --output"
            )
        check_hashes(plan, old)
    if res_file.exists():
        res = _read_json(res_file)
        if res.get("n") == len(plan.examples):
            return False
        raise UserError(
            f"{res_file} is a finished result for {res.get('n')} problems, this run plans {len(plan.examples)} "
            "(different --limit); pass --overwrite to replace it, or choose another --output"
        )
    return True


def check_hashes(plan: BenchmarkPlan, old: dict | None = None) -> None:
    """Refuse to add predictions to a directory whose earlier ones came from other weights, data or
    template. run_config.json written before the digests existed has none: unknown, accepted."""
    if old is None:
        cfg_file = plan.out_dir / "run_config.json"
        if not cfg_file.exists():
            return
        old = _read_json(cfg_file)
    diffs = hash_mismatches(
        old.get(HASHES) if isinstance(old.get(HASHES), dict) else None, plan.fingerprint[HASHES]
    )
    if diffs:
        raise UserError(describe_mismatch(plan.out_dir, diffs, "predictions"))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(
            f"cannot read {path} ({e}); pass --overwrite to start this benchmark afresh"
        ) from None


def done_predictions(path: Path) -> dict[str, dict]:
    """Predictions already on disk, by id (a torn last line from a kill is ignored and regenerated)."""
    if not path.exists():
        return {}
    try:
        return {str(r["id"]): r for r in read_jsonl(path, tolerate_torn_tail=True)}
    except (ValueError, KeyError) as e:
        raise UserError(f"{path} is damaged ({e}); pass --overwrite to start this benchmark afresh") from None


def summarize(benchmark: str, preds: list[dict], extra: dict[str, Any]) -> dict[str, Any]:
    """Exact match, strict match and their Wilson intervals over scored predictions."""
    n = len(preds)
    correct = sum(bool(p["correct"]) for p in preds)
    strict = sum(bool(p["strict_correct"]) for p in preds)
    lo, hi = wilson_interval(correct, n)
    return {
        "benchmark": benchmark,
        "n": n,
        "correct": correct,
        "exact_match": correct / n if n else 0.0,
        "exact_match_ci95": [lo, hi],
        "strict_correct": strict,
        "strict_exact_match": strict / n if n else 0.0,
        "strict_exact_match_ci95": list(wilson_interval(strict, n)),
        **extra,
    }


def evaluate_benchmark(plan: BenchmarkPlan, model, tokenizer, cfg: EvalConfig, model_info: dict) -> dict:
    from torch import device as torch_device

    from tinyslm.core.telemetry import peak_memory_mib, reset_peak_memory
    from tinyslm.data.prompts import build_prompt, is_chat_tokenizer
    from tinyslm.evaluate.generation import generate

    bench = plan.loaded.benchmark
    pred_file = plan.out_dir / "predictions.jsonl"
    # Files are replaced or created only now that the model has loaded, so a run that fails on bad input
    # neither loses the old result nor leaves anything behind that would block the corrected command.
    if cfg.overwrite:
        for name in ("run_config.json", "predictions.jsonl", "results.json"):
            (plan.out_dir / name).unlink(missing_ok=True)
    if not (plan.out_dir / "run_config.json").exists():
        atomic_write_json(plan.out_dir / "run_config.json", plan.fingerprint)
    done = done_predictions(pred_file)
    todo = [e for e in plan.examples if e.id not in done]
    t0 = time.perf_counter()
    gen_tokens, gen_time = 0, 0.0
    if todo:
        prompts = [build_prompt(tokenizer, e, bench.answer_style, plan.fewshot.exemplars) for e in todo]
        bar = _progress(
            len(todo),
            f"{bench.name} ({cfg.shots}-shot)",
            cfg.progress,
            initial=len(plan.examples) - len(todo),
        )
        on_cpu = model_info.get("backend") == "llama-cpp"
        if on_cpu:  # the on-device table's memory: the peak while this benchmark generates
            reset_peak_memory(torch_device("cpu"))
        tg = time.perf_counter()

        def on_progress(rows: int, new_tokens: int) -> None:
            nonlocal gen_tokens
            gen_tokens += new_tokens
            if bar is not None:
                bar.update(rows)
                bar.set_postfix(tok_s=f"{gen_tokens / max(time.perf_counter() - tg, 1e-9):.0f}")

        with JsonlAppender(pred_file) as out:
            for i, g in generate(
                model,
                tokenizer,
                prompts,
                max_new_tokens=cfg.max_new_tokens,
                batch_size=cfg.batch_size,
                add_special_tokens=not is_chat_tokenizer(tokenizer),
                engine=cfg.engine,
                draft=cfg.draft_tokens,
                graph=uses_cuda_graph(cfg, model_info),
                on_progress=on_progress,
            ):
                ex = todo[i]
                s = score_output(g.text, ex.reference, bench.answer_style)
                rec = {
                    "id": ex.id,
                    "prompt": prompts[i],
                    "output": g.text,
                    "extracted": s["extracted"],
                    "reference": ex.reference,
                    "correct": s["correct"],
                    "strict_correct": s["strict_correct"],
                    "n_tokens": g.n_tokens,
                    "prompt_tokens": g.prompt_tokens,
                }
                out.write(rec)
                done[ex.id] = rec
        gen_time = time.perf_counter() - tg
        if bar is not None:
            bar.close()
        if on_cpu:
            model_info = {**model_info, "peak_rss_mib": round(peak_memory_mib(torch_device("cpu"))[0], 1)}
    preds = [done[e.id] for e in plan.examples]
    result = summarize(
        bench.name,
        preds,
        {
            **model_info,
            "shots": cfg.shots,
            "seed": cfg.seed,
            "limit": cfg.limit,
            "source": plan.loaded.source,
            "answer_style": bench.answer_style,
            **({"benchmark_spec": bench.spec} if bench.spec else {}),
            "fewshot_source": plan.fewshot.source,
            "exemplar_ids": [e.id for e in plan.fewshot.exemplars],
            "excluded_from_scoring": plan.fewshot.excluded_ids,
            "max_new_tokens": cfg.max_new_tokens,
            "batch_size": cfg.batch_size,
            "engine": "llama-cpp" if cfg.backend == "llama-cpp" else cfg.engine,
            "draft_tokens": cfg.draft_tokens
            if cfg.backend == "torch" and cfg.engine == "fast" and not uses_cuda_graph(cfg, model_info)
            else 0,
            "cuda_graph": uses_cuda_graph(cfg, model_info),
            "resumed_predictions": len(plan.examples) - len(todo),
            "generated_tokens": gen_tokens,
            "generation_wall_s": round(gen_time, 3),
            "generated_tokens_per_s": round(gen_tokens / gen_time, 2) if gen_time > 0 else None,
            "wall_s": round(time.perf_counter() - t0, 3),
            "mean_output_tokens": sum(p["n_tokens"] for p in preds) / len(preds) if preds else 0.0,
            "versions": package_versions(),
            "provenance": plan.provenance,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    record = EvalResult.new(result)
    record.write(plan.out_dir / "results.json")
    return record.to_json()


def _progress(total: int, desc: str, enabled: bool, initial: int = 0):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total + initial, initial=initial, desc=desc, unit="q", dynamic_ncols=True)


def context_length(model: Any) -> int | None:
    """The positions the model was built for (``config.max_position_embeddings``, a GGUF's
    ``context_length``); None when it does not say."""
    from tinyslm.evaluate.llamacpp import LlamaCppModel
    from tinyslm.models.load import base_model

    if isinstance(model, LlamaCppModel):
        n = model.facts.get("context_length")
    else:
        n = getattr(base_model(model).config, "max_position_embeddings", None)
    return n if isinstance(n, int) and n > 0 else None


def check_context(plans: list[BenchmarkPlan], model: Any, tokenizer: Any, cfg: EvalConfig) -> None:
    """Refuse, before anything is generated, a run whose prompt plus answer budget exceeds the model's context.

    Past ``max_position_embeddings`` a model sees positions it was never trained on and, with rotary
    embeddings, still produces tokens, so an over-long few-shot prompt used to be scored as if nothing
    were wrong. Truncating the prompt instead would silently drop exemplars or the question itself, so
    the run is refused with the longest prompt named; fewer --shots or a smaller --max-new-tokens fit.
    Checked for every planned problem (not only those left to generate) right after the model loads.
    """
    from tinyslm.data.prompts import build_prompt, is_chat_tokenizer

    limit = context_length(model)
    if limit is None:
        return
    add_special = not is_chat_tokenizer(tokenizer)
    for plan in plans:
        bench = plan.loaded.benchmark
        if not plan.examples:
            continue
        prompts = [
            build_prompt(tokenizer, e, bench.answer_style, plan.fewshot.exemplars) for e in plan.examples
        ]
        lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=add_special)["input_ids"]]
        longest = max(range(len(lengths)), key=lengths.__getitem__)
        if lengths[longest] + cfg.max_new_tokens > limit:
            too_long = sum(n + cfg.max_new_tokens > limit for n in lengths)
            raise UserError(
                f"{bench.name}: problem {plan.examples[longest].id} has a {lengths[longest]}-token prompt "
                f"({cfg.shots}-shot), which with --max-new-tokens {cfg.max_new_tokens} exceeds the model's context "
                f"of {limit} tokens (max_position_embeddings; {too_long} of {len(lengths)} prompts do); "
                "use fewer --shots or a smaller --max-new-tokens"
            )


def run_eval(cfg: EvalConfig) -> dict[str, dict]:
    """Evaluate one model on each benchmark of ``cfg``; returns the results by benchmark name."""
    import torch

    from tinyslm.core.runtime import hf_progress_bars, pick_device
    from tinyslm.models.load import default_dtype, load_model, model_name_for_results

    if cfg.adapter is not None and not (Path(cfg.adapter) / "adapter_config.json").is_file():
        raise UserError(
            f"adapter not found: {cfg.adapter} (expected a PEFT adapter dir with adapter_config.json)"
        )
    plans = plan_benchmarks(cfg)
    results: dict[str, dict] = {}
    pending = []
    for plan in plans:
        if check_output(plan, cfg.overwrite):
            pending.append(plan)
        else:
            results[plan.loaded.benchmark.name] = _read_json(plan.out_dir / "results.json")
            print(f"{plan.loaded.benchmark.name}: already finished, kept {plan.out_dir / 'results.json'}")
    if not pending:
        return results
    if cfg.backend == "llama-cpp":
        model, tokenizer, model_info = _load_gguf(cfg, pending)
    else:
        device = pick_device(cfg.device)
        torch.manual_seed(cfg.seed)
        t_load = time.perf_counter()
        notes: dict[str, Any] = {}
        # folded in only in fp32: rounding W + BA to bf16 would lose much of the adapter's small update
        merge = cfg.merge_adapter and cfg.adapter is not None and default_dtype(device) == torch.float32
        with hf_progress_bars(cfg.progress):
            model, tokenizer = load_model(
                cfg.model,
                adapter=cfg.adapter,
                device=device,
                trust_remote_code=cfg.trust_remote_code,
                merge_adapter=merge,
                allow_missing_weights=cfg.allow_missing_weights,
                notes=notes,
            )
        check_context(pending, model, tokenizer, cfg)
        model_info = {
            "model": model_name_for_results(cfg.model),
            "model_ref": cfg.model,
            "adapter": cfg.adapter,
            **({"adapter_merged": merge} if cfg.adapter else {}),
            "chat_template": bool(getattr(tokenizer, "chat_template", None)),
            "device": device,
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "model_load_s": round(time.perf_counter() - t_load, 3),
            # Base parameters (an adapter's are not counted): the x axis of the accuracy-vs-size figure.
            "model_parameters": sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n),
            "context_length": context_length(model),
            **notes,  # adapter_base_model, warnings (e.g. an adapter trained on another base), missing_weights
        }
    device = model_info["device"]
    # Digests of what was loaded (cached by path + mtime + size), checked against every pending benchmark's
    # run_config.json before anything is written: a swapped checkpoint never adds to old predictions.
    cache = HashCache()
    model_rec, adapter_rec = model_provenance(cfg.model, cfg.adapter, cache)
    template = chat_template_sha256(tokenizer)
    for plan in pending:
        plan.provenance = record(
            model=model_rec, adapter=adapter_rec, data=plan.data, chat_template=template, device=device
        )
        plan.fingerprint[HASHES] = resume_hashes(plan.provenance)
    # One process per output directory, from the first write on (a second one gets the holder's PID, never
    # a second copy of every prediction). Each benchmark's state is checked again under the lock: another
    # process may have written there while this one loaded the model.
    with exclusive_lock(cfg.output, "--output"):
        todo = []
        for plan in pending:
            if check_output(plan, cfg.overwrite):
                todo.append(plan)
                if not cfg.overwrite:
                    check_hashes(plan)  # every benchmark is checked before the first one writes
            else:
                results[plan.loaded.benchmark.name] = _read_json(plan.out_dir / "results.json")
        for plan in todo:
            results[plan.loaded.benchmark.name] = evaluate_benchmark(plan, model, tokenizer, cfg, model_info)
    return results


def _load_gguf(cfg: EvalConfig, pending: list[BenchmarkPlan]) -> tuple[Any, Any, dict[str, Any]]:
    """The llama-cpp backend's model, tokenizer (transformers', read from the GGUF: the same prompts and
    detokenization as every other run) and results facts, including what the on-device table reports:
    file size, resident memory before loading and, measured here on the first prompts, tokens/s at batch 1."""
    from tinyslm.core.telemetry import rss_mib
    from tinyslm.evaluate.llamacpp import LlamaCppModel
    from tinyslm.models.load import load_tokenizer, model_name_for_results

    if cfg.adapter is not None:
        raise UserError(
            "--backend llama-cpp takes a merged .gguf (tiny-slm export merges adapters); drop --adapter"
        )
    if cfg.device not in ("auto", "cpu"):
        raise UserError(f"--backend llama-cpp runs on the CPU; --device {cfg.device} is not supported")
    if not cfg.model.lower().endswith(".gguf") or not Path(cfg.model).is_file():
        raise UserError(f"--backend llama-cpp needs --model FILE.gguf (an existing file); got {cfg.model}")
    t_load = time.perf_counter()
    tokenizer = load_tokenizer(cfg.model)
    rss_before = (
        rss_mib()
    )  # after the tokenizer: the on-device memory is the model's, its cache's and buffers'
    model = LlamaCppModel(cfg.model, threads=cfg.threads)
    check_context(pending, model, tokenizer, cfg)
    facts = model.facts
    info = {
        "model": model_name_for_results(cfg.model),
        "model_ref": cfg.model,
        "adapter": None,
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "device": "cpu",
        "dtype": facts["file_type"],
        "backend": "llama-cpp",
        "threads": model.threads,
        "model_load_s": round(time.perf_counter() - t_load, 3),
        "model_parameters": facts["parameters"],
        "context_length": facts["context_length"],
        "gguf_bytes": facts["file_bytes"],
        "rss_before_load_mib": round(rss_before, 1) if rss_before is not None else None,
        "tokens_per_s_batch1": _batch1_speed(model, tokenizer, pending),
    }
    return model, tokenizer, info


BATCH1_PROMPTS, BATCH1_TOKENS = 4, 64  # the batch-1 speed probe: short, so it adds seconds, not minutes


def _batch1_speed(model: Any, tokenizer: Any, plans: list[BenchmarkPlan]) -> float | None:
    """Generated tokens/s decoding the first prompts of the first benchmark one at a time (batch 1): what
    a single user waits for on this CPU, beside the batched rate every results.json records."""
    from tinyslm.data.prompts import build_prompt, is_chat_tokenizer
    from tinyslm.evaluate.generation import decode_rows

    plan = plans[0]
    exs = plan.examples[:BATCH1_PROMPTS]
    add_special = not is_chat_tokenizer(tokenizer)
    rows = [
        tokenizer(
            build_prompt(tokenizer, e, plan.loaded.benchmark.answer_style, plan.fewshot.exemplars),
            add_special_tokens=add_special,
        )["input_ids"]
        for e in exs
    ]
    t0, n = time.perf_counter(), 0
    for row in rows:
        for _, ids in decode_rows(model, tokenizer, [row], max_new_tokens=BATCH1_TOKENS, batch_size=1):
            n += len(ids)
    dt = time.perf_counter() - t0
    return round(n / dt, 2) if n and dt > 0 else None


def rescore_file(benchmark: str, predictions: str, output: str) -> dict[str, Any]:
    """Score outputs made by any tool: IN lines hold id, output, reference; OUT adds the verdicts.

    Every line is checked before anything is scored or written, and a bad one is a :class:`UserError`
    naming ``file:line``: a duplicate id (it would be counted twice in n), a null or empty reference (it
    would be scored against the text "None"), a field of the wrong type.
    """
    from tinyslm.data.benchmarks import answer_style_of

    style = answer_style_of(benchmark)
    src = Path(predictions)
    if not src.is_file():
        raise UserError(f"predictions file not found: {src}")
    rows = _read_predictions(src)
    if not rows:
        raise UserError(f"{src}: no predictions")
    for r in rows:
        s = score_output("" if r["output"] is None else str(r["output"]), str(r["reference"]), style)
        r.update(extracted=s["extracted"], correct=s["correct"], strict_correct=s["strict_correct"])
    atomic_write_text(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return summarize(benchmark, rows, {"predictions": str(src), "output": str(output)})


def _read_predictions(src: Path) -> list[dict]:
    """The records of a predictions file for :func:`rescore_file`, each checked; errors name file:line."""
    rows: list[dict] = []
    first_line: dict[str, int] = {}
    try:
        lines = src.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read predictions file {src}: {e}") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{src}:{lineno}"
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(r, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(r).__name__}")
        missing = [k for k in ("id", "output", "reference") if k not in r]
        if missing:
            raise UserError(f"{where}: record lacks field(s) {', '.join(missing)}")
        rid, ref, out = r["id"], r["reference"], r["output"]
        if isinstance(rid, bool) or not isinstance(rid, (str, int)) or not str(rid).strip():
            raise UserError(f"{where}: id must be a non-empty string or an integer, got {rid!r}")
        if str(rid) in first_line:
            raise UserError(
                f"{where}: duplicate id {rid!r} (first on line {first_line[str(rid)]}); each problem is scored once"
            )
        first_line[str(rid)] = lineno
        if ref is None:
            raise UserError(
                f"{where}: reference is null (id {rid!r}); every prediction needs its gold answer"
            )
        if isinstance(ref, bool) or not isinstance(ref, (str, int, float)) or not str(ref).strip():
            raise UserError(
                f"{where}: reference must be a non-empty string or a number (id {rid!r}), got {ref!r:.80}"
            )
        if out is not None and (isinstance(out, bool) or not isinstance(out, (str, int, float))):
            raise UserError(
                f"{where}: output must be a string or null (id {rid!r}), got {type(out).__name__}"
            )
        rows.append(r)
    return rows
