"""The report of a study with a learning-rate sweep (issue 15), on fabricated study directories.

The fixture writes what a study with a ``sweep:`` section writes (docs: the lead's sweep file formats): protocol
cells with a ``sweep_point`` and a run.json ``validation`` section, trial cells (``kind: trial``, no eval/),
tuned cells (``kind: tuned``, ``chosen``), validation lines in metrics.jsonl and study.json's ``sweep``
section. The answers are chosen so that the verdicts are known by construction: on ``tiny-a`` the paper
protocol ranks full (48/100 pooled) above LoRA (35/100, negative transfer on gsm8k), and tuning turns it
round (full-tuned 52/100, lora-tuned 62/100); in the "same ranking" variant lora-tuned reaches 30/100 only
(negative transfer under both protocols).
No model is loaded.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

# the existing report fixtures: their old (sweep-free) study must report exactly as before
from test_report import r, run_record, study_dir, write_benchmark  # noqa: F401

from tinyslm.report import write_report
from tinyslm.report.collect import collect, method_order
from tinyslm.report.figures import training_curves, validation_curves
from tinyslm.report.tables import (
    accuracy_table,
    build_groups,
    comparisons,
    cost_table,
    recommendations,
    sweep_tables,
)

MODEL = "tiny-a"
SEED1, SEED2 = 1, 2


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def _metrics(d: Path, val: list[float] | None, *, steps: int = 6) -> None:
    """Training lines for steps 1..steps (loss 2/s), with validation lines after steps 3 and 6 when ``val``
    gives their losses (the way training interleaves them)."""
    lines = []
    for s in range(1, steps + 1):
        lines.append({"step": s, "loss": 2.0 / s, "grad_norm": 10.0 / s, "lr": 1e-4, "samples_per_s": 10.0})
        if val and s in (3, 6):
            loss = val[0] if s == 3 else val[-1]
            lines.append(
                {
                    "step": s,
                    "split": "val",
                    "val_loss": loss,
                    "val_loss_ci95": [loss - 0.04, loss + 0.04],
                    "val_correct": None,
                    "val_n": 0,
                    "val_em": None,
                    "time_s": 1.0,
                }
            )
    (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))


def _validation(loss: float, *, correct: int | None = None, n: int = 0) -> dict:
    em = None if correct is None else correct / n
    return {
        "size": 50,
        "seed": 20251203,
        "ids": [f"gsm8k-train-{i}" for i in range(50)],
        "loss": loss,
        "loss_ci95": [loss - 0.04, loss + 0.04],
        "n_generate": n,
        "correct": correct,
        "em": em,
        "em_ci95": None if em is None else [max(0.0, em - 0.1), em + 0.1],
        "step": 6,
    }


def _cell(
    root: Path,
    method: str,
    seed: int,
    *,
    status: str = "finished",
    reason: str | None = None,
    patterns: dict[str, set[int]] | None = None,
    run: dict | None = None,
    val: list[float] | None = None,
    **meta,
) -> Path:
    d = root / MODEL / method / f"seed{seed}"
    _write_json(
        d / "cell.json",
        {
            "id": f"{MODEL}/{method}/seed{seed}",
            "model": MODEL,
            "model_ref": f"ref/{MODEL}",
            "method": method,
            "seed": seed,
            "status": status,
            "reason": reason,
            "benchmarks": [] if meta.get("kind") == "trial" else ["gsm8k", "svamp"],
            "wall_s": 100.0,
            **meta,
        },
    )
    for bench, correct in (patterns or {}).items():
        n = 60 if bench == "gsm8k" else 40
        write_benchmark(d / "eval", bench, n, correct, model=MODEL, seed=seed)
    if run is not None:
        _write_json(d / "run.json", {**run, "status": status, "reason": reason})
        _metrics(d, val)
    return d


def _run(method: str, seed: int, runtime: float, validation: dict | None) -> dict:
    rec = run_record(method, seed, runtime=runtime, device="cpu")
    if validation is not None:
        rec["validation"] = validation
    return rec


FULL_PROTO = {"lr": 2e-5}
LORA_PROTO = {"lr": 2e-4, "lora_r": 8}
FULL_BEST = {"lr": 5e-5}
FULL_DIVERGED = {"lr": 1.0}
LORA_BEST = {"lr": 5e-4, "lora_r": 16}
LORA_WORSE = {"lr": 1e-4, "lora_r": 8}


def build_sweep_study(root: Path, *, lora_tuned_gsm8k: int, lora_tuned_svamp: int) -> Path:
    """The study described in the module docstring; ``lora_tuned_*`` decide whether the ranking changes."""
    _cell(root, "zero-shot", SEED1, kind="icl", patterns={"gsm8k": r(0, 30), "svamp": r(0, 20)})
    for seed in (SEED1, SEED2):
        _cell(
            root,
            "full",
            seed,
            kind="train",
            sweep_point=FULL_PROTO,
            patterns={"gsm8k": r(0, 28), "svamp": r(0, 20)},
            run=_run("full", seed, 600.0, _validation(0.80)),
            val=[0.9, 0.80],
        )
        _cell(
            root,
            "lora",
            seed,
            kind="train",
            sweep_point=LORA_PROTO,
            patterns={"gsm8k": r(0, 15), "svamp": r(0, 20)},
            run=_run("lora", seed, 300.0, _validation(0.75, correct=10, n=50)),
            val=[0.85, 0.75],
        )
    trials = {
        "full-trial-lr5e-05": ("full", FULL_BEST, "finished", None, _validation(0.70), [0.8, 0.70]),
        "full-trial-lr1e+00": ("full", FULL_DIVERGED, "diverged", "loss blew up at step 3", None, [9.5]),
        "lora-trial-lr5e-04-r16": (
            "lora",
            LORA_BEST,
            "finished",
            None,
            _validation(0.65, correct=12, n=50),
            [0.7, 0.65],
        ),
        "lora-trial-lr1e-04-r8": ("lora", LORA_WORSE, "finished", None, _validation(0.90), [0.95, 0.90]),
    }
    for method, (base, setting, status, reason, validation, val) in trials.items():
        _cell(
            root,
            method,
            SEED1,
            kind="trial",
            base_method=base,
            trial=setting,
            status=status,
            reason=reason,
            run=_run(base, SEED1, 250.0, validation),
            val=val,
        )
    tuned = {
        "full-tuned": ("full", "full-trial-lr5e-05", FULL_BEST, 0.70, {"gsm8k": r(0, 32), "svamp": r(0, 20)}),
        "lora-tuned": (
            "lora",
            "lora-trial-lr5e-04-r16",
            LORA_BEST,
            0.65,
            {"gsm8k": r(0, lora_tuned_gsm8k), "svamp": r(0, lora_tuned_svamp)},
        ),
    }
    for method, (base, trial, setting, value, patterns) in tuned.items():
        chosen = {
            "cell": f"{MODEL}/{trial}/seed{SEED1}",
            "setting": setting,
            "select_by": "val_loss",
            "value": value,
            "protocol": False,
        }
        # the first seed evaluates the chosen trial's model (no run.json); the second trains the setting itself
        _cell(root, method, SEED1, kind="tuned", base_method=base, chosen=chosen, patterns=patterns)
        _cell(
            root,
            method,
            SEED2,
            kind="tuned",
            base_method=base,
            chosen=chosen,
            patterns=patterns,
            run=_run(base, SEED2, 400.0, _validation(value)),
            val=[value + 0.1, value],
        )
    choices = {
        f"{MODEL}/full": {
            "chosen": f"{MODEL}/full-trial-lr5e-05/seed{SEED1}",
            "trials": [
                f"{MODEL}/{m}/seed{SEED1}" for m in ("full", "full-trial-lr5e-05", "full-trial-lr1e+00")
            ],
        },
        f"{MODEL}/lora": {
            "chosen": f"{MODEL}/lora-trial-lr5e-04-r16/seed{SEED1}",
            "trials": [
                f"{MODEL}/{m}/seed{SEED1}"
                for m in ("lora", "lora-trial-lr5e-04-r16", "lora-trial-lr1e-04-r8")
            ],
        },
    }
    _write_json(
        root / "study.json",
        {
            "name": "sweep-fab",
            "config": {"seeds": [SEED1, SEED2]},
            "cells": [],
            "sweep": {"select_by": "val_loss", "val_size": 50, "choices": choices},
            "updated_at": "2026-01-02T05:00:00+0000",
        },
    )
    return root


@pytest.fixture(scope="module")
def changed(tmp_path_factory) -> Path:
    """Tuning turns the ranking round: lora-tuned 62/100 beats full-tuned 52/100."""
    return build_sweep_study(tmp_path_factory.mktemp("changed"), lora_tuned_gsm8k=40, lora_tuned_svamp=22)


@pytest.fixture(scope="module")
def same(tmp_path_factory) -> Path:
    """Tuning keeps the ranking: lora-tuned 30/100 stays below full-tuned 52/100, and still loses 20 gsm8k
    problems zero-shot solves (negative transfer under both protocols)."""
    return build_sweep_study(tmp_path_factory.mktemp("same"), lora_tuned_gsm8k=10, lora_tuned_svamp=20)


@pytest.fixture(scope="module")
def report(changed, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep-report")
    write_report([changed], out)
    return out


def _table_rows(md: str, title: str) -> list[list[str]]:
    """The rows of the Markdown table under ``**title**``, as lists of cells."""
    block = md.split(f"**{title}**", 1)[1].split("\n\n", 2)[1]
    return [[x.strip() for x in line.strip("|").split(" | ")] for line in block.splitlines()[2:]]


def test_sweep_table_rows_chosen_and_diverged(changed):
    col = collect([changed])
    (table,) = sweep_tables(col)
    rows = [dict(zip(table.columns, row, strict=True)) for row in table.rows]
    loss_col = next(c for c in table.columns if c.startswith("Val loss"))
    em_col = next(c for c in table.columns if c.startswith("Val exact match"))
    assert "(selects)" in loss_col and "(selects)" not in em_col
    got = [(x["Method"], x["Setting"]) for x in rows]
    assert got == [
        ("full", "lr=2e-5 (paper protocol)"),
        ("full", "lr=5e-5"),
        ("full", "lr=1"),
        ("lora", "lr=1e-4, lora_r=8"),
        ("lora", "lr=2e-4, lora_r=8 (paper protocol)"),
        ("lora", "lr=5e-4, lora_r=16"),
    ]
    chosen = [(x["Method"], x["Setting"]) for x in rows if x["Chosen"]]
    assert chosen == [("full", "lr=5e-5"), ("lora", "lr=5e-4, lora_r=16")]
    diverged = rows[2]
    assert diverged["Status"] == "diverged: loss blew up at step 3" and not diverged["Chosen"]
    assert diverged[loss_col] == "9.5000 [9.4600, 9.5400]"  # its last validation line, no run.json section
    assert rows[1][loss_col] == "0.7000 [0.6600, 0.7400]" and rows[1]["Train time"] == "4.2 min"
    assert rows[5][em_col] == "24.0 (12/50) [14.0, 34.0]" and rows[3][em_col] == "—"
    rule = table.notes[0]
    assert "lowest validation loss" in rule and "50 held-out training problems" in rule
    assert "ties go to the cheaper trial" in rule and "test benchmarks play no part" in rule


def test_diverged_trial_named_chosen_is_not_marked(changed, tmp_path):
    """A study.json that names a diverged trial as chosen (a bug upstream) gets a warning, never a mark; a
    study that selects by validation exact match says so in the table."""
    import shutil

    root = tmp_path / "s"
    shutil.copytree(changed, root)
    study = json.loads((root / "study.json").read_text())
    study["sweep"]["choices"][f"{MODEL}/full"]["chosen"] = f"{MODEL}/full-trial-lr1e+00/seed{SEED1}"
    study["sweep"]["choices"][f"{MODEL}/lora"]["chosen"] = None
    study["sweep"]["select_by"] = "val_em"
    (root / "study.json").write_text(json.dumps(study))
    (table,) = sweep_tables(collect([root]))
    assert not any(row[-1] for row in table.rows)
    assert [c for c in table.columns if "(selects)" in c] == [
        "Val exact match % (correct/n) [95% CI] (selects)"
    ]
    assert "highest validation exact match" in table.notes[0]
    assert any("full-trial-lr1e+00" in n and "diverged" in n and "not marked" in n for n in table.notes)
    assert any("tiny-a lora: no trial finished" in n for n in table.notes)


def test_trials_absent_from_table2_csv_and_cost_rows(changed, report):
    col = collect([changed])
    groups = build_groups(col)
    assert not any("trial" in method for _, method, _ in groups)
    _, rows = accuracy_table(groups, comparisons(groups))
    assert not any("trial" in row[1] for row in rows)
    with (report / "results.csv").open() as f:
        csv_rows = list(csv.DictReader(f))
    assert csv_rows and not any("trial" in x["method"] for x in csv_rows)
    assert {x["status"] for x in csv_rows} == {"finished"}  # no trial reported as a missing result
    cols, cost_rows, notes = cost_table(col, price=4.0)
    assert [x[1] for x in cost_rows] == ["zero-shot", "full", "full-tuned", "lora", "lora-tuned"]
    by = {x[1]: dict(zip(cols, x, strict=True)) for x in cost_rows}
    # full-tuned seed 1 trained nothing itself: it costs the chosen trial's run (250 s), seed 2 its own (400 s)
    assert by["full-tuned"]["Train runtime"] == "5.4 min ± 106.1 s"
    assert any("tiny-a full 2 trial(s), 8.3 min of training" in n for n in notes)
    md = (report / "report.md").read_text()
    methods = next(x for x in md.splitlines() if x.startswith("- Methods:"))
    assert methods == "- Methods: zero-shot, full, full-tuned, lora, lora-tuned."
    assert "Learning-rate sweep: 4 trial cell(s), 3 finished" in md


def test_tuned_row_right_after_its_method_with_its_test(changed, report):
    md = (report / "report.md").read_text()
    rows = _table_rows(md.replace("## Table 2: accuracy\n\n", "**T2**\n\n"), "T2")
    for bench in ("gsm8k", "svamp"):
        methods = [row[1] for row in rows if row[2] == bench]
        assert methods == [
            "zero-shot",
            "full",
            "full-tuned (lr=5e-5)",
            "lora",
            "lora-tuned (lr=5e-4, lora_r=16)",
        ]
    lora = next(row for row in rows if row[1] == "lora" and row[2] == "gsm8k")
    lora_tuned = next(row for row in rows if row[1].startswith("lora-tuned") and row[2] == "gsm8k")
    assert lora[-1].startswith("NEGATIVE TRANSFER")
    assert lora_tuned[7] == "+16.7" and lora_tuned[8].startswith("s1: 0/10, p=0.002")
    assert lora_tuned[-1].startswith("significantly above")
    assert "Negative transfer of lora: under the paper protocol on gsm8k, tuned (lora-tuned) none" in md
    assert "Negative transfer of full: under the paper protocol none, tuned (full-tuned) none: the same" in md
    assert method_order("full") < method_order("full-tuned") < method_order("full-trial-lr5e-05")
    assert method_order("full-trial-lr5e-05") < method_order("lora") < method_order("lora-tuned")


def test_ranking_sentence_changed(changed):
    col = collect([changed])
    groups = build_groups(col)
    (rec,) = recommendations(col, groups)
    text = " ".join(rec.text)
    assert (
        "Tuning changed the ranking of the trained methods: under the paper protocol full > lora, "
        "tuned lora > full" in text
    )
    assert "full 48.0% → 52.0% (+4.0 pp); lora 35.0% → 62.0% (+27.0 pp)" in text
    assert (
        "Negative transfer of lora: under the paper protocol on gsm8k, tuned (lora-tuned) none: tuning changed"
        in text
    )
    assert "Best pooled exact match: lora-tuned 62.0%" in text


def test_ranking_sentence_same(same):
    col = collect([same])
    (rec,) = recommendations(col, build_groups(col))
    text = " ".join(rec.text)
    assert (
        "Tuning did not change the ranking of the trained methods: full > lora under both protocols" in text
    )
    assert "changed the ranking" not in text
    # a tuned method is a trained method: below zero-shot it is negative transfer, like its paper protocol
    nt = "Negative transfer of lora: under the paper protocol on gsm8k, tuned (lora-tuned) on gsm8k: the same"
    assert nt in text
    comps = comparisons(build_groups(col))
    assert comps[(MODEL, "lora-tuned", "gsm8k")].negative_transfer
    assert not comps[(MODEL, "lora-tuned", "svamp")].negative_transfer


def test_validation_lines_kept_apart_and_drawn(changed, report):
    col = collect([changed])
    full = next(c for c in col.cells if c.method == "full" and c.seed == SEED1)
    assert [m["step"] for m in full.metrics] == [1, 2, 3, 4, 5, 6]
    assert all("split" not in m for m in full.metrics)
    assert [(m["step"], m["val_loss"]) for m in full.val_metrics] == [(3, 0.9), (6, 0.80)]
    assert full.run is not None and full.run["validation"]["loss"] == 0.80
    figs = validation_curves(col)
    assert [f.name for f in figs] == ["validation_tiny-a.png"]
    assert (report / "figures" / "validation_tiny-a.png").is_file()
    assert "(figures/validation_tiny-a.png)" in (report / "report.md").read_text()


def _train_dir(root: Path, with_val: bool) -> Path:
    d = root / "run"
    _write_json(d / "run.json", {**run_record("lora", 1, runtime=60.0, device="cpu"), "model": MODEL})
    _metrics(d, [0.9, 0.8] if with_val else None)
    write_benchmark(d / "eval", "gsm8k", 10, r(0, 5), model=MODEL)
    return d


def test_validation_lines_do_not_disturb_the_training_figure(tmp_path):
    """The training-loss figure of a run is the same with and without validation lines in metrics.jsonl."""
    plain = collect([_train_dir(tmp_path / "plain", with_val=False)])
    with_val = collect([_train_dir(tmp_path / "val", with_val=True)])
    assert with_val.cells[0].val_metrics and not plain.cells[0].val_metrics
    (a,), (b,) = training_curves(plain), training_curves(with_val)
    assert a.png == b.png
    assert validation_curves(plain) == []


# sha256 of report.md (the "Generated" line left out, the study directory written as ROOT) and of results.csv
# for tests/test_report.py's study, as the report wrote them before issue 15. A study without a sweep must
# report byte for byte as before; when the report changes on purpose, recompute these from the new output
# (last: the arithmetic columns of the repetition table, issue 16; the diff was that table and its note only).
OLD_REPORT_MD_SHA256 = "51747dcc75e00670cedeb83630a3ec70dc6c5bd11d795175796fc32a10bdc0a2"
OLD_RESULTS_CSV_SHA256 = "8411158dd2faf21f3b668ec7ec9b424e447401f641738363cb815ed72f6ddf8a"


def _normalised(path: Path, root: Path) -> bytes:
    lines = path.read_text().replace(str(root), "ROOT").splitlines(keepends=True)
    return "".join(x for x in lines if not x.startswith("- Generated ")).encode()


def test_study_without_sweep_reports_as_before(study_dir, tmp_path):  # noqa: F811
    write_report([study_dir], tmp_path)
    md = _normalised(tmp_path / "report.md", study_dir)
    assert "sweep" not in md.decode().lower() and "tuned" not in md.decode()
    assert hashlib.sha256(md).hexdigest() == OLD_REPORT_MD_SHA256
    assert (
        hashlib.sha256(_normalised(tmp_path / "results.csv", study_dir)).hexdigest() == OLD_RESULTS_CSV_SHA256
    )


def test_a_trial_not_run_yet_is_counted_apart_in_the_price_of_tuning(changed, tmp_path):
    """A sweep still running lists trials with no run yet: they are not 'trials at 0 s of training'."""
    import shutil

    root = tmp_path / "s"
    shutil.copytree(changed, root)
    cell = next(root.rglob("lora-trial-lr1e-04-r8/*/cell.json"))
    meta = json.loads(cell.read_text())
    meta["status"] = "running"  # started, nothing finished yet: what a killed or still running trial shows
    cell.write_text(json.dumps(meta))
    (cell.parent / "run.json").unlink(missing_ok=True)
    _, _, notes = cost_table(collect([root]), price=4.0)
    (sweep_note,) = [n for n in notes if "the price of tuning" in n]
    assert "tiny-a full 2 trial(s), 8.3 min of training" in sweep_note
    assert "tiny-a lora 1 trial(s), " in sweep_note and "(+1 not run to an end yet)" in sweep_note
    assert sweep_note.count("not run to an end yet") == 1


def test_the_cost_to_obtain_a_tuned_method_is_its_whole_sweep(changed):
    """'Cheapest to obtain' must not make tuning look free: a '-tuned' method costs every trial that ran
    (the diverged one included: it was paid for) and the paper-protocol point, not only the chosen run."""
    from tinyslm.report.tables import _obtain_runtime

    col = collect([changed])
    assert _obtain_runtime(col, MODEL, "full-tuned") == 250.0 + 250.0 + 600.0
    assert _obtain_runtime(col, MODEL, "lora-tuned") == 250.0 + 250.0 + 300.0
    assert _obtain_runtime(col, MODEL, "lora") == 300.0  # an untuned method: its own run
    assert _obtain_runtime(col, MODEL, "zero-shot") is None
