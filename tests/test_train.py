"""Fine-tuning (full, LoRA, DoRA) on a tiny random Llama: losses fall, files are right, kills resume.

Most runs train in-process on a few short problems (one step per epoch, the same four rows each time, so
the loss falls quickly and deterministically). The runs that must be separate processes (a real SIGKILL,
a SIGTERM, two data-parallel ranks) start the package's own entry point with the venv's interpreter or
torchrun.
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import tiny_train_config

from tinyslm.cli.train import main
from tinyslm.core.errors import UserError
from tinyslm.data.benchmarks import Example, orcamath_holdout_indices
from tinyslm.data.prompts import build_prompt, format_target
from tinyslm.data.training import (
    IGNORE_INDEX,
    encode_examples,
    load_training_set,
    orcamath_train_indices,
    prompt_and_completion,
)
from tinyslm.train import recipe as train_mod
from tinyslm.train.config import TrainConfig
from tinyslm.train.recipe import FAULT_ENV, epoch_order, step_micro_batches, train

BIN = Path(sys.executable).parent


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]


def _run_json(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(model: Path, data: Path, out: Path, method: str, **kw) -> TrainConfig:
    return tiny_train_config(model, data, out, **{"method": method, "epochs": 8, **kw})


def _subprocess_env(**extra: str) -> dict[str, str]:
    """One thread per process (two cores, and the test runner beside them); no fault unless asked for."""
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _train_argv(model: Path, data: Path, out: Path, method: str, *extra: str) -> list[str]:
    return [
        "--model",
        str(model),
        "--method",
        method,
        "--dataset",
        str(data),
        "--limit",
        "4",
        "--lr",
        "1e-2",
        "--warmup-ratio",
        "0",
        "--max-length",
        "128",
        "--batch-size",
        "4",
        "--micro-batch-size",
        "2",
        "--seed",
        "0",
        "--no-progress",
        "--output",
        str(out),
        *extra,
    ]


# ---------------------------------------------------------------------------------------------------
# Data: prompts, completion-only labels, order, datasets.


def test_completion_only_labels_mark_exactly_the_target(real_tokenizer):
    ex = Example(
        "1", "Tom has 3 apples and buys 4 more. How many apples does he have?", "7", "3 + 4 = 7.\n#### 7"
    )
    (row,), stats = encode_examples(real_tokenizer, [ex], "number", 512)
    prompt_ids = real_tokenizer(build_prompt(real_tokenizer, ex, "number"), add_special_tokens=False)[
        "input_ids"
    ]
    n = len(prompt_ids)
    assert row.input_ids[:n] == prompt_ids, (
        "training prompt = the evaluation's zero-shot prompt, token for token"
    )
    assert row.labels[:n] == [IGNORE_INDEX] * n
    target = row.labels[n:]
    assert IGNORE_INDEX not in target and target == row.input_ids[n:]
    assert real_tokenizer.decode(target) == format_target(ex, "number") + "<|im_end|>"  # learns to stop
    assert target[-1] == real_tokenizer.eos_token_id
    assert stats == {
        "examples": 1,
        "truncated": 0,
        "dropped": 0,
        "target_tokens": len(target),
        "tokens": len(row.input_ids),
    }

    # Base models: "Question: ...\nAnswer:" then " <target>" and EOS.
    base_tok = copy.deepcopy(real_tokenizer)
    base_tok.chat_template = None
    prompt, completion = prompt_and_completion(base_tok, ex, "number")
    assert prompt.endswith("\nAnswer:") and completion == " 3 + 4 = 7.\n#### 7" + base_tok.eos_token

    # Truncation is counted; a prompt that fills max_length leaves no target and is dropped.
    rows, stats = encode_examples(real_tokenizer, [ex], "number", n + 2)
    assert stats["truncated"] == 1 and stats["dropped"] == 0 and len(rows[0].input_ids) == n + 2
    rows, stats = encode_examples(real_tokenizer, [ex], "number", n)
    assert rows == [] and stats["dropped"] == 1


def test_gsm8k_train_targets_are_the_cleaned_solutions(data_dir):
    ts = load_training_set("gsm8k-train", data_dir=data_dir)
    assert len(ts.examples) == 7473 and ts.source.endswith("gsm8k/train.jsonl")
    first = ts.examples[0]
    assert "<<" not in first.solution and first.solution.endswith("#### 72") and first.reference == "72"
    assert len(load_training_set("gsm8k-train", data_dir=data_dir, limit=5).examples) == 5


def test_data_order_is_seeded_and_ranks_split_each_batch():
    assert epoch_order(10, 3, 0) == epoch_order(10, 3, 0) != epoch_order(10, 3, 1)
    assert sorted(epoch_order(10, 3, 1)) == list(range(10))
    order, lengths = epoch_order(16, 0, 0), [5 + (i * 7) % 11 for i in range(16)]
    for step in range(2):
        one = step_micro_batches(order, step, 8, 2, 0, 1, lengths)
        ranks = [step_micro_batches(order, step, 8, 2, r, 2, lengths) for r in range(2)]
        rows = lambda chunks: sorted(i for c in chunks for i in c)  # noqa: E731
        assert rows(one) == sorted(order[step * 8 : step * 8 + 8])
        assert not set(rows(ranks[0])) & set(rows(ranks[1])), "ranks see different rows"
        assert rows(ranks[0] + ranks[1]) == rows(one), "together they see the one-process batch"


def test_jsonl_dataset_appends_the_answer_line_and_names_bad_lines(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(
        json.dumps({"q": "What is 2 + 3?", "a": "Two plus three is 5."})
        + "\n\n"
        + json.dumps({"q": "What is 1,000 + 1?", "a": "1000 + 1 = 1001\n#### 1,001"})
        + "\n"
    )
    ts = load_training_set(str(good), question_field="q", answer_field="a")
    assert [e.solution for e in ts.examples] == [
        "Two plus three is 5.\n#### 5",
        "1000 + 1 = 1001\n#### 1,001",
    ]
    assert [e.reference for e in ts.examples] == ["5", "1001"]

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(UserError, match=f"{empty}: no records"):
        load_training_set(str(empty))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n{not json\n")
    with pytest.raises(UserError, match=f"{bad}:2: malformed JSON"):
        load_training_set(str(bad))
    nonum = tmp_path / "nonum.jsonl"
    nonum.write_text(json.dumps({"question": "q", "answer": "no number here"}) + "\n")
    with pytest.raises(UserError, match=f"{nonum}:1: answer has no '#### ' line and no number"):
        load_training_set(str(nonum))
    with pytest.raises(UserError, match="lacks field"):
        load_training_set(str(good))  # default fields question/answer
    with pytest.raises(UserError, match="unknown dataset 'gsm9k'"):
        load_training_set("gsm9k")
    with pytest.raises(UserError, match="dataset file not found"):
        load_training_set(str(tmp_path / "missing.jsonl"))


def test_orcamath_subset_is_stratified_seeded_and_disjoint_from_the_holdout():
    n = 20_000
    lengths = [(i * 7919) % 3000 for i in range(n)]
    usable = [i % 50 != 0 for i in range(n)]
    idx = orcamath_train_indices(lengths, usable, size=1000)
    assert idx == orcamath_train_indices(lengths, usable, size=1000) and len(set(idx)) == 1000
    held = set(orcamath_holdout_indices(n))
    assert not set(idx) & held and all(usable[i] for i in idx)
    pool = sorted((i for i in range(n) if usable[i] and i not in held), key=lambda i: (lengths[i], i))
    quartile = {i: 4 * k // len(pool) for k, i in enumerate(pool)}
    assert [sum(quartile[i] == q for i in idx) for q in range(4)] == [250, 250, 250, 250]


def test_orcamath_and_hub_datasets_from_a_stubbed_hub(monkeypatch):
    from tinyslm.data import training as ds

    n = 11_000
    orca = [
        {"question": f"Q{i}?", "answer": f"First {i} then {i % 9} more makes {i + i % 9}."} for i in range(n)
    ]
    orca[3]["answer"] = "no number at all"
    calls = []

    def fake_hub(src, *, offline_copy=True):
        assert not offline_copy  # neither has an offline copy: a missing `datasets` must not suggest one
        calls.append((src.path, src.split))
        return orca if src.path == ds.ORCAMATH_HUB.path else [{"q": "What is 6 * 7?", "a": "6 * 7 = 42"}]

    monkeypatch.setattr(ds, "load_hub_rows", fake_hub)
    ts = load_training_set("orcamath")
    assert len(ts.examples) == 10_000 and ts.source == "hub:microsoft/orca-math-word-problems-200k"
    ids = {int(e.id) for e in ts.examples}
    assert 3 not in ids and not ids & set(orcamath_holdout_indices(n))
    e = ts.examples[0]
    i = int(e.id)
    assert e.solution == f"{orca[i]['answer']}\n#### {i + i % 9}" and e.reference == str(i + i % 9)
    hub = load_training_set("someone/arith", question_field="q", answer_field="a")
    assert hub.examples[0].solution == "6 * 7 = 42\n#### 42" and calls[-1] == ("someone/arith", "train")
    with pytest.raises(UserError, match="row 0: lacks field"):
        load_training_set("someone/arith")


def test_hub_datasets_need_the_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(UserError) as e:
        load_training_set("orcamath")
    assert str(e.value).endswith("needs the 'datasets' package (pip install 'tiny-slm[hub]')")


# ---------------------------------------------------------------------------------------------------
# Training: each method, files, the base untouched by adapters.


@pytest.mark.parametrize("method", ["full", "lora", "dora"])
def test_each_method_trains_and_its_loss_falls(method, tiny_model_dir, small_jsonl, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / method
    run = train(_cfg(tiny_model_dir, small_jsonl, out, method))
    assert run["status"] == "finished" and run == _run_json(out)
    m = _metrics(out)
    assert [r["step"] for r in m] == list(range(1, 9))
    losses = [r["loss"] for r in m]
    assert losses[-1] < losses[0] - 0.1, losses
    for r in m:
        assert {
            "epoch",
            "grad_norm",
            "lr",
            "tokens_per_s",
            "samples_per_s",
            "peak_mem_mib",
            "elapsed_s",
        } <= set(r)
        assert r["grad_norm"] > 0 and r["tokens_per_s"] > 0 and r["peak_mem_mib"] > 0
    assert m[0]["lr"] == pytest.approx(1e-2) and m[-1]["lr"] < m[0]["lr"], "cosine decay"
    assert run["data"]["completion_only"] is True and run["data"]["truncated_examples"] == 0
    assert run["data"]["stop_token"] == "<|im_end|>" and run["peak_mem_kind"] == "cpu_peak_rss"
    assert run["schedule"]["gradient_accumulation_steps"] == 2 and run["precision"] == "fp32"
    p = run["parameters"]
    final = out / "final"
    assert (final / "tokenizer_config.json").is_file()
    if method == "full":
        assert p["trainable"] == p["total"]
        before = load_file(tiny_model_dir / "model.safetensors")
        after = load_file(final / "model.safetensors")
        unchanged = [k for k in after if k in before and before[k].equal(after[k])]
        assert not unchanged, f"full fine-tuning left {unchanged} unchanged"
    else:
        assert 0 < p["trainable"] < p["total"] / 50
        assert run["config"]["lora_dropout"] == 0.05 and run["config"]["lora_r"] == 8
        cfg = json.loads((final / "adapter_config.json").read_text())
        assert cfg["base_model_name_or_path"] == str(tiny_model_dir) and cfg["use_dora"] == (method == "dora")
        targets = {
            m.split(".")[-1] for m in cfg["target_modules"]
        }  # peft may store them resolved to full names
        assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
        keys = load_file(final / "adapter_model.safetensors").keys()
        assert any("lora_magnitude_vector" in k for k in keys) == (method == "dora")


@pytest.mark.parametrize("method", ["full", "lora"])
def test_completion_only_logits_train_as_the_full_logits_loss(
    method, tiny_model_dir, small_jsonl, tmp_path, monkeypatch
):
    """The fast path (only positions that predict target tokens go through the output head) against the
    plain one (the model's logits at every position): 20 optimizer steps, same losses within 1e-3 relative."""

    kw = dict(epochs=20, lr=1e-3, limit=4, batch_size=4, micro_batch_size=2)
    fast = train(_cfg(tiny_model_dir, small_jsonl, tmp_path / "fast", method, **kw))
    monkeypatch.setattr(train_mod, "supports_logits_to_keep", lambda model: False)
    plain = train(_cfg(tiny_model_dir, small_jsonl, tmp_path / "plain", method, **kw))
    assert fast["status"] == plain["status"] == "finished"
    a, b = _metrics(tmp_path / "fast"), _metrics(tmp_path / "plain")
    assert len(a) == len(b) == 20
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-3)
    assert a[-1]["loss"] < a[0]["loss"], "the 20 steps should train"


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, small_jsonl, data_dir, tmp_path_factory) -> Path:
    """One finished LoRA run with --merge and --eval (shared by the tests below)."""
    out = tmp_path_factory.mktemp("lora") / "run"
    train(
        _cfg(
            tiny_model_dir,
            small_jsonl,
            out,
            "lora",
            epochs=3,
            merge=True,
            eval="gsm8k,svamp",
            eval_limit=2,
            data_dir=str(data_dir),
        )
    )
    return out


