"""Provenance: which weights, data files, chat template, code and device made a result.

A result that cannot be traced cannot be trusted. ``results.json`` (evaluation) and ``run.json``
(training) carry a ``provenance`` record built here:

* ``model`` / ``adapter``: sha256 of every weight file that is loaded (a sharded checkpoint: its index and
  each shard it names), and one combined digest over them. File digests are cached in
  ``$TINYSLM_HOME/hash-cache.json`` keyed by resolved path + mtime_ns + size, so the 540 MB of a 135M model
  are read once, not on every run; a file that is rewritten gets a new mtime/size and is hashed again.
* ``data``: sha256 of every data file read (benchmark file, few-shot pool, training set), by role.
* ``chat_template_sha256``: the template text the prompts went through (``"none"`` for a base model).
* ``code``: the tiny-slm version and, in a git checkout, the commit and whether tracked files were modified.
* ``device``: the CPU model or GPU name and the intra-op thread count.

``resume_hashes`` reduces a record to the digests that results depend on; ``hash_mismatches`` compares two
of them for a resume. A digest that is missing or null (results written before these fields existed, a Hub
model not found in the local cache) is *unknown*: it never counts as a mismatch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Iterable
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from tinyslm.core.files import atomic_write_json

CACHE_NAME = "hash-cache.json"
SHORT = 12  # hex digits shown in the report
NO_TEMPLATE = "none"  # the chat template digest of a tokenizer without one (a base model): known, not unknown
INDEX_NAMES = (
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors.index.json",
)
_CHUNK = 1 << 20


# ---------------------------------------------------------------------------------------------------
# File digests, cached by path + mtime + size.


def cache_path() -> Path:
    """``$TINYSLM_HOME/hash-cache.json`` (the directory of tinyslm's converted models)."""
    from tinyslm.models.zoo import cache_home

    return cache_home() / CACHE_NAME


class HashCache:
    """sha256 of files, remembered across runs in a small JSON file.

    The key is ``resolved path|mtime_ns|size``: a file replaced in place (a swapped checkpoint) changes its
    mtime or size and is hashed again, so the cache cannot hide a swap that a resume check must see. A
    damaged or unwritable cache file only costs time (the digest is recomputed), never a wrong answer.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else cache_path()
        self._entries: dict[str, str] | None = None
        self.hashed: list[str] = []  # files actually read in this process (tests check the cache with it)

    def _load(self) -> dict[str, str]:
        if self._entries is None:
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self._entries = {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
            except (OSError, ValueError):
                self._entries = {}
        return self._entries

    @staticmethod
    def key(path: Path) -> str:
        st = path.stat()
        return f"{path.resolve()}|{st.st_mtime_ns}|{st.st_size}"

    def sha256(self, path: str | Path) -> str:
        p = Path(path).resolve()
        key = self.key(p)
        entries = self._load()
        if key in entries:
            return entries[key]
        digest = sha256_file(p)
        self.hashed.append(str(p))
        # Drop stale entries (an older mtime/size of this file, files since deleted, such as test or scratch
        # runs) so the cache does not grow with every rewrite.
        for k in list(entries):
            path_part = k.rsplit("|", 2)[0]
            if path_part == str(p) or not os.path.exists(path_part):
                del entries[k]
        entries[key] = digest
        with contextlib.suppress(OSError):
            atomic_write_json(self.path, entries)
        return digest


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def combined_digest(files: dict[str, str]) -> str:
    """One digest over several files: sha256 of the sorted ``name  digest`` lines (as sha256sum prints them)."""
    return sha256_text("".join(f"{files[name]}  {name}\n" for name in sorted(files)))


def short(digest: Any) -> str:
    """The first 12 hex digits, or a dash for an unknown digest."""
    return str(digest)[:SHORT] if isinstance(digest, str) and digest else "\u2014"


# ---------------------------------------------------------------------------------------------------
# Weights.


def weight_files(d: Path) -> list[Path]:
    """The files ``from_pretrained`` reads weights from in ``d``: a shard index and the shards it names when
    there is one, else the single-file weights (safetensors preferred, as transformers does)."""
    for name in INDEX_NAMES:
        index = d / name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError):
                shards = []
            return [index, *(d / s for s in shards)]
    safetensors = sorted(p for p in d.glob("*.safetensors") if p.is_file())
    if safetensors:
        return safetensors
    return sorted(
        p
        for p in d.iterdir()
        if p.is_file()
        and (
            p.suffix == ".gguf"
            or p.name.startswith(("pytorch_model", "adapter_model"))
            and p.suffix == ".bin"
        )
    )


def weights_record(path: str | Path, cache: HashCache) -> dict[str, Any]:
    """Digests of the weights at ``path`` (a directory or a single .gguf file)."""
    p = Path(path).expanduser()
    if p.is_file():
        files = [p]
        base = p.parent
    elif p.is_dir():
        files = weight_files(p)
        base = p
    else:
        return {"path": str(p), "sha256": None, "reason": f"{p} does not exist"}
    missing = [f for f in files if not f.is_file()]
    if not files or missing:
        why = (
            f"shard(s) missing: {', '.join(f.name for f in missing)}" if missing else "no weight files found"
        )
        return {"path": str(p.resolve()), "sha256": None, "reason": why}
    digests = {str(f.relative_to(base)): cache.sha256(f) for f in files}
    return {"path": str(p.resolve()), "files": digests, "sha256": combined_digest(digests)}


def _hub_snapshot(repo_id: str) -> Path | None:
    """The local HF-cache snapshot ``from_pretrained`` would load for ``repo_id`` (its ``main`` ref), if any."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, no huggingface_hub, a malformed id: all mean "cannot find the files"
        return None


def _adapter_base(adapter_dir: Path) -> str | None:
    try:
        base = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8")).get(
            "base_model_name_or_path"
        )
    except (OSError, ValueError, AttributeError):
        return None
    return str(base) if base else None


