"""Training under hostile conditions: NaN from the last update, a loss that blows up, non-finite settings,
and gradient checkpointing (same losses and gradients, switchable on --resume).

Runs on the tiny random Llama of conftest.py (seconds per run).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from helpers import tiny_train_config

from tinyslm.cli.train import main
from tinyslm.core.errors import UserError
from tinyslm.study import grid as study_grid
from tinyslm.study import runner as study_runner
from tinyslm.train.config import EARLY_STEPS, TrainConfig, resolve_config
from tinyslm.train.recipe import FAULT_ENV, BlowUp, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(model: Path, data: Path, out: Path, method: str, **kw) -> TrainConfig:
    return tiny_train_config(model, data, out, **{"method": method, "max_steps": 3, **kw})


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]


def _saved_weights_finite(out: Path) -> bool:
    """Whether every tensor this run saved (checkpoints and final/) is finite."""
    import torch
    from safetensors.torch import load_file

    files = [*out.glob("checkpoints/*/*.safetensors"), *out.glob("final/*.safetensors")]
    return all(bool(torch.isfinite(t).all()) for f in files for t in load_file(f).values())


# ---------------------------------------------------------------------------------------------------
# 4. A NaN made by an update that no later step's loss sees.


@pytest.fixture
def nan_after_update(monkeypatch):
    """``set(k)``: the k-th AdamW update of the run leaves a weight NaN (as an overflowing update would).

    A subclass, not an instance patch: the LR scheduler wraps the optimizer's bound ``step``."""
    import torch

    when = {"k": 0, "calls": 0}

    class PoisonedAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            loss = super().step(closure)
            when["calls"] += 1
            if when["calls"] == when["k"]:
                with torch.no_grad():
                    self.param_groups[0]["params"][0].fill_(float("nan"))
            return loss

    monkeypatch.setattr(torch.optim, "AdamW", PoisonedAdamW)
    return lambda k: when.update(k=k)


def test_nan_from_the_last_update_is_diverged_and_final_is_not_written(
    nan_after_update, tiny_model_dir, small_jsonl, tmp_path
):
    nan_after_update(3)
    out = tmp_path / "last"
    run = train(_cfg(tiny_model_dir, small_jsonl, out, "full", max_steps=3))
    assert run["status"] == "diverged", run.get("reason")
    assert "non-finite weights after the update of step 3" in run["reason"]
    assert run["step"] == 3 and run["diverged_at_step"] == 3
    assert not (out / "final").exists() and _saved_weights_finite(out)
    assert json.loads((out / "run.json").read_text())["status"] == "diverged"


def test_nan_weights_are_never_checkpointed_and_the_last_good_checkpoint_is_kept(
    nan_after_update, tiny_model_dir, small_jsonl, tmp_path
):
    nan_after_update(4)  # checkpoint steps 2 (good) and 4 (NaN weights)
    out = tmp_path / "ck"
    run = train(_cfg(tiny_model_dir, small_jsonl, out, "lora", max_steps=6, save_every=2))
    assert run["status"] == "diverged" and "non-finite weights after the update of step 4" in run["reason"]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000002"]
    assert run["last_checkpoint"].endswith("step-0000002") and _saved_weights_finite(out)
    assert [r["step"] for r in _metrics(out)] == [1, 2, 3, 4] and not (out / "final").exists()


# ---------------------------------------------------------------------------------------------------
# 5. A sustained blow-up of the loss.


