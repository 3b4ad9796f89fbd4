"""Bad input gets one clear line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tinyslm.cli import eval_main, main

BIN = Path(sys.executable).parent


def _run_eval(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = eval_main(argv)
    except SystemExit as e:  # argparse errors
        code = e.code
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--shots", "-1"], "--shots: must be >= 0"),
        (["--batch-size", "0"], "--batch-size: must be >= 1"),
        (["--max-new-tokens", "0"], "--max-new-tokens: must be >= 1"),
        (["--limit", "abc"], "expected an integer"),
        (["--benchmark", "gsm9k"], "unknown benchmark 'gsm9k'"),
        (["--data-dir", "/nonexistent/dir"], "data directory not found"),
        (["--adapter", "/nonexistent/adapter"], "adapter not found"),
        (["--model", "no-such-alias"], "no-such-alias"),
        (["--model", "./no/such/dir"], "no/such/dir"),
    ],
)
def test_bad_eval_input_is_one_line_exit_2(argv, message, tmp_path, capsys, data_dir):
    code, err = _run_eval(["--output", str(tmp_path / "o"), "--data-dir", str(data_dir), *argv], capsys)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_missing_output_flag(capsys):
    code, err = _run_eval([], capsys)
    assert code == 2 and "--output" in err and len(err.strip().splitlines()) == 1


def test_console_script_bad_input_no_traceback(tmp_path):
    r = subprocess.run(
        [str(BIN / "tiny-slm-eval"), "--benchmark", "nope", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "unknown benchmark 'nope'" in r.stderr and "Traceback" not in r.stderr


def test_help_reads_like_the_protocol():
    r = subprocess.run([str(BIN / "tiny-slm-eval"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for flag in (
        "--model",
        "--adapter",
        "--benchmark",
        "--shots",
        "--limit",
        "--batch-size",
        "--max-new-tokens",
        "--seed",
        "--data-dir",
        "--overwrite",
        "--output",
    ):
        assert flag in r.stdout


def test_score_command_rescores_any_predictions(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    rows = [
        {"id": "a", "output": "She pays 5 + 6 = 11 dollars.\n#### 11.0", "reference": "11.0"},
        {"id": "b", "output": "It costs $11.00 in total.", "reference": "11"},
        {"id": "c", "output": "I think 12.", "reference": "11"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert (
        main(
            [
                "score",
                "--benchmark",
                "svamp",
                "--predictions",
                str(src),
                "--output",
                str(tmp_path / "out.jsonl"),
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 3 and summary["correct"] == 2
    assert summary["strict_exact_match"] == pytest.approx(1 / 3)
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [o["correct"] for o in out] == [True, True, False]
    assert [o["strict_correct"] for o in out] == [True, False, False]
    assert out[0]["id"] == "a" and out[0]["output"] == rows[0]["output"]


def test_score_bad_input(tmp_path, capsys):
    assert main(["score", "--benchmark", "gsm8k", "--predictions", str(tmp_path / "x"), "--output", "o"]) == 2
    assert "predictions file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "output": "x"}\n')
    assert (
        main(["score", "--benchmark", "gsm8k", "--predictions", str(bad), "--output", str(tmp_path / "o")])
        == 2
    )
    assert "lacks field(s) reference" in capsys.readouterr().err