def _is_adapter_dir(p: Path) -> bool:
    return p.is_dir() and (p / "adapter_config.json").is_file() and not (p / "config.json").is_file()


def model_record(ref: str, cache: HashCache) -> dict[str, Any]:
    """The weights behind a model reference, resolved as ``models.load_model`` resolves it (alias -> its
    converted directory, path -> itself, Hub id -> the cached snapshot)."""
    from tinyslm.models.load import resolve_model

    try:
        resolved = resolve_model(ref, auto_install=False)
    except Exception as e:  # noqa: BLE001 - provenance never fails a run that has already loaded its model
        return {"ref": ref, "sha256": None, "reason": f"cannot resolve: {e}"}
    if Path(resolved).exists():
        return {"ref": ref, **weights_record(resolved, cache)}
    snap = _hub_snapshot(resolved)
    if snap is None:
        return {
            "ref": ref,
            "sha256": None,
            "reason": "a Hub id whose files were not found in the local Hugging Face cache",
        }
    return {"ref": ref, "hub_revision": snap.name, **weights_record(snap, cache)}


def model_provenance(
    ref: str, adapter: str | None, cache: HashCache
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(base model record, adapter record or None). A ``ref`` that is itself an adapter directory is split
    into its base model and the adapter, as ``models.load_model`` does."""
    p = Path(ref).expanduser()
    if adapter is None and _is_adapter_dir(p):
        base = _adapter_base(p)
        adapter_rec = weights_record(p, cache)
        if base is None:
            return {
                "ref": None,
                "sha256": None,
                "reason": f"{p}/adapter_config.json names no base model",
            }, adapter_rec
        return model_record(base, cache), adapter_rec
    return model_record(ref, cache), (weights_record(adapter, cache) if adapter else None)


# ---------------------------------------------------------------------------------------------------
# Data, template, code, device.


def data_record(source: str, cache: HashCache) -> dict[str, Any]:
    """A data file read (its digest), or a Hub dataset (no file of ours to hash: recorded as unknown)."""
    if source.startswith("hub:"):
        return {
            "path": source,
            "sha256": None,
            "reason": "loaded from the Hugging Face Hub through `datasets` (no single file to hash)",
        }
    p = Path(source).expanduser()
    if not p.is_file():
        return {"path": source, "sha256": None, "reason": "not a file"}
    return {"path": str(p.resolve()), "sha256": cache.sha256(p)}


def chat_template_sha256(tokenizer: Any) -> str:
    """sha256 of the chat template text (``"none"`` without one). A tokenizer with several named templates
    gets the digest of their JSON with sorted keys."""
    tpl = getattr(tokenizer, "chat_template", None)
    if not tpl:
        return NO_TEMPLATE
    return sha256_text(tpl if isinstance(tpl, str) else json.dumps(tpl, sort_keys=True, ensure_ascii=False))


def _package_dir() -> Path:
    """The ``tinyslm`` package folder, asked of the package itself: a module's own folder moves when the
    module moves into a subpackage (it did, and every record lost its commit until a test pinned it)."""
    import tinyslm

    return Path(tinyslm.__file__).resolve().parent


@lru_cache(maxsize=1)
def code_record() -> dict[str, Any]:
    """The tiny-slm version, and the git commit and dirty flag when the package runs from a git checkout.

    git is asked from the package's own directory with a short timeout, and only trusted when the work tree
    it reports is this package's checkout (``src/tinyslm`` inside it): an installed copy that merely sits
    inside some other repository must not record that repository's commit.
    """
    try:
        version: str | None = metadata.version("tiny-slm")
    except metadata.PackageNotFoundError:
        version = None
    out: dict[str, Any] = {"tiny_slm": version, "git_commit": None, "git_dirty": None}
    pkg = _package_dir()

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(
                ["git", "-C", str(pkg), *args],
                capture_output=True,
                text=True,
                timeout=3,
                check=False,
                env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if not top or (Path(top) / "src" / "tinyslm").resolve() != pkg:
        return out
    out["git_commit"] = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    out["git_dirty"] = None if status is None else bool(status)
    return out


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")) and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def device_record(device: str) -> dict[str, Any]:
    """The hardware behind ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``mps``) and torch's thread count."""
    import torch

    name = _cpu_name()
    if str(device).startswith("cuda") and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            name = torch.cuda.get_device_name(torch.device(device))
    elif str(device) == "mps":
        name = f"Apple MPS ({platform.machine()})"
    return {"type": str(device), "name": name, "threads": torch.get_num_threads(), "cpu": _cpu_name()}


