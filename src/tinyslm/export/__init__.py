"""Export a trained model for devices: merge, write GGUF, quantise with llama.cpp, and score the files.

``export_model`` is the whole path, read top to bottom: resolve the source (a study cell or training run
directory, or any model reference) and check every input (cheap) before loading the model (slow); merge
an adapter into its base; write one F32 GGUF (:mod:`tinyslm.export.gguf`); quantise it to each requested
type with llama.cpp; record ``export.json``; and, with ``score``, evaluate each file with the llama-cpp
backend under the float model's own evaluation settings, into ``RUN_DIR/edge/<quant>/<benchmark>/``,
where the report's on-device table finds it beside the float model's ``eval/``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinyslm.config.settings import setting
from tinyslm.core.errors import UserError
from tinyslm.core.files import atomic_write_json, exclusive_lock
from tinyslm.evaluate.runner import package_versions
from tinyslm.export.gguf import QUANT_TYPES, WRITTEN_DIRECTLY, parse_quant_types, quantize, write_gguf
from tinyslm.models.llamacpp import gguf_facts, import_llama_cpp

EXPORT_DIR, EDGE_DIR = "export", "edge"  # under a run directory: the GGUF files, their evaluations


@dataclass
class ExportConfig:
    """Every export setting, once; the ``tiny-slm export`` flags are generated from these fields."""

    source: str = setting(
        help="a study cell or tiny-slm-train directory (its final/ model; an adapter is merged into its "
        "base), a model directory, an offline alias or a Hugging Face id",
        flag="source",
    )
    quant: str = setting(
        "q8_0,q4_k_m",
        help=f"comma-separated GGUF types (default %(default)s): {', '.join(QUANT_TYPES)}",
    )
    output: str | None = setting(
        None,
        help="directory for the .gguf files and export.json (default: SOURCE/export for a run directory)",
    )
    score: bool = setting(
        False,
        help="then evaluate each file with the llama-cpp backend on the benchmarks and settings of the run's "
        "own eval/ (into SOURCE/edge/<quant>/), for the report's on-device table",
    )
    threads: int | None = setting(None, help="CPU threads for quantising and scoring (default: all)", ge=1)
    data_dir: str | None = setting(
        None, help="offline benchmark files for --score (default: $TINYSLM_DATA_DIR, as tiny-slm-eval)"
    )
    overwrite: bool = setting(False, help="replace existing .gguf files (default: keep them and skip)")
    progress: bool = setting(True, help="no progress bar while scoring", flag="--no-progress", negate=True)


@dataclass
class Source:
    model_ref: str  # what load_model reads: a model dir, an adapter dir, an alias, a Hub id
    run_dir: Path | None  # the study cell or training run the model came from
    name: str


def resolve_source(ref: str) -> Source:
    """A run directory -> its final/ model; anything else is a model reference as every command takes it."""
    p = Path(ref).expanduser()
    if p.is_dir() and ((p / "cell.json").is_file() or (p / "run.json").is_file() or (p / "final").exists()):
        final = p / "final"
        if not ((final / "config.json").is_file() or (final / "adapter_config.json").is_file()):
            raise UserError(
                f"{p} has no final model ({final} is missing or incomplete): export a run whose training "
                "finished, or a model directory"
            )
        return Source(str(final), p, p.name)
    if p.suffix.lower() == ".gguf":
        raise UserError(
            f"{ref} is already a GGUF; quantise it with llama.cpp's llama-quantize, or export its source"
        )
    return Source(ref, None, p.name or ref)


def _check_space(out: Path, need: int) -> None:
    probe = out if out.exists() else next((q for q in out.parents if q.exists()), Path("."))
    free = shutil.disk_usage(probe).free
    if free < need:
        raise UserError(
            f"not enough space in {probe}: the export needs about {need / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free"
        )


def export_model(cfg: ExportConfig) -> dict[str, Any]:
    """Write the GGUF files ``cfg`` asks for (and score them with ``cfg.score``); returns export.json."""
    from tinyslm.models.load import load_model, resolve_model

    # Phase 1: every input checked before the model loads.
    quants = parse_quant_types(cfg.quant)
    src = resolve_source(cfg.source)
    if cfg.output is None and src.run_dir is None:
        raise UserError(f"--output is required when exporting {cfg.source} (not a run directory)")
    out = Path(cfg.output) if cfg.output else src.run_dir / EXPORT_DIR
    resolve_model(src.model_ref)  # a missing path or unknown alias is refused before anything is written
    if any(q not in WRITTEN_DIRECTLY for q in quants) or cfg.score:
        import_llama_cpp()
    if cfg.score:
        if src.run_dir is None:
            raise UserError("--score needs a run directory (it reuses the run's own evaluation settings)")
        score_plan = float_eval_settings(src.run_dir)
    files = {q: out / f"model-{q}.gguf" for q in quants}
    todo = [q for q in quants if cfg.overwrite or not files[q].is_file()]
    with exclusive_lock(out, "--output"):
        record = _write_files(src, out, files, todo, cfg, load_model) if todo else _read_record(out)
        for q in quants:
            if q not in todo:
                print(f"{q}: kept {files[q]} (pass --overwrite to write it again)")
    if cfg.score:
        record["scored"] = score_files(src.run_dir, files, score_plan, cfg)
    return record


def _write_files(
    src: Source, out: Path, files: dict[str, Path], todo: list[str], cfg: ExportConfig, load_model
) -> dict:
    t0 = time.perf_counter()
    model, tokenizer = load_model(src.model_ref, device="cpu")
    if hasattr(model, "merge_and_unload"):  # LoRA/DoRA: fold the adapter into the base weights
        model = model.merge_and_unload()
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    _check_space(out, n_params * 4 * (1 + len(todo)))
    out.mkdir(parents=True, exist_ok=True)
    # Phase 2: the F32 file (the quantiser's input; kept only when f32 was asked for) and f16, written here.
    base = files["f32"] if "f32" in todo else out / ".model-f32.gguf"
    timings: dict[str, float] = {}
    try:
        facts = write_gguf(model, tokenizer, base, ftype="f32", name=src.name)
        timings["f32"] = round(time.perf_counter() - t0, 2)
        if "f16" in todo:
            tq = time.perf_counter()
            write_gguf(model, tokenizer, files["f16"], ftype="f16", name=src.name)
            timings["f16"] = round(time.perf_counter() - tq, 2)
        del model
        # Phase 3: every other type, quantised by llama.cpp from the F32 file.
        for q in todo:
            if q not in WRITTEN_DIRECTLY:
                tq = time.perf_counter()
                quantize(base, files[q], q, threads=cfg.threads)
                timings[q] = round(time.perf_counter() - tq, 2)
    finally:
        if base != files.get("f32"):
            base.unlink(missing_ok=True)
    for q in todo:
        print(f"{q}: wrote {files[q]} ({files[q].stat().st_size / 2**20:.1f} MiB)")
    record = _read_record(out)
    record.update(
        {
            "source": str(src.run_dir or src.model_ref),
            "model_ref": src.model_ref,
            **facts,
            "versions": package_versions(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    )
    record.setdefault("files", {})
    for q in todo:
        record["files"][q] = {
            "file": files[q].name,
            "bytes": files[q].stat().st_size,
            "write_s": timings.get(q),
            "tensor_types": gguf_facts(files[q])["tensor_types"],
        }
    atomic_write_json(out / "export.json", record)
    return record


def _read_record(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / "export.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def float_eval_settings(run_dir: Path) -> dict[str, Any]:
    """The settings the float model was evaluated with (its eval/<benchmark>/results.json), so each GGUF is
    scored on exactly the same problems, prompts and budget: the paired test needs the same problem ids."""
    found = sorted((run_dir / "eval").glob("*/results.json"))
    if not found:
        raise UserError(
            f"{run_dir} has no finished evaluation (eval/*/results.json) whose settings --score can reuse"
        )
    res = [json.loads(f.read_text(encoding="utf-8")) for f in found]
    keys = ("shots", "seed", "limit", "max_new_tokens", "batch_size")
    first = {k: res[0].get(k) for k in keys}
    if any({k: r.get(k) for k in keys} != first for r in res[1:]):
        raise UserError(
            f"{run_dir}/eval: benchmarks were evaluated with different settings; score the files with tiny-slm-eval"
        )
    # a user's own test set is named again by its file (benchmark_spec), a registered one by its name
    return {**first, "benchmarks": ",".join(str(r.get("benchmark_spec") or r["benchmark"]) for r in res)}


def score_files(
    run_dir: Path, files: dict[str, Path], plan: dict[str, Any], cfg: ExportConfig
) -> dict[str, Any]:
    """Evaluate each GGUF with the llama-cpp backend into ``run_dir/edge/<quant>/``; resumable like any eval."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from tinyslm.evaluate.runner import EvalConfig, run_eval

    scored = {}
    for q, f in files.items():
        ecfg = EvalConfig(
            model=str(f),
            benchmarks=plan["benchmarks"],
            output=str(run_dir / EDGE_DIR / q),
            shots=int(plan["shots"] or 0),
            limit=plan["limit"],
            batch_size=int(plan["batch_size"] or 16),
            max_new_tokens=int(plan["max_new_tokens"] or 256),
            seed=int(plan["seed"] if plan["seed"] is not None else 1234),
            backend="llama-cpp",
            threads=cfg.threads,
            data_dir=cfg.data_dir,
            progress=cfg.progress,
        )
        # Each file in a fresh process: its memory figures then start from the same empty process, not from
        # this one's heap after merging and writing the float model (which glibc does not hand back).
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = pool.submit(run_eval, ecfg).result()
        scored[q] = {b: {"correct": r["correct"], "n": r["n"]} for b, r in results.items()}
        for b, r in results.items():
            print(
                f"{q} {b}: {r['correct']}/{r['n']} = {100 * r['exact_match']:.1f}% -> {run_dir / EDGE_DIR / q / b}"
            )
    return scored
