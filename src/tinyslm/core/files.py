"""Atomic file writes and append-only JSONL, so an interrupted run never leaves a half-written file.

Also the two guards every writer shares: a full disk is one error line naming the file
(:func:`writing`), and one process at a time per output directory (:func:`exclusive_lock`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tinyslm.core.errors import UserError

# errno values that mean "the disk (or the user's quota) is full": the user's environment, not a bug.
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFullError(UserError):
    """No space left (or quota exceeded) while writing a file; the message names the file."""


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn a full disk inside the block into a :class:`DiskFullError` naming ``path``.

    Python's ``OSError`` from ``write``/``flush``/``fsync`` carries no file name ("[Errno 28] No space
    left on device"), so without this the user cannot tell which disk to clean up. Other errors pass.
    """
    try:
        yield
    except OSError as e:
        if e.errno in _DISK_FULL:
            raise DiskFullError(
                f"{os.strerror(e.errno).lower()} while writing {path}; free some space and rerun the same "
                "command (what was already written is kept and reused)"
            ) from None
        raise


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
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600 files; results are shared like any file
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
    if path.suffix == ".gz":  # a finished result's predictions, compressed for the repository
        import gzip

        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.readlines()
    else:
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


def predictions_file(bench_dir: Path) -> Path:
    """A benchmark directory's predictions: ``predictions.jsonl``, else its compressed form
    ``predictions.jsonl.gz`` (see scripts/pack_predictions.py), else the plain name (which does not exist)."""
    plain = bench_dir / "predictions.jsonl"
    packed = bench_dir / "predictions.jsonl.gz"
    return packed if not plain.exists() and packed.exists() else plain


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
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            truncate_torn_tail(self.path)
            self._f = self.path.open("a", encoding="utf-8")

    def write(self, rec: dict) -> None:
        with writing(self.path):
            self._f.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
            self._f.flush()
            os.fsync(self._f.fileno())

    def write_many(self, recs: Iterable[dict]) -> None:
        for r in recs:
            self.write(r)

    def close(self) -> None:
        with writing(self.path):
            self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
            return
        # Already failing (a full disk, most often): closing flushes the unwritten rest of the line and
        # would fail again; the first error is the one to report. A torn last line is redone on resume.
        with contextlib.suppress(OSError, UserError):
            self.close()


# ---------------------------------------------------------------------------------------------------
# One process per output directory.

LOCK_FILE = ".tinyslm.lock"
# Directories whose lock a parent process holds for us (the study runner launching data-parallel
# training into a cell it has locked): os.pathsep-separated resolved paths.
HELD_LOCKS_ENV = "TINYSLM_HELD_LOCKS"
_held_here: dict[str, int] = {}  # resolved directory -> nesting depth in this process


def _lock_key(directory: Path) -> str:
    return str(directory.expanduser().resolve())


def held_by_parent(directory: Path) -> bool:
    return _lock_key(directory) in os.environ.get(HELD_LOCKS_ENV, "").split(os.pathsep)


@contextlib.contextmanager
def exclusive_lock(directory: str | Path, what: str = "output directory") -> Iterator[None]:
    """Hold ``DIRECTORY/.tinyslm.lock`` exclusively while the block runs; a second process gets a
    :class:`UserError` naming the holder's PID.

    The lock is the OS's advisory ``flock``: the kernel drops it when the holder exits, however it dies
    (a SIGKILL, an OOM kill), so a lock file left behind never blocks a rerun; the PID written into it
    only serves the message. Re-entrant within one process (a study cell trains into its own, already
    locked, directory) and for directories a parent process holds for us (:data:`HELD_LOCKS_ENV`).
    The directory is created when missing.
    """
    directory = Path(directory).expanduser()
    key = _lock_key(directory)
    if key in _held_here or held_by_parent(directory):
        _held_here[key] = _held_here.get(key, 0) + 1
        try:
            yield
        finally:
            _held_here[key] -= 1
            if not _held_here[key]:
                del _held_here[key]
        return
    path = directory / LOCK_FILE
    with writing(path):
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{directory} is in use by another tiny-slm process ({_holder(fd)}, lock {path}); wait for "
                f"it to finish or stop it, or choose another {what}"
            ) from None
        except OSError as e:  # a file system without locks (some network mounts): say so, carry on
            print(
                f"warning: cannot lock {path} ({e}); make sure no other process writes to {directory}",
                file=sys.stderr,
            )
        with writing(path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held_here[key] = 1
        try:
            yield
        finally:
            del _held_here[key]
    finally:
        os.close(fd)  # releases the flock; the file stays (unlinking it would race with a waiting locker)


def _holder(fd: int) -> str:
    """'PID n' from the lock file, as far as the holder has written it."""
    try:
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        pid = ""
    return f"PID {pid}" if pid.isdigit() else "PID unknown"


# ---------------------------------------------------------------------------------------------------
# Names derived from user input.


def is_safe_component(name: str) -> bool:
    """Whether ``name`` can be one directory level under a root: not empty, not ``.``/``..`` (nor any
    all-dots name), no separator or NUL, not absolute. A model reference such as ``models/sub/..``
    otherwise yields ``..`` and the cell lands beside the study."""
    return (
        bool(name)
        and set(name) != {"."}
        and not any(c in name for c in ("/", "\\", "\0"))
        and not os.path.isabs(name)
    )


def contained(root: str | Path, path: str | Path) -> Path:
    """``path``, once it is certain to resolve inside ``root`` (symbolic links followed); a
    :class:`UserError` otherwise. The last guard before writing under a name built from user input."""
    r, p = Path(root).expanduser().resolve(), Path(path).expanduser().resolve()
    if p != r and r not in p.parents:
        raise UserError(f"refusing to write {path}: it resolves to {p}, outside {r}")
    return Path(path)