def test_blow_up_rule_counts_consecutive_steps_against_the_early_minimum():
    healthy = [10.0, 9.0, 7.0, 5.0, 4.0, 3.0, 2.5, 2.0, 1.8, 1.7, 1.6, 1.5]
    b = BlowUp(3.0, 5)
    assert not any(b.update(s, x) for s, x in enumerate(healthy, 1)) and b.early == 4.0
    # spikes above 3 x 4.0 for 4 steps (< patience), twice, do not count; the 5th consecutive one does
    b = BlowUp(3.0, 5)
    losses = [*healthy[:EARLY_STEPS], 13, 13, 13, 13, 2, 13, 13, 13, 13, 11.9, 13, 13, 13, 13]
    hits = [s for s, x in enumerate(losses, 1) if b.update(s, x)]
    assert hits == [] and b.streak == 4
    assert b.update(len(losses) + 1, 13) and b.streak_start == len(losses) - 3
    # a blow-up from step 2 on is judged against step 1 (a minimum is not pulled up by it)
    b = BlowUp(3.0, 3)
    assert [b.update(s, x) for s, x in enumerate([1.5, 30, 30, 30], 1)] == [False, False, False, True]
    assert b.early == 1.5 and "3 x its early level 1.5" in b.reason(4, 30.0, 1e8)
    # factor 0: off; the state survives a checkpoint round trip
    assert not any(BlowUp(0.0, 1).update(s, 1e9 * s) for s in range(1, 9))
    c = BlowUp(3.0, 3)
    c.restore(b.state())
    assert (c.early, c.streak, c.streak_start) == (b.early, b.streak, b.streak_start)


def test_a_learning_rate_that_blows_the_loss_up_ends_diverged_with_the_reason(
    tiny_model_dir, small_jsonl, tmp_path
):
    out = tmp_path / "lr10"
    run = train(_cfg(tiny_model_dir, small_jsonl, out, "full", lr=10.0, max_steps=12, save_every=1))
    assert run["status"] == "diverged", "loss " + str([round(r["loss"], 1) for r in _metrics(out)])
    assert "loss blew up: above 3 x its early level" in run["reason"] and "lower --lr" in run["reason"]
    m = _metrics(out)
    early = min(r["loss"] for r in m[:EARLY_STEPS])
    at = run["diverged_at_step"]
    assert [r["step"] for r in m] == list(range(1, at)) and run["step"] == at - 1
    assert all(r["loss"] > 3 * early for r in m[at - 5 :]), "five consecutive steps above 3 x the early level"
    assert not (out / "final").exists()
    # every checkpoint saved during the blow-up is kept; none is named good (step 1's update blew it up)
    assert len(list((out / "checkpoints").iterdir())) >= 2 and run["last_checkpoint"] is None


def test_a_diverged_study_cell_says_so_in_cell_json_and_the_report(tiny_model_dir, data_dir, tmp_path):
    cfg = {
        "name": "hostile",
        "data_dir": str(data_dir),
        "models": [str(tiny_model_dir)],
        "methods": ["zero-shot", "full"],
        "seeds": [7],
        "train": {"limit": 4, "batch_size": 4, "micro_batch_size": 2, "max_length": 256, "max_steps": 10},
        "overrides": {"full": {"lr": 10.0}},
        "eval": {"benchmarks": ["gsm8k"], "limit": 2, "batch_size": 2, "max_new_tokens": 4},
        "hardware": {"device": "cpu"},
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(cfg))
    root = tmp_path / "out"
    res = study_runner.run_study(path, str(root), progress=False)
    rec = json.loads((root / f"{tiny_model_dir.name}/full/seed7/cell.json").read_text())
    assert rec["status"] == "diverged" and rec["reason"].startswith("loss blew up"), rec
    assert res["cells"][rec["id"]]["status"] == "diverged"
    md = (root / "report" / "report.md").read_text()
    assert "diverged: loss blew up" in md


# ---------------------------------------------------------------------------------------------------
# 6. Every float setting is finite, checked up front.


@pytest.mark.parametrize("name", ["lr", "weight_decay", "warmup_ratio", "lora_alpha", "lora_dropout",
                                  "max_grad_norm", "divergence_factor"])  # fmt: skip
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_non_finite_floats_are_refused_by_resolve_config(name, value):
    cfg = TrainConfig(model="m", method="lora", output="o", **{name: value})
    with pytest.raises(UserError, match=rf"^--{name.replace('_', '-')} must be a finite number, got") as e:
        resolve_config(cfg)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("train: {weight_decay: .inf}", "train.weight_decay"),
        ("train: {max_grad_norm: .nan}", "train.max_grad_norm"),
        ("train: {divergence_factor: .inf}", "train.divergence_factor"),
        ("overrides: {lora: {lora_alpha: .inf}}", "overrides.lora.lora_alpha"),
        ("overrides: {lora: {weight_decay: .inf}}", "overrides.lora.weight_decay"),
        ("report: {price_per_gpu_hour: .inf}", "report.price_per_gpu_hour"),
    ],
)
def test_non_finite_floats_are_refused_by_the_study_schema(tmp_path, yaml_text, key):
    path = tmp_path / "c.yaml"
    path.write_text(f"models: [m]\nmethods: [lora]\n{yaml_text}\n")
    with pytest.raises(UserError, match=rf"{key}: Input should be a finite number") as e:
        study_grid.load_config(path)
    assert "\n" not in str(e.value)


