"""End-to-end evaluation of a tiny random Llama: files, resume, never damaging a finished result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinyslm.core.errors import UserError
from tinyslm.evaluate.generation import cut_at_stop
from tinyslm.evaluate.runner import EvalConfig, run_eval


def _cfg(model: Path, out: Path, data_dir: Path, **kw) -> EvalConfig:
    base = dict(
        model=str(model),
        benchmarks="gsm8k",
        output=str(out),
        limit=5,
        batch_size=2,
        max_new_tokens=6,
        data_dir=str(data_dir),
        progress=False,
    )
    base.update(kw)
    return EvalConfig(**base)


def _lines(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def test_eval_writes_predictions_and_results(tiny_model_dir, tmp_path, data_dir):
    res = run_eval(_cfg(tiny_model_dir, tmp_path / "out", data_dir, benchmarks="gsm8k,svamp"))
    for name in ("gsm8k", "svamp"):
        d = tmp_path / "out" / name
        preds = _lines(d / "predictions.jsonl")
        assert len(preds) == 5 and len({p["id"] for p in preds}) == 5
        for p in preds:
            assert {
                "id",
                "prompt",
                "output",
                "extracted",
                "reference",
                "correct",
                "strict_correct",
                "n_tokens",
            } <= set(p)
            assert p["prompt"].startswith("<|im_start|>") and 1 <= p["n_tokens"] <= 6
        r = json.loads((d / "results.json").read_text())
        assert r == res[name]
        assert r["n"] == 5 and r["correct"] == sum(p["correct"] for p in preds)
        assert r["exact_match"] == r["correct"] / 5
        lo, hi = r["exact_match_ci95"]
        assert 0 <= lo <= r["exact_match"] <= hi <= 1
        for key in (
            "model",
            "benchmark",
            "shots",
            "strict_exact_match",
            "generated_tokens_per_s",
            "wall_s",
            "versions",
        ):
            assert key in r
        assert r["dtype"] == "float32" and r["versions"]["torch"]
        assert r["cuda_graph"] is False and r["draft_tokens"] == 3  # the defaults, recorded


def test_cuda_graph_is_ignored_on_a_cpu_and_recorded_so(tiny_model_dir, tmp_path, data_dir):
    r = run_eval(_cfg(tiny_model_dir, tmp_path / "out", data_dir, cuda_graph=True))["gsm8k"]
    assert r["cuda_graph"] is False and r["draft_tokens"] == 3  # the CPU decoded as it always does


def test_rerun_resumes_after_a_kill(tiny_model_dir, tmp_path, data_dir):
    cfg = _cfg(tiny_model_dir, tmp_path / "out", data_dir)
    run_eval(cfg)
    d = tmp_path / "out" / "gsm8k"
    full = (d / "predictions.jsonl").read_text().splitlines(keepends=True)
    # Simulate a kill mid-run: two complete lines, one torn line, no results.json.
    (d / "predictions.jsonl").write_text("".join(full[:2]) + full[2][:15])
    (d / "results.json").unlink()
    res = run_eval(cfg)["gsm8k"]
    lines = (d / "predictions.jsonl").read_text().splitlines(keepends=True)
    assert lines[:2] == full[:2], "predictions already made are kept as they were"
    assert sorted(json.loads(x)["id"] for x in lines) == sorted(json.loads(x)["id"] for x in full)
    assert res["resumed_predictions"] == 2 and res["n"] == 5


def test_finished_result_is_kept_and_not_overwritten(tiny_model_dir, tmp_path, data_dir, capsys):
    cfg = _cfg(tiny_model_dir, tmp_path / "out", data_dir)
    run_eval(cfg)
    res_file = tmp_path / "out" / "gsm8k" / "results.json"
    before = res_file.read_bytes()
    run_eval(cfg)
    assert "already finished" in capsys.readouterr().out
    assert res_file.read_bytes() == before
    # Other settings into the same directory are refused, and nothing is touched.
    with pytest.raises(UserError, match="different settings.*shots"):
        run_eval(_cfg(tiny_model_dir, tmp_path / "out", data_dir, shots=1))
    with pytest.raises(UserError, match="different --limit"):
        run_eval(_cfg(tiny_model_dir, tmp_path / "out", data_dir, limit=3))
    # A failing rerun with --overwrite (missing adapter) does not damage the finished result either.
    with pytest.raises(UserError, match="adapter not found"):
        run_eval(
            _cfg(tiny_model_dir, tmp_path / "out", data_dir, overwrite=True, adapter=str(tmp_path / "none"))
        )
    assert res_file.read_bytes() == before
    res = run_eval(_cfg(tiny_model_dir, tmp_path / "out", data_dir, shots=1, overwrite=True))["gsm8k"]
    assert res["shots"] == 1 and len(res["exemplar_ids"]) == 1


def test_bad_model_leaves_no_trace_that_blocks_the_fixed_command(tiny_model_dir, tmp_path, data_dir):
    with pytest.raises(UserError):
        run_eval(_cfg(tmp_path / "no-such-model", tmp_path / "out", data_dir))
    assert not (tmp_path / "out" / "gsm8k" / "run_config.json").exists()
    run_eval(_cfg(tiny_model_dir, tmp_path / "out", data_dir))


def test_stop_points():
    assert cut_at_stop("3 + 4 = 7\n#### 7\nQuestion: next") == ("3 + 4 = 7\n#### 7", True)
    assert cut_at_stop("#### 7\nMore text") == ("#### 7\n", True)
    assert cut_at_stop("So 7.\n\nQuestion: Bob has") == ("So 7.", True)
    assert cut_at_stop("The answer is $\\boxed{7}$.\nMore") == ("The answer is $\\boxed{7}$.\n", True)
    assert cut_at_stop("#### 7") == ("#### 7", False)  # the line is not finished yet
    assert cut_at_stop("####\n") == ("####\n", False)  # a marker with no answer is not an answer line


@pytest.mark.slow
def test_real_smollm2_on_a_few_gsm8k_problems(tmp_path, data_dir):
    """The offline default model, end to end: chat prompt, stop at the answer line, scored outputs."""
    from tinyslm.scoring.equivalence import score_output

    res = run_eval(
        EvalConfig(
            model="smollm2-135m-instruct",
            benchmarks="gsm8k",
            output=str(tmp_path),
            limit=4,
            batch_size=4,
            max_new_tokens=200,
            data_dir=str(data_dir),
            progress=False,
        )
    )
    r = res["gsm8k"]
    assert r["model"] == "smollm2-135m-instruct" and r["n"] == 4 and r["dtype"] == "float32"
    preds = _lines(tmp_path / "gsm8k" / "predictions.jsonl")
    assert [p["id"] for p in sorted(preds, key=lambda p: int(p["id"]))] == ["0", "1", "2", "3"]
    for p in preds:
        assert p["prompt"].startswith("<|im_start|>") and "<|im_start|>assistant" in p["prompt"]
        assert p["output"].strip() and "<|im_end|>" not in p["output"]
        assert "Question:" not in p["output"]  # run-on text is cut
        assert p["extracted"] is not None  # a real model always writes some number
        s = score_output(p["output"], p["reference"], "number")
        assert (s["extracted"], s["correct"], s["strict_correct"]) == (
            p["extracted"],
            p["correct"],
            p["strict_correct"],
        )
    assert all(p["n_tokens"] <= 200 for p in preds)
    assert r["generated_tokens"] == sum(p["n_tokens"] for p in preds) and r["generated_tokens_per_s"] > 0
