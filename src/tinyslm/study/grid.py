"""The study: one YAML config runs the whole comparison grid, one run directory per cell.

``tiny-slm run CONFIG.yaml [--output DIR] [--dry-run] [--print-commands] [--cell ID]``. Read it top to bottom:

1. **Config.** :class:`StudyConfig` (pydantic, unknown keys refused): models x methods x seeds, the
   training set and size, the evaluation benchmarks and limits, hardware, and per-method overrides on
   top of the protocol defaults of :mod:`tinyslm.train`.
2. **Cells.** One per model x method x seed, in ``DIR/<model>/<method>/seed<k>/``. Zero-shot decoding is
   greedy and does not depend on the seed, so it gets one cell per model (at the first seed).
3. **Running a cell** uses the same functions as the command-line tools: :func:`tinyslm.evaluate.runner.run_eval`
   for zero-/few-shot, :func:`tinyslm.train.recipe.train` then ``run_eval`` on ``final/`` for full/LoRA/DoRA.
   ``cell.json`` records the cell's settings and status. A finished cell is skipped; a cell that was
   killed resumes (training from its last checkpoint, evaluation from its last prediction); a cell that
   fails (out of memory, divergence, a missing model) is recorded with its reason and the grid goes on.
4. **After the grid:** diagnostics on trained cells when the config asks, then the report.

The cell directory is the unit everything else reads: ``tiny-slm-report`` walks cells, ``tiny-slm analyze``
takes one. ``--print-commands`` prints one ``tiny-slm run CONFIG --cell ID`` line per cell, for users who
hand cells to a cluster scheduler; each runs exactly what the in-process loop would.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

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

from tinyslm.config.limits import seed_problem
from tinyslm.config.methods import ALL_METHODS as METHODS
from tinyslm.config.methods import TRAINED_METHODS as TRAIN_METHODS
from tinyslm.config.settings import pydantic_fields, pydantic_validators
from tinyslm.core.errors import UserError
from tinyslm.core.files import (
    is_safe_component,
    read_json_object,
)
from tinyslm.core.runtime import device_problem
from tinyslm.diagnostics.settings import AnalyzeSettings
from tinyslm.evaluate.runner import EvalConfig
from tinyslm.report.settings import ReportSettings
from tinyslm.results.schema import CellRecord
from tinyslm.train.config import TrainConfig

CELL_FILE = "cell.json"
STUDY_FILE = "study.json"


# ---------------------------------------------------------------------------------------------------
# 1. Config.


class _Strict(BaseModel):
    # allow_inf_nan=False: every float setting must be finite (.inf/.nan from YAML pass "ge=0" checks otherwise
    # and surface much later: NaN adapters, a report crash after the whole grid ran)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# The study's train: and overrides: sections are built from TrainConfig's fields (tinyslm.config.settings): the
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
    __doc__="Shared by every trained method: :class:`tinyslm.train.config.TrainConfig`'s fields, defaults and bounds.",
    __validators__=pydantic_validators(TrainConfig, TRAIN_SECTION_FIELDS),
    **pydantic_fields(TrainConfig, TRAIN_SECTION_FIELDS),
)

EVAL_SECTION_FIELDS = (
    "limit",
    "batch_size",
    "max_new_tokens",
    "engine",
    "draft_tokens",
    "cuda_graph",
)  # from EvalConfig, as for train:

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
        problem = device_problem(
            v, training=True
        )  # one device for training and evaluation: the training rule
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


DiagnosticsSection = create_model(
    "DiagnosticsSection",
    __base__=_Strict,
    __doc__="Diagnostics of every trained cell; the settings come from tiny-slm analyze's AnalyzeSettings.",
    enabled=(bool, True),
    **pydantic_fields(AnalyzeSettings, ("probe_limit",)),
)

ReportSection = create_model(
    "ReportSection",
    __base__=_Strict,
    __doc__="The study's report; the settings come from tiny-slm-report's ReportSettings.",
    enabled=(bool, True),
    **pydantic_fields(ReportSettings, ("price_per_gpu_hour",)),
)


class SweepSection(_Strict):
    """A learning-rate (and more) sweep per trained method, chosen on a validation split (issue 15).

    Every trained cell of the study then holds out the same ``val_size`` rows of the training set. Per model x
    method, each point of ``grid`` (the cartesian product of its lists) is a trial cell trained at the first
    seed; the protocol cell of that seed is a trial too (the paper protocol is always a candidate). The best
    trial by ``select_by`` (ties: fewer trainable parameters, then shorter training) is evaluated on the
    test benchmarks as ``<method>-tuned``, and retrained at every further seed.
    """

    select_by: Literal["val_loss", "val_em"] = Field(
        "val_loss", description="val_loss (lowest) or val_em (highest exact match on val_generate problems)"
    )
    val_size: int = Field(200, ge=0, description="held-out training rows; never trained on, never a test row")
    val_generate: int | None = Field(
        None, ge=1, description="val_em: validation problems generated (default: all val_size)"
    )
    eval_every: int = Field(0, ge=0, description="validation loss every N steps (the curves); 0: at the end")
    grid: dict[str, dict[str, list[Any]]] = Field(min_length=1)

    @model_validator(mode="after")
    def _split(self) -> SweepSection:
        if self.val_size == 0:
            raise ValueError(
                f"select_by {self.select_by} needs a validation split: val_size must be > 0 "
                "(choosing on the test set would make the test result optimistic)"
            )
        if self.val_generate is not None and self.val_generate > self.val_size:
            raise ValueError(f"val_generate {self.val_generate} exceeds val_size {self.val_size}")
        for method, axes in self.grid.items():
            if method not in TRAIN_METHODS:
                raise ValueError(
                    f"grid.{method}: only trained methods are swept ({', '.join(TRAIN_METHODS)})"
                )
            if not axes:
                raise ValueError(f"grid.{method}: no setting to sweep")
            for key, values in axes.items():
                if key not in OVERRIDE_FIELDS:
                    raise ValueError(
                        f"grid.{method}.{key}: not a sweepable setting ({', '.join(OVERRIDE_FIELDS)})"
                    )
                if not values:
                    raise ValueError(f"grid.{method}.{key}: empty list")
                if len({repr(v) for v in values}) != len(values):
                    raise ValueError(f"grid.{method}.{key}: a value is listed twice")
                for v in values:  # the same types and bounds as the overrides (a negative lr is refused)
                    try:
                        MethodOverrides.model_validate({key: v})
                    except ValidationError as e:
                        msg = e.errors()[0]["msg"].removeprefix("Value error, ")
                        raise ValueError(f"grid.{method}.{key}: {v!r}: {msg}") from None
        return self

    @property
    def generate(self) -> int:
        """Validation problems generated per measurement: all of the split for val_em, none for val_loss."""
        if self.select_by != "val_em":
            return 0
        return self.val_generate or self.val_size


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
    sweep: SweepSection | None = None

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
                raise ValueError(
                    f"overrides.{m}: overrides are for trained methods ({', '.join(TRAIN_METHODS)})"
                )
        for m in self.sweep.grid if self.sweep else ():
            if m not in self.methods:
                raise ValueError(f"sweep.grid.{m}: '{m}' is not in methods ({', '.join(self.methods)})")
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
        raise UserError(
            f"{p}: expected a mapping of settings (models:, methods:, ...), got {type(raw).__name__}"
        )
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
            msg = (
                "unknown key"
                if err["type"] == "extra_forbidden"
                else err["msg"].removeprefix("Value error, ")
            )
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
    kind: str = "grid"  # grid (models x methods x seeds) | trial (a sweep point) | tuned (the chosen point)
    trial: tuple[tuple[str, Any], ...] = ()  # a trial's settings, in the sweep grid's order

    @property
    def label(self) -> str:
        """The method as tables show it: few-shot carries its k; a sweep's cells say what they are."""
        if self.kind == "trial":
            return f"{self.method}-trial-{trial_slug(self.trial)}"
        if self.kind == "tuned":
            return f"{self.method}-tuned"
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