def test_study_divergence_factor_between_0_and_1_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump({"models": ["m"], "methods": ["lora"], "train": {"divergence_factor": 0.5}})
    )
    with pytest.raises(UserError, match=r"train\.divergence_factor: must be 0 \(off\) or > 1"):
        study_grid.load_config(path)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--divergence-factor", "inf"], "--divergence-factor: must be >= 0, got inf"),
        (["--divergence-factor", "0.5"], "--divergence-factor must be 0 (off) or > 1"),
        (["--weight-decay", "nan"], "--weight-decay: must be >= 0, got nan"),
        (["--divergence-patience", "0"], "--divergence-patience: must be >= 1"),
    ],
)
def test_bad_divergence_and_float_flags_are_one_line_exit_2(extra, message, tmp_path, capsys):
    argv = ["--model", "m", "--method", "lora", "--output", str(tmp_path / "o"), "--no-progress", *extra]
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------------
# Gradient checkpointing: same math, and a setting that may change on --resume.


@pytest.fixture
def checkpoint_calls(monkeypatch):
    """Counts the activation-checkpointed layer calls (so a test cannot pass with checkpointing off)."""
    import transformers.modeling_utils as mu

    calls = {"n": 0}
    real = mu.checkpoint

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(mu, "checkpoint", counting)
    return calls


@pytest.mark.parametrize("method", ["full", "lora", "dora"])
def test_gradient_checkpointing_gives_the_same_losses_and_gradients(
    method, checkpoint_calls, tiny_model_dir, small_jsonl, tmp_path
):
    """LoRA/DoRA with their protocol dropout 0.05: the recomputation replays the same dropout masks."""
    kw = dict(max_steps=4, lr=1e-3, lora_dropout=None)
    plain = train(_cfg(tiny_model_dir, small_jsonl, tmp_path / "plain", method, **kw))
    assert checkpoint_calls["n"] == 0
    ckpt = train(
        _cfg(tiny_model_dir, small_jsonl, tmp_path / "gc", method, gradient_checkpointing=True, **kw)
    )
    assert checkpoint_calls["n"] >= 4 * 2 * 2, "2 layers x 2 micro-batches x 4 steps"
    assert plain["status"] == ckpt["status"] == "finished"
    assert (
        ckpt["config"]["gradient_checkpointing"] is True
        and plain["config"]["gradient_checkpointing"] is False
    )
    a, b = _metrics(tmp_path / "plain"), _metrics(tmp_path / "gc")
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-5)
    assert [r["grad_norm"] for r in b] == pytest.approx([r["grad_norm"] for r in a], rel=1e-5)
    assert a[-1]["loss"] < a[0]["loss"]


