"""Hostile input and hostile environments: crafted checkpoints, model references that climb out of the study
directory, report text that a Markdown viewer would act on, two processes on one output directory, a full
disk.

Each test names the issue-12 item it covers. The runs use the tiny random Llama of conftest.py; the
two-process checks start real interpreters (the package's own entry points, or a helper that only holds
the lock).
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from helpers import tiny_train_config

from tinyslm.cli import eval_main
from tinyslm.core.errors import UserError
from tinyslm.core.files import (
    HELD_LOCKS_ENV,
    LOCK_FILE,
    DiskFullError,
    JsonlAppender,
    atomic_write_text,
    contained,
    exclusive_lock,
    is_safe_component,
)
from tinyslm.evaluate.runner import EvalConfig, run_eval
from tinyslm.study import grid as study_grid
from tinyslm.study import runner as study_runner
from tinyslm.train.config import TrainConfig
from tinyslm.train.recipe import FAULT_ENV, train

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (FAULT_ENV, HELD_LOCKS_ENV)}
    return {**env, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", **extra}


# ---------------------------------------------------------------------------------------------------
# Item 1: a checkpoint file that asks to run code is refused, and nothing runs.


class _Payload:
    """Unpickling this creates ``marker``: the stand-in for any code a crafted file could run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def _train_cfg(model: Path, data: Path, out: Path, **kw) -> TrainConfig:
    return tiny_train_config(model, data, out, **{"max_steps": 4, "save_every": 2, **kw})


