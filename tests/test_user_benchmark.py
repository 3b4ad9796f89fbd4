"""A test set of the user's own (``--benchmark path/to/test.jsonl``) is evaluated, resumed, reported,
rescored and exported like a registered benchmark, and every bad file is one line naming it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers import tiny_study_config

from tinyslm.cli import eval_main
from tinyslm.core.errors import UserError
from tinyslm.data.benchmarks import (
    answer_style_of,
    benchmark_name,
    get_benchmark,
    load_examples,
    parse_benchmark_list,
    plan_fewshot,
)
from tinyslm.evaluate.runner import EvalConfig, rescore_file, run_eval
from tinyslm.export import float_eval_settings

NUMBER_ROWS = [
    {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?", "answer": 7},
    {
        "id": "eggs",
        "question": "A box holds 12 eggs. How many in 3 boxes?",
        "answer": "3*12=<<3*12=36>>36\n#### 36",
    },
    {"question": "Is 7 odd?", "answer": "Yes"},
]


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _tiny_eval(model_dir: Path, benchmarks: str, out: Path, data_dir: Path, **more) -> EvalConfig:
    """A quick evaluation of the tiny model: 2 slots, 4 new tokens."""
    return EvalConfig(
        model=str(model_dir),
        benchmarks=benchmarks,
        output=str(out),
        batch_size=2,
        max_new_tokens=4,
        data_dir=str(data_dir),
        progress=False,
        **more,
    )


def test_a_number_file_reads_as_gsm8k_does(tmp_path):
    f = _write(tmp_path / "my-set.jsonl", NUMBER_ROWS)
    bench = get_benchmark(str(f))
    assert (bench.name, bench.answer_style, bench.fewshot_pool) == ("my-set", "number", "gsm8k-train")
    assert bench.spec == f"{f.resolve()}:number"
    loaded = load_examples(bench, None)  # a user's file needs no data directory
    assert loaded.source == str(f.resolve())
    ex = loaded.examples
    assert [e.id for e in ex] == ["0", "eggs", "2"]  # a missing id is the record's number
    assert [e.reference for e in ex] == ["7", "36", "Yes"]
    assert ex[1].solution == "3*12=36\n#### 36"  # a worked answer: calculator annotations removed, kept
    assert ex[0].solution is None
    assert get_benchmark(bench.spec).spec == bench.spec  # what results.json records names it again
    # the name results are filed under, known without reading the file (the report matches on it)
    assert benchmark_name(str(f)) == benchmark_name(bench.spec) == "my-set"
    assert benchmark_name("gsm8k") == "gsm8k"


def test_latex_answers_make_a_math_file_and_the_style_can_be_chosen(tmp_path):
    rows = [
        {"question": "Simplify 2/4.", "answer": "\\frac{1}{2}"},
        {"question": "Solve x+1=3.", "answer": "So $x = \\boxed{2}$."},
        {"question": "What is 5+5?", "answer": 10, "solution": "5+5 = \\boxed{10}"},
    ]
    f = _write(tmp_path / "alg.jsonl", rows)
    bench = get_benchmark(str(f))
    assert (bench.answer_style, bench.fewshot_pool) == ("math", "self")
    ex = load_examples(bench, None).examples
    assert [e.reference for e in ex] == ["\\frac{1}{2}", "2", "10"]
    assert [e.solution for e in ex] == [None, "So $x = \\boxed{2}$.", "5+5 = \\boxed{10}"]
    plan = plan_fewshot(load_examples(bench, None), 1, 1234, None)
    assert len(plan.exemplars) == 1 and plan.excluded_ids == [plan.exemplars[0].id]  # not scored
    assert get_benchmark(f"{f}:number").answer_style == "number"
    assert get_benchmark(f"{_write(tmp_path / 'n.jsonl', NUMBER_ROWS)}:math").answer_style == "math"


@pytest.mark.parametrize(
    "name, lines, message",
    [
        (
            "dup.jsonl",
            ['{"question": "a", "answer": 1, "id": 1}', '{"question": "b", "answer": 2, "id": "1"}'],
            "dup.jsonl:2: duplicate id '1' (first at ",
        ),
        ("bad.jsonl", ['{"question": "a", "answer": 1}', "{not json"], "bad.jsonl:2: malformed JSON record"),
        (
            "noans.jsonl",
            ['{"question": "a", "solution": "b"}'],
            "noans.jsonl:1: a record needs the fields question and answer (it has question, solution); name "
            "others after the data: ...:question=FIELD:answer=FIELD",
        ),
        ("nullq.jsonl", ['{"question": null, "answer": 1}'], "field 'question' must be a non-empty string"),
        (
            "box.jsonl",
            ['{"question": "a", "answer": "so \\\\boxed{}"}'],
            "box.jsonl:1: field 'answer' has an empty",
        ),
        (
            "boolid.jsonl",
            ['{"question": "a", "answer": 1, "id": true}'],
            "field 'id' must be a non-empty string",
        ),
        ("empty.jsonl", [""], "empty.jsonl: no records"),
        ("gsm8k.jsonl", ['{"question": "a", "answer": 1}'], "'gsm8k' is a registered benchmark"),
        ("my set.jsonl", ['{"question": "a", "answer": 1}'], "use letters, digits"),
    ],
)
def test_a_bad_file_is_one_error_naming_it(tmp_path, name, lines, message):
    f = tmp_path / name
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as e:
        parse_benchmark_list(f"gsm8k,{f}")
    assert message in str(e.value)


def test_a_missing_file_or_style_is_named(tmp_path):
    with pytest.raises(UserError, match="benchmark file not found: .*nope.jsonl"):
        get_benchmark(str(tmp_path / "nope.jsonl"))
    f = _write(tmp_path / "ok.jsonl", NUMBER_ROWS)
    with pytest.raises(
        UserError, match="unknown option 'latex' after the data \\(an answer style: number or math"
    ):
        get_benchmark(f"{f}:latex")
    (tmp_path / "b").mkdir()
    twin = _write(tmp_path / "b" / "ok.jsonl", NUMBER_ROWS)
    with pytest.raises(UserError, match="would both be filed as 'ok': rename one of them"):
        parse_benchmark_list(f"{f},{twin}")
    assert len(parse_benchmark_list(f"{f},{f},gsm8k")) == 2  # the same file twice is one benchmark
    with pytest.raises(UserError, match="a JSON Lines file ending in .jsonl"):
        get_benchmark(str(tmp_path / "set.json"))
    with pytest.raises(UserError, match="too|needs more"):
        plan_fewshot(load_examples(get_benchmark(f"{f}:math"), None), 1, 1, None)  # no worked solutions


def test_the_command_line_refuses_a_bad_file_in_one_line(tmp_path, capsys):
    f = tmp_path / "dup.jsonl"
    f.write_text('{"question": "a", "answer": 1, "id": 1}\n{"question": "b", "answer": 2, "id": 1}\n')
    assert eval_main(["--benchmark", str(f), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"tiny-slm-eval: error: {f}:2: duplicate id 1 (first at {f}:1)"]
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_a_file_benchmark_is_evaluated_resumed_rescored_and_exported(tiny_model_dir, tmp_path, data_dir):
    f = _write(tmp_path / "my-set.jsonl", NUMBER_ROWS)
    out = tmp_path / "out"
    # number style: the exemplar comes from GSM8K train, as for GSM8K
    cfg = _tiny_eval(tiny_model_dir, f"gsm8k,{f}", out, data_dir, limit=3, shots=1)
    res = run_eval(cfg)
    r = json.loads((out / "my-set" / "results.json").read_text())
    assert r == res["my-set"] and r["n"] == 3
    assert r["answer_style"] == "number" and r["benchmark_spec"] == f"{f.resolve()}:number"
    assert r["source"] == str(f.resolve()) and r["fewshot_source"] == "gsm8k-train"
    assert r["provenance"]["data"]["benchmark"]["path"] == str(f.resolve())
    preds = [json.loads(x) for x in (out / "my-set" / "predictions.jsonl").read_text().splitlines()]
    assert sorted(p["id"] for p in preds) == ["0", "2", "eggs"]
    assert {p["id"]: p["reference"] for p in preds} == {"0": "7", "eggs": "36", "2": "Yes"}
    assert "gsm8k" in res and "benchmark_spec" not in res["gsm8k"]  # a registered one is named by name

    # rerun: finished, kept as it is
    before = (out / "my-set" / "predictions.jsonl").read_bytes()
    assert run_eval(cfg)["my-set"] == r
    assert (out / "my-set" / "predictions.jsonl").read_bytes() == before

    # an edited file is other data: refused, never mixed with the predictions made on the old one
    edited = [dict(NUMBER_ROWS[0], answer=8), *NUMBER_ROWS[1:]]
    _write(f, edited)
    with pytest.raises(UserError, match="my-set"):
        run_eval(cfg)
    assert (out / "my-set" / "predictions.jsonl").read_bytes() == before
    _write(f, NUMBER_ROWS)

    # rescored by `tiny-slm score --benchmark FILE`: the same verdicts
    summary = rescore_file(str(f), str(out / "my-set" / "predictions.jsonl"), str(tmp_path / "scored.jsonl"))
    assert summary["correct"] == r["correct"]

    # `tiny-slm export --score` evaluates GGUFs on the file again, not on a benchmark named "my-set"
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (out / "gsm8k").rename(run / "eval" / "gsm8k")
    (out / "my-set").rename(run / "eval" / "my-set")
    assert float_eval_settings(run)["benchmarks"] == f"gsm8k,{f.resolve()}:number"


@pytest.mark.usefixtures("one_thread")
def test_a_study_evaluates_every_cell_on_the_file(tiny_model_dir, tmp_path, data_dir):
    import yaml

    from tinyslm.study.runner import run_study

    f = _write(tmp_path / "my-set.jsonl", NUMBER_ROWS)
    cfg = tiny_study_config(
        tiny_model_dir,
        data_dir,
        methods=["zero-shot", "lora"],
        eval={"benchmarks": [str(f)], "limit": 3},
        report={"enabled": True},
    )
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    root = tmp_path / "out"
    res = run_study(tmp_path / "s.yaml", str(root), progress=False)
    for method in ("zero-shot", "lora"):
        cell = root / tiny_model_dir.name / method / "seed7"
        assert res["cells"][f"{tiny_model_dir.name}/{method}/seed7"]["status"] == "finished"
        assert json.loads((cell / "eval" / "my-set" / "results.json").read_text())["n"] == 3
    rows = (root / "report" / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",my-set," in r for r in rows[1:])


# ---------------------------------------------------------------------------------------------------
# A Hugging Face dataset id: the Hub is unreachable here, so `datasets` is a stand-in that serves rows.

PLATINUM = [
    {"question": "Janet has 3 ducks and buys 2. How many ducks?", "answer": "3 + 2 = 5\n#### 5"},
    {"question": "A pen costs $2. What do 4 pens cost?", "answer": "4 * 2 = 8\n#### 8"},
]


@pytest.fixture
def fake_hub(monkeypatch):
    """``datasets.load_dataset`` serving ``rows[id]`` (test split only); the calls are recorded."""
    import types

    rows: dict[str, list[dict]] = {"madrylab/gsm8k-platinum": PLATINUM, "me/only-train@train": PLATINUM[:1]}
    calls: list[tuple] = []

    def load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        key = path if split == "test" else f"{path}@{split}"
        if key not in rows:
            raise FileNotFoundError(f"Dataset '{path}' has no split {split} or cannot be accessed.")
        return rows[key]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return rows, calls


def test_a_hub_dataset_is_a_benchmark_filed_as_owner_name(fake_hub, tiny_model_dir, tmp_path, data_dir):
    rows, calls = fake_hub
    bench = get_benchmark("madrylab/gsm8k-platinum")
    assert calls == [("madrylab/gsm8k-platinum", None, "test")]
    assert (bench.name, bench.answer_style, bench.spec) == (
        "madrylab--gsm8k-platinum",
        "number",
        "madrylab/gsm8k-platinum:number",
    )
    assert benchmark_name("madrylab/gsm8k-platinum:math") == "madrylab--gsm8k-platinum"
    out = tmp_path / "out"
    # data_dir: the registered benchmarks' files; a Hub id is read from the Hub all the same
    cfg = _tiny_eval(tiny_model_dir, "madrylab/gsm8k-platinum", out, data_dir)
    r = run_eval(cfg)["madrylab--gsm8k-platinum"]
    assert r["n"] == 2 and r["source"] == "hub:madrylab/gsm8k-platinum"
    assert r["benchmark_spec"] == "madrylab/gsm8k-platinum:number"
    assert r["provenance"]["data"]["benchmark"]["sha256"] is None  # no file of ours to hash: said so
    preds = [
        json.loads(x)
        for x in (out / "madrylab--gsm8k-platinum" / "predictions.jsonl").read_text().splitlines()
    ]
    assert sorted(p["reference"] for p in preds) == ["5", "8"]


def test_a_hub_dataset_without_a_test_split_is_named_with_its_split(fake_hub):
    rows, calls = fake_hub
    with pytest.raises(UserError, match="could not load 'me/only-train' from the Hugging Face Hub"):
        get_benchmark("me/only-train")  # the test split by default
    bench = get_benchmark("me/only-train@train")
    assert calls[-1] == ("me/only-train", None, "train")
    assert (bench.name, bench.spec) == ("me--only-train--train", "me/only-train@train:number")
    assert benchmark_name("me/only-train@train:math") == bench.name
    loaded = load_examples(bench, None)
    assert loaded.source == "hub:me/only-train@train" and [e.reference for e in loaded.examples] == ["5"]
    assert get_benchmark(bench.spec).name == bench.name  # what results.json records names it again


def test_rescoring_a_hub_evaluation_needs_no_hub_when_the_style_is_stated(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # nothing can be loaded from the Hub
    preds = _write(tmp_path / "p.jsonl", [{"id": "a", "output": "So 2 + 3 = 5.\n#### 5", "reference": "5"}])
    summary = rescore_file("madrylab/gsm8k-platinum@test:number", str(preds), str(tmp_path / "s.jsonl"))
    assert summary["correct"] == 1
    assert answer_style_of("math500") == "math" and answer_style_of("x/y:math") == "math"


def test_bad_hub_datasets_are_one_line(fake_hub, monkeypatch):
    rows, _ = fake_hub
    with pytest.raises(UserError, match="openai/gsm8k is where the registered benchmark 'gsm8k' comes from"):
        get_benchmark("openai/gsm8k")
    with pytest.raises(UserError, match="could not load 'nobody/nothing' from the Hugging Face Hub"):
        get_benchmark("nobody/nothing")
    rows["me/broken"] = [PLATINUM[0], {"question": "no answer here"}]
    with pytest.raises(UserError, match="hub:me/broken row 1: a record needs the fields question and answer"):
        get_benchmark("me/broken")
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(UserError) as e:
        get_benchmark("madrylab/gsm8k-platinum")
    # no offline copy exists, so none is suggested
    assert str(e.value).endswith("needs the 'datasets' package (pip install 'tiny-slm[hub]')")


MATH500_LIKE = [  # HuggingFaceH4/MATH-500's fields: problem, solution, answer, subject, level, unique_id
    {"problem": "What is $1+1$?", "solution": "$1+1=\\boxed{2}$", "answer": "2", "unique_id": "a/1.json"},
    {
        "problem": "Simplify $\\frac{2}{4}$.",
        "solution": "It is $\\boxed{\\frac12}$.",
        "answer": "\\frac{1}{2}",
    },
]


def test_a_set_whose_question_is_named_otherwise_is_read_through_the_options(tmp_path, fake_hub):
    f = _write(tmp_path / "m500.jsonl", MATH500_LIKE)
    with pytest.raises(
        UserError, match="needs the fields question and answer \\(it has problem, solution, answer"
    ):
        get_benchmark(str(f))
    bench = get_benchmark(f"{f}:question=problem")
    assert (bench.name, bench.answer_style, bench.fields) == ("m500", "math", ("problem", "answer"))
    assert bench.spec == f"{f.resolve()}:math:question=problem"  # what results.json records names it again
    assert get_benchmark(bench.spec).rows == bench.rows
    assert [e.question for e in bench.rows] == ["What is $1+1$?", "Simplify $\\frac{2}{4}$."]
    assert [e.reference for e in bench.rows] == ["2", "\\frac{1}{2}"]
    # options in any order, the style too; the answer taken from another field
    other = get_benchmark(f"{f}:answer=solution:number:question=problem")
    assert (
        other.spec == f"{f.resolve()}:number:question=problem:answer=solution"
        and other.rows[0].reference == "2"
    )
    assert benchmark_name(other.spec) == "m500" and answer_style_of(other.spec) == "number"
    # a Hub dataset the same way
    fake_hub[0]["me/math-like"] = MATH500_LIKE
    hub = get_benchmark("me/math-like:question=problem")
    assert (hub.name, hub.spec) == ("me--math-like", "me/math-like:math:question=problem")


@pytest.mark.parametrize(
    ("suffix", "message"),
    [
        (":question=", "unknown option 'question='"),
        (":prompt=problem", "unknown option 'prompt=problem' after the data"),
        (":question=problem:question=q", "question is given twice"),
        (":math:number:question=problem", "style is given twice"),
        (":question=title", "needs the fields title and answer"),
    ],
)
def test_bad_options_are_one_error(tmp_path, suffix, message):
    f = _write(tmp_path / "m500.jsonl", MATH500_LIKE)
    with pytest.raises(UserError, match=message):
        parse_benchmark_list(f"gsm8k,{f}{suffix}")


def test_renamed_fields_are_evaluated_resumed_apart_and_exported(tiny_model_dir, tmp_path, data_dir):
    f = _write(tmp_path / "m500.jsonl", MATH500_LIKE)
    out = tmp_path / "out"
    cfg = _tiny_eval(tiny_model_dir, f"{f}:question=problem", out / "eval", data_dir)
    r = run_eval(cfg)["m500"]
    assert r["n"] == 2 and r["benchmark_spec"] == f"{f.resolve()}:math:question=problem"
    assert json.loads((out / "eval" / "m500" / "run_config.json").read_text())["fields"] == [
        "problem",
        "answer",
    ]
    # other fields of the same file are other questions: refused, never mixed into these predictions
    with pytest.raises(UserError, match="different settings \\(fields\\)"):
        run_eval(EvalConfig(**{**cfg.__dict__, "benchmarks": f"{f}:question=solution"}))
    assert float_eval_settings(out)["benchmarks"] == r["benchmark_spec"]  # export --score reads the same rows
    preds = out / "eval" / "m500" / "predictions.jsonl"
    assert rescore_file(r["benchmark_spec"], str(preds), str(tmp_path / "s.jsonl"))["n"] == 2