def test_lora_leaves_the_base_untouched_and_merges(lora_run, tiny_model_dir):
    """merged/ = the original weights + (alpha/r) B A on the targeted projections, and exactly the original
    weights everywhere else: so training changed nothing but the adapter."""
    import torch
    from safetensors.torch import load_file

    from tinyslm.models.load import load_model

    before = load_file(tiny_model_dir / "model.safetensors")
    merged_sd = load_file(lora_run / "merged" / "model.safetensors")
    adapter = load_file(lora_run / "final" / "adapter_model.safetensors")
    scale = 32 / 8  # lora_alpha / r
    targeted = set()
    for key, a in adapter.items():
        if ".lora_A." not in key:
            continue
        module = key.replace("base_model.model.", "").split(".lora_A.")[0]
        b = adapter[key.replace(".lora_A.", ".lora_B.")]
        assert b.abs().sum() > 0, "the adapter learned"
        delta = merged_sd[f"{module}.weight"] - before[f"{module}.weight"]
        assert torch.allclose(delta, scale * b @ a, atol=1e-6)
        targeted.add(f"{module}.weight")
    assert len(targeted) == 14  # 7 projections x 2 layers
    assert all(merged_sd[k].equal(v) for k, v in before.items() if k not in targeted)

    model, tok = load_model(str(tiny_model_dir), adapter=str(lora_run / "final"))
    merged, _ = load_model(str(lora_run / "merged"))
    ids = torch.tensor([tok("Question: What is 2 + 3?")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, merged(ids).logits, atol=1e-4)


def test_eval_after_training_and_eval_loads_the_outputs(lora_run, tiny_model_dir, data_dir, tmp_path):
    from tinyslm.evaluate.runner import EvalConfig, run_eval

    run = _run_json(lora_run)
    assert set(run["eval"]) == {"gsm8k", "svamp"} and run["eval"]["gsm8k"]["n"] == 2
    res = json.loads((lora_run / "eval" / "gsm8k" / "results.json").read_text())
    assert res["model_ref"] == str(lora_run / "merged") and res["n"] == 2, "--merge: evaluated merged"
    assert run["eval"]["gsm8k"]["model"] == str(lora_run / "merged")
    # `tiny-slm-eval --model M --adapter DIR/final` and `--model DIR/final` (names its base) both load.
    for i, (model, adapter) in enumerate(
        ((str(tiny_model_dir), str(lora_run / "final")), (str(lora_run / "final"), None))
    ):
        r = run_eval(
            EvalConfig(
                model=model,
                adapter=adapter,
                benchmarks="gsm8k",
                output=str(tmp_path / str(i)),
                limit=1,
                max_new_tokens=4,
                data_dir=str(data_dir),
                progress=False,
            )
        )
        assert r["gsm8k"]["n"] == 1


def test_finished_run_is_not_overwritten(lora_run, tiny_model_dir, small_jsonl):
    before = (lora_run / "run.json").read_bytes()
    cfg = _cfg(tiny_model_dir, small_jsonl, lora_run, "lora", epochs=3, merge=True)
    with pytest.raises(UserError, match="holds a finished run; pass --overwrite"):
        train(cfg)
    assert (lora_run / "run.json").read_bytes() == before
    with pytest.raises(UserError, match="--resume and --overwrite"):
        train(_cfg(tiny_model_dir, small_jsonl, lora_run, "lora", resume=True, overwrite=True))


# ---------------------------------------------------------------------------------------------------
# Resume after SIGKILL, SIGTERM, divergence.


def test_resume_after_sigkill_matches_an_uninterrupted_run(tiny_model_dir, small_jsonl, tmp_path):
    """LoRA with dropout: equal losses need weights, optimizer, scheduler, RNG and data position restored."""
    kw = dict(limit=8, epochs=1, max_steps=6, save_every=2, keep_checkpoints=2)
    ref = tmp_path / "ref"
    train(_cfg(tiny_model_dir, small_jsonl, ref, "lora", **kw))
    ref_losses = [r["loss"] for r in _metrics(ref)]

    out = tmp_path / "killed"
    argv = _train_argv(
        tiny_model_dir, small_jsonl, out, "lora", "--limit", "8", "--max-steps", "6", "--save-every", "2"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "tinyslm.cli.train", *argv],
        capture_output=True,
        text=True,
        env=_subprocess_env(**{FAULT_ENV: "sigkill@5"}),
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert [r["step"] for r in _metrics(out)] == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    assert _run_json(out)["status"] == "running"
    with pytest.raises(UserError, match="unfinished run.*pass --resume.*or --overwrite"):
        train(_cfg(tiny_model_dir, small_jsonl, out, "lora", **kw))

    # What a kill mid-write could also leave: a torn metrics line and a half-written checkpoint.
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "lo')
    (out / "checkpoints" / ".tmp-step-0000006").mkdir()
    (out / "checkpoints" / ".tmp-step-0000006" / "trainable.safetensors").write_bytes(b"partial")
    run = train(_cfg(tiny_model_dir, small_jsonl, out, "lora", resume=True, **kw))
    assert run["status"] == "finished" and run["resumed_from_steps"] == [4]
    assert not (out / "checkpoints" / ".tmp-step-0000006").exists()
    m = _metrics(out)
    assert [r["step"] for r in m] == [1, 2, 3, 4, 5, 6], "no step missing or repeated"
    for got, want in zip([r["loss"] for r in m], ref_losses, strict=True):
        assert got == pytest.approx(want, rel=1e-3)


def test_divergence_guard_stops_and_keeps_the_last_good_checkpoint(
    tiny_model_dir, small_jsonl, tmp_path, monkeypatch
):
    import torch
    from safetensors.torch import load_file

    monkeypatch.setenv(FAULT_ENV, "nan@3")
    out = tmp_path / "nan"
    run = train(_cfg(tiny_model_dir, small_jsonl, out, "full", max_steps=5, save_every=2))
    assert run["status"] == "diverged" and run["diverged_at_step"] == 3 and run["step"] == 2
    assert "non-finite loss at step 3" in run["reason"] and _run_json(out)["status"] == "diverged"
    assert [r["step"] for r in _metrics(out)] == [1, 2]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000002"]
    assert run["last_checkpoint"].endswith("step-0000002")
    weights = load_file(out / "checkpoints" / "step-0000002" / "trainable.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (out / "final").exists()


def test_sigterm_saves_a_checkpoint_and_stops(tiny_model_dir, small_jsonl, tmp_path):
    out = tmp_path / "term"
    argv = _train_argv(
        tiny_model_dir, small_jsonl, out, "full", "--max-steps", "100000", "--save-every", "100000"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinyslm.cli.train", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_subprocess_env(),
    )
    try:
        deadline = time.monotonic() + 240
        while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count("\n") >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, (
                proc.stderr.read() if proc.poll() else "slow"
            )
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    run = _run_json(out)
    last = _metrics(out)[-1]["step"]
    assert run["status"] == "interrupted" and run["step"] == last and "SIGTERM" in run["reason"]
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step-{last:07d}"]


# ---------------------------------------------------------------------------------------------------
# Two data-parallel processes (torchrun, gloo on CPU).


@pytest.mark.slow
def test_two_processes_match_one(tiny_model_dir, small_jsonl, tmp_path):
    """Training and validation (each rank measures half of the split, gathered) match one process."""
    one = tmp_path / "one"
    val = {"val_size": 4, "val_generate": 2, "val_max_new_tokens": 8, "eval_every": 1}
    train(_cfg(tiny_model_dir, small_jsonl, one, "full", limit=12, epochs=1, **val))
    two = tmp_path / "two"
    val_argv = ["--val-size", "4", "--val-generate", "2", "--val-max-new-tokens", "8", "--eval-every", "1"]
    argv = _train_argv(tiny_model_dir, small_jsonl, two, "full", "--limit", "12", *val_argv)
    proc = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "tinyslm.cli.train", *argv],
        capture_output=True,
        text=True,
        env=_subprocess_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = _run_json(two)
    assert run["schedule"]["num_processes"] == 2 and run["schedule"]["gradient_accumulation_steps"] == 1
    m1, m2 = ([r for r in _metrics(d) if "split" not in r] for d in (one, two))
    assert [r["step"] for r in m2] == [1, 2, 3]
    v1, v2 = ([r for r in _metrics(d) if r.get("split") == "val"] for d in (one, two))
    assert [r["step"] for r in v2] == [r["step"] for r in v1] and len(v2) >= 3
    for a, b in zip(v1, v2, strict=True):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4) and b["val_n"] == a["val_n"] == 2
        assert b["val_correct"] == a["val_correct"]
    for a, b in zip(m1, m2, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4) and b["grad_norm"] == pytest.approx(
            a["grad_norm"], rel=1e-3
        )
        assert sum(b["rank_target_tokens"]) == b["target_tokens"] == a["target_tokens"]
    assert any(len(set(r["rank_target_tokens"])) == 2 for r in m2), "the ranks processed different rows"