def trial_slug(setting: tuple[tuple[str, Any], ...]) -> str:
    """A trial's settings as a directory-safe name: ``lr5e-04-r16``."""
    short = {"lr": "lr", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "drop", "weight_decay": "wd"}
    parts = []
    for key, v in setting:
        text = f"{v:.0e}" if key == "lr" else (f"{v:g}" if isinstance(v, float) else str(v))
        parts.append(short.get(key, key.replace("_", "")) + text.replace("+", ""))
    return "-".join(parts)


def sweep_points(cfg: StudyConfig, model: str, method: str) -> list[tuple[tuple[str, Any], ...]]:
    """Every point of the method's sweep grid, the protocol point first (it is the grid cell at the first
    seed, whether or not the grid lists its values), each once."""
    from tinyslm.train.config import resolve_config

    assert cfg.sweep is not None
    axes = cfg.sweep.grid[method]
    probe = Cell(model, cell_model_name(model), method, cfg.seeds[0], 0)
    base = asdict(resolve_config(train_config(cfg, probe, Path("unused"))))
    protocol = tuple((k, base[k]) for k in axes)
    points = [protocol]
    for combo in itertools.product(*axes.values()):
        point = tuple(zip(axes, combo, strict=True))
        if all(_same(v, dict(protocol)[k]) for k, v in point):
            continue
        points.append(point)
    return points


