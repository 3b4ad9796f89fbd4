"""Atomic file writes and append-only JSONL, so an interrupted run never leaves a half-written file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def umask() -> int:
    """The process's file-creation mask (reading it means setting it; it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file + rename: readers see the old or the new file, never half."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file, fsync and rename (figures; text goes through here too)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600 files; results are meant to be shared like any file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json_object(path: str | Path) -> dict:
    """A JSON file that must hold one object; ``ValueError`` naming the file and the fault otherwise
    (unreadable, not JSON, or not an object). Each caller decides what a bad file means for it."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path} ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a JSON object")
    return obj


def read_jsonl(path: str | Path, *, tolerate_torn_tail: bool = False) -> Iterator[dict]:
    """Yield the records of a JSONL file.

    A run killed mid-write can leave a torn last line; with ``tolerate_torn_tail`` that line is skipped
    (the record will simply be recomputed), anywhere else a bad line is a ``ValueError`` naming file:line.
    """
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        lines = f.readlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if tolerate_torn_tail and i == len(lines) and not line.endswith("\n"):
                return
            raise ValueError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{i}: expected a JSON object, got {type(rec).__name__}")
        yield rec


def truncate_torn_tail(path: str | Path) -> None:
    """Drop a partial last line (no trailing newline) so that appends start on a clean line."""
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with path.open("r+b") as f:
            f.truncate(cut)


class JsonlAppender:
    """Append records one line at a time, flushed and fsynced, so a kill loses at most the line in flight."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_torn_tail(self.path)
        self._f = self.path.open("a", encoding="utf-8")

    def write(self, rec: dict) -> None:
        self._f.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def write_many(self, recs: Iterable[dict]) -> None:
        for r in recs:
            self.write(r)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
