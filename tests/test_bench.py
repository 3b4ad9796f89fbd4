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
    cmd = ["bash", "bench/gpu.sh", "--device", "cpu", "--shapes", "tiny", "--stages", "machine,eval"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert {"torch", "transformers", "peft"} <= set(json.loads((out / "machine.json").read_text()))
    tiny = json.loads((out / "eval.json").read_text())["cases"]["eval"]["tiny"]
    for key in ("ours", "ours_graph"):
        assert tiny[f"{key}_eval_tokens_per_s"] > 0
        # greedy decoding of the same fp32 weights: every row both engines decoded is generate's
        assert tiny[f"{key}_agreement_with_hf_generate"] == {
            "rows": 16,
            "identical_rows": 16,
            "mean_prefix_agreement": 1.0,
        }
    assert tiny["n_prompts"] == 40 and tiny["hf_generate_prompts"] == 16


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
        "bench/gpu.sh: unknown stage warp (machine, eval, train0, train1, eager)"
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
