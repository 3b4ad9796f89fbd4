"""What a training run reports while it runs: peak memory, W&B/TensorBoard mirrors, the progress bar.

The metrics line itself (``metrics.jsonl``) is built by the recipe (:mod:`tinyslm.train`); these helpers
measure and forward it.
"""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path
from typing import Any

#: CPU allocations of at least this many bytes are mapped from, and returned to, the OS (glibc M_MMAP_THRESHOLD)
MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc malloc.h


def release_cpu_memory() -> str | None:
    """Make glibc hand every CPU allocation of 1 MiB or more back to the OS as soon as it is freed.

    Why: glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), so after the
    first micro-batch a training step's activations (10-30 MB each at 4,096 tokens) come from the heap,
    where freed blocks fragment and are kept. The resident set then grows well past what the step holds at
    once: LoRA on SmolLM2-135M (r=8, dropout 0.05, micro batch 8 x 512) peaked at 12.8 GB over two steps
    of the real trainer with glibc's default and at 7.6 GB with this (docs/speed.md). The price is a page
    fault on every fresh mapping, 10-25% of the step time in our runs, so it is ``--release-memory``, not
    the default. Once set, it holds for the rest of the process. A ``MALLOC_MMAP_THRESHOLD_`` in the
    environment already does the same and is reported instead. Returns what holds, for run.json.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return f"MALLOC_MMAP_THRESHOLD_={os.environ['MALLOC_MMAP_THRESHOLD_']} (from the environment)"
    if sys.platform != "linux":
        return None
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return None
    return f"mallopt(M_MMAP_THRESHOLD, {MMAP_THRESHOLD})" if ok else None


def reset_peak_memory(device: Any) -> bool:
    """Start a fresh peak-memory window; returns whether the CPU peak could be reset.

    CUDA: the allocator's peak statistics. CPU: the kernel's resident-set high-water mark (VmHWM), reset
    by writing 5 to /proc/self/clear_refs (Linux >= 4.0). Without the reset, a process that ran other work
    first (the study runs cells one after another in one process) would report that work's peak.
    """
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory_mib(device: Any) -> tuple[float, str]:
    """Peak memory since :func:`reset_peak_memory`: CUDA max allocated on GPU; on CPU the resident-set
    high-water mark (``cpu_peak_rss``), or where /proc is missing the process's lifetime peak
    (``cpu_max_rss_process``, an upper bound)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10, "cpu_peak_rss"
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return (rss / 2**20 if sys.platform == "darwin" else rss / 2**10), "cpu_max_rss_process"


def rss_mib() -> float | None:
    """The process's resident memory now (VmRSS), None where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**10
    except (OSError, ValueError, IndexError):
        pass
    return None


class Reporters:
    """Mirror each metrics line to W&B and/or TensorBoard (imported lazily; both are optional)."""

    def __init__(
        self, names: list[str], out: Path, config: dict, start_step: int, wandb_run_id: str | None = None
    ) -> None:
        """``wandb_run_id``: the id a resumed run had (its W&B run continues); a new one is made otherwise,
        and :attr:`wandb_run_id` says which, for the run record."""
        self.wandb = self.tb = None
        self.wandb_run_id: str | None = None
        if "wandb" in names:
            import wandb

            self.wandb_run_id = wandb_run_id or wandb.util.generate_id()
            self.wandb = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "tiny-slm"),
                name=out.name,
                dir=str(out),
                id=self.wandb_run_id,
                resume="allow",
                config=config,
            )
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run logged after its last checkpoint, as metrics.jsonl does
            self.tb = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=start_step + 1)

    def log(self, rec: dict) -> None:
        nums = {k: v for k, v in rec.items() if isinstance(v, (int, float)) and k != "step"}
        if self.wandb is not None:
            self.wandb.log({f"train/{k}": v for k, v in nums.items()}, step=rec["step"])
        if self.tb is not None:
            for k, v in nums.items():
                self.tb.add_scalar(f"train/{k}", v, rec["step"])

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
        if self.tb is not None:
            self.tb.close()


def progress_bar(total: int, initial: int, enabled: bool) -> Any:
    """A tqdm bar over the optimizer steps (``initial``: steps already done by a resumed run), or None."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
