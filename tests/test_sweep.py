"""The fair comparison (issue 15): a sweep per trained method, chosen on a validation split, the chosen
setting evaluated on the test benchmarks beside the paper protocol. The grid runs on a tiny random Llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tinyslm.cli import main
from tinyslm.core.errors import UserError
from tinyslm.study import grid as study_grid
from tinyslm.study import runner as study_runner

pytestmark = pytest.mark.usefixtures("one_thread")


def _study(model: Path, data_dir: Path, **over) -> dict:
    cfg = {
        "name": "tiny-sweep",
        "data_dir": str(data_dir),
        "models": [str(model)],
        "methods": ["zero-shot", "lora"],
        "seeds": [7, 8],
        "train": {"dataset": "gsm8k-train", "limit": 4, "batch_size": 4, "micro_batch_size": 2,
                  "max_length": 256, "max_steps": 3},
        "eval": {"benchmarks": ["gsm8k"], "limit": 2, "shots": 1, "batch_size": 2, "max_new_tokens": 4},
        "hardware": {"device": "cpu"},
        "report": {"enabled": False},
        "sweep": {"select_by": "val_loss", "val_size": 4, "eval_every": 1,
                  "grid": {"lora": {"lr": [1.0e-3, 2.0e-4]}}},
    }  # fmt: skip
    cfg.update(over)
    return cfg


def _write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"grid": {"lora": {"lr": []}}}, r"sweep: grid.lora.lr: empty list"),
        ({"grid": {"lora": {"lr": [-1.0e-4]}}}, r"sweep.*grid.lora.lr: -0.0001: .*greater than 0"),
        ({"grid": {"dora": {"lr": [1.0e-4]}}}, r"sweep.grid.dora: 'dora' is not in methods"),
        ({"grid": {"zero-shot": {"lr": [1.0e-4]}}}, r"grid.zero-shot: only trained methods are swept"),
        (
            {"select_by": "val_em", "val_size": 0, "grid": {"lora": {"lr": [1.0e-4]}}},
            r"val_em needs a validation",
        ),
        ({"grid": {"lora": {"lr": [1.0e-4, 1.0e-4]}}}, r"grid.lora.lr: a value is listed twice"),
        ({"grid": {"lora": {"seed": [1, 2]}}}, r"grid.lora.seed: not a sweepable setting"),
        ({"grid": {}}, r"sweep.grid"),
        ({"select_by": "test_em", "grid": {"lora": {"lr": [1.0e-4]}}}, r"sweep.select_by"),
        ({"val_size": 4, "val_generate": 5, "grid": {"lora": {"lr": [1.0e-4]}}}, r"val_generate 5 exceeds"),
    ],
)
def test_bad_sweep_specs_are_one_clear_line(tmp_path, sweep, message):
    cfg = {"models": ["m"], "methods": ["zero-shot", "lora"], "sweep": sweep}
    with pytest.raises(UserError, match=message) as err:
        study_grid.load_config(_write(tmp_path / "s.yaml", cfg))
    assert "\n" not in str(err.value)


def test_plan_adds_trials_without_the_protocol_point_and_one_tuned_cell_per_seed(tmp_path):
    cfg = study_grid.load_config(
        _write(
            tmp_path / "s.yaml",
            _study(
                Path("m"), tmp_path, sweep={"grid": {"lora": {"lr": [1.0e-4, 2.0e-4], "lora_r": [8, 16]}}}
            ),
        )  # fmt: skip
    )
    ids = [c.id for c in study_grid.plan_cells(cfg)]
    assert ids[:3] == ["m/zero-shot/seed7", "m/lora/seed7", "m/lora/seed8"]
    # 2 x 2 points; (2e-4, r=8) is the protocol point: the grid cell at the first seed, not a trial of its own
    assert ids[3:] == [
        "m/lora-trial-lr1e-04-r8/seed7",
        "m/lora-trial-lr1e-04-r16/seed7",
        "m/lora-trial-lr2e-04-r16/seed7",
        "m/lora-tuned/seed7",
        "m/lora-tuned/seed8",
    ]
    # every trained cell holds out the same validation split; a trial trains with its own setting
    trial = next(c for c in study_grid.plan_cells(cfg) if c.kind == "trial")
    tcfg = study_grid.train_config(cfg, trial, tmp_path)
    assert (tcfg.lr, tcfg.lora_r, tcfg.val_size, tcfg.eval_every) == (1.0e-4, 8, 200, 0)  # sweep defaults
    grid_cell = study_grid.plan_cells(cfg)[1]
    assert study_grid.train_config(cfg, grid_cell, tmp_path).val_size == 200


def test_sweep_end_to_end_chooses_on_validation_and_never_a_diverged_trial(
    tmp_path, tiny_model_dir, data_dir, capsys
):
    name = tiny_model_dir.name
    cfg_file = _write(
        tmp_path / "s.yaml",
        _study(
            tiny_model_dir,
            data_dir,
            sweep={
                "select_by": "val_loss",
                "val_size": 4,
                "eval_every": 1,
                "grid": {"lora": {"lr": [1.0e-3, 1.0e4]}},
            },
        ),  # fmt: skip
    )
    root = tmp_path / "out"

    # A tuned cell run alone before its trials waits: nothing written, the reason says which trials.
    alone = study_runner.run_study(
        cfg_file, str(root), only=f"{name}/lora-tuned/seed7", progress=False, report=False
    )
    rec = alone["cells"][f"{name}/lora-tuned/seed7"]
    assert rec["status"] == "pending" and "still to run" in rec["reason"]
    assert not (root / name / "lora-tuned" / "seed7" / "cell.json").exists()

    res = study_runner.run_study(cfg_file, str(root), progress=False, report=False)
    cells = res["cells"]
    assert cells[f"{name}/lora-trial-lr1e-03/seed7"]["status"] == "finished"
    assert cells[f"{name}/lora-trial-lr1e+04/seed7".replace("+", "")]["status"] == "diverged"
    trial = json.loads((root / name / "lora-trial-lr1e-03" / "seed7" / "cell.json").read_text())
    assert trial["kind"] == "trial" and trial["trial"] == {"lr": 1.0e-3} and trial["base_method"] == "lora"
    assert not (root / name / "lora-trial-lr1e-03" / "seed7" / "eval").exists()  # never the test set
    protocol = json.loads((root / name / "lora" / "seed7" / "cell.json").read_text())
    assert protocol["sweep_point"] == {"lr": 2.0e-4}

    # The choice: the lower validation loss of the two finished candidates; the diverged one never.
    runs = {
        c: json.loads((root / name / c / "seed7" / "run.json").read_text())
        for c in ("lora", "lora-trial-lr1e-03")
    }
    best = min(runs, key=lambda c: runs[c]["validation"]["loss"])
    tuned = json.loads((root / name / "lora-tuned" / "seed7" / "cell.json").read_text())
    assert tuned["status"] == "finished" and tuned["kind"] == "tuned"
    assert tuned["chosen"]["cell"] == f"{name}/{best}/seed7"
    assert tuned["chosen"]["value"] == runs[best]["validation"]["loss"]
    assert (root / name / "lora-tuned" / "seed7" / "eval" / "gsm8k" / "results.json").is_file()
    seed8 = root / name / "lora-tuned" / "seed8"
    assert json.loads((seed8 / "cell.json").read_text())["status"] == "finished"
    if best == "lora":  # the protocol point won: seed 8's tuned result is the grid cell's, copied
        assert not (seed8 / "run.json").exists()
    else:  # the trial won: its setting is trained at seed 8
        run8 = json.loads((seed8 / "run.json").read_text())
        assert run8["config"]["lr"] == 1.0e-3 and run8["config"]["seed"] == 8
    study = json.loads((root / "study.json").read_text())
    assert study["sweep"]["choices"][f"{name}/lora"]["chosen"] == f"{name}/{best}/seed7"

    # Rerunning finds everything done.
    again = study_runner.run_study(cfg_file, str(root), progress=False, report=False)
    assert all(r.get("skipped") for r in again["cells"].values())
    assert main(["run", str(cfg_file), "--output", str(root), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "lora-tuned/seed8" in out and "pending" not in out


def test_a_cell_made_before_the_validation_settings_existed_still_counts_as_done(
    tmp_path, tiny_model_dir, data_dir
):
    """A study directory written by the version before issue 15: its cell specs lack the new training
    settings. They are read as those settings' defaults, so the finished cell is kept, not refused."""
    cfg = _study(tiny_model_dir, data_dir, seeds=[7])
    del cfg["sweep"]
    cfg_file = _write(tmp_path / "s.yaml", cfg)
    root = tmp_path / "out"
    study_runner.run_study(cfg_file, str(root), progress=False, report=False)
    cid = f"{tiny_model_dir.name}/lora/seed7"
    cell_file = root / cid / "cell.json"
    rec = json.loads(cell_file.read_text())
    for key in ("val_size", "eval_every", "val_generate", "val_max_new_tokens"):
        rec["spec"]["train"].pop(key, None)
    rec.pop("schema_version", None)
    cell_file.write_text(json.dumps(rec))
    again = study_runner.run_study(cfg_file, str(root), progress=False, report=False)
    assert again["cells"][cid]["status"] == "finished" and again["cells"][cid]["skipped"]
    # while a real change is still refused, naming the setting
    cfg["train"]["limit"] = 8
    changed = study_runner.run_study(
        _write(tmp_path / "c.yaml", cfg), str(root), progress=False, report=False
    )
    assert changed["cells"][cid]["status"] == "failed" and "train.limit" in changed["cells"][cid]["reason"]


