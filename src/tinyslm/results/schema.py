"""The result files as typed records: ``run.json`` (training), ``results.json`` (evaluation), ``cell.json``
(a study cell).

Each record is a dataclass whose fields are the keys today's writers produce, plus ``schema_version``
(:data:`SCHEMA_VERSION`) and ``extra``: :meth:`Record.from_json` keeps every key it does not know in
``extra``, and a key the file lacks stays *unset* (not ``None``), so ``to_json(from_json(x)) == x`` for any
file, including those written before the records existed (which have no ``schema_version``). A record
made in code carries the current version.

Statuses are one :class:`Status` enum shared by training, the study, the report and the diagnostics; it is
a ``str`` enum, so the JSON holds the same strings as before and old readers comparing strings still work.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from tinyslm.core.files import atomic_write_json

# Version 1: the first versioned layout (the keys written before versioning, plus ``schema_version``).
# Files without the key are version 0 and load the same way.
SCHEMA_VERSION = 1


class Status(str, enum.Enum):
    """How a run, an evaluation or a study cell stands. JSON holds the value (``"finished"``, ...)."""

    PENDING = "pending"  # a study cell not started yet (no cell.json)
    RUNNING = "running"  # started; still running, or killed hard (then --resume / rerun continues it)
    FINISHED = "finished"
    DIVERGED = "diverged"  # training stopped on a non-finite number or a sustained loss blow-up
    INTERRUPTED = "interrupted"  # SIGTERM/SIGINT/Ctrl-C; a checkpoint was saved where possible
    FAILED = "failed"  # an exception (the record's ``reason`` says which)
    UNKNOWN = "unknown"  # a record that names no status
    UNREADABLE = "unreadable"  # the report could not read the record

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def of(cls, value: Any) -> Status | str:
        """``value`` as a Status when it is one; any other string is kept as it is (never lost)."""
        try:
            return cls(value)
        except ValueError:
            return value


# Statuses after which nothing more happens without a rerun, and those a study retries only when asked.
UNSUCCESSFUL = (Status.FAILED, Status.DIVERGED)


class _Unset:
    """A key the file did not have: omitted again by :meth:`Record.to_json` (``None`` is written as null)."""

    _instance: ClassVar[_Unset | None] = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()

R = TypeVar("R", bound="Record")


@dataclass
class Record:
    """Base of the three records: JSON in and out without losing a key; fields in the order files hold them."""

    def to_json(self) -> dict[str, Any]:
        """The JSON object: set fields in declaration order (``schema_version`` first), then ``extra``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is UNSET:
                continue
            out[f.name] = value.value if isinstance(value, Status) else value
        out.update(self.extra)  # type: ignore[attr-defined]
        return out

    @classmethod
    def from_json(cls: type[R], data: dict[str, Any]) -> R:
        """A record from a JSON object of any version; missing keys stay unset, unknown ones go to ``extra``."""
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs: dict[str, Any] = {f.name: UNSET for f in fields(cls) if f.name != "extra"}
        kwargs.update({k: v for k, v in data.items() if k in known})
        if "status" in data:
            kwargs["status"] = Status.of(data["status"])
        return cls(**kwargs, extra={k: v for k, v in data.items() if k not in known})

    @classmethod
    def new(cls: type[R], data: dict[str, Any]) -> R:
        """A record written now from a JSON-shaped dict (any ``schema_version`` in it becomes the current one)."""
        return cls.from_json({**data, "schema_version": SCHEMA_VERSION})

    @classmethod
    def read(cls: type[R], path: Path) -> R:
        """The record in ``path`` (ValueError if it is not a JSON object; OSError if unreadable)."""
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{path} does not hold a JSON object")
        return cls.from_json(data)

    def write(self, path: Path) -> None:
        """Atomically (temp file + rename), like every result file."""
        atomic_write_json(path, self.to_json())

    def get(self, key: str, default: Any = None) -> Any:
        """A key's value as in the JSON (``default`` when unset or absent): for readers of mixed versions."""
        value = getattr(self, key, UNSET) if key != "extra" else UNSET
        if value is UNSET:
            value = self.extra.get(key, UNSET)  # type: ignore[attr-defined]
        return default if value is UNSET else value

    def __getitem__(self, key: str) -> Any:
        """``record[key]`` as on the JSON object (KeyError when unset or absent), so readers written for the
        dicts of older versions keep working on records, ``{**record}`` included."""
        value = self.get(key, UNSET)
        if value is UNSET:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key, UNSET) is not UNSET

    def keys(self) -> list[str]:
        """The JSON object's keys, in file order (with ``__getitem__``, what ``{**record}`` and ``dict()`` use)."""
        return list(self.to_json())

    def update(self, **values: Any) -> None:
        """Set fields (unknown keys go to ``extra``)."""
        known = {f.name for f in fields(self)} - {"extra"}
        for k, v in values.items():
            if k in known:
                setattr(self, k, Status.of(v) if k == "status" else v)
            else:
                self.extra[k] = v  # type: ignore[attr-defined]

    @property
    def version(self) -> int:
        """The schema version the record was written with (0: before versioning)."""
        v = getattr(self, "schema_version", UNSET)
        return 0 if v is UNSET else int(v)


