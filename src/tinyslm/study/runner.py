"""Running the grid: each cell (train -> evaluate, or evaluate), failure-isolated and resumable, then
diagnostics and the report. The cell directory is the unit everything else reads.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shlex
import sys
import time
import traceback
from dataclasses import MISSING, asdict, fields, replace
from pathlib import Path
from typing import Any

from tinyslm.config.methods import TRAINED_METHODS as TRAIN_METHODS
from tinyslm.core.errors import UserError
from tinyslm.core.files import (
    DiskFullError,
    atomic_write_json,
    atomic_write_text,
    contained,
    exclusive_lock,
)
from tinyslm.results.schema import UNSUCCESSFUL, CellRecord, Status
from tinyslm.study.grid import (
    CELL_FILE,
    STUDY_FILE,
    Cell,
    DiagnosticsSection,
    StudyConfig,
    cell_spec,
    eval_config,
    load_config,
    plan_cells,
    read_cell,
    train_config,
)
from tinyslm.train.config import TrainConfig

# ---------------------------------------------------------------------------------------------------
# 3. Running a cell.


def run_cell(
    cfg: StudyConfig, cell: Cell, root: Path, *, progress: bool = True, retry_failed: bool = False
) -> CellRecord:
    """Run (or skip, or resume) one cell; returns its cell.json record. Never raises for a cell's own failure
    (the record says ``failed`` and why); KeyboardInterrupt propagates after recording ``interrupted``, and
    so does a full disk (every next cell would fail the same way).

    The cell directory is locked for the whole call: a second process on the same cell gets a UserError
    naming the holder's PID.
    """
    out = contained(root, cell.dir(root))
    choice = None
    if cell.kind == "tuned":  # the sweep's choice first: until every trial has run, the cell waits
        from tinyslm.study.sweep import choose, tuned_cell

        try:
            choice = choose(cfg, root, cell.model, cell.method)
        except UserError as e:
            rec = read_cell(out) or CellRecord(
                id=cell.id, model=cell.model_name, method=cell.label, status=Status.PENDING
            )
            rec.update(reason=f"waiting: {e}", skipped=True)
            return rec  # nothing written: the cell runs once its trials have
        cell = tuned_cell(cell, choice)
    with exclusive_lock(out, "--output"):
        return _run_locked_cell(cfg, cell, out, choice, root, progress=progress, retry_failed=retry_failed)


def _run_locked_cell(
    cfg: StudyConfig,
    cell: Cell,
    out: Path,
    choice: Any,
    root: Path,
    *,
    progress: bool,
    retry_failed: bool,
) -> CellRecord:
    prev = read_cell(out)
    spec = cell_spec(cfg, cell, out, choice.to_json() if choice is not None else None)
    rec = CellRecord(
        id=cell.id,
        model=cell.model_name,
        model_ref=cell.model,
        method=cell.label,
        kind=cell.kind if cell.kind != "grid" else ("train" if cell.trained else "icl"),
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
    _sweep_fields(cfg, cell, rec, choice)
    if prev is not None:
        changed = spec_changes(prev.get("spec") or {}, spec)
        if changed:
            prev.update(
                status=Status.FAILED,
                reason=f"{out} was run with different settings ({', '.join(changed) or 'spec'}); "
                "choose another --output or delete that directory to rerun it",
                skipped=True,
            )
            return prev  # what is reported; the cell.json on disk stays as it was
        if prev.get("status") == Status.FINISHED or (prev.get("status") in UNSUCCESSFUL and not retry_failed):
            prev.update(skipped=True)
            return prev
        rec.attempts = int(prev.get("attempts", 0)) + 1
        rec.started_at = prev.get("started_at", rec.started_at)
    out.mkdir(parents=True, exist_ok=True)
    rec.write(out / CELL_FILE)
    t0 = time.perf_counter()
    previous_wall = float((prev or {}).get("wall_s") or 0.0)
    try:
        if cell.kind == "tuned":
            status, reason = _execute_tuned(cfg, cell, out, choice, root, progress)
        else:
            status, reason = _execute(cfg, cell, out, progress)
    except KeyboardInterrupt:
        rec.update(
            status=Status.INTERRUPTED,
            reason="interrupted; rerun the same command to resume",
            wall_s=round(previous_wall + time.perf_counter() - t0, 3),
        )
        rec.write(out / CELL_FILE)
        raise
    except Exception as e:  # the cell's own failure: record it, keep the grid going
        status, reason = Status.FAILED, _failure_reason(e)
        if isinstance(e, DiskFullError):
            rec.update(
                status=status, reason=reason, wall_s=round(previous_wall + time.perf_counter() - t0, 3)
            )
            with contextlib.suppress(OSError, UserError):
                rec.write(out / CELL_FILE)
            raise
        if not isinstance(e, UserError):
            atomic_write_text(out / "error.txt", traceback.format_exc())
            reason += " (traceback in error.txt)"
    rec.update(
        status=status,
        reason=reason,
        wall_s=round(previous_wall + time.perf_counter() - t0, 3),
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    rec.write(out / CELL_FILE)
    _free_memory()
    return rec


def _execute(cfg: StudyConfig, cell: Cell, out: Path, progress: bool) -> tuple[Status, str | None]:
    from tinyslm.evaluate.runner import run_eval

    if cell.trained:
        if cfg.hardware.num_processes > 1:
            from tinyslm.train.recipe import read_run

            try:
                _launch_distributed(cfg, cell, out)
            except RuntimeError:  # a diverged run also exits non-zero: its run.json says so
                if (read_run(out) or {}).get("status") != Status.DIVERGED:
                    raise
            run = read_run(out) or {}
        else:
            from tinyslm.train.recipe import train

            run = train(train_config(cfg, cell, out, progress))
        if run.get("status") == Status.DIVERGED:  # its own status, so the study summary and report show it
            return Status.DIVERGED, run.get("reason") or "training diverged"
        if run.get("status") != Status.FINISHED:
            return (
                Status.FAILED,
                f"training {run.get('status', 'did not finish')}: {run.get('reason') or ''}".rstrip(": "),
            )
        if cell.kind == "trial":  # a sweep trial is judged on its validation split only
            return Status.FINISHED, None
    from tinyslm.core.runtime import hf_progress_bars

    with hf_progress_bars(progress):
        run_eval(eval_config(cfg, cell, out, progress))
    return Status.FINISHED, None


def _execute_tuned(
    cfg: StudyConfig, cell: Cell, out: Path, choice: Any, root: Path, progress: bool
) -> tuple[Status, str | None]:
    """The chosen setting on the test benchmarks. The chosen run itself at its seed (the first): its final/
    model is evaluated here, or, when the protocol point won, its grid cell's evaluation is copied (same
    model, same problems). Every further seed: the grid cell of that seed when the protocol point won, else
    the chosen setting is trained at that seed here, then evaluated."""
    from tinyslm.core.runtime import hf_progress_bars
    from tinyslm.evaluate.runner import run_eval

    same = choice.cell if cell.seed == choice.cell.seed else None
    if same is None and choice.protocol:
        same = Cell(cell.model, cell.model_name, cell.method, cell.seed, 0)  # the grid cell of this seed
    if same is not None and same.kind == "grid" and _copy_eval(same.dir(root), out, cfg.eval.benchmarks):
        return Status.FINISHED, None
    if same is None:  # train the chosen setting at this seed (cell carries it), then evaluate as any cell
        return _execute(cfg, cell, out, progress)
    ecfg = eval_config(cfg, same, same.dir(root), progress)
    with hf_progress_bars(progress):
        run_eval(replace(ecfg, output=str(out / "eval")))
    return Status.FINISHED, None


def _copy_eval(src: Path, out: Path, benchmarks: list[str]) -> bool:
    """Copy a finished cell's evaluation files (True), or False when it has not finished every benchmark."""
    import shutil

    rec = read_cell(src)
    if rec is None or rec.get("status") != Status.FINISHED:
        return False
    from tinyslm.data.benchmarks import benchmark_name

    names = [benchmark_name(b) for b in benchmarks]  # a user's file: its output directory's name
    names = [b for b in names if (src / "eval" / b / "results.json").is_file()]
    if len(names) != len(benchmarks):
        return False
    for b in names:
        dest = out / "eval" / b
        dest.mkdir(parents=True, exist_ok=True)
        for f in ("run_config.json", "predictions.jsonl", "results.json"):
            if (src / "eval" / b / f).is_file():
                shutil.copy2(src / "eval" / b / f, dest / f)
    return True


def spec_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The settings in which a cell's recorded spec differs from today's. A training setting the old spec
    lacks (added to tiny-slm later) counts as its default, so directories made before it still resume."""
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    out = []
    for part in sorted(set(old) | set(new)):
        a, b = old.get(part), new.get(part)
        if not (isinstance(a, dict) and isinstance(b, dict)) or part == "chosen":
            if a != b:
                out.append(part)
            continue
        for k in sorted(set(a) | set(b)):
            was = a.get(k, defaults.get(k)) if part == "train" else a.get(k)
            if was != b.get(k):
                out.append(f"{part}.{k}")
    return out


def _sweep_fields(cfg: StudyConfig, cell: Cell, rec: CellRecord, choice: Any) -> None:
    """cell.json's sweep fields: a trial's setting, a tuned cell's choice, a protocol cell's point."""
    if cell.kind == "trial":
        rec.update(base_method=cell.method, trial=dict(cell.trial), benchmarks=[])
    elif cell.kind == "tuned":
        rec.update(base_method=cell.method, chosen=choice.to_json())
    elif cfg.sweep is not None and cell.method in cfg.sweep.grid and cell.seed == cfg.seeds[0]:
        from tinyslm.study.grid import sweep_points

        rec.update(sweep_point=dict(sweep_points(cfg, cell.model, cell.method)[0]))


def _launch_distributed(cfg: StudyConfig, cell: Cell, out: Path) -> None:
    """Data-parallel training in child processes (accelerate launch); evaluation stays in this process."""
    import subprocess

    from tinyslm.core.files import HELD_LOCKS_ENV

    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(cfg.hardware.num_processes),
        "-m",
        "tinyslm.cli.train",
        *train_argv(train_config(cfg, cell, out)),
    ]
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
    from tinyslm.data.benchmarks import load_examples, parse_benchmark_list, resolve_data_dir

    data_dir = resolve_data_dir(cfg.data_dir)
    for bench in parse_benchmark_list(",".join(cfg.eval.benchmarks)):
        load_examples(bench, data_dir)
    if any(m in TRAIN_METHODS for m in cfg.methods):
        from tinyslm.data.training import load_training_set

        val_size = cfg.sweep.val_size if cfg.sweep is not None else 0
        load_training_set(cfg.train.dataset, data_dir=cfg.data_dir, limit=cfg.train.limit, val_size=val_size)
        from tinyslm.train.config import resolve_config

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
            if cell.trained and cell.kind == "grid" and rec.get("status") == Status.FINISHED:
                with exclusive_lock(cell.dir(root), "--output"):  # it writes into the cell
                    _diagnose(cfg, cell.dir(root), diag, progress)
    result = {"output": str(root), "cells": records, "wall_s": round(time.perf_counter() - t0, 3)}
    if report and cfg.report.enabled and only is None:
        try:
            result["report"] = str(write_report(cfg, root))
        except UserError as e:  # e.g. every cell failed: the cell summary below still says why
            print(f"no report: {e}", file=sys.stderr)
    return result


def _say_cell(rec: CellRecord) -> None:
    status = rec.get("status")
    if rec.get("skipped"):
        note = (
            "finished earlier, kept"
            if status == Status.FINISHED
            else f"{status} earlier: {rec.get('reason')}"
        )
        if status in UNSUCCESSFUL and "different settings" not in (rec.get("reason") or ""):
            note += " (rerun with --retry-failed)"
    else:
        note = f"{status} in {rec.get('wall_s', 0):.0f} s" + (
            f": {rec['reason']}" if rec.get("reason") else ""
        )
    print(f"    {rec.get('id')}: {note}", file=sys.stderr, flush=True)


def _diagnose(cfg: StudyConfig, out: Path, diag: DiagnosticsSection, progress: bool) -> None:
    """Diagnostics of one trained cell; kept when done, a failure is recorded and the study goes on."""
    if (out / "diagnostics.json").exists():
        return
    from tinyslm import diagnostics

    print(f"diagnostics: {out}", file=sys.stderr, flush=True)
    try:
        diagnostics.analyze(
            out,
            probe_limit=diag.probe_limit,
            device=cfg.hardware.device,
            progress=progress,
            data_dir=cfg.data_dir,
        )
    except Exception as e:  # recorded beside the cell, the report just lacks that row
        atomic_write_text(out / "diagnostics.error.txt", traceback.format_exc())
        print(f"    diagnostics failed: {_failure_reason(e)}", file=sys.stderr)


def write_study_file(cfg: StudyConfig, root: Path, records: dict[str, CellRecord | None]) -> None:
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
                    **{
                        k: (r or {}).get(k) for k in ("model", "method", "seed", "status", "reason", "wall_s")
                    },
                }
                for cid, r in records.items()
            ],
            **({"sweep": _sweep_summary(cfg, root)} if cfg.sweep is not None else {}),
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )


def _sweep_summary(cfg: StudyConfig, root: Path) -> dict[str, Any]:
    """study.json's ``sweep``: the rule, and per model x method its trials and the chosen one (null while
    trials are still to run)."""
    from tinyslm.study.sweep import candidates, choose

    assert cfg.sweep is not None
    choices: dict[str, Any] = {}
    for model in cfg.models:
        for method in (m for m in cfg.methods if m in cfg.sweep.grid):
            trials = candidates(cfg, model, method)
            try:
                chosen: str | None = choose(cfg, root, model, method).cell.id
            except UserError:
                chosen = None
            choices[f"{trials[0][0].model_name}/{method}"] = {
                "chosen": chosen,
                "trials": [c.id for c, _ in trials],
            }
    return {"select_by": cfg.sweep.select_by, "val_size": cfg.sweep.val_size, "choices": choices}


def write_report(cfg: StudyConfig, root: Path) -> Path:
    from tinyslm.report import write_report as render

    return render([root], root / "report", price_per_gpu_hour=cfg.report.price_per_gpu_hour)