# ---------------------------------------------------------------------------------------------------
# The command line and W&B mirroring.


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "qlora"], "argument --method: invalid choice"),
        (["--lora-r", "0"], "--lora-r: must be >= 1"),
        (["--lr", "-1"], "--lr: must be > 0"),
        (["--max-steps", "-5"], "--max-steps: must be >= 1"),
        (["--lora-dropout", "1"], "--lora-dropout: must be < 1"),
        (["--dataset", "gsm9k"], "unknown dataset 'gsm9k'"),
        (["--batch-size", "6", "--micro-batch-size", "4"], "not a multiple of --micro-batch-size"),
        (["--report-to", "mlflow"], "unknown --report-to 'mlflow'"),
        (["--eval", "gsm9k"], "unknown benchmark 'gsm9k'"),
        (["--target-modules", "nope_proj"], "--target-modules nope_proj"),
    ],
)
def test_bad_input_is_one_line_exit_2(extra, message, tiny_model_dir, small_jsonl, tmp_path, capsys):
    argv = _train_argv(tiny_model_dir, small_jsonl, tmp_path / "o", "lora")
    code, err = _cli([*argv, *extra], capsys)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o" / "run.json").exists()


def test_bad_jsonl_names_file_and_line(tiny_model_dir, tmp_path, capsys):
    empty, bad = tmp_path / "empty.jsonl", tmp_path / "bad.jsonl"
    empty.write_text("")
    bad.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q"\n')
    for data, message in ((empty, f"{empty}: no records"), (bad, f"{bad}:2: malformed JSON")):
        code, err = _cli(_train_argv(tiny_model_dir, data, tmp_path / "o", "full"), capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_missing_reporting_packages_are_user_errors(
    tiny_model_dir, small_jsonl, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError, installed or not
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    for target, pkg in (("wandb", "wandb"), ("tensorboard", "tensorboard")):
        code, err = _cli(
            [*_train_argv(tiny_model_dir, small_jsonl, tmp_path / "o", "lora"), "--report-to", target], capsys
        )
        assert code == 2 and f"needs the '{pkg}' package" in err and len(err.strip().splitlines()) == 1


def test_wandb_mirrors_the_metrics(tiny_model_dir, small_jsonl, tmp_path, monkeypatch):
    import types

    logged: list[tuple[int, dict]] = []

    class FakeRun:
        def log(self, data, step):
            logged.append((step, data))

        def finish(self):
            pass

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: FakeRun()
    fake.util = types.SimpleNamespace(generate_id=lambda: "abc123")
    monkeypatch.setitem(sys.modules, "wandb", fake)
    out = tmp_path / "wb"
    run = train(_cfg(tiny_model_dir, small_jsonl, out, "full", epochs=2, report_to="wandb"))
    assert run["wandb_run_id"] == "abc123"
    assert [(s, d["train/loss"], d["train/grad_norm"]) for s, d in logged] == [
        (r["step"], r["loss"], r["grad_norm"]) for r in _metrics(out)
    ]
    assert all(math.isfinite(d["train/tokens_per_s"]) for _, d in logged)


def test_tensorboard_mirrors_the_metrics_and_q_v_targets(tiny_model_dir, small_jsonl, tmp_path, monkeypatch):
    import types

    scalars: list[tuple[str, float, int]] = []

    class FakeWriter:
        def __init__(self, log_dir, purge_step):
            assert log_dir.endswith("tensorboard") and purge_step == 1

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def close(self):
            pass

    monkeypatch.setitem(
        sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter)
    )
    out = tmp_path / "tb"
    train(
        _cfg(
            tiny_model_dir, small_jsonl, out, "lora", epochs=2, report_to="tensorboard", target_modules="q,v"
        )
    )
    assert [(v, s) for t, v, s in scalars if t == "train/loss"] == [
        (r["loss"], r["step"]) for r in _metrics(out)
    ]
    cfg = json.loads((out / "final" / "adapter_config.json").read_text())
    assert {m.split(".")[-1] for m in cfg["target_modules"]} == {"q_proj", "v_proj"}


def test_an_adapter_is_evaluated_folded_in_unless_asked_not_to(
    lora_run, tiny_model_dir, data_dir, tmp_path, monkeypatch
):
    """By default the adapter is merged into the weights before decoding (results.json: adapter_merged); with
    --no-merge-adapter it runs through PEFT's layers. Same prompts, same greedy tokens either way here."""
    import torch

    from tinyslm.evaluate.runner import EvalConfig, run_eval
    from tinyslm.models import load as model_load

    decoded_by = []
    real_load = model_load.load_model

    def load(*args, **kwargs):
        model, tokenizer = real_load(*args, **kwargs)
        decoded_by.append(hasattr(model, "peft_config"))
        return model, tokenizer

    def evaluate(name: str, **kw) -> tuple[dict, list[tuple]]:
        out = tmp_path / name
        cfg = EvalConfig(
            model=str(tiny_model_dir),
            adapter=str(lora_run / "final"),
            benchmarks="gsm8k",
            output=str(out),
            data_dir=str(data_dir),
            progress=False,
            **kw,
        )
        run_eval(cfg)
        res = json.loads((out / "gsm8k" / "results.json").read_text())
        rows = [json.loads(x) for x in (out / "gsm8k" / "predictions.jsonl").read_text().splitlines()]
        return res, [(r["id"], r["output"], r["n_tokens"]) for r in rows]

    monkeypatch.setattr(model_load, "load_model", load)
    outputs = {}
    for merge in (True, False):
        res, outputs[merge] = evaluate(f"merge-{merge}", limit=3, max_new_tokens=12, merge_adapter=merge)
        assert res["adapter_merged"] is merge and res["adapter"] == str(lora_run / "final")
    assert outputs[True] == outputs[False] and len(outputs[True]) == 3
    assert decoded_by == [False, True], "merged: a plain model; unmerged: the PEFT wrapper"

    # where the model runs in bf16 (CUDA), W + BA would be rounded to bf16: the adapter is kept unmerged
    monkeypatch.setattr(model_load, "default_dtype", lambda device: torch.bfloat16)
    res, _ = evaluate("bf16", limit=1, max_new_tokens=4)
    assert res["adapter_merged"] is False and res["dtype"] == "bfloat16" and decoded_by[-1] is True


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora", "dora"])
def test_compiled_training_follows_the_eager_loss_curve(tiny_model_dir, small_jsonl, tmp_path, method):
    """--compile changes how the step runs, not what it computes: the same losses up to rounding (dropout
    off: compiled code draws its random numbers differently), resumable on or off like any speed setting."""
    from torch._dynamo.utils import counters

    losses = {}
    for compiled in (False, True):
        out = tmp_path / f"{method}-{compiled}"
        cfg = _cfg(tiny_model_dir, small_jsonl, out, method, epochs=3, lora_dropout=0.0, compile=compiled)
        counters.clear()
        assert train(cfg)["status"] == "finished"
        losses[compiled] = [m["loss"] for m in _metrics(out)]
    assert len(losses[True]) == 3
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    # one graph serves every layer: no graph breaks (peft's DoRA weight lookup), no graph of its own for the
    # first layer (whose input would otherwise need no gradient under a frozen base); a second one only for
    # micro-batches without padding, where transformers passes no attention mask
    assert not counters["graph_break"]
    assert counters["stats"]["unique_graphs"] <= 2
