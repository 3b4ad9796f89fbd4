"""Bounds on user inputs that the command-line parsers and the study schema share (no heavy imports).

Kept apart from :mod:`tinyslm.cli` so that library modules (the study schema) can check the same bounds
without importing the command line.
"""

from __future__ import annotations

#: The largest seed accepted. ``torch.manual_seed`` takes values up to 2**64 - 1, but training seeds its
#: generators with ``seed + epoch`` and ``seed + rank + step``; capping at a signed 64-bit integer leaves room
#: for those sums, so a seed that is accepted up front never overflows half-way through a run.
MAX_SEED = 2**63 - 1


def seed_problem(seed: object) -> str | None:
    """Why ``seed`` is not a usable seed (an integer in 0 .. MAX_SEED), or None when it is."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        return f"a seed must be an integer, got {type(seed).__name__}"
    if not 0 <= seed <= MAX_SEED:
        return f"a seed must be between 0 and 2**63-1 ({MAX_SEED}), got {seed}"
    return None
