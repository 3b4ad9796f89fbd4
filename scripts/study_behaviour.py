"""How each method of a finished study behaves: loops, budget hits, false equations, and paired tests.

    python scripts/study_behaviour.py results/smollm2-135m-cpu [--against zero-shot full]

The README's "What tiny-slm finds" section quotes these numbers; this script recomputes every one of them
from the committed predictions alone (plain or gzipped), so a reader can check them. Per model × method ×
benchmark it prints exact match with its Wilson interval, the share of outputs in a repetition loop
(:func:`tinyslm.core.textstats.has_repetition_loop`, the report's definition), the share that ran into
the token budget, and the share of ``a op b = c`` equations that are false under exact arithmetic
(:func:`tinyslm.core.textstats.arithmetic_errors`). Then, for each method against each ``--against``
method on the same problems: exact McNemar on correctness and on looping (started / stopped).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

from tinyslm.core.files import predictions_file
from tinyslm.core.stats import mcnemar_exact, wilson_interval
from tinyslm.core.textstats import arithmetic_errors, find_equations, has_repetition_loop


def _lines(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load(root: Path) -> dict[tuple[str, str, str, str], dict]:
    """(model, method, seed, benchmark) -> per-problem rows and the budget, for every finished benchmark."""
    cells = {}
    for results in sorted(root.rglob("eval/*/results.json")):
        cell_dir = results.parent.parent.parent
        cell = json.loads((cell_dir / "cell.json").read_text()) if (cell_dir / "cell.json").is_file() else {}
        meta = json.loads(results.read_text())
        method = cell.get("method") or cell_dir.parent.name
        rows = {r["id"]: r for r in _lines(predictions_file(results.parent))}
        model = cell.get("model") or meta["model"]  # a full-FT cell evaluates a checkpoint path
        seed = str(cell.get("seed", meta.get("seed")))
        cells[(model, method, seed, meta["benchmark"])] = {"rows": rows, "budget": meta["max_new_tokens"]}
    return cells


def behaviour(cell: dict) -> dict:
    rows = list(cell["rows"].values())
    n = len(rows)
    correct = sum(r["correct"] for r in rows)
    equations = sum(len(find_equations(r["output"])) for r in rows)
    false = sum(len(arithmetic_errors(r["output"])) for r in rows)
    return {
        "n": n,
        "correct": correct,
        "ci": wilson_interval(correct, n),
        "loops": sum(has_repetition_loop(r["output"]) for r in rows),
        "budget": sum(r["n_tokens"] >= cell["budget"] for r in rows),
        "equations": equations,
        "false": false,
    }


def paired(a: dict, b: dict, key) -> tuple[int, int, float]:
    """(only a, only b, exact McNemar p) over the problems both cells answered."""
    ids = a["rows"].keys() & b["rows"].keys()
    only_a = sum(key(a["rows"][i]) and not key(b["rows"][i]) for i in ids)
    only_b = sum(key(b["rows"][i]) and not key(a["rows"][i]) for i in ids)
    return only_a, only_b, mcnemar_exact(only_a, only_b)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--against", nargs="+", default=["zero-shot", "full"])
    args = parser.parse_args(argv)
    cells = load(args.root)
    if not cells:
        print(f"error: no finished benchmark (eval/*/results.json) under {args.root}", file=sys.stderr)
        return 2
    print("model | method | seed | benchmark | EM % [95% CI] | loops | budget hits | false equations")
    for (model, method, seed, bench), cell in sorted(cells.items()):
        s = behaviour(cell)
        lo, hi = s["ci"]
        print(
            f"{model} | {method} | {seed} | {bench} | {100 * s['correct'] / s['n']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] "
            f"({s['correct']}/{s['n']}) | {100 * s['loops'] / s['n']:.1f}% ({s['loops']}) | "
            f"{100 * s['budget'] / s['n']:.1f}% ({s['budget']}) | "
            f"{100 * s['false'] / max(s['equations'], 1):.0f}% ({s['false']} of {s['equations']})"
        )
    print(
        "\npaired on the same problems: correct (only this, only other, p); loops (only this, only other, p)"
    )
    for (model, method, seed, bench), cell in sorted(cells.items()):
        for other in args.against:
            # the same seed when the other method has it (a zero-shot cell often has only one)
            same = [k for k in sorted(cells) if k[0] == model and k[1] == other and k[3] == bench]
            ref_key = (
                (model, other, seed, bench)
                if (model, other, seed, bench) in cells
                else next(iter(same), None)
            )
            if other == method or ref_key is None:
                continue
            ref = cells[ref_key]
            c = paired(cell, ref, lambda r: r["correct"])
            loop = paired(cell, ref, lambda r: has_repetition_loop(r["output"]))
            print(
                f"{model} | {method} {seed} vs {other} {ref_key[2]} | {bench} | correct {c[0]}/{c[1]} p={c[2]:.2g} | "
                f"loops {loop[0]}/{loop[1]} p={loop[2]:.2g}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
