"""The benchmark registry reads every offline file, names bad records, and never leaks test items into prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinyslm.core.errors import UserError
from tinyslm.data.benchmarks import BENCHMARKS, get_benchmark, load_examples, plan_fewshot, resolve_data_dir


@pytest.mark.parametrize("name", ["gsm8k", "svamp", "math", "math500", "asdiv", "mawps"])
def test_offline_files_load_with_documented_sizes(name, data_dir):
    bench = get_benchmark(name)
    loaded = load_examples(bench, data_dir)
    assert len(loaded.examples) == bench.n_expected["offline"]
    ids = [e.id for e in loaded.examples]
    assert len(set(ids)) == len(ids), "ids must be unique for resume to work"
    assert all(e.question and e.reference for e in loaded.examples)


def test_gold_answers_match_the_sources(data_dir):
    gsm = load_examples(get_benchmark("gsm8k"), data_dir).examples
    assert gsm[0].question.startswith("Janet")
    assert gsm[0].reference == "18"
    assert "<<" not in gsm[0].solution and gsm[0].solution.endswith("#### 18")
    svamp = load_examples(get_benchmark("svamp"), data_dir).examples
    assert svamp[0].id == "chal-1"
    assert svamp[0].question == (
        "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack "
        "How much do you have to pay to buy each pack?"
    )
    assert svamp[0].reference == "51.0"
    math = load_examples(get_benchmark("math"), data_dir).examples
    assert math[0].reference == "2"  # "the graph has $\boxed{2}$ vertical asymptotes"
    m500 = load_examples(get_benchmark("math500"), data_dir).examples
    assert m500[0].id == "test/precalculus/807.json"
    assert m500[0].reference == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert load_examples(get_benchmark("asdiv"), data_dir).examples[0].reference == "9 (apples)"
    assert load_examples(get_benchmark("mawps"), data_dir).examples[0].reference == "43.0"


def test_unknown_benchmark_lists_the_registry():
    with pytest.raises(UserError, match="unknown benchmark 'gsm9k'.*gsm8k"):
        get_benchmark("gsm9k")


def test_missing_data_dir_and_file(tmp_path):
    with pytest.raises(UserError, match="data directory not found"):
        resolve_data_dir(tmp_path / "nope")
    with pytest.raises(UserError, match="benchmark file not found"):
        load_examples(BENCHMARKS["gsm8k"], tmp_path)


def test_hub_only_benchmark_needs_hub(data_dir):
    with pytest.raises(UserError, match="no offline copy"):
        load_examples(BENCHMARKS["orcamath"], data_dir)


def test_malformed_record_names_file_and_line(tmp_path: Path):
    (tmp_path / "gsm8k").mkdir()
    good = json.dumps({"question": "1+1?", "answer": "2\n#### 2"})
    (tmp_path / "gsm8k" / "test.jsonl").write_text(f"{good}\n{{not json\n")
    with pytest.raises(UserError, match=r"test\.jsonl:2: malformed JSON"):
        load_examples(BENCHMARKS["gsm8k"], tmp_path)
    (tmp_path / "gsm8k" / "test.jsonl").write_text(f"{good}\n" + json.dumps({"question": "q"}) + "\n")
    with pytest.raises(UserError, match=r"test\.jsonl:2: record lacks field\(s\) answer"):
        load_examples(BENCHMARKS["gsm8k"], tmp_path)
    (tmp_path / "gsm8k" / "test.jsonl").write_text(
        json.dumps({"question": "q", "answer": "no marker"}) + "\n"
    )
    with pytest.raises(UserError, match=r"test\.jsonl:1: GSM8K answer has no '####'"):
        load_examples(BENCHMARKS["gsm8k"], tmp_path)


@pytest.mark.parametrize("name", ["gsm8k", "svamp", "asdiv", "mawps"])
def test_fewshot_exemplars_come_from_train_never_the_evaluated_set(name, data_dir):
    loaded = load_examples(get_benchmark(name), data_dir)
    plan = plan_fewshot(loaded, 5, seed=1, data_dir=data_dir)
    assert len(plan.exemplars) == 5 and plan.source == "gsm8k-train"
    evaluated = {" ".join(e.question.lower().split()) for e in plan.eval_examples}
    assert not any(" ".join(x.question.lower().split()) in evaluated for x in plan.exemplars)
    assert plan.eval_examples == loaded.examples and plan.excluded_ids == []
    # Seeded: the same seed gives the same exemplars, another seed other ones.
    assert [e.id for e in plan_fewshot(loaded, 5, 1, data_dir).exemplars] == [e.id for e in plan.exemplars]
    assert [e.id for e in plan_fewshot(loaded, 5, 2, data_dir).exemplars] != [e.id for e in plan.exemplars]


def test_math_exemplars_are_excluded_from_scoring(data_dir):
    loaded = load_examples(get_benchmark("math500"), data_dir)
    plan = plan_fewshot(loaded, 4, seed=0, data_dir=data_dir)
    ex_ids = {e.id for e in plan.exemplars}
    assert set(plan.excluded_ids) == ex_ids and len(ex_ids) == 4
    assert not ex_ids & {e.id for e in plan.eval_examples}
    assert len(plan.eval_examples) == 500 - 4
