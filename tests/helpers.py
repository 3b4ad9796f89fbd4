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
