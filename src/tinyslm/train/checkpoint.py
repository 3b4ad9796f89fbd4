"""Checkpoints and the trained weights a run leaves behind.

``checkpoints/step-N``: trainable weights + optimizer + scheduler + per-rank RNG + ``state.json`` (step,
clocks, divergence state), written to a temp dir and renamed into place, so a directory named ``step-N``
is always complete; resuming reads them back with loaders that cannot run code. ``final/`` and
``merged/``: the exported model (adapter or full weights, with the tokenizer), also renamed into place.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

from tinyslm.core.errors import UserError
from tinyslm.core.files import atomic_write_json, read_jsonl, writing


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a directory appears only by rename, once fully written)."""
    d = out / "checkpoints"
    if not d.is_dir():
        return []
    done = [
        p for p in d.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / "state.json").is_file()
    ]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def _trainable_state(model: Any) -> dict[str, Any]:
    return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _rng_state() -> dict[str, Any]:
    import torch

    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _fsync_tree(d: Path) -> None:
    """Flush a freshly written checkpoint to disk before it is renamed into place."""
    for f in d.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    accelerator: Any, out: Path, model: Any, optimizer: Any, scheduler: Any, state: dict, keep: int
) -> Path:
    """Write ``checkpoints/step-N`` via a temp dir + rename, then keep only the newest ``keep`` checkpoints.

    Only trainable weights are stored (for LoRA/DoRA that is the adapter; the base comes from --model again).
    Every rank stores its own RNG state; the main process writes the rest, ``state.json`` last.
    """
    from safetensors.torch import save_file

    ckdir = out / "checkpoints"
    final = ckdir / f"step-{state['step']:07d}"
    tmp = ckdir / f".tmp-step-{state['step']:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    _torch_save(_rng_state(), tmp / f"rng-rank{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        with writing(tmp / "trainable.safetensors"):
            save_file(_trainable_state(accelerator.unwrap_model(model)), tmp / "trainable.safetensors")
        _torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
        _torch_save(scheduler.state_dict(), tmp / "scheduler.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / "state.json", state)
        with writing(tmp):
            _fsync_tree(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a Python file object, so that a full disk is an ``OSError`` (and, through
    :func:`~tinyslm.core.files.writing`, one line naming ``path``) rather than torch's "unexpected pos" error."""
    import torch

    with writing(path), open(path, "wb") as f:
        torch.save(obj, f)


def _torch_load(path: Path) -> Any:
    """A checkpoint file, read with ``weights_only=True``: tensors, numbers, strings and containers only.

    A checkpoint directory is data the tool did not just write (it may have been copied, shared or
    tampered with); a full unpickler would run whatever code a crafted file names on ``--resume``.
    Anything the restricted unpickler refuses, or a damaged file, is one UserError naming the file.
    """
    import torch

    advice = (
        "delete that checkpoint directory to resume from an older one, or pass --overwrite to start afresh"
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        if type(e).__name__ != "UnpicklingError":  # missing or unreadable file, damaged archive
            first = (text.strip().splitlines() or [""])[0][:200]
            raise UserError(f"cannot load {path} ({type(e).__name__}: {first}); {advice}") from None
        # torch's own message suggests weights_only=False, which is exactly what must not happen here
        named = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        what = (
            f"it names {named.group(1)}, which loading would run or build"
            if named
            else "it holds pickle instructions a checkpoint never holds"
        )
        raise UserError(f"refusing to load {path}: not a plain checkpoint file ({what}); {advice}") from None


def load_checkpoint(ck: Path, model: Any, optimizer: Any, scheduler: Any) -> dict:
    """Restore trainable weights, optimizer and scheduler from ``ck``; returns its state.json.

    Every file is read by a loader that cannot run code: safetensors, JSON, and ``torch.load`` with
    ``weights_only=True`` (:func:`_torch_load`).
    """
    import torch
    from safetensors.torch import load_file

    try:
        weights = load_file(ck / "trainable.safetensors")
        state = json.loads((ck / "state.json").read_text(encoding="utf-8"))
    except Exception as e:  # damaged safetensors header or JSON, unreadable file
        raise UserError(
            f"cannot read checkpoint {ck} ({type(e).__name__}: {str(e)[:200]}); "
            "delete it to resume from an older one, or pass --overwrite to start afresh"
        ) from None
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != set(params):
        raise UserError(
            f"{ck} does not match this model/method (different trainable parameters); "
            "pass --overwrite to start afresh"
        )
    optimizer_state = _torch_load(ck / "optimizer.pt")
    scheduler_state = _torch_load(ck / "scheduler.pt")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(weights[n])
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(scheduler_state)
    return state


def restore_rng(ck: Path, rank: int, fallback_seed: int) -> bool:
    """This rank's RNG state from ``ck`` (dropout continues exactly); reseeds if ``ck`` had fewer ranks.

    The file holds tensors and Python's ``random`` state (a tuple of ints), all of which the
    ``weights_only`` loader accepts, so checkpoints written before that loader was enforced still resume.
    """
    import torch

    f = ck / f"rng-rank{rank}.pt"
    if not f.exists():
        torch.manual_seed(fallback_seed)
        return False
    state = _torch_load(f)
    try:
        torch.set_rng_state(state["torch"])
        random.setstate(tuple(state["python"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise UserError(
            f"{f} does not hold an RNG state ({type(e).__name__}: {str(e)[:200]}); "
            "delete that checkpoint directory to resume from an older one, or pass --overwrite"
        ) from None
    return True


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the metrics of steps 1..last_step only: the steps after the checkpoint run (and log) again."""
    if not path.exists():
        return
    keep = [r for r in read_jsonl(path, tolerate_torn_tail=True) if int(r.get("step", 0)) <= last_step]
    from tinyslm.core.files import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep))


# ---------------------------------------------------------------------------------------------------
# Export: final/ and merged/.


def save_final(model: Any, tokenizer: Any, dest: Path, adapter_base: str | None) -> None:
    """``final/``: the adapter (adapter_model.safetensors + adapter_config.json naming ``adapter_base``, the
    user's --model, as its base) or, with ``adapter_base`` None, the full model, with the tokenizer; written to
    a temp dir and renamed into place."""
    tmp = dest.parent / f".{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    extra: dict[str, Any] = {}
    if adapter_base is not None:
        model.peft_config["default"].base_model_name_or_path = adapter_base
        # We never resize or target the embeddings; without this peft looks the base up on the Hub to check
        # (a network call, and a warning offline or for an alias).
        extra["save_embedding_layers"] = False
    _save_dir(
        dest,
        tmp,
        lambda: (
            model.save_pretrained(tmp, safe_serialization=True, **extra),
            tokenizer.save_pretrained(tmp),
        ),
    )


def save_merged(model: Any, tokenizer: Any, dest: Path) -> None:
    """``merged/``: the adapter folded into the base weights, a full model (final/ keeps the adapter)."""
    tmp = dest.parent / f".{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    merged = model.merge_and_unload()
    _save_dir(
        dest,
        tmp,
        lambda: (merged.save_pretrained(tmp, safe_serialization=True), tokenizer.save_pretrained(tmp)),
    )


def _save_dir(dest: Path, tmp: Path, save: Any) -> None:
    """Run ``save`` (which writes ``tmp``), then swap ``tmp`` in for ``dest``. A full disk is one line naming
    ``dest`` (save_pretrained's own error names no file); ``tmp`` is removed and an older ``dest`` kept."""
    try:
        with writing(dest):
            save()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
