"""The validation split and the validation curve (issue 15): held-out rows never trained on, the same rows
for every run, the loss logged every --eval-every steps, exact match through the evaluation's scorer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers import tiny_train_config

from tinyslm.core.errors import UserError
from tinyslm.data.training import VAL_SEED, load_training_set
from tinyslm.train.config import TrainConfig
from tinyslm.train.recipe import train
from tinyslm.train.validation import ratio_interval


def _cfg(model: Path, data: Path, out: Path, **kw) -> TrainConfig:
    return tiny_train_config(model, data, out, **{"limit": 8, "epochs": 2, "lr": 1e-3, **kw})


def test_the_split_is_fixed_disjoint_and_drawn_before_the_limit(small_jsonl: Path) -> None:
    whole = load_training_set(str(small_jsonl))
    a = load_training_set(str(small_jsonl), val_size=4, limit=3)
    b = load_training_set(str(small_jsonl), val_size=4, limit=10)
    assert [e.id for e in a.validation] == [e.id for e in b.validation]  # --limit does not move the split
    assert len(a.validation) == 4 and len(a.examples) == 3 and len(b.examples) == 10
    val = {e.id for e in a.validation}
    assert not val & {e.id for e in b.examples}
    assert [e.id for e in b.examples] == [e.id for e in whole.examples if e.id not in val][:10]
    other = load_training_set(str(small_jsonl), val_size=4, val_seed=VAL_SEED + 1)
    assert {e.id for e in other.validation} != val  # the seed decides it (and it is recorded)
    with pytest.raises(UserError, match="leaves no training rows"):
        load_training_set(str(small_jsonl), val_size=len(whole.examples))


def test_ratio_interval_is_the_token_weighted_mean_with_a_row_level_interval() -> None:
    r, (lo, hi) = ratio_interval([2.0, 6.0, 3.0], [1, 3, 2])
    assert r == pytest.approx(11 / 6)
    assert lo < r < hi
    same, (lo2, hi2) = ratio_interval([2.0, 4.0], [1, 2])  # every row at the same per-token loss
    assert same == 2.0 and lo2 == pytest.approx(2.0) and hi2 == pytest.approx(2.0)


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(eval_every=2), "need a validation split"),
        (dict(val_generate=2), "need a validation split"),
        (dict(val_size=2, val_generate=3), "exceeds --val-size"),
        (dict(val_size=-1), "--val-size"),
    ],
)
def test_bad_validation_settings_are_one_clear_error(tiny_model_dir, small_jsonl, tmp_path, kw, msg) -> None:
    with pytest.raises(UserError, match=msg):
        train(_cfg(tiny_model_dir, small_jsonl, tmp_path / "run", **kw))
    assert not (tmp_path / "run").exists()


def test_validation_curve_and_final_metrics(tiny_model_dir, small_jsonl, tmp_path) -> None:
    out = tmp_path / "run"
    run = train(_cfg(tiny_model_dir, small_jsonl, out, val_size=4, eval_every=1, val_generate=2))
    assert run["status"] == "finished"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if "split" not in x]
    val_lines = [x for x in lines if x.get("split") == "val"]
    assert [x["step"] for x in train_lines] == [1, 2, 3, 4]
    assert [x["step"] for x in val_lines] == [1, 2, 3, 4]  # every step, the last one from finishing
    for x in val_lines:
        assert (
            math.isfinite(x["val_loss"]) and x["val_loss_ci95"][0] <= x["val_loss"] <= x["val_loss_ci95"][1]
        )
        assert x["val_n"] == 2 and 0 <= x["val_correct"] <= 2 and x["val_em"] == x["val_correct"] / 2
    val = run["validation"]
    assert val["size"] == 4 and val["seed"] == VAL_SEED and len(val["ids"]) == 4
    assert val["loss"] == val_lines[-1]["val_loss"] and val["step"] == 4 and val["n_generate"] == 2
    # the loss falls on held-out rows as the model fits this tiny, repetitive set
    assert val_lines[-1]["val_loss"] < val_lines[0]["val_loss"]


def test_no_split_means_no_validation(tiny_model_dir, small_jsonl, tmp_path) -> None:
    out = tmp_path / "run"
    run = train(_cfg(tiny_model_dir, small_jsonl, out, epochs=1))
    assert "validation" not in run
    assert all("split" not in json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines())


@pytest.mark.parametrize("world", [2, 3])
def test_each_rank_measures_its_share_and_the_gathered_line_is_one_process_line(
    tiny_model_dir: Path, small_jsonl: Path, world: int
) -> None:
    """Validation split over ``world`` ranks (simulated in one process: ``gather`` adds the other ranks'
    parts) gives the single process's line exactly, each rank having scored only its share."""
    from tinyslm.models.load import load_model
    from tinyslm.train.validation import Validator

    model, tok = load_model(str(tiny_model_dir))
    split = load_training_set(str(small_jsonl), val_size=7).validation
    v = Validator(tok, split, "number", max_length=128, micro_batch_size=2, keep_logits=False, generate=5,
                  max_new_tokens=6)  # fmt: skip
    alone = v.measure(model, 3)
    scored: list[int] = []
    real_rows = v._loss_rows

    def counting_rows(m, chunks):
        scored.extend(i for c in chunks for i in c)
        return real_rows(m, chunks)

    v._loss_rows = counting_rows
    others = {
        "rows": [r for k in range(1, world) for r in real_rows(model, v.chunks[k::world])],
        "correct": [v._correct(model, list(range(len(v.generated)))[k::world]) for k in range(1, world)],
    }

    def gather(part: list) -> list:  # what accelerate's gather_object returns: every rank's part, joined
        return part + (others["rows"] if part and isinstance(part[0], tuple) else others["correct"])

    shared = v.measure(model, 3, rank=0, world=world, gather=gather)
    assert {k: x for k, x in shared.items() if k != "time_s"} == {
        k: x for k, x in alone.items() if k != "time_s"
    }
    assert sorted(scored) == sorted(i for c in v.chunks[::world] for i in c) and len(scored) < len(v.rows)
