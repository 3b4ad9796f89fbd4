"""Where and how work runs: the device rule (one function for eval, train, study and analyze) and quiet
transformers progress bars. No heavy imports at module level.

The device rule: ``auto`` (CUDA when present), ``cpu`` and ``cuda`` work everywhere. Evaluation and
``tiny-slm analyze`` run in one process and also take ``cuda:N`` (and ``mps``). Training refuses ``cuda:N``:
it runs on ``accelerate``, which puts each process on the GPU of its local rank, so one process cannot be
sent to GPU N by a flag; ``CUDA_VISIBLE_DEVICES=N`` picks the GPU instead. A study trains and evaluates
with one ``hardware.device``, so it follows the training rule.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from tinyslm.core.errors import UserError

#: The devices training accepts (also the study's ``hardware.device``).
TRAIN_DEVICES = ("auto", "cpu", "cuda")


def device_problem(device: str, *, training: bool) -> str | None:
    """Why ``device`` cannot be used (one line, without the flag name), or None when it can.

    ``training=True`` applies the training rule (no ``cuda:N``; see the module docstring for why).
    """
    if device in TRAIN_DEVICES:
        return None
    if not training and (device == "mps" or re.fullmatch(r"cuda:\d+", device)):
        return None
    if training:
        return f"unknown device '{device}' (auto, cpu, cuda; use CUDA_VISIBLE_DEVICES to pick a GPU)"
    return f"unknown device '{device}' (auto, cpu, cuda, cuda:N)"


def pick_device(device: str) -> str:
    """The torch device for a single-process command (evaluation, analysis): ``auto`` resolved, checked."""
    import torch

    problem = device_problem(device, training=False)
    if problem is not None:
        raise UserError(f"--device: {problem}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available")
    return device


@contextlib.contextmanager
def hf_progress_bars(enabled: bool) -> Iterator[None]:
    """``enabled=False`` silences transformers' progress bars (loading/writing weights) for the block, then
    restores them."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
