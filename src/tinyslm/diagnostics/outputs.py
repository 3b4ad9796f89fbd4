"""What the fine-tuned model wrote: repetition loops and false arithmetic in its evaluation outputs.

Both read ``eval/<benchmark>/predictions.jsonl`` of the run (the ``output`` field of each line) and report
per benchmark and pooled over all of them:

* **repetition rate**: the share of outputs that repeat some n-gram 4+ times in a row
  (:func:`tinyslm.core.textstats.has_repetition_loop`), the signature of a model that lost its stopping behaviour;
* **arithmetic error rate**: of every ``a op b = c`` the model wrote, the share that is false under exact
  rational arithmetic (:func:`tinyslm.core.textstats.find_equations`): reasoning that looks right but computes
  wrong, which exact match alone cannot tell apart from a wrong plan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinyslm.core.errors import UserError
from tinyslm.core.files import predictions_file, read_jsonl
from tinyslm.core.textstats import find_equations, has_repetition_loop


def read_outputs(run_dir: Path) -> dict[str, list[str]]:
    """The ``output`` of every prediction, per benchmark directory under ``run_dir/eval``."""
    found: dict[str, list[str]] = {}
    bench_dirs = sorted({p.parent for p in (run_dir / "eval").glob("*/predictions.jsonl*")})
    for path in (predictions_file(d) for d in bench_dirs):
        if path.suffix not in (".jsonl", ".gz"):
            continue
        try:
            recs = list(read_jsonl(path, tolerate_torn_tail=True))
        except ValueError as e:
            raise UserError(str(e)) from None
        found[path.parent.name] = [str(r.get("output") or "") for r in recs]
    return found


def _rate(k: int, n: int) -> float | None:
    return k / n if n else None


def repetition_rate(outputs: dict[str, list[str]]) -> dict[str, Any]:
    """Outputs with a repetition loop, per benchmark and overall."""
    per = {}
    for name, texts in outputs.items():
        k = sum(has_repetition_loop(t) for t in texts)
        per[name] = {"outputs": len(texts), "with_loop": k, "rate": _rate(k, len(texts))}
    n = sum(v["outputs"] for v in per.values())
    k = sum(v["with_loop"] for v in per.values())
    return {
        "definition": "share of evaluation outputs that repeat an n-gram 4+ times in a row",
        "by_benchmark": per,
        "overall": {"outputs": n, "with_loop": k, "rate": _rate(k, n)},
    }


def arithmetic_error_rate(outputs: dict[str, list[str]], examples: int = 5) -> dict[str, Any]:
    """False equations among all equations written, per benchmark and overall, with a few examples."""
    per = {}
    for name, texts in outputs.items():
        eqs = [e for t in texts for e in find_equations(t)]
        false = [e for e in eqs if e.is_error]
        per[name] = {
            "outputs": len(texts),
            "equations": len(eqs),
            "false": len(false),
            "rounded": sum(e.verdict == "rounded" for e in eqs),
            "outputs_with_false": sum(any(e.is_error for e in find_equations(t)) for t in texts),
            "rate": _rate(len(false), len(eqs)),
            "examples": [e.text for e in false[:examples]],
        }
    totals = {k: sum(v[k] for v in per.values()) for k in ("outputs", "equations", "false", "rounded")}
    return {
        "definition": "share of the 'a op b = c' equations in evaluation outputs that are false under exact "
        "rational arithmetic (c rounded to its own decimals counts as right)",
        "by_benchmark": per,
        "overall": {**totals, "rate": _rate(totals["false"], totals["equations"])},
    }
