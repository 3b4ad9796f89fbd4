"""Hostile inputs through the public entry points: one error line and exit code 2, or a warning that results record.

Each case used to end in a traceback (malformed benchmark or training records, adapters and checkpoints that
do not fit, seeds torch cannot take) or in a silently wrong result (an adapter applied to another base model,
a checkpoint missing layers, a prompt longer than the model's context). The models are the tiny random Llama
of conftest.py, changed on disk the way a user's files go wrong; the adapters are made with peft.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tinyslm.cli import eval_main, main
from tinyslm.cli.train import main as train_main
from tinyslm.config.limits import MAX_SEED
from tinyslm.core.errors import UserError
from tinyslm.study import grid as study

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def _call(entry, argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of a CLI main function (argparse errors exit through SystemExit)."""
    capsys.readouterr()
    try:
        code = entry(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def _one_error_line(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def _eval(capsys, tmp_path: Path, data_dir: Path, *argv: str) -> tuple[int, str]:
    args = [
        "--output",
        str(tmp_path / "out"),
        "--data-dir",
        str(data_dir),
        "--limit",
        "1",
        "--max-new-tokens",
        "2",
        "--batch-size",
        "1",
        "--no-progress",
        *argv,
    ]
    return _call(eval_main, args, capsys)


# ---------------------------------------------------------------------------------------------------
# Models and adapters gone wrong on disk.


def _variant(src: Path, dest: Path, **config: object) -> Path:
    """A copy of checkpoint ``src`` whose config.json has ``config`` changed (the weights stay as saved)."""
    shutil.copytree(src, dest)
    cfg = json.loads((dest / "config.json").read_text())
    cfg.update(config)
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _random_llama(like: Path, dest: Path, seed: int, **config: object) -> Path:
    """Another random Llama with ``like``'s config (changed by ``config``) and tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig.from_pretrained(like)
    for k, v in config.items():
        setattr(cfg, k, v)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(dest)
    AutoTokenizer.from_pretrained(like).save_pretrained(dest)
    return dest


def _lora(base: Path, dest: Path) -> Path:
    """A LoRA adapter made by peft on ``base`` (non-zero B, so it changes the outputs); it records ``base``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base)
    get_peft_model(
        model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    ).save_pretrained(dest)
    return dest


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile-adapters")
    wide = _random_llama(tiny_model_dir, root / "wide-base", seed=3, hidden_size=48)
    twin = _random_llama(tiny_model_dir, root / "twin-base", seed=4)  # same shapes, other weights
    return {
        "own": _lora(tiny_model_dir, root / "own"),
        "other-shapes": _lora(wide, root / "for-wide"),
        "other-base": _lora(twin, root / "for-twin"),
        "twin-base": twin,
    }


def test_adapter_for_a_base_of_other_shapes(tmp_path, tiny_model_dir, adapters, data_dir, capsys):
    code, err = _eval(
        capsys, tmp_path, data_dir, "--model", str(tiny_model_dir), "--adapter", str(adapters["other-shapes"])
    )
    _one_error_line(
        code, err, "does not fit model", "other sizes", "[2, 48] in the adapter but [2, 32] in the model"
    )


def test_adapter_errors_are_one_line_from_the_console(tmp_path, tiny_model_dir, adapters, data_dir):
    """In a real process nothing else reaches stderr either (pytest hides Python warnings from capsys)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    argv = [
        sys.executable,
        "-m",
        "tinyslm.cli",
        "eval",
        "--model",
        str(tiny_model_dir),
        "--adapter",
        str(adapters["other-shapes"]),
        "--data-dir",
        str(data_dir),
        "--limit",
        "1",
        "--no-progress",
        "--output",
        str(tmp_path / "out"),
    ]
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    _one_error_line(r.returncode, r.stderr, "does not fit model")


@pytest.mark.parametrize(
    ("raw", "changes", "needle"),
    [
        (b"{not json", None, "cannot read"),
        (b"\xff\xfe", None, "cannot read"),  # not UTF-8
        (b"[1, 2]", None, "expected a JSON object"),
        (b"{}", None, "names no peft_type"),
        (None, {"peft_type": "NOPE"}, "not a valid PEFT adapter config"),
        (None, {"r": "four"}, "not a valid PEFT adapter config"),
        (None, {"target_modules": ["no_such_proj"]}, "cannot apply adapter"),
    ],
)
def test_corrupt_adapter_config(tmp_path, tiny_model_dir, adapters, data_dir, capsys, raw, changes, needle):
    bad = tmp_path / "adapter"
    shutil.copytree(adapters["own"], bad)
    if raw is not None:
        (bad / "adapter_config.json").write_bytes(raw)
    else:
        cfg = json.loads((bad / "adapter_config.json").read_text())
        (bad / "adapter_config.json").write_text(json.dumps({**cfg, **changes}))
    code, err = _eval(capsys, tmp_path, data_dir, "--model", str(tiny_model_dir), "--adapter", str(bad))
    _one_error_line(code, err, needle, str(bad))


def test_corrupt_adapter_config_as_model(tmp_path, adapters, data_dir, capsys):
    bad = tmp_path / "adapter"
    shutil.copytree(adapters["own"], bad)
    (bad / "adapter_config.json").write_text("[]")
    code, err = _eval(capsys, tmp_path, data_dir, "--model", str(bad))
    _one_error_line(code, err, "adapter_config.json", "expected a JSON object")


def test_truncated_or_missing_adapter_weights(tmp_path, tiny_model_dir, adapters, data_dir, capsys):
    bad = tmp_path / "adapter"
    shutil.copytree(adapters["own"], bad)
    _truncate(bad / "adapter_model.safetensors")
    code, err = _eval(capsys, tmp_path, data_dir, "--model", str(tiny_model_dir), "--adapter", str(bad))
    _one_error_line(code, err, "damaged or truncated", str(bad))
    (bad / "adapter_model.safetensors").unlink()
    code, err = _eval(capsys, tmp_path, data_dir, "--model", str(tiny_model_dir), "--adapter", str(bad))
    _one_error_line(code, err, "has no weights")


def test_adapter_trained_on_another_base_warns_and_records_both(
    tmp_path, tiny_model_dir, adapters, data_dir, capsys
):
    adapter = adapters["other-base"]
    code, err = _eval(capsys, tmp_path, data_dir, "--model", str(tiny_model_dir), "--adapter", str(adapter))
    assert code == 0, err
    warning = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(warning) == 1 and "Traceback" not in err
    assert str(adapters["twin-base"]) in warning[0] and str(tiny_model_dir) in warning[0]
    res = json.loads((tmp_path / "out" / "gsm8k" / "results.json").read_text())
    assert res["model_ref"] == str(tiny_model_dir)
    assert res["adapter_base_model"] == str(adapters["twin-base"])
    assert any(str(adapters["twin-base"]) in w for w in res["warnings"])


def test_adapter_on_its_own_base_gives_no_warning(tmp_path, tiny_model_dir, adapters, data_dir, capsys):
    """The control for the test above: the same check does not cry wolf (here a different spelling of the path)."""
    spelled = f"{tiny_model_dir}/../{tiny_model_dir.name}"
    code, err = _eval(capsys, tmp_path, data_dir, "--model", spelled, "--adapter", str(adapters["own"]))
    assert code == 0 and "warning" not in err, err
    res = json.loads((tmp_path / "out" / "gsm8k" / "results.json").read_text())
    assert res["adapter_base_model"] == str(tiny_model_dir) and "warnings" not in res


def test_config_that_does_not_match_the_weights(tmp_path, tiny_model_dir, data_dir, capsys):
    model = _variant(tiny_model_dir, tmp_path / "wider", hidden_size=64)
    code, err = _eval(capsys, tmp_path, data_dir, "--model", str(model))
    _one_error_line(
        code, err, "config.json does not match the weights", "32] in the weights but [", "64] by the config"
    )
    # A config that contradicts itself (hidden size not a multiple of the heads) is refused too.
    odd = _variant(tiny_model_dir, tmp_path / "odd", hidden_size=30)
    code, err = _eval(capsys, tmp_path, data_dir, "--model", str(odd))
    _one_error_line(code, err, "cannot load model from", str(odd))


def test_truncated_model_weights(tmp_path, tiny_model_dir, data_dir, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    _truncate(model / "model.safetensors")
    code, err = _eval(capsys, tmp_path, data_dir, "--model", str(model))
    _one_error_line(code, err, "damaged or truncated", str(model))


def test_config_with_more_layers_than_the_weights(tmp_path, tiny_model_dir, data_dir, capsys):
    from safetensors import safe_open

    with safe_open(tiny_model_dir / "model.safetensors", "pt") as f:
        per_layer = sum(k.startswith("model.layers.0.") for k in f.keys())  # noqa: SIM118 (safe_open is no dict)
    saved = json.loads((tiny_model_dir / "config.json").read_text())["num_hidden_layers"]
    model = _variant(tiny_model_dir, tmp_path / "deeper", num_hidden_layers=saved + 2)
    code, err = _eval(capsys, tmp_path, data_dir, "--model", str(model))
    _one_error_line(
        code, err, f"lack {2 * per_layer} tensor(s)", f"model.layers.{saved}.", "--allow-missing-weights"
    )
    assert not (tmp_path / "out" / "gsm8k" / "predictions.jsonl").exists()

    code, err = _eval(capsys, tmp_path, data_dir, "--model", str(model), "--allow-missing-weights")
    assert code == 0 and "Traceback" not in err, err
    assert len([ln for ln in err.splitlines() if "warning" in ln]) == 1
    res = json.loads((tmp_path / "out" / "gsm8k" / "results.json").read_text())
    assert len(res["missing_weights"]) == 2 * per_layer
    assert all(
        k.startswith((f"model.layers.{saved}.", f"model.layers.{saved + 1}.")) for k in res["missing_weights"]
    )
    assert "randomly initialised" in res["warnings"][0]


def test_prompt_longer_than_the_context_is_refused_before_generating(
    tmp_path, tiny_model_dir, data_dir, capsys
):
    from transformers import AutoTokenizer

    from tinyslm.data.benchmarks import BENCHMARKS, load_examples
    from tinyslm.data.prompts import build_prompt, is_chat_tokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    first = load_examples(BENCHMARKS["gsm8k"], data_dir).examples[0]
    ids = tok(build_prompt(tok, first, "number"), add_special_tokens=not is_chat_tokenizer(tok))["input_ids"]
    n_prompt = len(ids)
    short = _variant(tiny_model_dir, tmp_path / "short", max_position_embeddings=n_prompt + 1)
    # --max-new-tokens 2: one token more than the context holds.
    code, err = _eval(capsys, tmp_path, data_dir, "--model", str(short))
    _one_error_line(code, err, f"{n_prompt}-token prompt", "context of", str(n_prompt + 1), "--shots")
    assert not (tmp_path / "out" / "gsm8k" / "predictions.jsonl").exists()
    # Exactly at the limit it runs, and results.json says what the limit was.
    code, err = _eval(capsys, tmp_path, data_dir, "--model", str(short), "--max-new-tokens", "1")
    assert code == 0, err
    res = json.loads((tmp_path / "out" / "gsm8k" / "results.json").read_text())
    assert res["context_length"] == n_prompt + 1


# ---------------------------------------------------------------------------------------------------
# Malformed benchmark and training records: file and line named.

GOOD = {
    "gsm8k": {"question": "Tom has 2 apples and gets 3 more. How many?", "answer": "2 + 3 = 5\n#### 5"},
    "math": {"problem": "What is $1+1$?", "solution": "It is $\\boxed{2}$."},
    "asdiv": {"body": "Tom has 2 apples.", "question": "How many?", "answer": "2"},
    "mawps": {"input": "Tom has 2 apples. How many?", "target": 2.0},
}
FILES = {
    "gsm8k": "gsm8k/test.jsonl",
    "math": "math/test.jsonl",
    "asdiv": "asdiv/test.jsonl",
    "mawps": "mawps/test.jsonl",
}


@pytest.mark.parametrize(
    ("bench", "field", "value"),
    [
        ("gsm8k", "answer", 42),
        ("gsm8k", "question", None),
        ("gsm8k", "question", 7),
        ("gsm8k", "answer", ["#### 5"]),
        ("math", "problem", None),
        ("math", "solution", 3),
        ("math", "answer", {"x": 1}),
        ("asdiv", "question", None),
        ("asdiv", "body", 5),
        ("asdiv", "answer", None),
        ("mawps", "input", 12),
        ("mawps", "target", None),
    ],
)
def test_benchmark_record_of_the_wrong_type_names_file_and_line(tmp_path, capsys, bench, field, value):
    path = tmp_path / "data" / FILES[bench]
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(GOOD[bench]) + "\n" + json.dumps({**GOOD[bench], field: value}) + "\n")
    code, err = _call(
        eval_main,
        [
            "--benchmark",
            bench,
            "--data-dir",
            str(tmp_path / "data"),
            "--output",
            str(tmp_path / "out"),
            "--model",
            str(tmp_path),
        ],
        capsys,
    )
    _one_error_line(code, err, f"{path}:2", f"'{field}'")


@pytest.mark.parametrize(
    ("field", "value"), [("Body", None), ("Question", 3), ("Answer", None), ("Answer", "")]
)
def test_svamp_record_of_the_wrong_type_names_the_item(tmp_path, capsys, field, value):
    path = tmp_path / "data" / "svamp" / "SVAMP.json"
    path.parent.mkdir(parents=True)
    good = {"ID": "a", "Body": "Tom has 2 apples.", "Question": "How many?", "Answer": 2.0}
    path.write_text(json.dumps([good, {**good, field: value}]))
    code, err = _call(
        eval_main,
        [
            "--benchmark",
            "svamp",
            "--data-dir",
            str(tmp_path / "data"),
            "--output",
            str(tmp_path / "out"),
            "--model",
            str(tmp_path),
        ],
        capsys,
    )
    _one_error_line(code, err, f"{path} (item 1)", f"'{field}'")


@pytest.mark.parametrize(("field", "value"), [("answer", 42), ("question", None), ("question", 7)])
def test_training_file_of_the_wrong_type_through_data_dir(tmp_path, tiny_model_dir, capsys, field, value):
    path = tmp_path / "data" / "gsm8k" / "train.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(GOOD["gsm8k"]) + "\n" + json.dumps({**GOOD["gsm8k"], field: value}) + "\n")
    code, err = _call(
        train_main,
        [
            "--method",
            "lora",
            "--model",
            str(tiny_model_dir),
            "--dataset",
            "gsm8k-train",
            "--data-dir",
            str(tmp_path / "data"),
            "--output",
            str(tmp_path / "run"),
            "--device",
            "cpu",
            "--no-progress",
        ],
        capsys,
    )
    _one_error_line(code, err, f"{path}:2", f"'{field}'")
    assert not (tmp_path / "run" / "run.json").exists()


# ---------------------------------------------------------------------------------------------------
# Seeds: bounded up front, on the command line and in a study config.


@pytest.mark.parametrize("seed", [str(2**64), str(2**63), "-1", "99999999999999999999999999"])
def test_eval_and_train_seed_out_of_range(tmp_path, tiny_model_dir, data_dir, capsys, seed):
    code, err = _eval(capsys, tmp_path, data_dir, "--model", str(tiny_model_dir), "--seed", seed)
    _one_error_line(code, err, "--seed")
    small = tmp_path / "small.jsonl"
    small.write_text(json.dumps(GOOD["gsm8k"]) + "\n")
    code, err = _call(
        train_main,
        [
            "--method",
            "lora",
            "--model",
            str(tiny_model_dir),
            "--seed",
            seed,
            "--dataset",
            str(small),
            "--batch-size",
            "1",
            "--micro-batch-size",
            "1",
            "--max-steps",
            "1",
            "--device",
            "cpu",
            "--no-progress",
            "--output",
            str(tmp_path / "run"),
        ],
        capsys,
    )
    _one_error_line(code, err, "--seed")
    assert not (tmp_path / "run").exists()


def test_largest_seed_is_accepted_and_runs(tmp_path, tiny_model_dir, data_dir, capsys):
    code, err = _eval(
        capsys, tmp_path, data_dir, "--model", str(tiny_model_dir), "--seed", str(MAX_SEED), "--shots", "1"
    )
    assert code == 0, err
    res = json.loads((tmp_path / "out" / "gsm8k" / "results.json").read_text())
    assert res["seed"] == MAX_SEED


@pytest.mark.parametrize("seed", [2**64, 2**63, -1])
def test_study_seed_out_of_range_fails_the_config_up_front(tmp_path, tiny_model_dir, data_dir, capsys, seed):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "models": [str(tiny_model_dir)],
                "methods": ["zero-shot", "lora"],
                "data_dir": str(data_dir),
                "seeds": [1, seed],
            }
        )
    )
    code, err = _call(main, ["run", str(cfg), "--output", str(tmp_path / "grid"), "--dry-run"], capsys)
    _one_error_line(code, err, "seeds", "2**63-1")
    assert not (tmp_path / "grid").exists()
    assert study.load_config(_seeded(tmp_path, [0, MAX_SEED])).seeds == [0, MAX_SEED]


def _seeded(tmp_path: Path, seeds: list[int]) -> Path:
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump({"models": ["m"], "methods": ["lora"], "seeds": seeds}))
    return path


# ---------------------------------------------------------------------------------------------------
# The study config loader, fuzzed: a clean one-line UserError or a valid config, nothing else.

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**62, max_value=2**80),
    st.integers(min_value=-(2**80), max_value=-1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, 5e-324]),
    st.text(max_size=12),
    st.sampled_from(
        ["", "lora", "zero-shot", "cpu", "auto", "gsm8k", "fast", "1e-4", "ｌｏｒａ", "\u202e", "a\nb", "nan"]
    ),
)
_JUNK = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
_BASE: dict = {
    "name": "s",
    "models": ["m"],
    "methods": ["zero-shot", "few-shot", "lora"],
    "seeds": [1],
    "train": {"limit": 4, "epochs": 1, "max_length": 64, "warmup_ratio": 0.1, "merge": False},
    "eval": {"benchmarks": ["gsm8k"], "limit": 2, "shots": 1, "engine": "fast"},
    "hardware": {"device": "cpu", "num_processes": 1},
    "overrides": {"lora": {"lr": 1e-4, "lora_r": 8, "target_modules": "q,v"}},
    "diagnostics": {"enabled": True, "probe_limit": 5},
    "report": {"enabled": False, "price_per_gpu_hour": 2.0},
}
_PATHS = (
    [(k,) for k in _BASE]
    + [(k, sub) for k, v in _BASE.items() if isinstance(v, dict) for sub in v]
    + [("overrides", "lora", k) for k in _BASE["overrides"]["lora"]]
    + [("seeds", 0), ("models", 0), ("methods", 1), ("unknown",), ("train", "unknown")]
)


def _replace(cfg: object, path: tuple, value: object) -> object:
    """``cfg`` with the value at ``path`` replaced; unchanged when an earlier edit removed that path."""
    out = copy.deepcopy(cfg)
    try:
        node = out
        for key in path[:-1]:
            node = node[key]
        if isinstance(node, dict) or (
            isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node)
        ):
            node[path[-1]] = value
    except (KeyError, IndexError, TypeError):
        pass
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(edits=[(("train",), {"a\rb": None})], top=None)  # found by this test: a key with a line break
@example(edits=[(("methods", 1), "lo\nra")], top=None)
@example(edits=[(("seeds", 0), 2**64), (("train", "limit"), math.nan)], top=None)
@given(
    edits=st.lists(st.tuples(st.sampled_from(_PATHS), _JUNK), min_size=1, max_size=3),
    top=st.one_of(st.none(), _JUNK),
)
def test_study_config_loader_is_a_user_error_or_a_valid_config(tmp_path, edits, top):
    cfg: object = _BASE
    for path, value in edits:
        cfg = _replace(cfg, path, value)
    if top is not None and not isinstance(top, dict):
        cfg = top  # a whole file that is a scalar or a list
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    try:
        loaded = study.load_config(path)
    except UserError as e:
        message = str(e)
        assert message and "\n" not in message and "\r" not in message, message
    else:
        assert isinstance(loaded, study.StudyConfig)
        study.plan_cells(loaded)  # a config that validates can be planned
