"""The study report on fabricated run directories whose right answers are known by construction.

The fixture writes the files a study, tiny-slm-train and tiny-slm-eval write (cell.json, run.json,
metrics.jsonl, results.json via the evaluator's own ``summarize``, predictions.jsonl), with chosen
correct/incorrect patterns: on ``tiny-a`` LoRA loses 15 problems zero-shot solves and wins none (exact
McNemar p = 2 / 2**15: negative transfer), full fine-tuning loses 2 (p = 0.5: not significant), 5-shot wins 10
(p = 0.002), and DoRA ran out of memory. No model is loaded; everything runs in about a second, except the
browser check.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tinyslm.cli import main as cli_main
from tinyslm.cli.report import main as report_main
from tinyslm.core.stats import holm_adjust, mcnemar_exact
from tinyslm.evaluate.runner import summarize
from tinyslm.report import write_report
from tinyslm.report.collect import collect
from tinyslm.report.tables import build_groups, compare, comparisons, cost_table, recommendations

N_GSM, N_SVAMP = 60, 40
LOOP = "so the answer is so the answer is so the answer is so the answer is so the answer is"


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def write_benchmark(
    eval_dir: Path,
    bench: str,
    n: int,
    correct: set[int],
    *,
    model: str,
    shots: int = 0,
    seed: int = 1,
    params: int = 135_000_000,
    device: str = "cpu",
    unmarked: set[int] = frozenset(),
    looping: set[int] = frozenset(),
    adapter: str | None = None,
) -> None:
    """results.json + predictions.jsonl for problems 0..n-1; ``correct`` are solved, ``unmarked`` of those
    lack the '#### X' mark (flexible right, strict wrong), ``looping`` outputs repeat themselves."""
    preds = []
    for i in range(n):
        gold = str(i + 7)
        ok = i in correct
        answer = gold if ok else "0"
        text = (
            f"{LOOP} {answer}"
            if i in looping
            else (f"Work for {i}. {answer}" if i in unmarked else f"Work for {i}.\n#### {answer}")
        )
        preds.append(
            {
                "id": str(i),
                "prompt": f"Question {i}",
                "output": text,
                "extracted": answer,
                "reference": gold,
                "correct": ok,
                "strict_correct": ok and i not in unmarked and i not in looping,
                "n_tokens": 256 if i in looping else 20,
                "prompt_tokens": 30,
            }
        )
    d = eval_dir / bench
    d.mkdir(parents=True, exist_ok=True)
    # predictions are written in decoding order (by prompt length), not by id: shuffle deterministically
    order = sorted(preds, key=lambda p: (int(p["id"]) * 7) % n)
    (d / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in order))
    res = summarize(
        bench,
        preds,
        {
            "model": model,
            "model_ref": model,
            "adapter": adapter,
            "device": device,
            "dtype": "float32",
            "model_parameters": params,
            "shots": shots,
            "seed": seed,
            "max_new_tokens": 256,
            "wall_s": 30.0,
            "generated_tokens_per_s": 50.0 + shots,
            "versions": {"tiny-slm": "0.1.0", "torch": "2.x-test"},
            "finished_at": "2026-01-02T03:04:05+0000",
        },
    )
    _write_json(d / "results.json", res)


def write_cell(
    root: Path,
    model: str,
    method: str,
    seed: int,
    *,
    status: str = "finished",
    reason: str | None = None,
    patterns: dict[str, set[int]] | None = None,
    shots: int = 0,
    params: int = 135_000_000,
    run: dict | None = None,
    **bench_kw,
) -> Path:
    d = root / model / method / f"seed{seed}"
    _write_json(
        d / "cell.json",
        {
            "model": model,
            "model_ref": f"ref/{model}",
            "method": method,
            "shots": shots,
            "seed": seed,
            "status": status,
            "reason": reason,
            "benchmarks": ["gsm8k", "svamp"],
            "wall_s": 100.0,
        },
    )
    for bench, correct in (patterns or {}).items():
        n = N_GSM if bench == "gsm8k" else N_SVAMP
        write_benchmark(
            d / "eval", bench, n, correct, model=model, shots=shots, seed=seed, params=params, **bench_kw
        )
    if run is not None:
        _write_json(d / "run.json", run)
        steps = [
            {
                "step": s,
                "epoch": s / 5,
                "loss": 2.0 / s,
                "grad_norm": 10.0 / s,
                "lr": 1e-4,
                "tokens_per_s": 1000.0,
                "samples_per_s": 10.0,
                "target_tokens": 500,
                "peak_mem_mib": 900.0,
                "elapsed_s": float(s),
            }
            for s in range(1, 6)
        ]
        (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in steps))
    return d


def run_record(
    method: str,
    seed: int,
    *,
    runtime: float,
    processes: int = 1,
    device: str = "cuda:0",
    trainable: int = 1_000_000,
    total: int = 135_000_000,
    sps: float = 10.0,
) -> dict:
    return {
        "status": "finished",
        "method": method,
        "model": "x",
        "runtime_s": runtime,
        "train_s": runtime * 0.9,
        "samples_per_s": sps,
        "tokens_per_s": sps * 100,
        "peak_mem_mib": 2048.0,
        "peak_mem_kind": "cuda_max_allocated" if device.startswith("cuda") else "cpu_peak_rss",
        "device": device,
        "precision": "bf16 autocast, fp32 master weights",
        "parameters": {"trainable": trainable, "total": total, "trainable_fraction": trainable / total},
        "schedule": {"num_processes": processes},
        "config": {"seed": seed, "method": method},
        "versions": {"tiny-slm": "0.1.0"},
        "finished_at": "2026-01-02T02:00:00+0000",
    }


def r(a: int, b: int) -> set[int]:
    return set(range(a, b))


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study")
    a, b = "tiny-a", "tiny-b"
    # tiny-a, zero-shot: gsm8k 30/60, svamp 20/40
    write_cell(root, a, "zero-shot", 1, patterns={"gsm8k": r(0, 30), "svamp": r(0, 20)})
    for seed in (1, 2):
        # 5-shot: zero-shot's problems plus 10 more on gsm8k (wins 10, p ~ 0.002), same on svamp
        write_cell(root, a, "few-shot-5", seed, shots=5, patterns={"gsm8k": r(0, 40), "svamp": r(0, 20)})
        # full FT: loses 2 gsm8k problems (p = 0.5, n.s.); some answers unmarked (strict < flexible)
        write_cell(
            root,
            a,
            "full",
            seed,
            patterns={"gsm8k": r(0, 28), "svamp": r(0, 20)},
            unmarked=r(0, 10),
            run=run_record("full", seed, runtime=3600.0, processes=2, trainable=135_000_000, sps=10.0),
        )
        # LoRA: loses 15 (seed 1) / 14 (seed 2) gsm8k problems, wins none: negative transfer; outputs loop
        write_cell(
            root,
            a,
            "lora",
            seed,
            patterns={"gsm8k": r(0, 15 + seed - 1), "svamp": r(0, 20)},
            looping=r(50, 60),
            run=run_record("lora", seed, runtime=1800.0, sps=20.0),
        )
    _write_json(
        root / a / "lora" / "seed1" / "diagnostics.json",
        {"summary": {"effective rank": 3.5, "update norm": 0.25}, "layers": [1, 2, 3]},
    )
    _write_json(
        root / a / "lora" / "seed2" / "diagnostics.json",
        {"summary": {"effective rank": 4.0, "update norm": 0.25}},
    )
    write_cell(root, a, "dora", 1, status="failed", reason="CUDA out of memory. Tried to allocate 2.00 GiB")
    # tiny-b: bigger, trained on CPU; full FT clearly better than zero-shot
    big = 360_000_000
    write_cell(root, b, "zero-shot", 1, params=big, patterns={"gsm8k": r(0, 20), "svamp": r(0, 10)})
    write_cell(
        root,
        b,
        "full",
        1,
        params=big,
        patterns={"gsm8k": r(0, 45), "svamp": r(0, 30)},
        run=run_record("full", 1, runtime=7200.0, device="cpu", trainable=big, total=big),
    )
    cells = [
        {
            "dir": f"{m}/{meth}/seed{s}",
            "model": m,
            "method": meth,
            "seed": s,
            "status": "finished",
            "reason": None,
        }
        for m, meth, s in [(a, "zero-shot", 1), (b, "zero-shot", 1)]
    ]
    # listed in study.json, never started (no cell.json): must still appear as not finished
    cells.append(
        {
            "dir": f"{b}/dora/seed1",
            "model": b,
            "method": "dora",
            "seed": 1,
            "status": "failed",
            "reason": "diverged: non-finite loss at step 3",
        }
    )
    _write_json(
        root / "study.json",
        {
            "name": "fab",
            "config": {"seeds": [1, 2]},
            "cells": cells,
            "updated_at": "2026-01-02T05:00:00+0000",
        },
    )
    return root


@pytest.fixture(scope="module")
def report_dir(study_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    write_report([study_dir], out, price_per_gpu_hour=4.0)
    return out


def _csv(out: Path) -> list[dict]:
    with (out / "results.csv").open() as f:
        return list(csv.DictReader(f))


def test_writes_all_files(report_dir):
    for name in ("report.md", "report.html", "results.csv"):
        assert (report_dir / name).is_file(), name
    pngs = sorted(p.name for p in (report_dir / "figures").glob("*.png"))
    assert pngs == [
        "accuracy_vs_parameters.png",
        "throughput.png",
        "training_tiny-a.png",
        "training_tiny-b.png",
    ]
    html = (report_dir / "report.html").read_text()
    srcs = re.findall(r'<img src="([^"]*)"', html)
    assert len(srcs) == len(pngs) and all(s.startswith("data:image/png;base64,") for s in srcs)
    md = (report_dir / "report.md").read_text()
    assert all(f"(figures/{p})" in md for p in pngs)


def test_results_csv_one_row_per_cell_and_benchmark(report_dir):
    rows = _csv(report_dir)
    for col in (
        "model",
        "method",
        "benchmark",
        "seed",
        "n",
        "correct",
        "exact_match",
        "strict_exact_match",
        "ci95_lo",
        "ci95_hi",
        "status",
    ):
        assert col in rows[0]
    # tiny-a: zs 1 + fs 2 + full 2 + lora 2 + dora(failed) 1 = 8 cells; tiny-b: zs, full, dora(not started) = 3
    assert len(rows) == (8 + 3) * 2
    lora1 = next(
        x
        for x in rows
        if x["model"] == "tiny-a" and x["method"] == "lora" and x["seed"] == "1" and x["benchmark"] == "gsm8k"
    )
    assert (lora1["n"], lora1["correct"], lora1["status"]) == ("60", "15", "finished")
    assert float(lora1["exact_match"]) == pytest.approx(0.25)
    assert float(lora1["ci95_lo"]) < 0.25 < float(lora1["ci95_hi"])
    dora = [x for x in rows if x["method"] == "dora"]
    assert {x["status"] for x in dora} == {"failed"} and len(dora) == 4
    assert any("out of memory" in x["reason"] for x in dora)
    assert any("non-finite loss" in x["reason"] for x in dora)


def test_cells_listed_only_in_study_json_keep_the_path_the_user_gave(study_dir, monkeypatch):
    # a committed report must not carry the absolute paths of the machine that built it
    monkeypatch.chdir(study_dir.parent)
    cells = collect([study_dir.name]).cells
    never_started = next(c for c in cells if c.model == "tiny-b" and c.method == "dora")
    assert never_started.dir == Path(study_dir.name) / "tiny-b" / "dora" / "seed1"
    assert all(not c.dir.is_absolute() for c in cells)


def test_negative_transfer_and_mcnemar_per_seed(study_dir):
    groups = build_groups(collect([study_dir]))
    comps = comparisons(groups)
    lora = comps[("tiny-a", "lora", "gsm8k")]
    assert [(t.seed, t.n, t.losses, t.wins) for t in lora.tests] == [(1, 60, 15, 0), (2, 60, 14, 0)]
    assert lora.tests[0].p == pytest.approx(mcnemar_exact(15, 0))
    assert lora.negative_transfer and lora.verdict == "significantly below"
    assert lora.delta_pp == pytest.approx(100 * ((15 + 16) / 2 / 60 - 0.5))
    full = comps[("tiny-a", "full", "gsm8k")]
    assert full.tests[0].p == pytest.approx(0.5) and full.verdict == "n.s." and not full.negative_transfer
    few = comps[("tiny-a", "few-shot-5", "gsm8k")]
    assert few.verdict == "significantly above" and not few.negative_transfer
    same = comps[("tiny-a", "lora", "svamp")]  # identical answers: no discordant pair, p = 1
    assert same.delta_pp == 0 and same.tests[0].p == 1.0 and same.verdict == "n.s."
    g = groups[("tiny-a", "lora", "gsm8k")]
    assert g.em_sd == pytest.approx(abs(15 - 16) / 60 / 2**0.5)


def test_accuracy_table_in_markdown(report_dir):
    md = (report_dir / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| tiny-a |")]
    lora_gsm = next(x for x in rows if "| lora | gsm8k |" in x)
    assert "NEGATIVE TRANSFER (2/2 seeds Holm p<0.05)" in lora_gsm
    assert "25.8 ± 1.2" in lora_gsm  # mean and sd of 25.0% and 26.7%
    full_gsm = next(x for x in rows if "| full | gsm8k |" in x)
    assert "n.s." in full_gsm and "NEGATIVE" not in full_gsm and "2/0, p=0.500" in full_gsm
    dora_gsm = next(x for x in rows if "| dora | gsm8k |" in x)
    assert "out of memory" in dora_gsm
    assert "Negative transfer found in 1 case(s): tiny-a lora on gsm8k" in md


def test_cost_table(study_dir):
    cols, rows, notes = cost_table(collect([study_dir]), price=4.0)
    by = {(x[0], x[1]): dict(zip(cols, x, strict=True)) for x in rows}
    assert by[("tiny-a", "full")]["Train cost"] == "$8.00"  # 1 h x 2 processes x $4
    assert by[("tiny-a", "lora")]["Train cost"] == "$2.00"
    assert by[("tiny-a", "lora")]["Speed vs full FT"] == "×2.00"
    assert by[("tiny-b", "full")]["Train cost"] == "CPU run"
    assert by[("tiny-a", "full")]["Device"] == "train cuda:0; eval cpu"
    assert by[("tiny-b", "zero-shot")]["Device"] == "cpu"
    assert by[("tiny-a", "zero-shot")]["Train runtime"].startswith("— (no training)")
    assert by[("tiny-a", "zero-shot")]["Eval wall time"] == "60.0 s"  # 2 benchmarks x 30 s
    assert by[("tiny-a", "dora")]["Seeds"] == "0 (+1 not finished)"
    assert "1M (0.74%)" in by[("tiny-a", "lora")]["Trainable params"]
    _, rows8, _ = cost_table(collect([study_dir]), price=8.0)
    assert next(x for x in rows8 if x[:2] == ["tiny-a", "full"])[cols.index("Train cost")] == "$16.00"


def test_recommendations_follow_the_data(study_dir):
    col = collect([study_dir])
    recs = {x.model: " ".join(x.text) for x in recommendations(col, build_groups(col))}
    # tiny-a pooled over gsm8k+svamp: 5-shot 60/100, zero-shot 50/100, full 48/100, lora ~35/100
    assert "Best pooled exact match: few-shot-5 60.0%" in recs["tiny-a"]
    assert "Runner-up: zero-shot 50.0%" in recs["tiny-a"] and "the lead is significant" in recs["tiny-a"]
    assert "Evidence is thin: 100 problems" in recs["tiny-a"]
    assert "Best pooled exact match: full 75.0%" in recs["tiny-b"]
    assert "Runner-up: zero-shot 30.0%" in recs["tiny-b"]


def test_qualitative_repetition_strict_diagnostics(report_dir):
    md = (report_dir / "report.md").read_text()
    assert "**tiny-a — gsm8k**" in md
    block = md.split("**tiny-a — gsm8k**")[1].split("**tiny-a — svamp**")[0]
    assert re.search(r"\| 0 \| 7 \| zero-shot \| 7 \| ✓ \|", block)
    assert "| 3 |" not in block  # only the first 3 common ids: 0, 1, 2
    loops = next(x for x in md.splitlines() if x.startswith("| tiny-a | lora | 200 |"))
    assert "| 20 | 10.0 | 10.0 |" in loops  # 10 looping gsm8k outputs per seed, 2 seeds, 200 outputs
    strict = next(x for x in md.splitlines() if re.match(r"\| tiny-a \| full \| gsm8k \| 46\.7 \|", x))
    assert strict.endswith("| 30.0 | +16.7 |")  # 10 of 28 correct answers unmarked
    assert "| effective rank | update norm |" in md and "| tiny-a | lora | 2 | 3.5 / 4 | 0.25 |" in md


def test_header_and_failed_cells(report_dir):
    md = (report_dir / "report.md").read_text()
    assert "Study 'fab'" in md and "Small samples: the smallest benchmark slice has n = 40" in md
    assert "torch 2.x-test" in md and "training on cuda:0" in md
    failed = md.split("## Failed or unfinished cells")[1]
    assert "CUDA out of memory" in failed and "non-finite loss" in failed


def test_bare_train_and_eval_dirs(tmp_path):
    ev = tmp_path / "eval-zs"
    write_benchmark(ev, "gsm8k", 10, r(0, 5), model="m", shots=0)
    fs = tmp_path / "eval-3shot"
    write_benchmark(fs, "gsm8k", 10, r(0, 6), model="m", shots=3)
    tr = tmp_path / "train-lora"
    _write_json(tr / "run.json", {**run_record("lora", 42, runtime=60.0), "model": "m"})
    write_benchmark(tr / "eval", "gsm8k", 10, r(0, 2), model="m-final", adapter=str(tr / "final"))
    col = collect([tmp_path, ev])  # a directory named twice counts once
    got = sorted((c.model, c.method, c.seed, c.layout) for c in col.cells)
    assert got == [("m", "few-shot-3", 1, "eval"), ("m", "lora", 42, "train"), ("m", "zero-shot", 1, "eval")]
    out = tmp_path / "out"
    assert report_main([str(ev), str(fs), str(tr), "--output", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "Evidence is thin" in md
    assert len(_csv(out)) == 3


def test_damaged_results_file_is_a_warning(tmp_path):
    ok = tmp_path / "ok"
    write_benchmark(ok, "gsm8k", 5, r(0, 2), model="m")
    bad = tmp_path / "bad" / "gsm8k"
    bad.mkdir(parents=True)
    (bad / "results.json").write_text("{not json")
    html = write_report([tmp_path], tmp_path / "out")
    assert html.is_file()
    assert "Warnings while reading" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize("make", ["missing", "empty", "no-results", "only-failed"])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, make):
    target = tmp_path / "runs"
    if make != "missing":
        target.mkdir()
    if make == "no-results":
        (target / "notes.txt").write_text("hello")
    if make == "only-failed":
        write_cell(target, "m", "lora", 1, status="failed", reason="CUDA out of memory")
    rc = report_main([str(target), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "tiny-slm-report: error:" in err
    if make == "only-failed":
        assert "out of memory" in err
    assert not (tmp_path / "out").exists()


def test_bad_price_and_subcommand(study_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        report_main([str(study_dir), "--output", str(tmp_path / "o"), "--price-per-gpu-hour", "-1"])
    assert e.value.code == 2
    assert (
        cli_main(
            [
                "report",
                str(study_dir),
                "--output",
                str(tmp_path / "sub"),
                "--price-per-gpu-hour",
                "2.5",
                "--examples",
                "1",
            ]
        )
        == 0
    )
    assert "$2.50 per GPU-hour" in (tmp_path / "sub" / "report.md").read_text()


# ---------------------------------------------------------------------------------------------------
# The HTML in a real browser.


def _chromium() -> str | None:
    """A headless Chromium, installed from Debian's package when missing and we may (root + apt-get)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "install", "-y", "-qq", "chromium"],
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "chromium"],
    ):
        try:
            subprocess.run(cmd, env=env, capture_output=True, timeout=900, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if shutil.which("chromium"):
            return shutil.which("chromium")
    return None


PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => i.complete + ':' + i.naturalWidth + ':' + i.naturalHeight);
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({images: imgs, tables: document.querySelectorAll('table').length,
                                    title: document.title});
  document.body.appendChild(out);
});
</script>"""


def test_html_renders_in_headless_chromium(report_dir, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip(
            "no Chromium and it cannot be installed here (needs root and apt-get: apt-get install chromium)"
        )
    page = tmp_path / "probe.html"
    page.write_text((report_dir / "report.html").read_text().replace("</body>", PROBE + "</body>"))
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    m = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"no probe output from Chromium (rc {proc.returncode}): {proc.stderr[-2000:]}"
    probe = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert probe["title"] == "tiny-slm study report"
    assert probe["tables"] >= 5
    assert len(probe["images"]) == 4
    for img in probe["images"]:
        complete, width, height = img.split(":")
        assert complete == "true" and int(width) > 100 and int(height) > 100, img


def test_markdown_cells_are_escaped():
    from tinyslm.report.render import Section, Table, to_html, to_markdown

    doc = [Section("S", [Table(["a", "b"], [["x | y", "<script>alert(1)</script>\nnext"]])])]
    md = to_markdown("T", doc)
    assert "| x \\| y | &lt;script>alert(1)&lt;/script> next |" in md
    assert "<script>" not in to_html("T", doc)


# ---------------------------------------------------------------------------------------------------
# Holm adjustment: the family is every McNemar test of one model (Table 2) / the best method's tests
# (recommendation); the verdicts use the adjusted p-values.


def _flip_study(root: Path) -> Path:
    """One model, one seed: full FT loses 6 gsm8k problems (raw p = 2/2**6 = 0.031 < 0.05) and 2 svamp
    problems (p = 0.5). Two tests in the family: Holm gives 0.031 * 2 = 0.0625 and max(0.0625, 0.5) = 0.5."""
    write_cell(root, "flip", "zero-shot", 1, patterns={"gsm8k": r(0, 30), "svamp": r(0, 20)})
    write_cell(
        root,
        "flip",
        "full",
        1,
        patterns={"gsm8k": r(0, 24), "svamp": r(0, 18)},
        run=run_record("full", 1, runtime=60.0),
    )
    return root


def test_negative_transfer_flips_to_ns_under_holm(tmp_path):
    groups = build_groups(collect([_flip_study(tmp_path / "s")]))
    comps = comparisons(groups)
    gsm = comps[("flip", "full", "gsm8k")]
    t = gsm.tests[0]
    assert (t.losses, t.wins) == (6, 0) and t.p == pytest.approx(0.03125) and t.p < 0.05
    assert t.p_adj == pytest.approx(0.0625)
    assert comps[("flip", "full", "svamp")].tests[0].p_adj == pytest.approx(0.5)
    assert gsm.verdict == "n.s." and not gsm.negative_transfer
    # The same comparison tested alone (a family of one) is significant: the adjustment made the difference.
    alone = compare(groups[("flip", "full", "gsm8k")], groups[("flip", "zero-shot", "gsm8k")])
    assert alone.negative_transfer and alone.tests[0].p_adj == pytest.approx(0.03125)
    out = tmp_path / "out"
    write_report([tmp_path / "s"], out)
    md = (out / "report.md").read_text()
    row = next(x for x in md.splitlines() if x.startswith("| flip | full | gsm8k |"))
    assert "6/0, p=0.031, Holm p=0.062" in row and "n.s." in row and "NEGATIVE" not in row
    assert "No trained method is significantly below" in md
    assert "Holm-adjusted p" in md


def test_family_spans_every_method_benchmark_and_seed_of_a_model(study_dir):
    """tiny-a has 12 tests (5-shot, full, LoRA x gsm8k, svamp x 2 seeds): adjusted p = Holm over all 12."""
    comps = comparisons(build_groups(collect([study_dir])))
    fam = [t for (m, _, _), c in comps.items() if m == "tiny-a" for t in c.tests]
    assert len(fam) == 12
    want = holm_adjust([t.p for t in fam])
    assert [t.p_adj for t in fam] == pytest.approx(want)
    lora = comps[("tiny-a", "lora", "gsm8k")].tests[0]
    assert lora.p_adj == pytest.approx(12 * mcnemar_exact(15, 0))  # the smallest p of 12, times 12
    # tiny-b's tests (full on gsm8k and svamp) are a family of their own: 2 tests, not 12
    b = comps[("tiny-b", "full", "gsm8k")].tests[0]
    assert b.p_adj == pytest.approx(2 * b.p)


def test_recommendation_not_beaten_list_uses_holm(tmp_path):
    """Zero-shot is best (30/60); 5-shot loses 6 problems to it (raw p = 0.031: beaten without adjustment),
    full loses 1 (p = 1). Two comparisons with the best: 5-shot's Holm p = 0.0625, so it is not beaten."""
    root = tmp_path / "s"
    write_cell(root, "rec", "zero-shot", 1, patterns={"gsm8k": r(0, 30)})
    write_cell(root, "rec", "few-shot-5", 1, shots=5, patterns={"gsm8k": r(0, 24)})
    write_cell(root, "rec", "full", 1, patterns={"gsm8k": r(0, 29)}, run=run_record("full", 1, runtime=60.0))
    col = collect([root])
    text = " ".join(recommendations(col, build_groups(col))[0].text)
    assert "Best pooled exact match: zero-shot 50.0%" in text
    assert "Runner-up: full 48.3%" in text and "p=1.000" in text
    assert "Not significantly worse than zero-shot (Holm-adjusted p ≥ 0.05): full, few-shot-5." in text