@pytest.fixture(scope="module")
def stopped_run(tiny_model_dir, small_jsonl, tmp_path_factory) -> Path:
    """An unfinished LoRA run with a checkpoint after step 2 (the divergence test hook stops it at step 3)."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    os.environ[FAULT_ENV] = "nan@3"
    try:
        run = train(_train_cfg(tiny_model_dir, small_jsonl, out))
    finally:
        del os.environ[FAULT_ENV]
    assert run["status"] == "diverged" and (out / "checkpoints" / "step-0000002" / "rng-rank0.pt").is_file()
    return out


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng-rank0.pt"])
@pytest.mark.parametrize("form", ["torch.save", "raw pickle"])
def test_crafted_checkpoint_file_is_refused_and_runs_nothing(
    name, form, stopped_run, tiny_model_dir, small_jsonl, tmp_path
):
    import torch

    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    target = out / "checkpoints" / "step-0000002" / name
    marker = tmp_path / "pwned"
    if form == "torch.save":
        torch.save({"state": _Payload(marker)}, target)
    else:
        target.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(UserError, match=rf"refusing to load {target}: not a plain checkpoint file"):
        train(_train_cfg(tiny_model_dir, small_jsonl, out, resume=True))
    assert not marker.exists(), "the checkpoint's code ran"
    if form == "torch.save":  # the message says what the file asked for, not torch's "use weights_only=False"
        with pytest.raises(UserError, match=r"it names (builtins\.)?exec, which loading would run"):
            train(_train_cfg(tiny_model_dir, small_jsonl, out, resume=True))
    # The payload is real: the unrestricted loader runs it.
    if form == "torch.save":
        torch.load(target, weights_only=False)
    else:
        pickle.loads(target.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("name", ["trainable.safetensors", "state.json"])
def test_the_other_checkpoint_files_are_safe_formats_and_damage_is_one_error(
    name, stopped_run, tiny_model_dir, small_jsonl, tmp_path
):
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    ck = out / "checkpoints" / "step-0000002"
    (ck / name).write_bytes(pickle.dumps(_Payload(tmp_path / "pwned")))
    with pytest.raises(UserError, match=rf"cannot read checkpoint {ck} "):
        train(_train_cfg(tiny_model_dir, small_jsonl, out, resume=True))
    assert not (tmp_path / "pwned").exists()


def test_crafted_checkpoint_is_one_line_exit_2_on_the_command_line(
    stopped_run, tiny_model_dir, small_jsonl, tmp_path, capsys
):
    from tinyslm.cli.train import main

    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    marker = tmp_path / "pwned"
    (out / "checkpoints" / "step-0000002" / "rng-rank0.pt").write_bytes(pickle.dumps(_Payload(marker)))
    argv = [
        "--model",
        str(tiny_model_dir),
        "--method",
        "lora",
        "--dataset",
        str(small_jsonl),
        "--limit",
        "4",
        "--max-steps",
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
        "--save-every",
        "2",
        "--no-progress",
        "--resume",
        "--output",
        str(out),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([x for x in err if "error:" in x]) == 1 and "refusing to load" in err[-1], err
    assert not marker.exists()


def test_untampered_checkpoint_still_resumes(stopped_run, tiny_model_dir, small_jsonl, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    run = train(_train_cfg(tiny_model_dir, small_jsonl, out, resume=True))
    assert run["status"] == "finished" and run["resumed_from_steps"] == [2]


def test_no_unsafe_loader_anywhere_in_the_source():
    """Every torch.load says weights_only=True; no pickle, no np.load(allow_pickle=True)."""
    hits = []
    for f in Path(SRC, "tinyslm").rglob("*.py"):
        text = f.read_text()
        for m in re.finditer(r"torch\.load\(([^()]|\([^()]*\))*\)", text):
            if "weights_only=True" not in m.group(0):
                hits.append(f"{f.name}: {m.group(0)}")
        hits += [
            f"{f.name}: {w}"
            for w in ("import pickle", "pickle.load", "allow_pickle=True", "dill")
            if w in text
        ]
    assert not hits


# ---------------------------------------------------------------------------------------------------
# Item 2: cell directories stay inside the study directory.

HOSTILE_REFS = [
    "..",
    "org/..",
    "models/sub/..",
    ".",
    "/",
    "/tmp/../..",
    "\uff0e\uff0e",  # fullwidth full stops
    "\u2024\u2024",  # one dot leaders
    "\u2025",  # two dot leader
    "org\uff0f..",  # fullwidth solidus
    "org\u2215..",  # division slash
    "../../etc",
]


@pytest.mark.parametrize("ref", HOSTILE_REFS)
def test_hostile_model_reference_makes_a_cell_inside_the_study(ref, tmp_path):
    cfg = study_grid.StudyConfig(models=[ref], methods=["zero-shot", "lora"], seeds=[1, 2])
    root = tmp_path / "out"
    for cell in study_grid.plan_cells(cfg):
        d = cell.dir(root)
        rel = d.resolve().relative_to(root.resolve())  # raises when outside
        assert len(rel.parts) == 3 and all(is_safe_component(p) for p in rel.parts), rel
        assert cell.model_name.isascii()


def test_usual_references_keep_their_directory_names(tiny_model_dir):
    cfg = study_grid.StudyConfig(
        models=[
            "smollm2-135m-instruct",
            "HuggingFaceTB/SmolLM2-360M-Instruct",
            str(tiny_model_dir),
            "run1/checkpoint-500",
            "/abs/path/my-model",
        ],
        methods=["lora"],
    )
    assert [c.id for c in study_grid.plan_cells(cfg)] == [
        "smollm2-135m-instruct/lora/seed1234",
        "SmolLM2-360M-Instruct/lora/seed1234",
        f"{tiny_model_dir.name}/lora/seed1234",
        "checkpoint-500/lora/seed1234",  # an absent org/name is a Hub id
        "my-model/lora/seed1234",
    ]
    assert study_grid.cell_model_name("models/sub/..") == "models"


def test_dot_dot_model_reference_runs_its_cell_inside_the_study(tiny_model_dir, data_dir, tmp_path):
    """A real local reference ending in '..': before, the finished cell landed in OUT/../zero-shot/seed7."""
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models)
    (models / "sub").mkdir()
    root = tmp_path / "out"
    cfg = {
        "data_dir": str(data_dir),
        "models": [f"{models}/sub/.."],
        "methods": ["zero-shot"],
        "seeds": [7],
        "eval": {"benchmarks": ["gsm8k"], "limit": 1, "batch_size": 1, "max_new_tokens": 2},
        "hardware": {"device": "cpu"},
        "report": {"enabled": False},
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = study_runner.run_study(path, str(root), progress=False, report=False)
    assert list(res["cells"]) == ["models/zero-shot/seed7"]
    assert json.loads((root / "models/zero-shot/seed7/cell.json").read_text())["status"] == "finished"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "out", "s.yaml"]


def test_a_cell_path_that_resolves_outside_is_refused(tmp_path):
    root, outside = tmp_path / "out", tmp_path / "elsewhere"
    outside.mkdir()
    root.mkdir()
    (root / "m").symlink_to(outside)
    cfg = study_grid.StudyConfig(models=["m"], methods=["zero-shot"], seeds=[1])
    (cell,) = study_grid.plan_cells(cfg)
    with pytest.raises(UserError, match="outside"):
        study_runner.run_cell(cfg, cell, root, progress=False)
    assert list(outside.iterdir()) == []
    assert contained(root, root / "m2" / "x") == root / "m2" / "x"


# ---------------------------------------------------------------------------------------------------
# Item 3: report.md shows text as text.


def _render_md(md: str) -> str:
    mdit = pytest.importorskip("markdown_it")
    return mdit.MarkdownIt("commonmark").enable("table").render(md)


def test_report_md_escapes_study_text_and_model_outputs(tmp_path):
    from tinyslm.evaluate.runner import summarize
    from tinyslm.report import write_report

    root = tmp_path / "study"
    cell = root / "m" / "zero-shot" / "seed1"
    cell.mkdir(parents=True)
    (cell / "cell.json").write_text(
        json.dumps(
            {
                "model": "m",
                "method": "zero-shot",
                "seed": 1,
                "shots": 0,
                "status": "finished",
                "benchmarks": ["gsm8k"],
            }
        )
    )
    outputs = [
        "[click](javascript:alert(1)) #### 7",
        "![x](javascript:alert(2)) <img src=x onerror=alert(3)>",
        "<javascript:alert(4)> &#106;avascript",
    ]
    preds = [
        {
            "id": str(i),
            "prompt": f"Q{i}",
            "output": o,
            "extracted": "7",
            "reference": "7",
            "correct": True,
            "strict_correct": True,
            "n_tokens": 5,
            "prompt_tokens": 3,
        }
        for i, o in enumerate(outputs)
    ]
    (cell / "eval" / "gsm8k").mkdir(parents=True)
    (cell / "eval" / "gsm8k" / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    (cell / "eval" / "gsm8k" / "results.json").write_text(
        json.dumps(summarize("gsm8k", preds, {"model": "m", "shots": 0, "seed": 1, "model_parameters": 1000}))
    )
    (root / "study.json").write_text(
        json.dumps(
            {
                "name": "<script>alert(5)</script>",
                "description": "see [docs](javascript:alert(6))\n# not a heading",
                "cells": [{"dir": "m/zero-shot/seed1", "model": "m", "method": "zero-shot", "seed": 1}],
            }
        )
    )
    write_report([root], tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "click" in md and "alert(5)" in md and "docs" in md  # the text is there ...
    html = _render_md(md)
    # ... but a Markdown viewer makes no link, image, tag or heading out of it
    assert "<a " not in html and "<script" not in html, html
    assert re.findall(r"<img [^>]*>", html) == [re.search(r'<img src="figures/[^"]*"[^>]*>', html).group(0)]
    assert 'href="javascript' not in html and 'src="javascript' not in html
    assert "<h1>not a heading" not in html and "<h1># not a heading" not in html
    assert "[click](javascript:alert(1))" in html  # shown exactly as the model wrote it
    assert "&lt;script&gt;alert(5)&lt;/script&gt;" in html


# ---------------------------------------------------------------------------------------------------
# Item 7: one process per output directory.

HOLDER = textwrap.dedent("""
    import sys, time
    from tinyslm.core.files import exclusive_lock
    with exclusive_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(600)
