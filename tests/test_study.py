"""The study runner: config validation, the cell grid, skip/resume/failure semantics, the shipped configs.

The grid runs on a tiny random Llama (seconds per cell): a few short problems, one optimizer step, a
handful of generated tokens. What is checked is the runner's bookkeeping, not model quality.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import tiny_study_config

from tinyslm.cli import main
from tinyslm.core.errors import UserError
from tinyslm.core.files import LOCK_FILE
from tinyslm.core.files import umask as _umask
from tinyslm.study import grid as study_grid
from tinyslm.study import runner as study_runner
from tinyslm.train.recipe import FAULT_ENV

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


pytestmark = pytest.mark.usefixtures("one_thread")


def _write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _cell(root: Path, cid: str) -> dict:
    return json.loads((root / cid / "cell.json").read_text())


# ---------------------------------------------------------------------------------------------------
# Config validation: every problem is one line naming the key.


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"models": ["m"], "methods": ["lora"], "trian": {}}, r"trian: unknown key"),
        ({"models": ["m"], "methods": ["lora"], "train": {"lr": 1e-4}}, r"train\.lr: unknown key"),
        ({"models": ["m"], "methods": ["qlora"]}, r"methods: unknown method 'qlora'"),
        (
            {"models": ["m"], "methods": ["lora"], "train": {"batch_size": 0}},
            r"train\.batch_size: .*greater than or equal to 1",
        ),
        ({"models": ["m"], "methods": ["lora"], "eval": {"engine": "vllm"}}, r"eval\.engine"),
        (
            {"models": ["m"], "methods": ["zero-shot"], "overrides": {"zero-shot": {"lr": 1.0}}},
            r"overrides are for trained",
        ),
        (
            {"models": ["m"], "methods": ["lora"], "overrides": {"lora": {"rank": 4}}},
            r"overrides\.lora\.rank: unknown key",
        ),
        ({"models": ["m"], "methods": ["lora"], "hardware": {"device": "tpu"}}, r"hardware\.device"),
        ({"methods": ["lora"]}, r"models: Field required"),
        ({"models": ["m", "m"], "methods": ["lora"]}, r"models: .*listed twice"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, cfg, message):
    with pytest.raises(UserError, match=message):
        study_grid.load_config(_write(tmp_path / "c.yaml", cfg))


def test_unreadable_configs_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [a\nmethods: lora\n")
    with pytest.raises(UserError, match=r"not valid YAML \(line"):
        study_grid.load_config(bad)
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(UserError, match="expected a mapping"):
        study_grid.load_config(tmp_path / "list.yaml")
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "config file not found" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["quick", "offline", "paper"])
def test_shipped_configs_validate_and_plan(name):
    cfg = study_grid.load_config(REPO / "configs" / f"{name}.yaml")
    cells = study_grid.plan_cells(cfg)
    methods = {c.label.split("-")[0] if c.method == "few-shot" else c.method for c in cells}
    assert methods == {"zero-shot", "few", "full", "lora", "dora"}
    assert len(cells) == len(cfg.models) * (1 + (len(cfg.methods) - 1) * len(cfg.seeds))
    if name == "offline":
        assert cfg.diagnostics_settings is not None  # the issue: diagnostics on in offline.yaml
    if name == "quick":
        assert cfg.models == ["smollm2-135m-instruct"] and set(cfg.eval.benchmarks) == {"gsm8k", "svamp"}


def test_plan_protocol_and_overrides(tmp_path):
    cfg = study_grid.StudyConfig.model_validate(
        {
            "models": ["a/b", "c"],
            "methods": ["zero-shot", "few-shot", "full", "lora"],
            "seeds": [1, 2],
            "eval": {"shots": 3},
            "overrides": {"lora": {"lr": 1e-3, "lora_r": 16}},
        }
    )
    cells = study_grid.plan_cells(cfg)
    ids = [c.id for c in cells]
    assert ids[:4] == ["b/zero-shot/seed1", "b/few-shot-3/seed1", "b/few-shot-3/seed2", "b/full/seed1"]
    assert len(ids) == 2 * (1 + 3 * 2)
    lora = next(c for c in cells if c.method == "lora")
    t = study_grid.train_config(cfg, lora, tmp_path)
    assert (t.lr, t.lora_r, t.lora_alpha, t.batch_size, t.resume) == (1e-3, 16, 32, 64, True)
    full = next(c for c in cells if c.method == "full")
    assert study_grid.train_config(cfg, full, tmp_path).lr is None  # the protocol default (2e-5) fills it in
    e = study_grid.eval_config(cfg, lora, tmp_path)
    assert (e.model, e.adapter, e.shots) == ("a/b", str(tmp_path / "final"), 0)
    assert study_grid.eval_config(cfg, cells[1], tmp_path).shots == 3


def test_train_argv_round_trips_through_the_cli(tmp_path):
    from tinyslm.cli.train import add_train_args, config_from_args

    cfg = study_grid.StudyConfig.model_validate(
        {
            "models": ["m"],
            "methods": ["dora"],
            "train": {"limit": 5, "max_steps": 3, "merge": True},
            "overrides": {"dora": {"target_modules": "q,v", "lora_dropout": 0.1}},
        }
    )
    tcfg = study_grid.train_config(cfg, study_grid.plan_cells(cfg)[0], tmp_path, progress=False)
    import argparse

    p = argparse.ArgumentParser()
    add_train_args(p)
    assert config_from_args(p.parse_args(study_runner.train_argv(tcfg))) == tcfg


def test_dry_run_and_print_commands(tmp_path, capsys, tiny_model_dir, data_dir):
    cfg = _write(tmp_path / "s.yaml", tiny_study_config(tiny_model_dir, data_dir))
    assert main(["run", str(cfg), "--output", str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "5 cells" in out and out.count("pending") == 5
    assert main(["run", str(cfg), "--output", str(tmp_path / "out"), "--print-commands"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len([x for x in lines if x.startswith("tiny-slm run ")]) == 5 and "--cell" in lines[0]
    assert not (tmp_path / "out").exists()  # nothing was run or written


# ---------------------------------------------------------------------------------------------------
# The grid on a tiny model.


def test_grid_runs_every_cell_then_skips_them(tmp_path, tiny_model_dir, data_dir):
    cfg = _write(tmp_path / "s.yaml", tiny_study_config(tiny_model_dir, data_dir))
    root = tmp_path / "out"
    res = study_runner.run_study(cfg, str(root), progress=False, report=False)
    name = tiny_model_dir.name
    ids = [f"{name}/{m}/seed7" for m in ("zero-shot", "few-shot-1", "full", "lora", "dora")]
    assert sorted(res["cells"]) == sorted(ids)
    for cid in ids:
        rec = _cell(root, cid)
        assert rec["status"] == "finished", rec
        for bench in ("gsm8k", "svamp"):
            r = json.loads((root / cid / "eval" / bench / "results.json").read_text())
            assert r["n"] == 2 and r["model_parameters"] > 0
    lora = root / f"{name}/lora/seed7"
    assert json.loads((lora / "run.json").read_text())["status"] == "finished"
    assert (lora / "final" / "adapter_config.json").is_file() and (lora / "merged").is_dir()
    assert json.loads((lora / "eval/gsm8k/results.json").read_text())["model_ref"].endswith("merged")
    few = json.loads((root / f"{name}/few-shot-1/seed7/eval/gsm8k/results.json").read_text())
    assert few["shots"] == 1 and len(few["exemplar_ids"]) == 1
    assert (root / ids[0] / "cell.json").stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's 0600
    summary = json.loads((root / "study.json").read_text())
    assert {c["id"]: c["status"] for c in summary["cells"]} == dict.fromkeys(ids, "finished")

    # A second run finds everything done: nothing is retrained or re-evaluated, only the report is written.
    # (the lock files are rewritten with the new process's PID: that is no result)
    stamps = {
        p: p.stat().st_mtime_ns
        for p in root.rglob("*")
        if p.is_file() and p.name not in ("study.json", LOCK_FILE)
    }
    with_report = _write(
        tmp_path / "r.yaml", tiny_study_config(tiny_model_dir, data_dir, report={"enabled": True})
    )
    res2 = study_runner.run_study(with_report, str(root), progress=False)
    assert all(r["skipped"] for r in res2["cells"].values())
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
    assert res2["report"] == str(root / "report" / "report.html")
    rows = (root / "report" / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 5 * 2  # header + five methods x two benchmarks
    md = (root / "report" / "report.md").read_text()
    assert all(m in md for m in ("zero-shot", "few-shot-1", "full", "lora", "dora"))

    # A changed setting is refused for the cells it touches, never mixed with the old results.
    changed = _write(
        tmp_path / "s2.yaml", tiny_study_config(tiny_model_dir, data_dir, train={"limit": 8, "max_steps": 2})
    )
    res3 = study_runner.run_study(changed, str(root), progress=False, report=False)
    lora_rec = res3["cells"][f"{name}/lora/seed7"]
    assert (
        lora_rec["status"] == "failed"
        and "train.limit" in lora_rec["reason"]
        and "train.max_steps" in lora_rec["reason"]
    )
    assert res3["cells"][f"{name}/zero-shot/seed7"]["status"] == "finished"


def test_failing_cells_are_recorded_and_the_grid_goes_on(
    tmp_path, tiny_model_dir, data_dir, monkeypatch, capsys
):
    missing = tmp_path / "no-such-model"
    cfg = _write(
        tmp_path / "s.yaml",
        {
            **tiny_study_config(tiny_model_dir, data_dir),
            "models": [str(missing), str(tiny_model_dir)],
            "methods": ["zero-shot", "lora"],
        },
    )
    root = tmp_path / "out"
    monkeypatch.setenv(FAULT_ENV, "nan@1")  # every training run diverges at its first step
    assert main(["run", str(cfg), "--output", str(root), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "1/4 cells finished, 3 failed (1 diverged)" in out
    gone = _cell(root, "no-such-model/zero-shot/seed7")
    assert gone["status"] == "failed" and "does not exist" in gone["reason"]
    diverged = _cell(root, f"{tiny_model_dir.name}/lora/seed7")
    assert diverged["status"] == "diverged" and diverged["reason"].startswith("non-finite loss at step 1")
    assert _cell(root, f"{tiny_model_dir.name}/zero-shot/seed7")["status"] == "finished"

    # Kept on the next run (a deterministic failure would only repeat) until asked to retry.
    monkeypatch.delenv(FAULT_ENV)
    assert main(["run", str(cfg), "--output", str(root), "--no-progress"]) == 1
    assert "--retry-failed" in capsys.readouterr().err
    main(["run", str(cfg), "--output", str(root), "--no-progress", "--retry-failed"])
    rec = _cell(root, f"{tiny_model_dir.name}/lora/seed7")
    assert rec["status"] == "finished" and rec["attempts"] == 2


def test_killed_cell_resumes_where_it_stopped(tmp_path, tiny_model_dir, data_dir):
    """A SIGKILL after the first of two steps (checkpointed): the rerun continues from that checkpoint."""
    cfg = _write(
        tmp_path / "s.yaml",
        tiny_study_config(
            tiny_model_dir, data_dir, methods=["lora"], train={"max_steps": 2, "save_every": 1}
        ),
    )
    root = tmp_path / "out"
    cmd = [str(BIN / "tiny-slm"), "run", str(cfg), "--output", str(root), "--no-progress"]
    env = {**os.environ, FAULT_ENV: "sigkill@1", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    cid = f"{tiny_model_dir.name}/lora/seed7"
    assert _cell(root, cid)["status"] == "running"  # what a hard kill leaves behind
    env.pop(FAULT_ENV)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rec = _cell(root, cid)
    run = json.loads((root / cid / "run.json").read_text())
    assert rec["status"] == "finished" and rec["attempts"] == 2
    assert run["resumed_from_steps"] == [1] and run["step"] == 2


def test_single_cell_and_unknown_cell(tmp_path, tiny_model_dir, data_dir, capsys):
    cfg = _write(tmp_path / "s.yaml", tiny_study_config(tiny_model_dir, data_dir))
    root = tmp_path / "out"
    cid = f"{tiny_model_dir.name}/zero-shot/seed7"
    assert main(["run", str(cfg), "--output", str(root), "--cell", cid, "--no-progress"]) == 0
    assert _cell(root, cid)["status"] == "finished"
    assert not (root / f"{tiny_model_dir.name}/lora").exists()
    assert main(["run", str(cfg), "--output", str(root), "--cell", "nope/lora/seed7"]) == 2
    assert "no cell 'nope/lora/seed7'" in capsys.readouterr().err


def test_bad_benchmark_fails_before_any_cell(tmp_path, tiny_model_dir, data_dir, capsys):
    cfg = _write(
        tmp_path / "s.yaml", tiny_study_config(tiny_model_dir, data_dir, eval={"benchmarks": ["gsm9k"]})
    )
    assert main(["run", str(cfg), "--output", str(tmp_path / "out")]) == 2
    assert "gsm9k" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_diagnostics_run_on_trained_cells_when_asked(tmp_path, tiny_model_dir, data_dir):
    cfg = _write(
        tmp_path / "s.yaml",
        tiny_study_config(
            tiny_model_dir,
            data_dir,
            methods=["zero-shot", "lora"],
            diagnostics={"enabled": True, "probe_limit": 2},
        ),
    )
    root = tmp_path / "out"
    study_runner.run_study(cfg, str(root), progress=False, report=False)
    name = tiny_model_dir.name
    diag = json.loads((root / f"{name}/lora/seed7/diagnostics.json").read_text())
    assert {"forgetting", "weight_displacement", "intruder_dimensions", "sharpness", "summary"} <= set(diag)
    assert not (root / f"{name}/zero-shot/seed7/diagnostics.json").exists()  # nothing to compare untrained
