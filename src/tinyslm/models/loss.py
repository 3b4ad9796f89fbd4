"""The completion-token loss: next-token cross-entropy over target tokens only.

Shared by training (:mod:`tinyslm.train`) and the diagnostics that measure a trained model's loss
(:mod:`tinyslm.diagnostics.sharpness`, :mod:`tinyslm.diagnostics.forgetting`), so both compute the very
same number; it lives beside the models, not in the training recipe, so diagnostics need not import it.
"""

from __future__ import annotations

import inspect
from typing import Any


def supports_logits_to_keep(model: Any) -> bool:
    """Whether the model's forward can project only chosen positions onto the vocabulary (most can)."""
    from tinyslm.models.load import base_model

    return "logits_to_keep" in inspect.signature(type(base_model(model)).forward).parameters


def target_loss_sum(model: Any, batch: dict[str, Any], keep_logits: bool) -> Any:
    """Summed next-token cross-entropy over the target tokens of ``batch``, in float32.

    The caller normalises by the token count of the whole step. With ``keep_logits`` only the span of
    positions that predict a target token goes through the output head (``logits_to_keep``): prompt
    positions need no vocabulary-sized logits, which saves time and most of the logits' memory.
    """
    import torch.nn.functional as F

    logits, labels, mask = _target_logits(model, batch, keep_logits)
    return F.cross_entropy(logits[mask].float(), labels[mask], reduction="sum")


def target_loss_per_row(model: Any, batch: dict[str, Any], keep_logits: bool) -> tuple[Any, Any]:
    """Per row of ``batch``: the summed target-token cross-entropy (float32) and the number of target
    tokens. The validation split's loss and its interval are built from these (same loss as training)."""
    import torch
    import torch.nn.functional as F

    logits, labels, mask = _target_logits(model, batch, keep_logits)
    ce = F.cross_entropy(logits.float().transpose(1, 2), torch.where(mask, labels, 0), reduction="none")
    return (ce * mask).sum(1), mask.sum(1)


def _target_logits(model: Any, batch: dict[str, Any], keep_logits: bool) -> tuple[Any, Any, Any]:
    """The logits of the positions that may predict a target token, their labels, and the target mask."""
    import torch

    from tinyslm.data.training import IGNORE_INDEX

    labels = batch["labels"][:, 1:]  # position t predicts token t + 1
    kwargs: dict[str, Any] = {}
    if keep_logits:
        cols = (labels != IGNORE_INDEX).any(0).nonzero().squeeze(1)
        keep = torch.arange(int(cols[0]), int(cols[-1]) + 1, device=labels.device)
        kwargs["logits_to_keep"] = keep
        labels = labels[:, keep]
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False, **kwargs
    ).logits
    if not keep_logits:
        logits = logits[:, :-1]
    return logits, labels, labels != IGNORE_INDEX
