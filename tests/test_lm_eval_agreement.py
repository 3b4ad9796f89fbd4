"""tiny-slm's verdicts against lm-evaluation-harness's own, on real model outputs.

``tests/data/lm_eval_verdicts.jsonl`` holds 400 real outputs of smollm2-135m-instruct (zero-shot and
5-shot, the first 100 GSM8K and SVAMP problems, made by ``tiny-slm-eval``) with the verdicts of
lm-eval 0.4.13's ``gsm8k`` task ("strict-match" and "flexible-extract" filters, its exact_match
arguments), recorded by ``scripts/lm_eval_verdicts.py`` with lm-eval's own code.

Wherever lm-eval accepts an answer, we must too. Where we accept and lm-eval does not, lm-eval is
wrong, and each such case is listed below with the reason.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest

from tinyslm.scoring.equivalence import score_output

FIXTURE = Path(__file__).parent / "data" / "lm_eval_verdicts.jsonl"

# Why lm-eval rejects right answers here:
# FLOAT_GOLD: lm-eval compares strings after stripping ",", "$" and a final ".". SVAMP's golds are floats
#   written "24.0", so lm-eval marks a right "24" wrong; we compare numbers. (lm-eval's gsm8k filters
#   are not meant for SVAMP golds, and this is exactly the mistake that gives near-zero SVAMP scores.)
# LAST_SPAN: flexible-extract takes the *last* number-like span; when the model states its answer and
#   then writes a further number, lm-eval reads the wrong one.


def _rows() -> list[dict]:
    return [json.loads(x) for x in FIXTURE.read_text(encoding="utf-8").splitlines() if x.strip()]


def _ours(r: dict) -> dict:
    return score_output(r["output"], r["reference"], "number")


def _lm_eval_accepts(r: dict) -> bool:
    return r["lm_eval_strict-match_correct"] or r["lm_eval_flexible-extract_correct"]


def test_fixture_is_real_and_complete():
    rows = _rows()
    assert len(rows) == 400
    assert {r["source"] for r in rows} == {"shots0/gsm8k", "shots0/svamp", "shots5/gsm8k", "shots5/svamp"}
    assert all(r["output"].strip() for r in rows)


def test_we_accept_every_answer_lm_eval_accepts():
    missed = [
        (r["source"], r["id"], r["output"][-120:])
        for r in _rows()
        if _lm_eval_accepts(r) and not _ours(r)["correct"]
    ]
    assert missed == []


def test_lm_eval_strict_match_implies_our_strict_match():
    rows = [r for r in _rows() if r["lm_eval_strict-match_correct"]]
    assert rows, "the fixture should contain answers marked with ####"
    assert all(_ours(r)["strict_correct"] for r in rows)


def _as_number(text: str) -> Fraction | None:
    try:
        return Fraction(text.replace("$", "").replace(",", "").rstrip("."))
    except (ValueError, ZeroDivisionError):
        return None


@pytest.mark.parametrize(
    "row",
    [r for r in _rows() if not _lm_eval_accepts(r) and _ours(r)["correct"]],
    ids=lambda r: f"{r['source']}:{r['id']}",
)
def test_where_lm_eval_rejects_a_right_answer_we_know_why(row):
    """Every answer we accept and lm-eval rejects is right, and lm-eval is wrong for a reason we name."""
    gold = Fraction(row["reference"])
    assert _as_number(_ours(row)["extracted"]) == gold  # checked without our scorer: it is the gold
    picked = _as_number(row["lm_eval_flexible-extract"])
    if picked == gold:
        # FLOAT_GOLD: lm-eval found the right number and lost it to string comparison.
        assert (
            row["reference"].endswith(".0")
            and row["lm_eval_flexible-extract"].rstrip(".") != row["reference"]
        )
    else:
        # LAST_SPAN: lm-eval's last number-like span is another number than the stated answer.
        assert picked != gold
