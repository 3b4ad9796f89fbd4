"""Small builders the test files share (imported as ``helpers``: pytest puts this directory on sys.path)."""

from __future__ import annotations

from pathlib import Path

from tinyslm.train.config import TrainConfig


def tiny_train_config(model: Path, data: Path, out: Path, **kw) -> TrainConfig:
    """A LoRA run of a few steps on 4 rows at a high learning rate, quiet: what the training tests start
    from (each test overrides what it checks, e.g. ``method``, ``max_steps`` or ``epochs``)."""
    base = dict(
        model=str(model),
        method="lora",
        output=str(out),
        dataset=str(data),
        limit=4,
        lr=1e-2,
        warmup_ratio=0.0,
        max_length=128,
        batch_size=4,
        micro_batch_size=2,
        seed=0,
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


def tiny_study_config(model: Path, data_dir: Path, **over) -> dict:
    """A study of every method on a tiny model: 4 training rows, one optimizer step, 2 problems of GSM8K
    and SVAMP at 4 new tokens; ``over`` replaces keys (a dict value updates that section)."""
    cfg = {
        "name": "tiny",
        "data_dir": str(data_dir),
        "models": [str(model)],
        "methods": ["zero-shot", "few-shot", "full", "lora", "dora"],
        "seeds": [7],
        "train": {
            "dataset": "gsm8k-train",
            "limit": 4,
            "batch_size": 4,
            "micro_batch_size": 2,
            "max_length": 256,
            "max_steps": 1,
            "merge": True,
        },
        "eval": {
            "benchmarks": ["gsm8k", "svamp"],
            "limit": 2,
            "shots": 1,
            "batch_size": 2,
            "max_new_tokens": 4,
        },
        "hardware": {"device": "cpu"},
        "report": {"enabled": False},
    }
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return cfg