# ---------------------------------------------------------------------------------------------------
# Provenance in the header: digests in short form, warnings for mixed data files and versions.


def _with_provenance(
    eval_dir: Path, bench: str, *, data_sha: str, model_sha: str = "a" * 64, torch_version: str = "2.x-test"
) -> None:
    f = eval_dir / bench / "results.json"
    res = json.loads(f.read_text())
    res["versions"]["torch"] = torch_version
    res["provenance"] = {
        "model": {"ref": "m", "sha256": model_sha},
        "adapter": None,
        "data": {"benchmark": {"path": f"/data/{bench}.jsonl", "sha256": data_sha}},
        "chat_template_sha256": "c" * 64,
        "code": {"tiny_slm": "0.1.0", "git_commit": "d" * 40, "git_dirty": False},
        "device": {"type": "cpu", "name": "Test CPU 9000", "threads": 2},
    }
    f.write_text(json.dumps(res))


def test_header_shows_digests_and_warns_on_mixed_data_and_versions(tmp_path):
    root = tmp_path / "s"
    zs = write_cell(root, "m", "zero-shot", 1, patterns={"gsm8k": r(0, 5)})
    fs = write_cell(root, "m", "few-shot-5", 1, shots=5, patterns={"gsm8k": r(0, 6)})
    _with_provenance(zs / "eval", "gsm8k", data_sha="1" * 64)
    _with_provenance(fs / "eval", "gsm8k", data_sha="1" * 64)
    write_report([root], tmp_path / "same")
    md = (tmp_path / "same" / "report.md").read_text()
    assert "Base model weights (sha256, first 12 hex digits): m aaaaaaaaaaaa." in md
    assert "Data files (sha256): gsm8k 111111111111." in md
    assert "Chat templates (sha256): m cccccccccccc." in md
    assert "Code: tiny-slm 0.1.0 at git dddddddddddd." in md and "Test CPU 9000, 2 threads" in md
    assert "Warning:" not in md and "carry no provenance" not in md

    _with_provenance(fs / "eval", "gsm8k", data_sha="2" * 64, torch_version="9.9")
    write_report([root], tmp_path / "mixed")
    md = (tmp_path / "mixed" / "report.md").read_text()
    assert (
        "Warning: the gsm8k results were made from 2 different data files: "
        "111111111111 (m zero-shot seed 1); 222222222222 (m few-shot-5 seed 1)"
    ) in md
    assert (
        "Warning: the cells were made with different package versions: torch: 2.x-test (m zero-shot seed 1); "
        "9.9 (m few-shot-5 seed 1)" in md
    )


