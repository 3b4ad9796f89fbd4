"""The GPU run's script works before a GPU session spends its few minutes on it: `bench/gpu.sh`'s dry run
(toy shapes on the CPU) writes the machine and evaluation figures with every key the README's GPU table
reads, and bad input is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _assets(root: Path, data_dir: Path, tokenizer) -> Path:
    """What a GPU machine is given: the tokenizer's files and the GSM8K directory."""
    assets = root / "assets"
    (assets / "data").mkdir(parents=True)
    (assets / "data" / "gsm8k").symlink_to(data_dir / "gsm8k")
    tokenizer.save_pretrained(assets / "tokenizer")
    return assets


@pytest.mark.slow
def test_the_gpu_script_dry_run_writes_the_tables_figures(tmp_path, data_dir, real_tokenizer):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "OUT": str(out),
        "ASSETS": str(_assets(tmp_path, data_dir, real_tokenizer)),
        "PYTHON": sys.executable,
        "OMP_NUM_THREADS": "1",
    }
    cmd = ["bash", "bench/gpu.sh", "--device", "cpu", "--shapes", "tiny", "--stages", "machine,eval,evalc"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert {"torch", "transformers", "peft"} <= set(json.loads((out / "machine.json").read_text()))
    tiny = json.loads((out / "eval.json").read_text())["cases"]["eval"]["tiny"]
    compiled = json.loads((out / "eval-compile.json").read_text())["cases"]["eval"]["tiny"]
    assert "ours_eval_tokens_per_s" not in compiled  # only the engines asked for: graph, graph-compile
    tiny = {**tiny, **{k: v for k, v in compiled.items() if k.startswith("ours_graph_compile")}}
    for key in ("ours", "ours_graph", "ours_graph_compile"):
        assert tiny[f"{key}_eval_tokens_per_s"] > 0
        # greedy decoding of the same fp32 weights: every row both engines decoded is generate's
        assert tiny[f"{key}_agreement_with_hf_generate"] == {
            "rows": 16,
            "identical_rows": 16,
            "mean_prefix_agreement": 1.0,
        }
    assert tiny["n_prompts"] == 40 and tiny["hf_generate_prompts"] == 16
    assert tiny["ours_graph_compile_first_run_s"] > 0  # the untimed whole run that compiles the step


def test_the_gpu_script_refuses_an_unknown_stage_in_one_line(tmp_path):
    proc = subprocess.run(
        ["bash", "bench/gpu.sh", "--stages", "machine,warp"],
        cwd=REPO,
        env={**os.environ, "OUT": str(tmp_path / "out")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "bench/gpu.sh: unknown stage warp (machine, eval, evalc, train0, train1, eager)"
    ]


def test_the_evaluation_figures_name_only_the_engines_that_ran(tmp_path, data_dir, real_tokenizer):
    """Without ``--graph`` the JSON has no ``ours_graph`` keys at all (it once said the row had failed)."""
    real_tokenizer.save_pretrained(tmp_path / "tok")
    out = tmp_path / "eval.json"
    cmd = [sys.executable, "bench/speed.py", "--parts", "eval", "--shapes", "tiny", "--n", "3"]
    cmd += ["--eval-batch-size", "2", "--max-new-tokens", "4", "--tokenizer", str(tmp_path / "tok")]
    cmd += ["--data-dir", str(data_dir), "--json-out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    tiny = json.loads(out.read_text())["cases"]["eval"]["tiny"]
    assert tiny["ours_eval_tokens_per_s"] > 0 and tiny["ours_identical_tokens"] is True
    assert not [key for key in tiny if key.startswith("ours_graph")]


def _speed_module():
    """bench/speed.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_speed", REPO / "bench" / "speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_ratios_skip_a_failed_anchor_and_do_not_depend_on_the_methods_order():
    """The GPU run of 2026-12-04 had HF Trainer's DoRA run out of the card's memory on Qwen2.5-0.5B: ours
    still ran, and its only ratio is against the anchor's full fine-tuning."""
    case_ratios = _speed_module().case_ratios
    run = {"samples_per_s": 100.0, "peak_mem_mib": 50.0}
    case = {
        "hf_trainer_dora": {"failed": True},
        "ours_dora": {"samples_per_s": 99.0, "peak_mem_mib": 107.0},
        "hf_trainer_lora": {"samples_per_s": 103.5, "peak_mem_mib": 111.5},
        "ours_lora": {"samples_per_s": 177.4, "peak_mem_mib": 71.4},
        "hf_trainer_full": run,  # measured last: the ratios against it are there all the same
        "ours_full": {"samples_per_s": 200.0, "peak_mem_mib": 25.0},
    }
    assert case_ratios(case) == {
        "full_speedup_vs_hf_trainer_full": 2.0,
        "full_peak_mem_vs_hf_trainer_full": 0.5,
        "lora_speedup_vs_hf_trainer_lora": 1.714,
        "lora_speedup_vs_hf_trainer_full": 1.774,
        "lora_peak_mem_vs_hf_trainer_lora": 0.64,
        "dora_speedup_vs_hf_trainer_full": 0.99,
    }
    assert case_ratios({"hf_trainer_full": run, "ours_full_failed": True}) == {}


def test_ours_still_runs_where_the_anchor_failed(tmp_path, monkeypatch):
    """A worker that fails on the anchor's side (out of memory) no longer skips ours for that method."""
    from types import SimpleNamespace

    speed = _speed_module()
    calls = []

    def fake_worker(kind, spec, timeout=None, keep_going=False):
        calls.append((kind, spec["method"]))
        if kind == "anchor" and spec["method"] == "dora":
            return None  # what run_worker returns for a failed worker under --keep-going
        return {"step_ends": [1.0, 2.0, 3.0], "losses": [2.0, 1.9, 1.8], "peak_mem_mib": 10.0}

    monkeypatch.setattr(speed, "run_worker", fake_worker)
    monkeypatch.setattr(
        speed, "step_ordered_rows", lambda tok, spec: [SimpleNamespace(input_ids=[1] * 8)] * 6
    )
    args = speed.parse_args(
        ["--parts", "train", "--shapes", "tiny", "--batch-size", "2", "--micro-batch-size", "2"]
    )
    args.warmup_steps, args.train_steps = 1, 2
    case = speed.bench_train(args, None, {"tiny": tmp_path}, tmp_path)["tiny/all-linear"]
    assert ("ours", "dora") in calls
    assert case["hf_trainer_dora"] == {"failed": True}
    assert case["ours_dora"]["samples_per_s"] == 2.0  # 2 timed steps x 2 rows in 2 s
    assert case["dora_speedup_vs_hf_trainer_full"] == 1.0
    assert "dora_speedup_vs_hf_trainer_dora" not in case


def test_the_graph_step_breakdown_counts_ops_per_layer_and_times_the_host_loop(data_dir, real_tokenizer):
    """bench/graph_step.py: every layer of a fixed pass runs the same ops, and the host loop with the
    model's arithmetic taken out still decodes every row to its token budget or a stop."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import graph_step
    finally:
        sys.path.remove(str(REPO / "bench"))
    from tinyslm.evaluate.decoder import SlotDecoder

    before = (SlotDecoder.fixed_pass, SlotDecoder.step, graph_step.generation.greedy)
    ops = graph_step.count_ops(real_tokenizer, slots=4, shape="tiny")
    layers = graph_step.random_model("tiny", real_tokenizer).config.num_hidden_layers
    assert (
        ops["ops"] == sum(ops["by_name"].values())
        and ops["by_name"]["scaled_dot_product_attention"] == layers
    )
    assert not set(ops["by_name"]) & graph_step.VIEWS
    rows = graph_step.speed.gsm8k_prompts(real_tokenizer, data_dir, 6)
    host = graph_step.host_work(real_tokenizer, rows, slots=4, new_tokens=8)
    assert host["prompts"] == 6 and 6 <= host["tokens"] <= 48 and host["host_ms_per_step"] > 0
    assert (
        SlotDecoder.fixed_pass,
        SlotDecoder.step,
        graph_step.generation.greedy,
    ) == before  # patches undone
