"""Record lm-evaluation-harness's own GSM8K verdicts on real model outputs, as a test fixture.

Run it with an interpreter that has ``lm_eval`` installed (it needs none of tiny-slm)::

    python scripts/lm_eval_verdicts.py runs/note/zs/gsm8k/predictions.jsonl ... \
        --output tests/data/lm_eval_gsm8k_verdicts.jsonl

For every prediction it applies the two filters of lm-eval's ``gsm8k`` task ("strict-match" and
"flexible-extract": regex, then take_first) and its ``exact_match`` metric with the task's own
arguments, all read from the installed task YAML, and stores the verdicts next to the output.
``tests/test_lm_eval_agreement.py`` then checks that tiny-slm accepts every answer lm-eval accepts,
except the documented cases where lm-eval is wrong.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lm_eval
import yaml
from lm_eval.api.metrics import exact_match_hf_evaluate
from lm_eval.filters.extraction import RegexFilter
from lm_eval.filters.selection import TakeFirstFilter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("predictions", nargs="+", help="tiny-slm predictions.jsonl files (id, output, reference)")
    ap.add_argument("--output", required=True)
    args = ap.parse_args()

    task_yaml = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml"
    task = yaml.safe_load(task_yaml.read_text())
    metric = next(m for m in task["metric_list"] if m["metric"] == "exact_match")
    metric_kwargs = {
        k: metric[k] for k in ("ignore_case", "ignore_punctuation", "regexes_to_ignore") if k in metric
    }
    filters = {}
    for f in task["filter_list"]:
        regex = next(s for s in f["filter"] if s["function"] == "regex")
        filters[f["name"]] = RegexFilter(
            regex_pattern=regex["regex_pattern"], group_select=regex.get("group_select", 0)
        )

    rows = []
    for path in args.predictions:
        source = Path(path).parent.parent.name + "/" + Path(path).parent.name
        for line in Path(path).read_text().splitlines():
            p = json.loads(line)
            rec = {"source": source, "id": p["id"], "output": p["output"], "reference": p["reference"]}
            for name, flt in filters.items():
                picked = list(TakeFirstFilter().apply(flt.apply([[p["output"]]], [{}]), [{}]))[0]
                em = exact_match_hf_evaluate([picked], [p["reference"]], **metric_kwargs)["exact_match"]
                rec[f"lm_eval_{name}"] = picked
                rec[f"lm_eval_{name}_correct"] = bool(em == 1.0)
            rows.append(rec)
    Path(args.output).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(
        f"{len(rows)} verdicts from lm_eval {lm_eval.__version__ if hasattr(lm_eval, '__version__') else ''} -> {args.output}"
    )


if __name__ == "__main__":
    main()