def test_gradient_checkpointing_may_change_on_resume_but_the_math_may_not(
    tiny_model_dir, small_jsonl, tmp_path, monkeypatch
):
    kw = dict(max_steps=4, save_every=2, lr=1e-3)
    whole = tmp_path / "whole"
    train(_cfg(tiny_model_dir, small_jsonl, whole, "lora", **kw))
    out = tmp_path / "resumed"
    monkeypatch.setenv(FAULT_ENV, "nan@3")  # stops after step 2's checkpoint
    assert train(_cfg(tiny_model_dir, small_jsonl, out, "lora", **kw))["status"] == "diverged"
    monkeypatch.delenv(FAULT_ENV)
    with pytest.raises(UserError, match=r"different settings \(lora_r\)"):
        train(_cfg(tiny_model_dir, small_jsonl, out, "lora", resume=True, lora_r=4, **kw))
    run = train(
        _cfg(tiny_model_dir, small_jsonl, out, "lora", resume=True, gradient_checkpointing=True, **kw)
    )
    assert run["status"] == "finished" and run["resumed_from_steps"] == [2]
    assert run["config"]["gradient_checkpointing"] is True
    assert [r["loss"] for r in _metrics(out)] == pytest.approx([r["loss"] for r in _metrics(whole)], rel=1e-5)
    # the study agrees: a cell's results do not depend on it, so switching it keeps the cell
    cfg = study_grid.StudyConfig.model_validate({"models": ["m"], "methods": ["lora"], "overrides": {
        "lora": {"gradient_checkpointing": True}}})  # fmt: skip
    cell = study_grid.plan_cells(cfg)[0]
    assert study_grid.train_config(cfg, cell, tmp_path).gradient_checkpointing is True
    assert "gradient_checkpointing" not in study_grid.cell_spec(cfg, cell, tmp_path)["train"]
    assert "--gradient-checkpointing" in study_runner.train_argv(study_grid.train_config(cfg, cell, tmp_path))


def test_release_memory_records_the_allocator_and_changes_no_number(tiny_model_dir, small_jsonl, tmp_path):
    """--release-memory only tells glibc to unmap freed blocks >= 1 MiB: the losses are those of a plain run,
    and run.json says what was set. It runs in a child process, since the setting lasts for the process."""
    import dataclasses
    import subprocess
    import sys

    kw = dict(max_steps=3, lr=1e-3)
    plain = train(_cfg(tiny_model_dir, small_jsonl, tmp_path / "plain", "lora", **kw))
    assert plain["cpu_allocator"] is None
    cfg = dataclasses.asdict(
        _cfg(tiny_model_dir, small_jsonl, tmp_path / "rel", "lora", release_memory=True, **kw)
    )
    child = (
        "import json, sys; from tinyslm.train.config import TrainConfig; from tinyslm.train.recipe import train; "
        "train(TrainConfig(**json.loads(sys.argv[1])))"
    )
    done = subprocess.run(
        [sys.executable, "-c", child, json.dumps(cfg, default=str)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    run = json.loads((tmp_path / "rel" / "run.json").read_text())
    assert run["config"]["release_memory"] is True
    if sys.platform == "linux":
        assert run["cpu_allocator"] == "mallopt(M_MMAP_THRESHOLD, 1048576)"
    a, b = _metrics(tmp_path / "plain"), _metrics(tmp_path / "rel")
    assert [r["loss"] for r in b] == [r["loss"] for r in a] and len(a) == 3


def test_release_memory_reports_a_threshold_the_user_set(monkeypatch):
    from tinyslm.core.telemetry import release_cpu_memory

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "4194304")
    assert release_cpu_memory() == "MALLOC_MMAP_THRESHOLD_=4194304 (from the environment)"


def test_a_base_missing_weights_is_refused_unless_allowed_and_then_recorded(
    tiny_model_dir, small_jsonl, tmp_path
):
    """A config declaring more layers than the files hold: training refuses it in one line (nothing written);
    with allow_missing_weights it trains, and run.json's load_notes lists the weights that started random."""
    import shutil

    deeper = tmp_path / "deeper"
    shutil.copytree(tiny_model_dir, deeper)
    cfg = json.loads((deeper / "config.json").read_text())
    saved = cfg["num_hidden_layers"]
    cfg["num_hidden_layers"] = saved + 1
    (deeper / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"lack \d+ tensor\(s\).*--allow-missing-weights"):
        train(_cfg(deeper, small_jsonl, out, "lora", max_steps=1))
    assert not (out / "run.json").exists()
    run = train(_cfg(deeper, small_jsonl, out, "lora", max_steps=1, allow_missing_weights=True))
    assert run["status"] == "finished"
    notes = json.loads((out / "run.json").read_text())["load_notes"]
    assert notes["missing_weights"] and all(
        k.startswith(f"model.layers.{saved}.") for k in notes["missing_weights"]
    )
    assert "randomly initialised" in notes["warnings"][0]