def _same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isclose(a, b, rel_tol=1e-12))


def plan_cells(cfg: StudyConfig) -> list[Cell]:
    """models x methods x seeds, in config order; zero-shot once per model. With a sweep, then per model x
    swept method: its trial cells (at the first seed), then its tuned cells (one per seed)."""

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
    if cfg.sweep is not None:
        for ref in cfg.models:
            for method in (m for m in cfg.methods if m in cfg.sweep.grid):
                name = cell_model_name(ref)
                for point in sweep_points(cfg, ref, method)[1:]:
                    cells.append(Cell(ref, name, method, cfg.seeds[0], 0, kind="trial", trial=point))
                cells.extend(Cell(ref, name, method, seed, 0, kind="tuned") for seed in cfg.seeds)
    return cells


def cell_model_name(ref: str) -> str:
    """The model's directory name in the study: :func:`~tinyslm.models.load.model_name_for_results` (so Hub id
    ``org/name`` -> ``name``, as before, and old study directories still resume), unless that is no safe
    directory name (``..`` from ``models/sub/..`` or ``org/..``, ``.`` from ``/``): then the name of the
    lexically normalised reference (``models/sub/..`` -> ``models``), else ``model``.
    """
    from tinyslm.models.load import model_name_for_results

    for candidate in (ref, os.path.normpath(ref)):
        name = model_name_for_results(candidate)
        if is_safe_component(name):
            return name
    return "model"


def train_config(cfg: StudyConfig, cell: Cell, out: Path, progress: bool = True) -> Any:
    """The :class:`tinyslm.train.config.TrainConfig` of a trained cell: train section, then the method's overrides."""

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
    base.update(dict(cell.trial))  # a sweep trial's own settings, over everything else
    if cfg.sweep is not None:  # every trained cell holds out the same split, so that all compare alike
        base.update(
            val_size=cfg.sweep.val_size, eval_every=cfg.sweep.eval_every, val_generate=cfg.sweep.generate
        )
    return TrainConfig(**base)


def eval_config(cfg: StudyConfig, cell: Cell, out: Path, progress: bool = True) -> Any:
    """The :class:`tinyslm.evaluate.runner.EvalConfig` of a cell: the base model with k shots, or the trained
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
        draft_tokens=cfg.eval.draft_tokens,
        cuda_graph=cfg.eval.cuda_graph,
        progress=progress,
    )
    if not cell.trained:
        return EvalConfig(model=cell.model, shots=cell.shots, **common)
    from tinyslm.train.recipe import eval_config as trained_eval_config

    tcfg = train_config(cfg, cell, out, progress)
    ecfg = trained_eval_config(replace(tcfg, eval=common["benchmarks"]), out)
    return replace(ecfg, **common, shots=0)


def cell_spec(
    cfg: StudyConfig, cell: Cell, out: Path, chosen: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What a cell's results depend on; a rerun with a different spec is refused, never mixed. A trial cell is
    trained only (no test benchmark); a tuned cell depends on the trial chosen (``chosen``) as well."""
    from tinyslm.train.config import RESUMABLE_CHANGES

    spec: dict[str, Any] = {}
    if cell.kind != "trial":
        ecfg = asdict(eval_config(cfg, cell, out))
        spec["eval"] = {k: ecfg[k] for k in ("benchmarks", "limit", "shots", "max_new_tokens", "seed")}
    if chosen is not None:
        spec["chosen"] = chosen
    if cell.trained:
        tcfg = asdict(train_config(cfg, cell, out))
        spec["train"] = {k: v for k, v in tcfg.items() if k not in RESUMABLE_CHANGES}
    return spec


def read_cell(out: Path) -> CellRecord | None:
    """The cell's record (any schema version), or None when there is none or it is damaged."""
    f = out / CELL_FILE
    if not f.exists():
        return None
    try:
        return CellRecord.from_json(read_json_object(f))
    except ValueError:
        return None  # a damaged record is rewritten; the run files beside it decide what is redone
