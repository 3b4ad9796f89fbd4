"""The study: one YAML config runs the whole comparison grid, one run directory per cell.

``tiny-slm run CONFIG.yaml [--output DIR] [--dry-run] [--print-commands] [--cell ID]``. Read it top to bottom:

1. **Config.** :class:`StudyConfig` (pydantic, unknown keys refused): models x methods x seeds, the
   training set and size, the evaluation benchmarks and limits, hardware, and per-method overrides on
   top of the protocol defaults of :mod:`tinyslm.train`.
2. **Cells.** One per model x method x seed, in ``DIR/<model>/<method>/seed<k>/``. Zero-shot decoding is
   greedy and does not depend on the seed, so it gets one cell per model (at the first seed).
3. **Running a cell** uses the same functions as the command-line tools: :func:`tinyslm.evaluate.run_eval`
   for zero-/few-shot, :func:`tinyslm.train.train` then ``run_eval`` on ``final/`` for full/LoRA/DoRA.
   ``cell.json`` records the cell's settings and status. A finished cell is skipped; a cell that was
   killed resumes (training from its last checkpoint, evaluation from its last prediction); a cell that
   fails (out of memory, divergence, a missing model) is recorded with its reason and the grid goes on.
4. **After the grid:** diagnostics on trained cells when the config asks, then the report.

The cell directory is the unit everything else reads: ``tiny-slm-report`` walks cells, ``tiny-slm analyze``
takes one. ``--print-commands`` prints one ``tiny-slm run CONFIG --cell ID`` line per cell, for users who
hand cells to a cluster scheduler; each runs exactly what the in-process loop would.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shlex
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from tinyslm.errors import UserError
from tinyslm.evaluate import EvalConfig
from tinyslm.io import (
    DiskFullError,
    atomic_write_json,
    atomic_write_text,
    contained,
    exclusive_lock,
    is_safe_component,
    read_json_object,
)
from tinyslm.limits import seed_problem
from tinyslm.methods import ALL_METHODS as METHODS
from tinyslm.methods import TRAINED_METHODS as TRAIN_METHODS
from tinyslm.results import UNSUCCESSFUL, CellRecord, Status
from tinyslm.runtime import device_problem
from tinyslm.settings import pydantic_fields, pydantic_validators
from tinyslm.train import TrainConfig

CELL_FILE = "cell.json"
STUDY_FILE = "study.json"


# ---------------------------------------------------------------------------------------------------
# 1. Config.


class _Strict(BaseModel):
    # allow_inf_nan=False: every float setting must be finite (.inf/.nan from YAML pass "ge=0" checks otherwise
    # and surface much later: NaN adapters, a report crash after the whole grid ran)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# The study's train: and overrides: sections are built from TrainConfig's fields (tinyslm.settings): the
# same defaults and bounds as tiny-slm-train's flags, written once on the field.
TRAIN_SECTION_FIELDS = (
    "dataset", "limit", "epochs", "max_steps", "batch_size", "micro_batch_size", "max_length", "warmup_ratio",
    "weight_decay", "max_grad_norm", "save_every", "merge", "gradient_checkpointing", "divergence_factor",
    "divergence_patience",
)  # fmt: skip
OVERRIDE_FIELDS = (
    "lr", "warmup_ratio", "weight_decay", "lora_r", "lora_alpha", "lora_dropout", "target_modules", "batch_size",
    "micro_batch_size", "max_length", "max_grad_norm", "epochs", "max_steps", "gradient_checkpointing",
)  # fmt: skip

TrainSection = create_model(
    "TrainSection",
    __base__=_Strict,
    __doc__="Shared by every trained method: :class:`tinyslm.train.TrainConfig`'s fields, defaults and bounds.",
    __validators__=pydantic_validators(TrainConfig, TRAIN_SECTION_FIELDS),
    **pydantic_fields(TrainConfig, TRAIN_SECTION_FIELDS),
)

EVAL_SECTION_FIELDS = ("limit", "batch_size", "max_new_tokens", "engine")  # from EvalConfig, as for train:

EvalSection = create_model(
    "EvalSection",
    __base__=_Strict,
    __doc__="The benchmarks and decoding of every cell; settings shared with tiny-slm-eval come from EvalConfig.",
    benchmarks=(list[str], Field(default_factory=lambda: ["gsm8k"], min_length=1)),
    shots=(int, Field(5, ge=1, description="k of the few-shot method")),
    **pydantic_fields(EvalConfig, EVAL_SECTION_FIELDS),
)


class HardwareSection(_Strict):
    device: str = "auto"
    num_processes: int = Field(1, ge=1, description="data-parallel training processes (accelerate launch)")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        problem = device_problem(v, training=True)  # one device for training and evaluation: the training rule
        if problem is not None:
            raise ValueError(problem)
        return v


MethodOverrides = create_model(
    "MethodOverrides",
    __base__=_Strict,
    __doc__="Per-method settings on top of the protocol defaults (train.PROTOCOL) and the train section.",
    __validators__=pydantic_validators(TrainConfig, OVERRIDE_FIELDS),
    **pydantic_fields(TrainConfig, OVERRIDE_FIELDS, optional=True),
)


class DiagnosticsSection(_Strict):
    enabled: bool = True
    probe_limit: int = Field(200, ge=1)


class ReportSection(_Strict):
    enabled: bool = True
    price_per_gpu_hour: float = Field(4.0, ge=0)


class StudyConfig(_Strict):
    name: str = "study"
    description: str = ""
    output: str | None = None
    data_dir: str | None = None
    models: list[str] = Field(min_length=1)
    methods: list[str] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [1234], min_length=1)
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    hardware: HardwareSection = HardwareSection()
    overrides: dict[str, MethodOverrides] = Field(default_factory=dict)
    diagnostics: DiagnosticsSection | bool = False
    report: ReportSection = ReportSection()

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        for m in v:
            if m not in METHODS:
                raise ValueError(f"unknown method '{m}' (choose from: {', '.join(METHODS)})")
        if len(set(v)) != len(v):
            raise ValueError("a method is listed twice")
        return v

    @field_validator("models", "seeds")
    @classmethod
    def _unique(cls, v: list) -> list:
        if len(set(v)) != len(v):
            raise ValueError("an entry is listed twice")
        return v

    @field_validator("seeds")
    @classmethod
    def _seed_range(cls, v: list[int]) -> list[int]:
        """Checked here so that a seed torch cannot take fails the config, not a cell half-way through the grid."""
        for seed in v:
            problem = seed_problem(seed)
            if problem is not None:
                raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _overrides_for_trained_methods(self) -> StudyConfig:
        for m in self.overrides:
            if m not in TRAIN_METHODS:
                raise ValueError(f"overrides.{m}: overrides are for trained methods ({', '.join(TRAIN_METHODS)})")
        return self

    @property
    def diagnostics_settings(self) -> DiagnosticsSection | None:
        d = self.diagnostics
        if d is True:
            return DiagnosticsSection()
        if d is False or not d.enabled:
            return None
        return d


def load_config(path: str | Path) -> StudyConfig:
    """Read and validate a study config; every problem is one UserError naming the file and the key."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read config {p}: {e}") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        raise UserError(f"{p} is not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{p}: expected a mapping of settings (models:, methods:, ...), got {type(raw).__name__}")
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
            problems.append(f"{loc}: {msg}")
        raise UserError(_one_line(f"{p}: " + "; ".join(problems))) from None


