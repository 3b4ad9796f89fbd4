"""Why fine-tuning hurts: forgetting and stability diagnostics of one training run.

``tiny-slm analyze RUN_DIR`` (or :func:`analyze`, which the study runner calls for every trained cell)
compares the fine-tuned model of a ``tiny-slm-train`` run with its base model and writes
``RUN_DIR/diagnostics.json``. One small module per measure:

* :mod:`.forgetting` — general-knowledge probes (ARC-Easy, MMLU) before/after, paired McNemar test;
* :mod:`.displacement` — ``‖ΔW‖_F / ‖W‖_F`` per weight matrix;
* :mod:`.intruders` — new top singular vectors unlike any of the base matrix's (intruder dimensions);
* :mod:`.sharpness` — top Hessian eigenvalue of the training loss, base and tuned;
* :mod:`.outputs` — repetition loops and false arithmetic in the run's evaluation outputs;
* :mod:`.grad_spikes` — gradient-norm spikes in the training log.

``summary`` holds one readable scalar per headline number (the report prints it as a table row per
model × method); everything else is the detail behind it, with what was measured and how long it took.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tinyslm.core.errors import UserError
from tinyslm.core.files import atomic_write_json
from tinyslm.diagnostics.forgetting import PROBE_SEED
from tinyslm.diagnostics.loading import RunInfo, read_run_dir
from tinyslm.diagnostics.settings import HVP_DEFAULTS, MEASURES, AnalyzeSettings

_NEED_MODELS = {"forgetting", "weight_displacement", "intruder_dimensions", "sharpness"}
OUTPUT_NAME = "diagnostics.json"


def parse_measures(spec: str | Sequence[str] | None) -> list[str]:
    """``None``/``"all"`` -> every measure; else the named ones (comma list or sequence), in canonical order."""
    if spec is None:
        return list(MEASURES)
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if names == ["all"]:
        return list(MEASURES)
    unknown = [n for n in names if n not in MEASURES]
    if unknown or not names:
        raise UserError(
            f"unknown measure(s) {', '.join(unknown) or '(none given)'}; choose from: {', '.join(MEASURES)}"
        )
    return [m for m in MEASURES if m in names]


def analyze(
    run_dir: str | Path,
    *,
    base: str | None = AnalyzeSettings.base,
    probe_limit: int | None = AnalyzeSettings.probe_limit,
    device: str = AnalyzeSettings.device,
    progress: bool = AnalyzeSettings.progress,
    measures: str | Sequence[str] | None = None,
    data_dir: str | Path | None = AnalyzeSettings.data_dir,
    probe_seed: int = PROBE_SEED,
    probe_batch_size: int = 16,
    hvp_iters: int | None = AnalyzeSettings.hvp_iters,
    hvp_tol: float = AnalyzeSettings.hvp_tol,
    hvp_batch: int | None = AnalyzeSettings.hvp_batch,
    hvp_micro_batch: int = AnalyzeSettings.hvp_micro_batch,
) -> dict[str, Any]:
    """Diagnose the run in ``run_dir``; writes ``run_dir/diagnostics.json`` atomically and returns it.

    ``base`` defaults to the run's ``model_ref``. ``probe_limit`` items per forgetting probe (None: all).
    ``measures`` picks a subset (default all); measures not recomputed are kept from an earlier
    diagnostics.json of the same run and base. ``data_dir`` (default: the run's, else $TINYSLM_DATA_DIR)
    holds the probe files and the training set. ``hvp_*``: power-iteration budget, tolerance, batch size
    (training examples) and micro-batch size (rows per forward/backward: memory grows with it, the result
    does not change) of the sharpness measure; iterations and batch default to :data:`HVP_DEFAULTS` of the
    device (a CPU gets a small budget). Bad input raises UserError before any model loads.
    The peak memory of each step is recorded in ``measured.peak_memory``.
    """
    from tinyslm.core.runtime import pick_device
    from tinyslm.data.benchmarks import resolve_data_dir

    info = read_run_dir(run_dir, base)
    wanted = parse_measures(measures)
    _check_positive(
        probe_limit=probe_limit,
        probe_batch_size=probe_batch_size,
        hvp_iters=hvp_iters,
        hvp_batch=hvp_batch,
        hvp_micro_batch=hvp_micro_batch,
    )
    if not hvp_tol > 0:
        raise UserError(f"hvp tolerance must be > 0, got {hvp_tol}")
    dev = pick_device(device)
    default_iters, default_batch = HVP_DEFAULTS["gpu" if dev.startswith("cuda") else "cpu"]
    hvp_iters = default_iters if hvp_iters is None else hvp_iters
    hvp_batch = default_batch if hvp_batch is None else hvp_batch
    data = resolve_data_dir(data_dir if data_dir is not None else info.config.get("data_dir"))
    probes = None
    if "forgetting" in wanted:
        if data is None:
            raise UserError(
                "the forgetting probes need the offline data directory: pass --data-dir or set $TINYSLM_DATA_DIR"
            )
        from tinyslm.diagnostics.forgetting import probe_items

        probes = probe_items(data, probe_limit, probe_seed)  # fails now, not after loading models

    result = _previous(info)
    seconds: dict[str, float] = dict((result.get("measured") or {}).get("seconds") or {})
    peaks = _PeakMemory(dev, (result.get("measured") or {}).get("peak_memory"))
    say = _Say(progress)

    def timed(name: str) -> contextlib.AbstractContextManager[None]:
        return _timer(name, seconds, say, peaks)

    _output_measures(info, wanted, result, timed)

    sharpness_about = None
    if _NEED_MODELS & set(wanted):
        sharpness_about = _model_measures(
            info,
            wanted,
            result,
            timed,
            say,
            device=dev,
            probes=probes,
            probe_batch_size=probe_batch_size,
            progress=progress,
            data_dir=data,
            hvp=dict(iters=hvp_iters, tol=hvp_tol, batch=hvp_batch, micro_batch=hvp_micro_batch),
        )

    result["measured"] = _measured(
        info, wanted, result, dev, probes, probe_limit, probe_seed, data, sharpness_about, seconds, peaks
    )
    result["summary"] = summarize(result)
    ordered = {k: result[k] for k in ("summary", *MEASURES, "measured") if k in result}
    atomic_write_json(info.run_dir / OUTPUT_NAME, ordered)
    return ordered


def _output_measures(info: RunInfo, wanted: list[str], result: dict[str, Any], timed: Any) -> None:
    """The measures read from the run's files (no model): gradient-norm spikes, repetition, arithmetic."""
    if "grad_norm_spikes" in wanted:
        from tinyslm.diagnostics.grad_spikes import grad_norm_spikes

        with timed("grad_norm_spikes"):
            result["grad_norm_spikes"] = grad_norm_spikes(info.run_dir)
    if {"repetition_rate", "arithmetic_error_rate"} & set(wanted):
        from tinyslm.diagnostics.outputs import arithmetic_error_rate, read_outputs, repetition_rate

        outputs = read_outputs(info.run_dir)
        if "repetition_rate" in wanted:
            with timed("repetition_rate"):
                result["repetition_rate"] = repetition_rate(outputs)
        if "arithmetic_error_rate" in wanted:
            with timed("arithmetic_error_rate"):
                result["arithmetic_error_rate"] = arithmetic_error_rate(outputs)


def _measured(
    info: RunInfo,
    wanted: list[str],
    result: dict[str, Any],
    dev: str,
    probes: dict[str, Any] | None,
    probe_limit: int | None,
    probe_seed: int,
    data: Path | None,
    sharpness_about: Any,
    seconds: dict[str, float],
    peaks: Any,
) -> dict[str, Any]:
    """diagnostics.json's ``measured``: how, where and with what each measure was taken."""
    from tinyslm.evaluate.runner import package_versions

    return {
        "run_dir": str(info.run_dir),
        "method": info.method,
        "base": info.base,
        "model_ref": info.run.get("model_ref"),
        "measures": [m for m in MEASURES if m in result],
        "recomputed": wanted,
        "device": dev,
        "dtype": "float32",
        "attention": "eager",
        "probe": {
            "limit": probe_limit,
            "seed": probe_seed,
            "data_dir": str(data) if data else None,
            "n": {k: len(v) for k, v in probes.items()} if probes else None,
        }
        if probes is not None
        else (result.get("measured") or {}).get("probe"),
        "sharpness_batch": sharpness_about or (result.get("measured") or {}).get("sharpness_batch"),
        "seconds": seconds,
        "peak_memory": peaks.record(),
        "versions": package_versions(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _model_measures(
    info: RunInfo,
    wanted: list[str],
    result: dict,
    timed: Any,
    say: Any,
    *,
    device: str,
    probes: dict | None,
    probe_batch_size: int,
    progress: bool,
    data_dir: Path | None,
    hvp: dict,
) -> dict | None:
    """The measures that need the models, in an order that loads each model once.

    Forgetting and sharpness use the base and the (unmerged) tuned model; the weight measures come last
    because merging a PEFT adapter (``merge_and_unload``) rewrites the loaded copy's weights in place.
    """
    import torch

    from tinyslm.diagnostics.loading import block_linear_weights, load_base, load_tuned

    with _quiet_loading(progress), timed("load_models"):
        base_model, base_tok = load_base(info, device)
        tuned_model, tuned_tok = load_tuned(info, device)

    if "forgetting" in wanted and probes is not None:
        with timed("forgetting"):
            result["forgetting"] = _forgetting(
                probes, base_model, base_tok, tuned_model, tuned_tok, probe_batch_size, progress
            )

    about = None
    if "sharpness" in wanted:
        from tinyslm.diagnostics.sharpness import fresh_adapter_sharpness, model_sharpness, training_batch

        with timed("sharpness"):
            batch, about = training_batch(info, tuned_tok, hvp["batch"], str(data_dir) if data_dir else None)
            say(
                f"sharpness: {len(batch['input_ids'])} examples, {about['target_tokens']} target tokens, "
                f"micro-batches of {hvp['micro_batch']}, up to {hvp['iters']} iterations per phase, "
                "one line per iteration"
            )
            kw: dict[str, Any] = dict(
                iters=hvp["iters"], tol=hvp["tol"], seed=0, micro_batch_size=hvp["micro_batch"]
            )
            if info.peft:
                with _quiet_loading(progress):
                    before, base_model = fresh_adapter_sharpness(
                        base_model, info, batch, progress=_prefixed(say, "sharpness (base)"), **kw
                    )
                space = f"{info.method} adapter parameters"
                before_note = (
                    "base model with a fresh adapter (the run's config and seed; B = 0, so the base function)"
                )
            else:
                before = model_sharpness(base_model, batch, progress=_prefixed(say, "sharpness (base)"), **kw)
                space, before_note = "all parameters", "base model"
            after = model_sharpness(tuned_model, batch, progress=_prefixed(say, "sharpness (tuned)"), **kw)
            result["sharpness"] = {
                "definition": "top eigenvalue of the Hessian of the mean completion-token training loss on a "
                "fixed batch, by power iteration on Hessian-vector products",
                "space": space,
                "base": {**before, "model": before_note},
                "tuned": {**after, "model": "fine-tuned model"},
                "batch": about,
                "iters": hvp["iters"],
                "tol": hvp["tol"],
                "micro_batch": hvp["micro_batch"],
            }

    if {"weight_displacement", "intruder_dimensions"} & set(wanted):
        from tinyslm.diagnostics.displacement import weight_displacement
        from tinyslm.diagnostics.intruders import intruder_dimensions

        with timed("merge"):
            base_w = block_linear_weights(base_model)
            del base_model
            merged = tuned_model.merge_and_unload() if info.peft else tuned_model
            tuned_w = block_linear_weights(merged)
            del merged, tuned_model
        if "weight_displacement" in wanted:
            with timed("weight_displacement"):
                result["weight_displacement"] = weight_displacement(base_w, tuned_w)
        if "intruder_dimensions" in wanted:
            with timed("intruder_dimensions"):
                result["intruder_dimensions"] = intruder_dimensions(base_w, tuned_w)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the study runner analyses many cells in one process
    return about


def _forgetting(
    probes: dict,
    base_model: Any,
    base_tok: Any,
    tuned_model: Any,
    tuned_tok: Any,
    batch_size: int,
    progress: bool,
) -> dict[str, Any]:
    from tinyslm.diagnostics.forgetting import PROBES, compare, continuation_logprobs, requests_for

    out: dict[str, Any] = {
        "definition": "log-likelihood multiple choice (lm-eval acc / acc_norm) on the same items for the base "
        "and the fine-tuned model; paired exact McNemar test on the items only one of them gets right",
    }
    for name, items in probes.items():
        requests = requests_for(items)
        scores = {}
        for who, model, tok in (("base", base_model, base_tok), ("tuned", tuned_model, tuned_tok)):
            with _bar(len(requests), f"{name} ({who})", progress) as update:
                scores[who] = continuation_logprobs(
                    model, tok, requests, batch_size=batch_size, progress=update
                )
        out[name] = {"probe": PROBES[name][0], **compare(items, scores["base"], scores["tuned"])}
    return out


# ---------------------------------------------------------------------------------------------------
# summary: one readable scalar per headline number.


def _round(x: Any, digits: int = 4) -> Any:
    """Significant digits for the table; None and non-finite values pass through as None/strings."""
    if x is None:
        return None
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, float) and x != 0:
        return round(x, max(0, digits - 1 - int(math.floor(math.log10(abs(x))))))
    return x


def _get(d: dict, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def summarize(result: dict) -> dict[str, Any]:
    """The flat table row: every key always present, None where the measure was not run or is undefined."""
    f = result.get("forgetting") or {}
    s = result.get("sharpness") or {}
    return {
        "ARC-Easy Δacc": _round(_get(f, "arc_easy", "acc", "delta")),
        "ARC-Easy p": _round(_get(f, "arc_easy", "acc", "mcnemar_p"), 3),
        "MMLU Δacc": _round(_get(f, "mmlu", "acc", "delta")),
        "MMLU p": _round(_get(f, "mmlu", "acc", "mcnemar_p"), 3),
        "ΔW/W mean": _round(_get(result, "weight_displacement", "overall", "mean")),
        "ΔW/W max": _round(_get(result, "weight_displacement", "overall", "max")),
        "intruders (top-10)": _get(result, "intruder_dimensions", "total"),
        "λmax base": _round(_get(s, "base", "eigenvalue")),
        "λmax tuned": _round(_get(s, "tuned", "eigenvalue")),
        "λmax space": "adapter" if "adapter" in str(s.get("space", "")) else ("all" if s else None),
        "λmax converged": bool(_get(s, "base", "converged") and _get(s, "tuned", "converged")) if s else None,
        "repetition rate": _round(_get(result, "repetition_rate", "overall", "rate")),
        "arithmetic error rate": _round(_get(result, "arithmetic_error_rate", "overall", "rate")),
        "grad-norm spikes": _get(result, "grad_norm_spikes", "count"),
    }


# ---------------------------------------------------------------------------------------------------
# Plumbing.


def _check_positive(**values: int | None) -> None:
    for name, v in values.items():
        if v is not None and v < 1:
            raise UserError(f"{name.replace('_', '-')} must be >= 1, got {v}")


def _previous(info: RunInfo) -> dict[str, Any]:
    """An earlier diagnostics.json of this run against the same base (its measures are kept), else {}."""
    path = info.run_dir / OUTPUT_NAME
    try:
        prev = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(prev, dict) or _get(prev, "measured", "base") != info.base:
        return {}
    return {k: v for k, v in prev.items() if k in (*MEASURES, "measured")}


class _Say:
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"diagnostics: {msg}", file=sys.stderr, flush=True)


def _prefixed(say: _Say, prefix: str) -> Any:
    return lambda msg: say(f"{prefix}: {msg}")


class _PeakMemory:
    """Peak memory of each step (:func:`tinyslm.core.telemetry.reset_peak_memory` / ``peak_memory_mib``).

    On a CPU the resident-set high-water mark of the process, reset at the start of each step (Linux);
    where it cannot be reset, the process's peak so far, an upper bound (``kind`` says which). On CUDA the
    allocator's peak. Steps not rerun keep the peak of the earlier diagnostics.json they come from.
    """

    def __init__(self, device: str, previous: Any):
        import torch

        self.device = torch.device(device)
        old = previous.get("by_step") if isinstance(previous, dict) else None
        self.by_step: dict[str, float] = dict(old) if isinstance(old, dict) else {}
        self.kind: str | None = None

    def start(self) -> None:
        from tinyslm.core.telemetry import reset_peak_memory

        self.resettable = reset_peak_memory(self.device)

    def stop(self, name: str) -> None:
        from tinyslm.core.telemetry import peak_memory_mib

        mib, kind = peak_memory_mib(self.device)
        self.kind = kind if self.resettable else "cpu_max_rss_process"
        self.by_step[name] = round(mib, 1)

    def record(self) -> dict[str, Any]:
        return {
            "unit": "MiB",
            "kind": self.kind,
            "max": max(self.by_step.values(), default=None),
            "by_step": self.by_step,
        }


@contextlib.contextmanager
def _timer(name: str, seconds: dict[str, float], say: _Say, peaks: _PeakMemory) -> Iterator[None]:
    say(f"{name} ...")
    peaks.start()
    start = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - start, 3)
    peaks.stop(name)
    say(f"{name} done in {seconds[name]:.1f} s, peak memory {peaks.by_step[name]:,.0f} MiB")


@contextlib.contextmanager
def _bar(total: int, desc: str, enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=desc, unit="seq", dynamic_ncols=True, leave=False) as bar:
        yield bar.update


@contextlib.contextmanager
def _quiet_loading(progress: bool) -> Iterator[None]:
    """No weight-loading bars without progress; peft's warnings about transformers internals are not the user's."""
    from tinyslm.core.runtime import hf_progress_bars

    with hf_progress_bars(progress), warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
        yield