def record(
    *,
    model: dict[str, Any],
    adapter: dict[str, Any] | None,
    data: dict[str, dict[str, Any]],
    chat_template: str,
    device: str,
) -> dict[str, Any]:
    """The ``provenance`` block of results.json / run.json."""
    return {
        "model": model,
        "adapter": adapter,
        "data": data,
        "chat_template_sha256": chat_template,
        "code": code_record(),
        "device": device_record(device),
    }


# ---------------------------------------------------------------------------------------------------
# Resume checks.


def resume_hashes(prov: dict[str, Any] | None) -> dict[str, str | None]:
    """The digests a result depends on, flat: ``model``, ``adapter``, ``data/<role>``, ``chat_template``."""
    if not isinstance(prov, dict):
        return {}
    out: dict[str, str | None] = {}
    for key in ("model", "adapter"):
        rec = prov.get(key)
        out[key] = rec.get("sha256") if isinstance(rec, dict) else None
    for role, rec in (prov.get("data") or {}).items():
        out[f"data/{role}"] = rec.get("sha256") if isinstance(rec, dict) else None
    out["chat_template"] = prov.get("chat_template_sha256")
    return out


_LABELS = {"model": "model weights", "adapter": "adapter weights", "chat_template": "chat template"}


def hash_mismatches(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """What differs between the digests recorded for a run (``old``) and the ones now (``new``).

    Only a digest known on both sides can differ: a missing key or null value is unknown (files written
    before provenance existed, a Hub model outside the local cache) and accepted.
    """
    out = []
    for key, now in new.items():
        was = (old or {}).get(key)
        if isinstance(was, str) and was and isinstance(now, str) and now and was != now:
            label = _LABELS.get(key) or (
                f"data file ({key.split('/', 1)[1]})" if key.startswith("data/") else key
            )
            out.append(f"{label}: sha256 {short(was)} then, {short(now)} now")
    return out


def describe_mismatch(where: Path | str, diffs: Iterable[str], what: str) -> str:
    """The one-line refusal: what changed, and the two ways forward."""
    return (
        f"{where} holds {what} made from other files ({'; '.join(diffs)}); the results would be mixed. "
        "Pass --overwrite to start afresh, or choose another --output"
    )


def training_provenance(
    model_ref: str,
    data_source: str,
    tokenizer: Any,
    device: str,
    prev_run: dict[str, Any] | None,
    out: Path | str,
) -> dict[str, Any]:
    """run.json's ``provenance`` for a training run; on a resume (``prev_run`` = the run.json found), refuses
    with a UserError when the base weights, the training data or the chat template differ from those the run
    started with. A run.json written before these fields existed is accepted, and the record says from which
    step on it is known."""
    from tinyslm.core.errors import UserError

    cache = HashCache()
    model_rec, _ = model_provenance(model_ref, None, cache)
    prov = record(
        model=model_rec,
        adapter=None,
        data={"training_set": data_record(data_source, cache)},
        chat_template=chat_template_sha256(tokenizer),
        device=device,
    )
    if prev_run is not None:
        old = prev_run.get("provenance")
        diffs = hash_mismatches(resume_hashes(old), resume_hashes(prov))
        if diffs:
            raise UserError(describe_mismatch(out, diffs, "a training run"))
        if not isinstance(old, dict):
            prov["note"] = (
                f"recorded when resuming after step {prev_run.get('step', '?')}; the files of the "
                "earlier steps were not recorded"
            )
        elif old.get("note"):
            prov["note"] = old["note"]
    return prov