def _one_line(text: str) -> str:
    """Control characters (a key or value holding a newline) escaped, so the error stays one readable line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# ---------------------------------------------------------------------------------------------------
# 2. Cells.


@dataclass(frozen=True)
class Cell:
    model: str  # the reference the user wrote (alias, Hub id, path)
    model_name: str  # its short name, as in results.json and the directory
    method: str  # zero-shot | few-shot | full | lora | dora
    seed: int
    shots: int

    @property
    def label(self) -> str:
        """The method as tables show it: few-shot carries its k."""
        return f"few-shot-{self.shots}" if self.method == "few-shot" else self.method

    @property
    def id(self) -> str:
        return f"{self.model_name}/{self.label}/seed{self.seed}"

    def dir(self, root: Path) -> Path:
        """The cell's run directory: its id under the study directory."""
        return root / self.id

    @property
    def trained(self) -> bool:
        return self.method in TRAIN_METHODS


def plan_cells(cfg: StudyConfig) -> list[Cell]:
    """models x methods x seeds, in config order; zero-shot once per model."""

    cells = []
    names: dict[str, str] = {}
    for ref in cfg.models:
        name = cell_model_name(ref)
        if name in names:
            raise UserError(f"models '{names[name]}' and '{ref}' would share the directory name '{name}'")
        names[name] = ref
        for method in cfg.methods:
            seeds = cfg.seeds[:1] if method == "zero-shot" else cfg.seeds
            shots = cfg.eval.shots if method == "few-shot" else 0
            cells.extend(Cell(ref, name, method, seed, shots) for seed in seeds)
    return cells