""")


def _hold(directory: Path) -> subprocess.Popen:
    """A process that holds ``directory``'s lock until killed."""
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, text=True, env=_env()
    )
    assert p.stdout.readline().strip() == "locked"
    return p


def _kill(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)


# A real tiny-slm-eval, slowed down (one second per scored answer) so that it is certainly mid-run when the
# second process arrives.
SLOW_EVAL = textwrap.dedent("""
    import sys, time
    from tinyslm.evaluate import runner as E
    score = E.score_output
    E.score_output = lambda *a, **k: (time.sleep(1.0), score(*a, **k))[1]
    from tinyslm.cli import eval_main
    sys.exit(eval_main(sys.argv[1:]))
""")


def test_two_eval_processes_one_output_directory(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "ev"
    argv = [
        "--model",
        str(tiny_model_dir),
        "--benchmarks",
        "gsm8k",
        "--limit",
        "40",
        "--batch-size",
        "1",
        "--max-new-tokens",
        "4",
        "--device",
        "cpu",
        "--data-dir",
        str(data_dir),
        "--no-progress",
        "--output",
        str(out),
    ]
    preds = out / "gsm8k" / "predictions.jsonl"
    first = subprocess.Popen(
        [sys.executable, "-c", SLOW_EVAL, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        deadline = time.monotonic() + 240
        while not (preds.exists() and preds.read_text().count("\n") >= 1):
            assert first.poll() is None and time.monotonic() < deadline, (
                first.stderr.read() if first.poll() else ""
            )
            time.sleep(0.2)
        second = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from tinyslm.cli import eval_main; sys.exit(eval_main(sys.argv[1:]))",
                *argv,
            ],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=300,
        )
        assert first.poll() is None, "the first process finished too early for this test"
        assert second.returncode == 2, second.stderr[-2000:]
        lines = [
            x for x in second.stderr.strip().splitlines() if "Loading weights" not in x
        ]  # its progress bar
        assert len(lines) == 1 and f"PID {first.pid}" in lines[0] and str(out) in lines[0], lines
    finally:
        _kill(first)  # killed while holding the lock: the kernel releases it
    ids = [json.loads(x)["id"] for x in preds.read_text().splitlines() if x.strip().endswith("}")]
    assert len(ids) == len(set(ids)) and len(ids) < 40
    # The killed holder's lock file (with its PID) does not block the rerun, which resumes its predictions.
    assert (out / LOCK_FILE).read_text().strip() == str(first.pid)
    res = run_eval(
        EvalConfig(
            model=str(tiny_model_dir),
            benchmarks="gsm8k",
            output=str(out),
            limit=40,
            batch_size=8,
            max_new_tokens=4,
            device="cpu",
            data_dir=str(data_dir),
            progress=False,
        )
    )
    assert res["gsm8k"]["n"] == 40 and res["gsm8k"]["resumed_predictions"] == len(ids)
    ids = [json.loads(x)["id"] for x in preds.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 40, "every prediction once"


def test_stale_lock_file_of_a_dead_process_does_not_block(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "ev"
    out.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    (out / LOCK_FILE).write_text(f"{dead}\n")
    res = run_eval(
        EvalConfig(
            model=str(tiny_model_dir),
            benchmarks="gsm8k",
            output=str(out),
            limit=2,
            batch_size=2,
            max_new_tokens=2,
            device="cpu",
            data_dir=str(data_dir),
            progress=False,
        )
    )
    assert res["gsm8k"]["n"] == 2
    assert (out / LOCK_FILE).read_text().strip() == str(os.getpid())


def test_train_refuses_a_locked_output_directory(tiny_model_dir, small_jsonl, tmp_path):
    out = tmp_path / "run"
    holder = _hold(out)
    try:
        with pytest.raises(
            UserError, match=rf"{out} is in use by another tiny-slm process \(PID {holder.pid}"
        ):
            train(_train_cfg(tiny_model_dir, small_jsonl, out, max_steps=1))
    finally:
        _kill(holder)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written
    assert train(_train_cfg(tiny_model_dir, small_jsonl, out, max_steps=1))["status"] == "finished"


def test_study_cell_is_locked(tiny_model_dir, data_dir, tmp_path):
    cfg = study_grid.StudyConfig(
        data_dir=str(data_dir),
        models=[str(tiny_model_dir)],
        methods=["zero-shot"],
        seeds=[1],
        eval={"benchmarks": ["gsm8k"], "limit": 1, "max_new_tokens": 2},
        hardware={"device": "cpu"},
    )
    (cell,) = study_grid.plan_cells(cfg)
    root = tmp_path / "out"
    holder = _hold(cell.dir(root))
    try:
        with pytest.raises(UserError, match=rf"PID {holder.pid}"):
            study_runner.run_cell(cfg, cell, root, progress=False)
    finally:
        _kill(holder)
    assert not (cell.dir(root) / "cell.json").exists()
    assert study_runner.run_cell(cfg, cell, root, progress=False)["status"] == "finished"


def test_lock_is_reentrant_here_and_passed_to_child_processes(tmp_path, monkeypatch):
    d = tmp_path / "d"
    with exclusive_lock(d), exclusive_lock(d):  # a study cell training into its own directory
        pass
    holder = _hold(d)
    try:
        with pytest.raises(UserError, match=f"PID {holder.pid}"), exclusive_lock(d):
            pass
        monkeypatch.setenv(HELD_LOCKS_ENV, str(d.resolve()))  # what the study gives its training children
        with exclusive_lock(d):
            pass
    finally:
        _kill(holder)


# ---------------------------------------------------------------------------------------------------
# Item 10: a full disk is one line naming the file; nothing already written is lost.


class _FullAfter:
    """A file whose writes fail with ENOSPC once ``n`` lines have gone through."""

    def __init__(self, f, n: int):
        self._f, self._n = f, n

    def write(self, s: str) -> int:
        if self._n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._n -= 1
        return self._f.write(s)

    def __getattr__(self, name: str):
        return getattr(self._f, name)


def test_disk_full_during_eval_is_one_line_naming_the_file(
    tiny_model_dir, data_dir, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "ev"
    argv = [
        "--model",
        str(tiny_model_dir),
        "--benchmarks",
        "gsm8k",
        "--limit",
        "4",
        "--batch-size",
        "1",
        "--max-new-tokens",
        "2",
        "--device",
        "cpu",
        "--data-dir",
        str(data_dir),
        "--no-progress",
        "--output",
        str(out),
    ]
    init = JsonlAppender.__init__

    def full_after_two(self, path):
        init(self, path)
        self._f = _FullAfter(self._f, 2)

    with monkeypatch.context() as m:
        m.setattr(JsonlAppender, "__init__", full_after_two)
        assert eval_main(argv) == 2
    err = [x for x in capsys.readouterr().err.strip().splitlines() if "Loading weights" not in x]
    preds = out / "gsm8k" / "predictions.jsonl"
    assert len(err) == 1 and f"while writing {preds}" in err[0] and "no space left on device" in err[0], err
    assert len(preds.read_text().splitlines()) == 2  # what was computed before is on disk
    assert eval_main(argv) == 0
    res = json.loads((out / "gsm8k" / "results.json").read_text())
    assert res["n"] == 4 and res["resumed_predictions"] == 2


def test_disk_full_in_an_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    f = tmp_path / "results.json"
    f.write_text("old\n")

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(DiskFullError, match=f"no space left on device while writing {f}"):
        atomic_write_text(f, "new\n")
    assert f.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_disk_full_on_a_real_full_device_names_the_checkpoint_file():
    """/dev/full fails every write with ENOSPC: torch.save through a path would say 'unexpected pos'."""
    import torch

    from tinyslm.train.checkpoint import _torch_save

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with pytest.raises(DiskFullError, match="while writing /dev/full"):
        _torch_save({"w": torch.zeros(4096)}, Path("/dev/full"))


def test_disk_full_while_checkpointing_keeps_the_earlier_steps(
    tiny_model_dir, small_jsonl, tmp_path, monkeypatch
):
    import torch

    def no_space(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    out = tmp_path / "run"
    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(DiskFullError, match=r"while writing .*step-0000002/rng-rank0\.pt"):
        train(_train_cfg(tiny_model_dir, small_jsonl, out))
    monkeypatch.undo()
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((out / "run.json").read_text())["status"] == "failed"


def test_disk_full_stops_the_study_grid(tmp_path, monkeypatch):
    cfg = study_grid.StudyConfig(models=["a", "b"], methods=["zero-shot"], seeds=[1])
    calls = []

    def full(cfg, cell, out, progress):
        calls.append(cell.id)
        raise DiskFullError(f"no space left on device while writing {out}/x")

    monkeypatch.setattr(study_runner, "_execute", full)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump()))
    monkeypatch.setattr(study_runner, "check_inputs", lambda cfg: None)
    with pytest.raises(DiskFullError):
        study_runner.run_study(path, str(tmp_path / "out"), progress=False, report=False)
    assert calls == ["a/zero-shot/seed1"]
    rec = json.loads((tmp_path / "out" / "a/zero-shot/seed1/cell.json").read_text())
    assert rec["status"] == "failed" and "no space left" in rec["reason"]


def test_disk_full_while_saving_final_keeps_the_old_one(
    tiny_model_dir, real_tokenizer, tmp_path, monkeypatch
):
    """save_pretrained's ENOSPC names no file; final/ and merged/ now fail as one line naming the directory,
    with the half-written temp directory removed and an earlier final/ left as it was."""
    from transformers import AutoModelForCausalLM

    from tinyslm.train.checkpoint import save_final

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    dest = tmp_path / "final"
    dest.mkdir()
    (dest / "config.json").write_text("{}")

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(model, "save_pretrained", no_space)
    with pytest.raises(DiskFullError, match=f"no space left on device while writing {dest}"):
        save_final(model, real_tokenizer, dest, None)
    assert (
        sorted(p.name for p in tmp_path.iterdir()) == ["final"] and (dest / "config.json").read_text() == "{}"
    )


def test_disk_full_while_writing_a_gguf_names_it(tiny_model_dir, real_tokenizer, tmp_path, monkeypatch):
    import gguf
    from transformers import AutoModelForCausalLM

    from tinyslm.export.gguf import write_gguf

    def no_space(self, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", no_space)
    dest = tmp_path / "model-f32.gguf"
    with pytest.raises(DiskFullError, match=f"while writing {dest}"):
        write_gguf(AutoModelForCausalLM.from_pretrained(tiny_model_dir), real_tokenizer, dest)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary
