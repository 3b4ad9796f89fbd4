"""Choosing a sweep's setting: per model x method, the best trial by its validation metric, never the test set.

The candidates are the grid cell of the first seed (the paper protocol, or the config's overrides: always a
trial point) and the trial cells. A candidate counts once its training finished with validation metrics in
``run.json``; a diverged or failed run is never chosen; while any candidate has not run yet the choice waits
(a partial sweep must not pick a winner that a later trial would beat).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tinyslm.core.errors import UserError
from tinyslm.core.files import read_json_object
from tinyslm.results.schema import UNSUCCESSFUL, RunRecord, Status
from tinyslm.study.grid import Cell, StudyConfig, cell_model_name, read_cell, sweep_points


@dataclass(frozen=True)
class Choice:
    """The chosen trial of one model x method."""

    cell: Cell  # the grid cell (protocol point) or a trial cell
    setting: tuple[tuple[str, Any], ...]
    select_by: str
    value: float
    protocol: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "cell": self.cell.id,
            "setting": dict(self.setting),
            "select_by": self.select_by,
            "value": self.value,
            "protocol": self.protocol,
        }


def candidates(cfg: StudyConfig, model: str, method: str) -> list[tuple[Cell, tuple[tuple[str, Any], ...]]]:
    """(cell, its setting) of every trial of ``model`` x ``method``, the protocol point first."""
    name = cell_model_name(model)
    points = sweep_points(cfg, model, method)
    protocol = Cell(model, name, method, cfg.seeds[0], 0)
    trials = [Cell(model, name, method, cfg.seeds[0], 0, kind="trial", trial=p) for p in points[1:]]
    return [(protocol, points[0]), *zip(trials, points[1:], strict=True)]


def _read_run(d: Path) -> RunRecord | None:
    try:
        return RunRecord.from_json(read_json_object(d / "run.json"))
    except (OSError, ValueError):
        return None


def metric(run: RunRecord, select_by: str) -> float | None:
    """The run's final validation value of ``select_by`` (None when it was not measured)."""
    val = run.get("validation") or {}
    value = val.get("loss") if select_by == "val_loss" else val.get("em")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def choose(cfg: StudyConfig, root: Path, model: str, method: str) -> Choice:
    """The best finished trial; UserError when some trial has not run yet or none finished."""
    assert cfg.sweep is not None
    select_by = cfg.sweep.select_by
    ranked, waiting = [], []
    for cell, setting in candidates(cfg, model, method):
        d = cell.dir(root)
        run, rec = _read_run(d), read_cell(d)
        status = run.get("status") if run is not None else None
        if status == Status.FINISHED:
            value = metric(run, select_by)
            if value is None:  # trained before the sweep asked for this metric: not comparable
                raise UserError(f"{cell.id}: run.json has no validation {select_by}; rerun that cell")
            params = (run.get("parameters") or {}).get("trainable") or 0
            cost = (params, float(run.get("train_s") or 0.0))
            ranked.append(((value if select_by == "val_loss" else -value, *cost), cell, setting, value))
        elif status in UNSUCCESSFUL or (rec is not None and rec.get("status") in UNSUCCESSFUL):
            continue  # diverged or failed: listed in the report, never chosen
        else:
            waiting.append(cell.id)
    if waiting:
        raise UserError(
            f"the {method} sweep of {cell_model_name(model)} is not finished ({', '.join(waiting)} still to run)"
        )
    if not ranked:
        raise UserError(f"no trial of the {method} sweep of {cell_model_name(model)} finished training")
    _, cell, setting, value = min(ranked, key=lambda r: r[0])
    return Choice(cell, setting, select_by, value, protocol=cell.kind != "trial")


def tuned_cell(cell: Cell, choice: Choice) -> Cell:
    """The tuned cell with the chosen setting applied (its training config, when it trains, uses it)."""
    return replace(cell, trial=choice.setting)