def cell_model_name(ref: str) -> str:
    """The model's directory name in the study: :func:`~tinyslm.models.model_name_for_results` (so Hub id
    ``org/name`` -> ``name``, as before, and old study directories still resume), unless that is no safe
    directory name (``..`` from ``models/sub/..`` or ``org/..``, ``.`` from ``/``): then the name of the
    lexically normalised reference (``models/sub/..`` -> ``models``), else ``model``.
    """
    from tinyslm.models import model_name_for_results

    for candidate in (ref, os.path.normpath(ref)):
        name = model_name_for_results(candidate)
        if is_safe_component(name):
            return name
    return "model"


def train_config(cfg: StudyConfig, cell: Cell, out: Path, progress: bool = True) -> Any:
    """The :class:`tinyslm.train.TrainConfig` of a trained cell: train section, then the method's overrides."""

    base = dict(
        cfg.train.model_dump(),
        model=cell.model,
        method=cell.method,
        output=str(out),
        data_dir=cfg.data_dir,
        seed=cell.seed,
        resume=True,  # fresh when empty, continue when killed, "done" when finished
        device=cfg.hardware.device,
        progress=progress,
    )
    over = cfg.overrides.get(cell.method)
    if over is not None:
        base.update({k: v for k, v in over.model_dump().items() if v is not None})
    return TrainConfig(**base)


def eval_config(cfg: StudyConfig, cell: Cell, out: Path, progress: bool = True) -> Any:
    """The :class:`tinyslm.evaluate.EvalConfig` of a cell: the base model with k shots, or the trained
    model zero-shot (as the paper evaluates fine-tuned models)."""

    common = dict(
        benchmarks=",".join(cfg.eval.benchmarks),
        output=str(out / "eval"),
        limit=cfg.eval.limit,
        batch_size=cfg.eval.batch_size,
        max_new_tokens=cfg.eval.max_new_tokens,
        seed=cell.seed,
        data_dir=cfg.data_dir,
        device=cfg.hardware.device,
        engine=cfg.eval.engine,
        progress=progress,
    )
    if not cell.trained:
        return EvalConfig(model=cell.model, shots=cell.shots, **common)
    from tinyslm.train import eval_config as trained_eval_config

    tcfg = train_config(cfg, cell, out, progress)
    ecfg = trained_eval_config(replace(tcfg, eval=common["benchmarks"]), out)
    return replace(ecfg, **common, shots=0)


def cell_spec(cfg: StudyConfig, cell: Cell, out: Path) -> dict[str, Any]:
    """What a cell's results depend on; a rerun with a different spec is refused, never mixed."""
    from tinyslm.train import RESUMABLE_CHANGES

    ecfg = asdict(eval_config(cfg, cell, out))
    spec: dict[str, Any] = {
        "eval": {k: ecfg[k] for k in ("benchmarks", "limit", "shots", "max_new_tokens", "seed")},
    }
    if cell.trained:
        tcfg = asdict(train_config(cfg, cell, out))
        spec["train"] = {k: v for k, v in tcfg.items() if k not in RESUMABLE_CHANGES}
    return spec