def test_a_killed_trial_resumes_where_it_stopped(tmp_path, tiny_model_dir, data_dir):
    """SIGKILL after the first of two steps of a trial (checkpointed): rerunning the same command continues
    it from that checkpoint, and the study then chooses and evaluates as if nothing had happened."""
    import os
    import subprocess
    import sys

    from tinyslm.train.recipe import FAULT_ENV

    cfg = _study(tiny_model_dir, data_dir, seeds=[7])
    cfg["train"].update(max_steps=2, save_every=1)
    cfg["sweep"]["grid"] = {"lora": {"lr": [1.0e-3]}}
    cfg_file = _write(tmp_path / "s.yaml", cfg)
    root = tmp_path / "out"
    trial = f"{tiny_model_dir.name}/lora-trial-lr1e-03/seed7"
    cmd = [str(Path(sys.executable).parent / "tiny-slm"), "run", str(cfg_file), "--output", str(root)]
    env = {**os.environ, FAULT_ENV: "sigkill@1", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([*cmd, "--cell", trial, "--no-progress"], env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert json.loads((root / trial / "cell.json").read_text())["status"] == "running"
    env.pop(FAULT_ENV)
    done = subprocess.run([*cmd, "--no-progress"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    run = json.loads((root / trial / "run.json").read_text())
    assert run["status"] == "finished" and run["resumed_from_steps"] == [1] and run["validation"]["step"] == 2
    lines = [json.loads(x) for x in (root / trial / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x.get("split") == "val"] == [1, 2]  # none repeated by the resume
    assert [x["step"] for x in lines if "split" not in x] == [1, 2]
    tuned = json.loads((root / tiny_model_dir.name / "lora-tuned" / "seed7" / "cell.json").read_text())
    assert tuned["status"] == "finished" and tuned["chosen"]["cell"] in (
        trial,
        f"{tiny_model_dir.name}/lora/seed7",
    )


@pytest.mark.parametrize(("name", "trials"), [("sweep-quick", 2), ("reference-cpu", 3)])
def test_shipped_sweep_configs_plan(name, trials):
    """The shipped sweep configs validate, and each swept method gets its trials and a tuned cell."""
    cfg = study_grid.load_config(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml")
    cells = study_grid.plan_cells(cfg)
    assert cfg.sweep is not None and sum(c.kind == "trial" for c in cells) == trials
    assert {c.method for c in cells if c.kind == "tuned"} == set(cfg.sweep.grid)
    assert all(
        study_grid.train_config(cfg, c, Path("x")).val_size == cfg.sweep.val_size for c in cells if c.trained
    )
