"""The typed result records (tinyslm.results): old files load, nothing is lost, the JSON stays the same."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from tinyslm.results.schema import SCHEMA_VERSION, UNSET, CellRecord, EvalResult, Record, RunRecord, Status

# Files as the version before the records wrote them (no schema_version), abridged but with every top-level
# key those writers produce, including nested sections and keys that only some runs have.
OLD_RUN = {
    "status": "diverged",
    "config": {"model": "m", "method": "lora", "lr": 10.0, "seed": 0, "eval": None},
    "model": "m",
    "model_ref": "/models/m",
    "method": "lora",
    "parameters": {"trainable": 10, "total": 100, "trainable_fraction": 0.1},
    "data": {"dataset": "d.jsonl", "source": "/d.jsonl", "examples": 4, "stop_token": "<|im_end|>"},
    "schedule": {"steps_per_epoch": 1, "total_steps": 8, "warmup_steps": 0},
    "precision": "fp32",
    "device": "cpu",
    "peak_mem_kind": "cpu_peak_rss",
    "step": 3,
    "resumed_from_steps": [2],
    "argv": ["tiny-slm-train"],
    "versions": {"torch": "2.13"},
    "provenance": {"weights": {"sha256": "ab"}},
    "started_at": "2026-12-01T10:00:00+0000",
    "last_checkpoint": None,
    "runtime_s": 1.5,
    "diverged_at_step": 4,
    "reason": "non-finite loss at step 4 (loss nan, grad norm nan)",
}
OLD_RESULTS = {
    "benchmark": "gsm8k",
    "n": 2,
    "correct": 1,
    "exact_match": 0.5,
    "exact_match_ci95": [0.09, 0.91],
    "strict_correct": 1,
    "strict_exact_match": 0.5,
    "strict_exact_match_ci95": [0.09, 0.91],
    "model": "m",
    "model_ref": "/models/m",
    "adapter": "/runs/r/final",
    "chat_template": True,
    "device": "cpu",
    "dtype": "float32",
    "model_load_s": 0.2,
    "model_parameters": 100,
    "context_length": 2048,
    "adapter_base_model": "/models/m",  # from the loader's notes: not a field, kept in extra
    "warnings": ["an adapter trained on another base"],
    "shots": 0,
    "seed": 0,
    "limit": 2,
    "source": "/data/gsm8k/test.jsonl",
    "fewshot_source": None,
    "exemplar_ids": [],
    "excluded_from_scoring": [],
    "max_new_tokens": 256,
    "batch_size": 8,
    "engine": "torch",
    "resumed_predictions": 0,
    "generated_tokens": 40,
    "generation_wall_s": 1.0,
    "generated_tokens_per_s": 40.0,
    "wall_s": 1.3,
    "mean_output_tokens": 20.0,
    "versions": {"torch": "2.13"},
    "provenance": {"data": {"sha256": "cd"}},
    "finished_at": "2026-12-01T10:01:00+0000",
}
OLD_CELL = {
    "id": "m/lora/seed-0",
    "model": "m",
    "model_ref": "/models/m",
    "method": "lora",
    "kind": "train",
    "shots": 0,
    "seed": 0,
    "benchmarks": ["gsm8k"],
    "spec": {"train": {"lr": 0.0002}, "eval": {"limit": 2}},
    "status": "finished",
    "reason": None,
    "wall_s": 12.5,
    "attempts": 2,
    "started_at": "2026-12-01T10:00:00+0000",
    "finished_at": "2026-12-01T10:02:00+0000",
    "skipped": True,  # not a cell.json key today, but a reader must not drop what it does not know
}


@pytest.mark.parametrize(
    ("cls", "old"), [(RunRecord, OLD_RUN), (EvalResult, OLD_RESULTS), (CellRecord, OLD_CELL)]
)
def test_files_from_before_the_schema_load_and_write_back_unchanged(
    cls: type[Record], old: dict, tmp_path: Path
):
    """An old file (no schema_version) loads as version 0 and is written back with exactly its keys and values:
    a run or study made by the previous version still resumes and reports."""
    f = tmp_path / "old.json"
    f.write_text(json.dumps(old, indent=2))
    rec = cls.read(f)
    assert rec.version == 0
    assert rec.to_json() == old
    assert "schema_version" not in rec.to_json()
    rec.write(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == old


def test_known_keys_are_typed_and_unknown_ones_kept():
    run = RunRecord.from_json(OLD_RUN)
    assert run.status is Status.DIVERGED and run.diverged_at_step == 4 and run.last_checkpoint is None
    assert run.finished_at is UNSET and run.get("finished_at", "absent") == "absent"
    res = EvalResult.from_json(OLD_RESULTS)
    assert res.extra == {
        "adapter_base_model": "/models/m",
        "warnings": ["an adapter trained on another base"],
    }
    assert res.get("warnings") == OLD_RESULTS["warnings"]
    cell = CellRecord.from_json(OLD_CELL)
    assert cell.status is Status.FINISHED and cell.extra == {"skipped": True}


def test_a_status_from_elsewhere_is_kept_as_written():
    """A status this version does not know (a newer writer's) is kept as its string, not refused or lost."""
    rec = CellRecord.from_json({**OLD_CELL, "status": "queued"})
    assert rec.status == "queued" and not isinstance(rec.status, Status)
    assert rec.to_json()["status"] == "queued"


def test_new_records_carry_the_schema_version_and_the_same_json_strings():
    rec = RunRecord(status=Status.RUNNING, method="lora")
    rec.update(status="finished", step=8, something_new=1)
    out = rec.to_json()
    assert out == {
        "schema_version": SCHEMA_VERSION,
        "status": "finished",
        "method": "lora",
        "step": 8,
        "something_new": 1,
    }
    assert json.dumps(out) == json.dumps(json.loads(json.dumps(out)))  # plain JSON types only
    assert type(out["status"]) is str
    assert EvalResult.new({**OLD_RESULTS, "schema_version": 0}).to_json() == {
        **OLD_RESULTS,
        "schema_version": SCHEMA_VERSION,
    }


def test_status_is_the_string_it_replaces():
    """A str enum: equal to the old literals, and the same text in JSON, f-strings and CSV cells."""
    assert Status.FINISHED == "finished"
    assert {"diverged": 1}[Status.DIVERGED] == 1  # same hash: a dict keyed by the old strings still works
    assert json.dumps({"s": Status.INTERRUPTED}) == '{"s": "interrupted"}'
    assert f"{Status.FAILED}" == str(Status.FAILED) == "failed"
    assert {s.value for s in Status} >= {
        "pending",
        "running",
        "finished",
        "diverged",
        "interrupted",
        "failed",
    }


def test_from_json_does_not_share_the_input():
    old = copy.deepcopy(OLD_CELL)
    rec = CellRecord.from_json(old)
    rec.update(status=Status.FAILED, reason="x")
    assert old == OLD_CELL


def test_a_file_that_is_not_an_object_is_refused(tmp_path: Path):
    f = tmp_path / "run.json"
    f.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        RunRecord.read(f)


def test_files_written_by_training_and_evaluation_round_trip(tiny_model_dir, data_dir, tmp_path: Path):
    """run.json and results.json as this version writes them: versioned, and to_json(from_json(x)) == x."""
    from helpers import tiny_train_config

    from tinyslm.train.recipe import train

    rows = [
        {"question": f"Tom has {i} apples and gets 2 more. How many?", "answer": f"#### {i + 2}"}
        for i in range(4)
    ]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    cfg = tiny_train_config(
        tiny_model_dir, data, out, epochs=1, max_length=96, eval="gsm8k", eval_limit=1, data_dir=str(data_dir)
    )
    returned = train(cfg)
    for cls, f in ((RunRecord, out / "run.json"), (EvalResult, out / "eval" / "gsm8k" / "results.json")):
        written = json.loads(f.read_text())
        assert written["schema_version"] == SCHEMA_VERSION
        assert cls.from_json(written).to_json() == written
    run = json.loads((out / "run.json").read_text())
    assert returned == run and run["status"] == Status.FINISHED


def test_a_run_json_that_is_no_object_is_one_clear_error(tiny_model_dir, tmp_path: Path):
    """run.json holding valid JSON that is not an object (a hand edit, another tool's file): --resume says
    which file and what to do, before anything loads (it used to fail with an AttributeError traceback)."""
    from tinyslm.core.errors import UserError
    from tinyslm.train.config import TrainConfig
    from tinyslm.train.recipe import train

    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("[1, 2]")
    cfg = TrainConfig(
        model=str(tiny_model_dir),
        method="lora",
        output=str(out),
        dataset="gsm8k",
        resume=True,
        progress=False,
    )
    with pytest.raises(UserError, match=r"cannot read .*run\.json.*--overwrite"):
        train(cfg)
    assert (out / "run.json").read_text() == "[1, 2]"  # nothing overwritten


def test_a_record_reads_like_the_json_object_it_came_from() -> None:
    """Readers written for the dicts of older versions (``rec["x"]``, ``{**rec}``, ``"x" in rec``) keep
    working on records: the mapping view is exactly the JSON object, unset fields absent."""
    data = {"status": "finished", "model": "m", "seed": 7, "custom": [1, 2]}
    rec = CellRecord.from_json(data)
    assert rec["status"] == "finished" and rec["custom"] == [1, 2]
    assert {**rec} == rec.to_json() == data
    assert "model" in rec and "custom" in rec and "reason" not in rec and 3 not in rec
    with pytest.raises(KeyError):
        rec["reason"]  # unset: absent, as in the file
    rec.update(skipped=True)
    assert dict(rec)["skipped"] is True