def read_cell(out: Path) -> dict | None:
    f = out / CELL_FILE
    if not f.exists():
        return None
    try:
        return read_json_object(f)
    except ValueError:
        return None  # a damaged record is rewritten; the run files beside it decide what is redone


# ---------------------------------------------------------------------------------------------------
# 3. Running a cell.


def run_cell(cfg: StudyConfig, cell: Cell, root: Path, *, progress: bool = True, retry_failed: bool = False) -> dict:
    """Run (or skip, or resume) one cell; returns its cell.json record. Never raises for a cell's own failure
    (the record says ``failed`` and why); KeyboardInterrupt propagates after recording ``interrupted``, and
    so does a full disk (every next cell would fail the same way).

    The cell directory is locked for the whole call: a second process on the same cell gets a UserError
    naming the holder's PID.
    """
    out = contained(root, cell.dir(root))
    with exclusive_lock(out, "--output"):
        return _run_locked_cell(cfg, cell, out, progress=progress, retry_failed=retry_failed)


def _run_locked_cell(cfg: StudyConfig, cell: Cell, out: Path, *, progress: bool, retry_failed: bool) -> dict:
    prev = read_cell(out)
    spec = cell_spec(cfg, cell, out)
    rec = CellRecord(
        id=cell.id,
        model=cell.model_name,
        model_ref=cell.model,
        method=cell.label,
        kind="train" if cell.trained else "icl",
        shots=cell.shots,
        seed=cell.seed,
        benchmarks=list(cfg.eval.benchmarks),
        spec=spec,
        status=Status.RUNNING,
        reason=None,
        wall_s=None,
        attempts=1,
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    if prev is not None:
        if prev.get("spec") != spec:
            changed = sorted(
                f"{part}.{k}"
                for part in ("train", "eval")
                for k in set((prev.get("spec") or {}).get(part) or {}) | set(spec.get(part) or {})
                if ((prev.get("spec") or {}).get(part) or {}).get(k) != (spec.get(part) or {}).get(k)
            )
            return {
                **prev,
                "status": Status.FAILED.value,
                "reason": f"{out} was run with different settings ({', '.join(changed) or 'spec'}); "
                "choose another --output or delete that directory to rerun it",
                "skipped": True,
            }
        if prev.get("status") == Status.FINISHED:
            return {**prev, "skipped": True}
        if prev.get("status") in UNSUCCESSFUL and not retry_failed:
            return {**prev, "skipped": True}
        rec.attempts = int(prev.get("attempts", 0)) + 1
        rec.started_at = prev.get("started_at", rec.started_at)
    out.mkdir(parents=True, exist_ok=True)
    rec.write(out / CELL_FILE)
    t0 = time.perf_counter()
    previous_wall = float((prev or {}).get("wall_s") or 0.0)
    try:
        status, reason = _execute(cfg, cell, out, progress)
    except KeyboardInterrupt:
        rec.update(status=Status.INTERRUPTED, reason="interrupted; rerun the same command to resume",
                   wall_s=round(previous_wall + time.perf_counter() - t0, 3))
        rec.write(out / CELL_FILE)
        raise
    except Exception as e:  # the cell's own failure: record it, keep the grid going
        status, reason = Status.FAILED, _failure_reason(e)
        if isinstance(e, DiskFullError):
            rec.update(status=status, reason=reason, wall_s=round(previous_wall + time.perf_counter() - t0, 3))
            with contextlib.suppress(OSError, UserError):
                rec.write(out / CELL_FILE)
            raise
        if not isinstance(e, UserError):
            atomic_write_text(out / "error.txt", traceback.format_exc())
            reason += " (traceback in error.txt)"
    rec.update(status=status, reason=reason, wall_s=round(previous_wall + time.perf_counter() - t0, 3),
               finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    rec.write(out / CELL_FILE)
    _free_memory()
    return rec.to_json()


def _execute(cfg: StudyConfig, cell: Cell, out: Path, progress: bool) -> tuple[Status, str | None]:
    from tinyslm.evaluate import run_eval

    if cell.trained:
        if cfg.hardware.num_processes > 1:
            from tinyslm.train import read_run

            try:
                _launch_distributed(cfg, cell, out)
            except RuntimeError:  # a diverged run also exits non-zero: its run.json says so
                if (read_run(out) or {}).get("status") != Status.DIVERGED:
                    raise
            run = read_run(out) or {}
        else:
            from tinyslm.train import train

            run = train(train_config(cfg, cell, out, progress))
        if run.get("status") == Status.DIVERGED:  # its own status, so the study summary and report show it
            return Status.DIVERGED, run.get("reason") or "training diverged"
        if run.get("status") != Status.FINISHED:
            return Status.FAILED, f"training {run.get('status', 'did not finish')}: {run.get('reason') or ''}".rstrip(": ")
    from tinyslm.runtime import hf_progress_bars

    with hf_progress_bars(progress):
        run_eval(eval_config(cfg, cell, out, progress))
    return Status.FINISHED, None


def _launch_distributed(cfg: StudyConfig, cell: Cell, out: Path) -> None:
    """Data-parallel training in child processes (accelerate launch); evaluation stays in this process."""
    import subprocess

    from tinyslm.io import HELD_LOCKS_ENV

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(cfg.hardware.num_processes),
           "-m", "tinyslm.cli.train", *train_argv(train_config(cfg, cell, out))]
    # The children train into this cell, which this process has locked: they may write there.
    env = {**os.environ, HELD_LOCKS_ENV: str(out.expanduser().resolve())}
    proc = subprocess.run(cmd, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"distributed training exited with code {proc.returncode}: {shlex.join(cmd)}")


def train_argv(tcfg: Any) -> list[str]:
    """``tiny-slm-train`` arguments that reproduce ``tcfg`` (only what differs from the CLI defaults)."""

    default = TrainConfig(model="", method="", output="")
    argv = []
    for k, v in asdict(tcfg).items():
        if k == "progress":
            argv += [] if v else ["--no-progress"]
            continue
        if v == getattr(default, k):
            continue
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            argv.append(flag)
        else:
            argv += [flag, str(v)]
    return argv


def _failure_reason(e: BaseException) -> str:
    text = f"{e}".strip().splitlines()[0] if f"{e}".strip() else type(e).__name__
    if "out of memory" in text.lower():
        return f"out of memory: {text}"[:500]
    return (text if isinstance(e, UserError) else f"{type(e).__name__}: {text}")[:500]


def _free_memory() -> None:
    """Give the next cell the whole accelerator: a failed cell can leave tensors behind until collected."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


# ---------------------------------------------------------------------------------------------------
# 4. The grid.


def check_inputs(cfg: StudyConfig) -> None:
    """Fail on bad benchmarks, data directory or training set before the first cell runs.

    Models are not checked here: a missing model fails its own cells, and the rest of the grid runs.
    """
    from tinyslm.benchmarks import load_examples, parse_benchmark_list, resolve_data_dir

    data_dir = resolve_data_dir(cfg.data_dir)
    for bench in parse_benchmark_list(",".join(cfg.eval.benchmarks)):
        load_examples(bench, data_dir)
    if any(m in TRAIN_METHODS for m in cfg.methods):
        from tinyslm.datasets import load_training_set

        load_training_set(cfg.train.dataset, data_dir=cfg.data_dir, limit=cfg.train.limit)
        from tinyslm.train import resolve_config

        for cell in plan_cells(cfg):
            if cell.trained:
                resolve_config(train_config(cfg, cell, Path("unused")))


def output_dir(cfg: StudyConfig, config_path: str | Path, output: str | None) -> Path:
    if output:
        return Path(output).expanduser()
    if cfg.output:
        return Path(cfg.output).expanduser()
    return Path("runs") / Path(config_path).stem


def run_study(
    config_path: str | Path,
    output: str | None = None,
    *,
    only: str | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    report: bool = True,
) -> dict:
    """Run every cell of the config (or only the cell ``only``), then diagnostics and the report."""
    cfg = load_config(config_path)
    root = output_dir(cfg, config_path, output)
    cells = plan_cells(cfg)
    if only is not None:
        cells = [c for c in cells if c.id == only]
        if not cells:
            raise UserError(f"no cell '{only}' in {config_path} (list them with --dry-run)")
    check_inputs(cfg)
    root.mkdir(parents=True, exist_ok=True)
    records = {c.id: read_cell(c.dir(root)) for c in plan_cells(cfg)}
    t0 = time.perf_counter()
    for i, cell in enumerate(cells, 1):
        print(f"[{i}/{len(cells)}] {cell.id}", file=sys.stderr, flush=True)
        rec = run_cell(cfg, cell, root, progress=progress, retry_failed=retry_failed)
        records[cell.id] = rec
        _say_cell(rec)
        write_study_file(cfg, root, records)
    diag = cfg.diagnostics_settings
    if diag is not None:
        for cell in cells:
            rec = records.get(cell.id) or {}
            if cell.trained and rec.get("status") == Status.FINISHED:
                with exclusive_lock(cell.dir(root), "--output"):  # it writes into the cell
                    _diagnose(cfg, cell.dir(root), diag, progress)
    result = {"output": str(root), "cells": records, "wall_s": round(time.perf_counter() - t0, 3)}
    if report and cfg.report.enabled and only is None:
        try:
            result["report"] = str(write_report(cfg, root))
        except UserError as e:  # e.g. every cell failed: the cell summary below still says why
            print(f"no report: {e}", file=sys.stderr)
    return result


def _say_cell(rec: dict) -> None:
    status = rec.get("status")
    if rec.get("skipped"):
        note = "finished earlier, kept" if status == Status.FINISHED else f"{status} earlier: {rec.get('reason')}"
        if status in UNSUCCESSFUL and "different settings" not in (rec.get("reason") or ""):
            note += " (rerun with --retry-failed)"
    else:
        note = f"{status} in {rec.get('wall_s', 0):.0f} s" + (f": {rec['reason']}" if rec.get("reason") else "")
    print(f"    {rec.get('id')}: {note}", file=sys.stderr, flush=True)


def _diagnose(cfg: StudyConfig, out: Path, diag: DiagnosticsSection, progress: bool) -> None:
    """Diagnostics of one trained cell; kept when done, a failure is recorded and the study goes on."""
    if (out / "diagnostics.json").exists():
        return
    from tinyslm import diagnostics

    print(f"diagnostics: {out}", file=sys.stderr, flush=True)
    try:
        diagnostics.analyze(out, probe_limit=diag.probe_limit, device=cfg.hardware.device, progress=progress,
                            data_dir=cfg.data_dir)
    except Exception as e:  # recorded beside the cell, the report just lacks that row
        atomic_write_text(out / "diagnostics.error.txt", traceback.format_exc())
        print(f"    diagnostics failed: {_failure_reason(e)}", file=sys.stderr)


def write_study_file(cfg: StudyConfig, root: Path, records: dict[str, dict | None]) -> None:
    atomic_write_json(
        root / STUDY_FILE,
        {
            "name": cfg.name,
            "description": cfg.description,
            "config": cfg.model_dump(),
            "cells": [
                {
                    "id": cid,
                    "dir": cid,
                    **{k: (r or {}).get(k) for k in ("model", "method", "seed", "status", "reason", "wall_s")},
                }
                for cid, r in records.items()
            ],
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )


def write_report(cfg: StudyConfig, root: Path) -> Path:
    from tinyslm.report import write_report as render

    return render([root], root / "report", price_per_gpu_hour=cfg.report.price_per_gpu_hour)