def test_old_results_without_provenance_still_report(report_dir):
    md = (report_dir / "report.md").read_text()
    assert "result files carry no provenance record" in md  # unknown, counted, and not a warning
    assert "Warning: the" not in md


def test_arithmetic_column_counts_false_equations_for_every_method(tmp_path):
    """Issue 16: the false-arithmetic rate is shown per method, zero-shot included, from the predictions."""
    from tinyslm.report.tables import repetition_table

    for method_dir, texts in {
        "zs": ["3 + 4 = 7 so #### 7", "2 * 5 = 11, then 11 - 1 = 10"],  # 1 of 3 false
        "ft": ["6 / 3 = 2", "10 - 4 = 6 and 2 + 2 = 5"],  # 1 of 3 false
    }.items():
        d = tmp_path / method_dir / "gsm8k"
        write_benchmark(tmp_path / method_dir, "gsm8k", 2, {0}, model="m", shots=0)
        preds = [json.loads(x) for x in (d / "predictions.jsonl").read_text().splitlines()]
        for p, text in zip(preds, texts, strict=True):
            p["output"] = text
        (d / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    (tmp_path / "ft" / "gsm8k" / "results.json").write_text(
        json.dumps({**json.loads((tmp_path / "ft" / "gsm8k" / "results.json").read_text()), "shots": 3})
    )
    cols, rows = repetition_table(collect([tmp_path]))
    at = {row[1]: dict(zip(cols, row, strict=True)) for row in rows}
    assert at["zero-shot"]["Equations"] == "3" and at["zero-shot"]["False equations %"] == "33.3"
    assert at["few-shot-3"]["Equations"] == "3" and at["few-shot-3"]["False equations %"] == "33.3"


def _script(name: str, *args: object) -> subprocess.CompletedProcess[str]:
    """Run ``scripts/NAME`` with this interpreter, as a reader of the repository would."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / name
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True)


def test_packed_predictions_report_the_same(study_dir, tmp_path):
    """scripts/pack_predictions.py gzips finished predictions for the repository; the report reads them
    as before (same report.md and results.csv), and the diagnostics' output measures read them too."""
    import shutil

    from tinyslm.diagnostics.outputs import read_outputs

    packed = tmp_path / "packed"
    shutil.copytree(study_dir, packed)
    done = _script("pack_predictions.py", packed, "--min-mb", "0")
    assert done.returncode == 0 and "MB ->" in done.stdout
    assert not list(packed.rglob("predictions.jsonl")) and list(packed.rglob("predictions.jsonl.gz"))
    write_report([study_dir], tmp_path / "plain-report")
    write_report([packed], tmp_path / "packed-report")

    def norm(p: Path, root: Path) -> str:
        text = p.read_text().replace(str(root), "ROOT")
        return "".join(x for x in text.splitlines(keepends=True) if not x.startswith("- Generated "))

    for name in ("report.md", "results.csv"):
        assert norm(tmp_path / "packed-report" / name, packed) == norm(
            tmp_path / "plain-report" / name, study_dir
        )
    cell = next(p.parents[2] for p in packed.rglob("predictions.jsonl.gz"))  # RUN/eval/<benchmark>/file
    plain_cell = study_dir / cell.relative_to(packed)
    assert read_outputs(cell) == read_outputs(plain_cell) != {}


def test_pending_cells_of_study_json_are_named_by_their_id(tmp_path):
    """study.json lists a cell that never started with null model/method/seed (the runner knows only its
    id); the report names it from the id instead of 'unknown' (seen on the reference study, issue 16)."""
    write_benchmark(
        tmp_path / "m" / "zero-shot" / "seed7" / "eval", "gsm8k", 4, {0}, model="m", shots=0, seed=7
    )
    _write_json(
        tmp_path / "m" / "zero-shot" / "seed7" / "cell.json",
        {"model": "m", "method": "zero-shot", "seed": 7, "status": "finished"},
    )
    cells = [
        {"id": "m/zero-shot/seed7", "dir": "m/zero-shot/seed7", "model": "m", "method": "zero-shot", "seed": 7, "status": "finished"},
        {"id": "m/lora/seed7", "dir": "m/lora/seed7", "model": None, "method": None, "seed": None, "status": None},
    ]  # fmt: skip
    _write_json(tmp_path / "study.json", {"name": "s", "cells": cells})
    col = collect([tmp_path])
    pending = next(c for c in col.cells if not c.finished)
    assert (pending.model, pending.method, pending.seed) == ("m", "lora", 7)


def test_study_behaviour_script_recomputes_loops_and_paired_tests(study_dir):
    """scripts/study_behaviour.py (the README's findings) reads the cells' predictions: tiny-a's LoRA
    seed 1 solves 15 of zero-shot's 30 GSM8K problems and nothing else, and 10 of its 60 outputs loop."""
    out = _script("study_behaviour.py", study_dir, "--against", "zero-shot").stdout
    row = next(x for x in out.splitlines() if x.startswith("tiny-a | lora | 1 | gsm8k |"))
    assert "25.0 [" in row and "(15/60)" in row and "| 16.7% (10) |" in row
    pair = next(x for x in out.splitlines() if x.startswith("tiny-a | lora 1 vs zero-shot 1 | gsm8k |"))
    assert "correct 0/15 p=6.1e-05" in pair and "loops 10/0" in pair
    empty = _script("study_behaviour.py", study_dir / "nothing")
    assert empty.returncode == 2 and empty.stderr.startswith("error: no finished benchmark")


def test_a_resumed_evaluation_time_is_marked_as_a_lower_bound(study_dir, tmp_path):
    """results.json times only the run that finished a resumed evaluation: Table 3 says so, for that
    method's row only, instead of passing a partial time off as the whole cost."""
    import shutil

    copy = tmp_path / "study"
    shutil.copytree(study_dir, copy)
    path = next((copy / "tiny-a" / "lora" / "seed1").rglob("gsm8k/results.json"))
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "resumed_predictions": 12}))
    write_report([copy], tmp_path / "resumed")
    write_report([study_dir], tmp_path / "plain")
    resumed = (tmp_path / "resumed" / "report.md").read_text()
    marked = [x for x in resumed.splitlines() if "(\u2265, resumed)" in x]
    assert len(marked) == 1 and marked[0].startswith("| tiny-a | lora |")
    assert "results.json times only the run that finished it" in resumed
    plain = (tmp_path / "plain" / "report.md").read_text()
    assert "(\u2265, resumed)" not in plain and "times only the run that finished it" not in plain
