"""Read run directories into cells: one cell = one model x method x seed, with its per-benchmark results.

Three layouts are accepted, found by walking every RUN_DIR (a directory is claimed by the first rule
that fits, and its subdirectories are then not searched again):

* a study cell (``tiny-slm run``): ``cell.json`` names model, method, seed and status; evaluation in ``eval/``,
  training telemetry in ``run.json`` + ``metrics.jsonl`` for trained methods;
* a bare training run (``tiny-slm-train --eval``): ``run.json`` (method, model, config.seed) + ``eval/``;
* a bare evaluation (``tiny-slm-eval --output D``): ``D/<benchmark>/results.json``; the method follows from
  the number of shots (0: zero-shot, k: few-shot-k).

``study.json`` files met on the way are kept for the header, and their cells that never wrote a
``cell.json`` (a crash before the cell started) still appear, with the study's status and reason.

A study with a learning-rate sweep (issue 15) adds two kinds of cells: *trials*
(``<method>-trial-<slug>``, ``kind: trial``), which train and are validated but have no test benchmarks, and
*tuned* cells (``<method>-tuned``), the chosen setting evaluated on the test benchmarks. ``metrics.jsonl``
then holds validation lines (``"split": "val"``) beside the training lines; they are kept apart
(:attr:`Cell.val_metrics`) so that every reader of :attr:`Cell.metrics` sees training lines only.
Nothing here judges results: a failed or unreadable cell is recorded as such so that the report can show
it instead of crashing on it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyslm.config.methods import TRAINED_METHODS
from tinyslm.core.errors import UserError
from tinyslm.core.files import predictions_file, read_json_object, read_jsonl
from tinyslm.data.benchmarks import benchmark_name
from tinyslm.results.schema import CellRecord, EvalResult, RunRecord, Status

ZERO_SHOT = "zero-shot"
TUNED_SUFFIX = "-tuned"
TRIAL_INFIX = "-trial-"


def base_method(method: str) -> str:
    """The method a sweep cell belongs to: ``lora`` for ``lora-tuned`` and ``lora-trial-lr5e-04-r16``."""
    if method.endswith(TUNED_SUFFIX):
        return method[: -len(TUNED_SUFFIX)]
    head, sep, _ = method.partition(TRIAL_INFIX)
    return head if sep and head else method


def is_tuned(method: str) -> bool:
    """A ``<method>-tuned`` cell: the sweep's chosen setting, evaluated on the test benchmarks."""
    return method.endswith(TUNED_SUFFIX) and method != TUNED_SUFFIX


def is_trial(method: str) -> bool:
    """A ``<method>-trial-<slug>`` cell: one sweep point, validated but never tested."""
    return base_method(method) != method and not is_tuned(method)


def is_trained_method(method: str) -> bool:
    """Full, LoRA, DoRA and their tuned and trial cells: the methods that train weights."""
    return base_method(method) in TRAINED_METHODS


@dataclass
class BenchmarkRun:
    """One benchmark of one cell: results.json plus the per-problem predictions, by problem id."""

    name: str
    results: EvalResult
    predictions: dict[str, dict[str, Any]]  # empty when predictions.jsonl is missing or unreadable
    path: Path

    @property
    def verdicts(self) -> dict[str, bool]:
        """Problem id -> correct, the input of the paired tests."""
        return {k: bool(p.get("correct")) for k, p in self.predictions.items()}


@dataclass
class Cell:
    """One model x method x seed, finished or not."""

    dir: Path
    layout: str  # "study", "train" or "eval"
    model: str
    method: str
    seed: int | None
    status: str  # finished, failed, diverged, interrupted, running, unreadable, ...
    reason: str | None = None
    model_ref: str | None = None
    declared_benchmarks: list[str] = field(default_factory=list)
    wall_s: float | None = None
    run: RunRecord | None = None  # run.json of a trained method
    metrics: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl
    benchmarks: dict[str, BenchmarkRun] = field(default_factory=dict)
    diagnostics: dict[str, Any] | None = None  # the "summary" of diagnostics.json
    # Sweep (issue 15): the cell.json keys, and the validation lines of metrics.jsonl ("split": "val").
    cell_id: str | None = None  # cell.json "id"
    kind: str | None = None  # cell.json "kind": train, icl, trial, tuned
    trial: dict[str, Any] | None = None  # a trial's setting, e.g. {"lr": 0.0005, "lora_r": 16}
    sweep_point: dict[str, Any] | None = None  # a protocol cell's values of the sweep grid's keys
    chosen: dict[str, Any] | None = None  # a tuned cell's choice: cell, setting, select_by, value, protocol
    val_metrics: list[dict[str, Any]] = field(default_factory=list)
    # On device (issue 14): the cell's exported GGUF files scored by llama.cpp, edge/<quant>/<benchmark>/.
    edge: dict[str, dict[str, BenchmarkRun]] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """The study's cell id (``model/method/seedK``), as study.json and a tuned cell's ``chosen`` name it."""
        return self.cell_id or f"{self.model}/{self.method}/seed{self.seed}"

    @property
    def base_method(self) -> str:
        return base_method(self.method)

    @property
    def is_trial(self) -> bool:
        """A sweep trial: never in the accuracy, cost or results.csv rows (it has no test benchmarks)."""
        return self.kind == "trial" or is_trial(self.method)

    @property
    def is_tuned(self) -> bool:
        return is_tuned(self.method)

    @property
    def trained(self) -> bool:
        return is_trained_method(self.method)

    @property
    def finished(self) -> bool:
        return self.status == Status.FINISHED


@dataclass
class Collection:
    roots: list[Path]
    cells: list[Cell]
    studies: list[dict[str, Any]]  # study.json contents, each with "_dir" added
    warnings: list[str]

    @property
    def benchmark_names(self) -> list[str]:
        return sorted({b for c in self.cells for b in c.benchmarks})

    @property
    def models(self) -> list[str]:
        return sorted({c.model for c in self.cells}, key=lambda m: (self.model_parameters(m) or 0, m))

    def model_parameters(self, model: str) -> int | None:
        """The model's base parameter count: results.json ``model_parameters`` (adapters excluded), else
        run.json ``parameters.total`` of full fine-tuning (the same network), else of any trained run."""
        counts = [
            b.results.get("model_parameters")
            for c in self.cells
            if c.model == model
            for b in c.benchmarks.values()
        ]
        counts = [int(x) for x in counts if isinstance(x, (int, float)) and x > 0]
        if counts:
            return max(set(counts), key=counts.count)
        runs = sorted((c for c in self.cells if c.model == model and c.run), key=lambda c: c.method != "full")
        for c in runs:
            total = (c.run or {}).get("parameters", {}).get("total")
            if isinstance(total, (int, float)) and total > 0:
                return int(total)
        return None

    def cell_by_id(self, cell_id: str | None) -> Cell | None:
        """The cell a study.json choice or a tuned cell's ``chosen`` names (None when it is not here)."""
        if not cell_id:
            return None
        return next((c for c in self.cells if c.id == cell_id), None)

    def training_run(self, c: Cell) -> RunRecord | None:
        """The run that trained ``c``'s weights: its own run.json, or for a tuned cell that evaluated the
        chosen trial's model without training (the first seed) that trial's run.json."""
        if c.run is not None or not c.is_tuned:
            return c.run
        chosen = self.cell_by_id(str((c.chosen or {}).get("cell") or ""))
        return chosen.run if chosen is not None else None

    @property
    def sweeps(self) -> list[dict[str, Any]]:
        """The "sweep" sections of the study.json files (select_by, val_size, choices), each with "_dir"."""
        return [{**s["sweep"], "_dir": s["_dir"]} for s in self.studies if isinstance(s.get("sweep"), dict)]

    @property
    def has_sweep(self) -> bool:
        return bool(self.sweeps) or any(c.is_trial or c.is_tuned for c in self.cells)


def method_order(method: str) -> tuple[int, int, int, str]:
    """Zero-shot, few-shot-k by k, full, LoRA, DoRA, then anything else: the order of every table. A sweep's
    ``<method>-tuned`` follows its method directly, then its trials."""
    if method == ZERO_SHOT:
        return (0, 0, 0, method)
    m = re.fullmatch(r"few-shot-(\d+)", method)
    if m:
        return (1, int(m.group(1)), 0, method)
    base = base_method(method)
    variant = 0 if base == method else 1 if is_tuned(method) else 2
    if base in TRAINED_METHODS:
        return (2, TRAINED_METHODS.index(base), variant, method)
    return (3, 0, variant, method)


def natural_key(problem_id: str) -> tuple[int, int | str]:
    """Numeric ids in numeric order ("2" before "10"), then the others alphabetically."""
    return (0, int(problem_id)) if problem_id.isdigit() else (1, problem_id)


class _Unreadable(Exception):
    """A file that exists but cannot be parsed: the cell is reported as unreadable, the report goes on."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return read_json_object(path)
    except ValueError as e:
        raise _Unreadable(str(e)) from None


def _read_jsonl(path: Path, warnings: list[str]) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        return list(read_jsonl(path, tolerate_torn_tail=True))
    except (OSError, ValueError) as e:
        warnings.append(f"skipped {path}: {e}")
        return []


def read_benchmarks(eval_dir: Path, warnings: list[str]) -> dict[str, BenchmarkRun]:
    """Every ``<benchmark>/results.json`` under ``eval_dir`` (unfinished benchmarks have none and are skipped)."""
    out: dict[str, BenchmarkRun] = {}
    if not eval_dir.is_dir():
        return out
    dirs = (
        [eval_dir]
        if (eval_dir / "results.json").is_file()
        else sorted(p for p in eval_dir.iterdir() if p.is_dir())
    )
    for d in dirs:
        res_file = d / "results.json"
        if not res_file.is_file():
            continue
        try:
            res = EvalResult.from_json(_read_json(res_file))
        except _Unreadable as e:
            warnings.append(str(e))
            continue
        if not isinstance(res.get("n"), int) or not isinstance(res.get("correct"), int):
            warnings.append(f"skipped {res_file}: no integer n/correct")
            continue
        name = str(res.get("benchmark") or d.name)
        preds = {str(p["id"]): p for p in _read_jsonl(predictions_file(d), warnings) if "id" in p}
        if not preds:
            warnings.append(f"{d}: no predictions.jsonl; paired tests and examples skip this benchmark")
        out[name] = BenchmarkRun(name, res, preds, d)
    return out


def _method_from_shots(res: dict[str, Any]) -> str:
    shots = int(res.get("shots") or 0)
    base = ZERO_SHOT if shots == 0 else f"few-shot-{shots}"
    # An adapter evaluated on its own: the method it was trained with is not recorded in results.json.
    return f"adapter {base}" if res.get("adapter") else base


def _fill_trained(cell: Cell, warnings: list[str]) -> None:
    """run.json, metrics.jsonl and diagnostics.json of a cell directory, when present."""
    run_file = cell.dir / "run.json"
    if run_file.is_file():
        try:
            cell.run = RunRecord.from_json(_read_json(run_file))
        except _Unreadable as e:
            warnings.append(str(e))
    lines = _read_jsonl(cell.dir / "metrics.jsonl", warnings)
    # Validation lines carry "split": "val"; training lines have no "split" key. Only training lines go to
    # cell.metrics, which the loss curves and every other reader of training telemetry use.
    cell.metrics = [m for m in lines if "split" not in m]
    cell.val_metrics = [m for m in lines if m.get("split") == "val"]
    edge = cell.dir / "edge"
    if edge.is_dir():
        for q in sorted(p for p in edge.iterdir() if p.is_dir()):
            runs = read_benchmarks(q, warnings)
            if runs:
                cell.edge[q.name] = runs
    diag_file = cell.dir / "diagnostics.json"
    if diag_file.is_file():
        try:
            summary = _read_json(diag_file).get("summary")
        except _Unreadable as e:
            warnings.append(str(e))
            summary = None
        if isinstance(summary, dict):
            cell.diagnostics = summary


def read_study_cell(d: Path, warnings: list[str]) -> Cell:
    try:
        meta = CellRecord.from_json(_read_json(d / "cell.json"))
    except _Unreadable as e:
        warnings.append(str(e))
        return Cell(
            d,
            "study",
            d.parent.parent.name,
            d.parent.name,
            _seed_from_dir(d),
            Status.UNREADABLE.value,
            str(e),
        )
    cell = Cell(
        dir=d,
        layout="study",
        model=str(meta.get("model") or d.parent.parent.name),
        method=str(meta.get("method") or d.parent.name),
        seed=meta.get("seed"),
        status=str(meta.get("status") or Status.UNKNOWN),
        reason=meta.get("reason"),
        model_ref=meta.get("model_ref"),
        declared_benchmarks=[benchmark_name(str(b)) for b in meta.get("benchmarks") or []],
        wall_s=meta.get("wall_s"),
        cell_id=_str_or_none(meta.get("id")),
        kind=_str_or_none(meta.get("kind")),
        trial=_dict_or_none(meta.get("trial")),
        sweep_point=_dict_or_none(meta.get("sweep_point")),
        chosen=_dict_or_none(meta.get("chosen")),
    )
    _fill_trained(cell, warnings)
    cell.benchmarks = read_benchmarks(d / "eval", warnings)
    return cell


def _str_or_none(x: Any) -> str | None:
    return str(x) if isinstance(x, (str, int)) and str(x) else None


def _dict_or_none(x: Any) -> dict[str, Any] | None:
    """A cell.json object value, or None when absent or not an object (a damaged key is not a crash)."""
    return dict(x) if isinstance(x, dict) else None


def read_train_dir(d: Path, warnings: list[str]) -> Cell:
    try:
        run = RunRecord.from_json(_read_json(d / "run.json"))
    except _Unreadable as e:
        warnings.append(str(e))
        return Cell(d, "train", d.name, "unknown", None, Status.UNREADABLE.value, str(e))
    cfg = run.get("config") or {}
    cell = Cell(
        dir=d,
        layout="train",
        model=str(run.get("model") or d.name),
        method=str(run.get("method") or cfg.get("method") or "unknown"),
        seed=cfg.get("seed"),
        status=str(run.get("status") or Status.UNKNOWN),
        reason=run.get("reason"),
        model_ref=run.get("model_ref"),
        declared_benchmarks=[benchmark_name(b) for b in str(cfg.get("eval") or "").split(",") if b],
        wall_s=run.get("runtime_s"),
    )
    _fill_trained(cell, warnings)
    cell.benchmarks = read_benchmarks(d / "eval", warnings)
    return cell


def read_eval_dir(d: Path, warnings: list[str]) -> Cell | None:
    benchmarks = read_benchmarks(d, warnings)
    if not benchmarks:
        return None
    first = next(iter(benchmarks.values())).results
    methods = {_method_from_shots(b.results) for b in benchmarks.values()}
    if len(methods) > 1:
        warnings.append(
            f"{d}: benchmarks evaluated with different shots ({', '.join(sorted(methods))}); "
            f"reported as {_method_from_shots(first)}"
        )
    return Cell(
        dir=d,
        layout="eval",
        model=str(first.get("model") or d.name),
        method=_method_from_shots(first),
        seed=first.get("seed"),
        status=Status.FINISHED.value,
        model_ref=first.get("model_ref"),
        declared_benchmarks=sorted(benchmarks),
        wall_s=sum(float(b.results.get("wall_s") or 0) for b in benchmarks.values()),
        benchmarks=benchmarks,
    )


def _seed_from_dir(d: Path) -> int | None:
    m = re.fullmatch(r"seed(\d+)", d.name)
    return int(m.group(1)) if m else None


def _cells_from_study(study: dict[str, Any], seen: set[Path]) -> list[Cell]:
    """Cells listed in study.json that have no cell.json on disk (they never started, or crashed first)."""
    root = Path(study["_dir"])
    out = []
    for entry in study.get("cells") or []:
        if not isinstance(entry, dict) or not entry.get("dir"):
            continue
        d = root / str(entry["dir"])  # as the user named the study: the report shows no absolute paths
        if d.resolve() in seen:
            continue
        # a cell that never started has only its id ("<model>/<method>/seed<k>"): its parts name it
        parts = str(entry.get("id") or entry["dir"]).split("/")
        by_id = parts if len(parts) == 3 else [None, None, None]
        out.append(
            Cell(
                dir=d,
                layout="study",
                model=str(entry.get("model") or by_id[0] or "unknown"),
                method=str(entry.get("method") or by_id[1] or "unknown"),
                seed=entry.get("seed") if entry.get("seed") is not None else _seed_from_dir(d),
                status=str(entry.get("status") or "not started"),
                reason=entry.get("reason") or "no cell.json was written",
                cell_id=_str_or_none(entry.get("id")),
                kind=_str_or_none(entry.get("kind")),
                trial=_dict_or_none(entry.get("trial")),
            )
        )
    return out


def collect(run_dirs: list[str | Path]) -> Collection:
    """Walk every RUN_DIR and read the cells in it. Bad input (a missing directory, nothing found) is a
    :class:`UserError`; damaged files become warnings and unreadable cells."""
    if not run_dirs:
        raise UserError("no run directory given")
    roots, cells, studies, warnings = [], [], [], []
    for raw in run_dirs:
        root = Path(raw).expanduser()
        if not root.exists():
            raise UserError(f"run directory not found: {root}")
        if not root.is_dir():
            raise UserError(
                f"not a directory: {root} (pass the directory the study, tiny-slm-train or tiny-slm-eval wrote)"
            )
        roots.append(root)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            d = Path(dirpath)
            if "study.json" in filenames:
                try:
                    studies.append({**_read_json(d / "study.json"), "_dir": str(d)})
                except _Unreadable as e:
                    warnings.append(str(e))
            cell = None
            if "cell.json" in filenames:
                cell = read_study_cell(d, warnings)
            elif "run.json" in filenames:
                cell = read_train_dir(d, warnings)
            elif "results.json" in filenames or any((d / x / "results.json").is_file() for x in dirnames):
                cell = read_eval_dir(d, warnings)
            if cell is not None or "cell.json" in filenames or "run.json" in filenames:
                dirnames[:] = []  # a cell's own subdirectories (eval/, checkpoints/) are not cells
            if cell is not None and cell.dir.resolve() not in {c.dir.resolve() for c in cells}:
                cells.append(cell)  # (a directory named twice, or inside another RUN_DIR, counts once)
    seen = {c.dir.resolve() for c in cells}
    for study in {Path(s["_dir"]).resolve(): s for s in studies}.values():
        cells.extend(_cells_from_study(study, seen))
    if not cells:
        where = ", ".join(str(r) for r in roots)
        raise UserError(
            f"no runs found under {where} (expected a study directory, a tiny-slm-train --output directory "
            "or a tiny-slm-eval --output directory with <benchmark>/results.json)"
        )
    if not any(c.benchmarks for c in cells):
        failed = [c for c in cells if not c.finished]
        why = (
            f"; e.g. {failed[0].model} {failed[0].method}: {failed[0].status} ({failed[0].reason})"
            if failed
            else ""
        )
        raise UserError(f"{len(cells)} run(s) found but none has evaluation results (results.json){why}")
    cells.sort(
        key=lambda c: (c.model, method_order(c.method), c.seed if isinstance(c.seed, int) else -1, str(c.dir))
    )
    return Collection(roots, cells, studies, warnings)