@dataclass
class RunRecord(Record):
    """``RUN/run.json``, written by training at start, every checkpoint and every status change."""

    schema_version: Any = SCHEMA_VERSION
    status: Status | str = Status.RUNNING
    config: Any = UNSET  # the resolved TrainConfig, as a dict
    model: Any = UNSET  # short name, as in results.json
    model_ref: Any = UNSET  # what --model said
    method: Any = UNSET
    parameters: Any = UNSET  # trainable / total / trainable_fraction
    data: Any = UNSET  # dataset, source, example counts, prompt format, stop token, order
    schedule: Any = UNSET  # steps, warmup, optimizer, batch layout, loss
    precision: Any = UNSET
    device: Any = UNSET
    peak_mem_kind: Any = UNSET
    cpu_allocator: Any = UNSET  # CPU training: the glibc malloc setting (core.telemetry.release_cpu_memory)
    step: Any = UNSET  # the last step logged in metrics.jsonl
    resumed_from_steps: Any = UNSET
    argv: Any = UNSET
    versions: Any = UNSET
    provenance: Any = UNSET
    load_notes: Any = UNSET  # what loading the base warned of: missing_weights, unused_weights, warnings
    started_at: Any = UNSET
    wandb_run_id: Any = UNSET
    last_checkpoint: Any = UNSET
    runtime_s: Any = UNSET
    diverged_at_step: Any = UNSET
    reason: Any = UNSET
    finished_at: Any = UNSET
    train_s: Any = UNSET
    samples_per_s: Any = UNSET
    tokens_per_s: Any = UNSET
    peak_mem_mib: Any = UNSET
    final: Any = UNSET
    merged: Any = UNSET
    validation: Any = UNSET  # the held-out split: size, seed, ids; at the end its loss and exact match
    eval: Any = UNSET  # per benchmark: model, adapter, exact match and its interval, n, results.json path
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalResult(Record):
    """``OUT/<benchmark>/results.json``, written once every planned problem has a scored prediction."""

    schema_version: Any = SCHEMA_VERSION
    benchmark: Any = UNSET
    n: Any = UNSET
    correct: Any = UNSET
    exact_match: Any = UNSET
    exact_match_ci95: Any = UNSET
    strict_correct: Any = UNSET
    strict_exact_match: Any = UNSET
    strict_exact_match_ci95: Any = UNSET
    model: Any = UNSET
    model_ref: Any = UNSET
    adapter: Any = UNSET
    chat_template: Any = UNSET
    device: Any = UNSET
    dtype: Any = UNSET
    model_load_s: Any = UNSET
    model_parameters: Any = UNSET
    context_length: Any = UNSET
    shots: Any = UNSET
    seed: Any = UNSET
    limit: Any = UNSET
    source: Any = UNSET
    fewshot_source: Any = UNSET
    exemplar_ids: Any = UNSET
    excluded_from_scoring: Any = UNSET
    max_new_tokens: Any = UNSET
    batch_size: Any = UNSET
    engine: Any = UNSET
    resumed_predictions: Any = UNSET
    generated_tokens: Any = UNSET
    generation_wall_s: Any = UNSET
    generated_tokens_per_s: Any = UNSET
    wall_s: Any = UNSET
    mean_output_tokens: Any = UNSET
    versions: Any = UNSET
    provenance: Any = UNSET
    finished_at: Any = UNSET
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. adapter_base_model, warnings, missing_weights


@dataclass
class CellRecord(Record):
    """``STUDY/<model>/<method>/seed-<s>/cell.json``: a study cell's settings and status."""

    schema_version: Any = SCHEMA_VERSION
    id: Any = UNSET
    model: Any = UNSET
    model_ref: Any = UNSET
    method: Any = UNSET  # the label: zero-shot, few-shot, full, lora, dora
    kind: Any = UNSET  # train | icl
    shots: Any = UNSET
    seed: Any = UNSET
    benchmarks: Any = UNSET
    spec: Any = UNSET  # the settings that decide the result (a rerun with other settings is refused)
    status: Status | str = Status.RUNNING
    reason: Any = UNSET
    wall_s: Any = UNSET
    attempts: Any = UNSET
    started_at: Any = UNSET
    finished_at: Any = UNSET
    extra: dict[str, Any] = field(default_factory=dict)
