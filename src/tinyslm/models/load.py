"""Loading: resolve a reference (alias, local directory, adapter directory, Hub id), then the tokenizer
and the model (with its adapter applied), with one clear error line for every way that can fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import warnings
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from tinyslm.core.errors import UserError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase
from tinyslm.models.zoo import (
    ADAPTER_CONFIG,
    ALIASES,
    alias_model_dir,
    install_alias,
    is_installed,
    load_gguf_model,
    load_gguf_tokenizer,
    plain_copy,
    unknown_alias_message,
)

# --------------------------------------------------------------------------------------------------------------
# Resolving references
# --------------------------------------------------------------------------------------------------------------

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+")


def _looks_like_path(ref: str) -> bool:
    """A reference the user clearly meant as a file or directory, not a Hub id (``org/name``) or alias."""
    return (
        ref.startswith((".", "~", os.sep))
        or (os.altsep is not None and os.altsep in ref)
        or ref.count("/") > 1
        or ref.lower().endswith(".gguf")
        or Path(ref).is_absolute()
    )


def resolve_model(ref: str, *, auto_install: bool = True) -> str:
    """Map a model reference to what ``from_pretrained`` needs.

    Alias -> its converted local directory (installed first if ``auto_install``); existing ``.gguf`` file or
    directory -> itself; ``org/name`` -> returned unchanged as a Hub id. Anything else is a UserError that says
    what was expected, so a typo never turns into a slow network lookup.
    """
    if not ref or not ref.strip():
        raise UserError(
            f"empty model name; use an alias ({', '.join(ALIASES)}), a path, or a Hugging Face id"
        )
    if ref in ALIASES:
        if is_installed(ref):
            return str(alias_model_dir(ref))
        if not auto_install:
            raise UserError(f"model '{ref}' is not installed; install it with: tiny-slm models install {ref}")
        return str(install_alias(ref))
    path = Path(ref).expanduser()
    if path.exists():
        if path.is_dir():
            return str(path)
        if path.suffix.lower() == ".gguf":
            return str(path)
        raise UserError(f"model path {ref} is a file but not a .gguf; pass a model directory or a .gguf file")
    if _looks_like_path(ref):
        raise UserError(f"model path {ref} does not exist")
    if _HUB_ID.fullmatch(ref):
        return ref
    raise UserError(unknown_alias_message(ref))


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    """An adapter's ``adapter_config.json`` as a dict; unreadable, not JSON or not an object is a UserError."""
    path = adapter_dir / ADAPTER_CONFIG
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: malformed JSON, or bytes that are not UTF-8
        raise UserError(f"cannot read {path}: {exc}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: expected a JSON object (a PEFT adapter config), got {type(cfg).__name__}")
    return cfg


def _adapter_base(adapter_dir: Path) -> str:
    """The base model an adapter directory was trained on, from its ``adapter_config.json``."""
    cfg = read_adapter_config(adapter_dir)
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise UserError(
            f"{adapter_dir / ADAPTER_CONFIG} does not name its base model (base_model_name_or_path); "
            "pass the base with --model and this directory as the adapter"
        )
    return str(base)


def _is_adapter_dir(path: str) -> bool:
    p = Path(path)
    return p.is_dir() and (p / ADAPTER_CONFIG).is_file() and not (p / "config.json").is_file()


def _check_model_dir(path: str) -> None:
    """A directory that is neither a checkpoint nor an adapter gets a clear message instead of a transformers trace."""
    p = Path(path)
    if p.is_dir() and not (p / "config.json").is_file() and not (p / ADAPTER_CONFIG).is_file():
        raise UserError(
            f"{path} is not a model checkpoint (no config.json) nor a PEFT adapter (no {ADAPTER_CONFIG}); "
            "pass a directory written by save_pretrained"
        )


# --------------------------------------------------------------------------------------------------------------
# The Hugging Face Hub: keep it working for online users, fail fast for offline ones
# --------------------------------------------------------------------------------------------------------------


def _hub_reachable() -> bool:
    """Whether to go to the Hub at all: not when ``HF_HUB_OFFLINE`` is set (read now, not at import), else probe."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return False
    from huggingface_hub import constants

    return False if constants.HF_HUB_OFFLINE else _probe_hub()


@lru_cache(maxsize=1)
def _probe_hub(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub endpoint opens within ``timeout`` seconds (asked once per process).

    huggingface_hub retries an unreachable host five times with back-off (~23 s here) before giving up, and has
    no setting for that. One cheap probe lets an offline run fall back to the local HF cache at once. Behind a
    proxy a direct connection proves nothing, so we then assume the Hub is reachable and let huggingface_hub
    decide.
    """
    from huggingface_hub import constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _from_hub(loader: Callable[..., Any], ref: str, *, is_model: bool = False, **kwargs: Any) -> Any:
    """``loader.from_pretrained(ref)`` for a Hub id, turning every "cannot get it" failure into one-line UserError.

    Offline, only the local Hugging Face cache is consulted (``local_files_only``), which either succeeds
    instantly or fails instantly.
    """
    from huggingface_hub.errors import HFValidationError

    online = _hub_reachable()
    if not online:
        kwargs["local_files_only"] = True
        if is_model:
            # transformers does not pass local_files_only on to its "is this a PEFT adapter repo?" lookup, which
            # then spends ~23 s in retries; adapter_kwargs reaches it.
            kwargs["adapter_kwargs"] = {"local_files_only": True}
    try:
        return loader.from_pretrained(ref, **kwargs)
    except (OSError, HFValidationError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if online:
            raise UserError(f"cannot load model '{ref}' from the Hugging Face Hub: {reason[:200]}") from None
        raise UserError(
            f"cannot load model '{ref}': not an offline alias, not a local path, and the Hugging Face Hub could "
            f"not be reached (nor is it in the local HF cache); try an offline alias: {', '.join(ALIASES)}"
        ) from None


def _is_hub_ref(resolved: str) -> bool:
    return not Path(resolved).exists()


def _canonical_ref(ref: str) -> str:
    """One spelling per model, to compare an adapter's recorded base with ``--model``: an alias and its cache
    directory are the same model, and so are two spellings of one local path."""
    if ref in ALIASES:
        return str(alias_model_dir(ref).resolve())
    path = Path(ref).expanduser()
    return str(path.resolve()) if path.exists() else ref


def same_model_ref(a: str, b: str) -> bool:
    """Whether two model references name the same model (alias = its cache dir; paths compared resolved)."""
    return _canonical_ref(a) == _canonical_ref(b)


def warn(message: str, notes: dict[str, Any] | None = None) -> None:
    """One warning line on stderr, also kept in ``notes["warnings"]`` so that results.json records it."""
    print(f"tinyslm: warning: {message}", file=sys.stderr, flush=True)
    if notes is not None:
        notes.setdefault("warnings", []).append(message)


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


@contextlib.contextmanager
def _no_load_report() -> Iterator[None]:
    """transformers logs a multi-line LOAD REPORT table for missing, unused or mismatched weights; we read the
    same facts from ``output_loading_info`` and say what matters in one line, so the table is held back."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def _config_errors() -> tuple[type[BaseException], ...]:
    """Exceptions a config.json that contradicts itself raises (e.g. hidden_size not a multiple of the heads):
    huggingface_hub's strict-dataclass validation (transformers 5), absent from older releases."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:
        return ()
    return (StrictDataclassError,)


def check_loading_info(
    info: dict[str, Any], where: str, *, allow_missing_weights: bool, notes: dict[str, Any] | None = None
) -> None:
    """Refuse a checkpoint whose config.json does not describe its weights (from transformers' loading info).

    transformers fills weights that the config declares but the files lack with random values and only logs
    "newly initialized", so a config that declares more layers than were saved evaluates a partly random
    model without a word. Shape mismatches (e.g. a changed ``hidden_size``) are refused always; missing
    weights unless ``allow_missing_weights`` (then warned and recorded); unused weights are warned and recorded.
    """
    mismatched = sorted(info.get("mismatched_keys") or [], key=str)  # a stable first example to name
    if mismatched:
        first = mismatched[0]
        if isinstance(first, (tuple, list)) and len(first) == 3:
            key, in_ckpt, in_model = first
            what = f"{key} is {list(in_ckpt)} in the weights but {list(in_model)} by the config"
        else:
            what = f"{first} has another shape in the weights"
        raise UserError(
            f"{where}: config.json does not match the weights: {what} ({len(mismatched)} tensor(s) differ); "
            "restore the config.json saved with these weights (hidden_size, intermediate_size, heads, ...)"
        )
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        if not allow_missing_weights:
            raise UserError(
                f"{where}: the weights lack {len(missing)} tensor(s) that config.json declares (e.g. {missing[0]}), "
                "which would be randomly initialised; fix config.json (num_hidden_layers, ...), or pass "
                "--allow-missing-weights to evaluate or train it that way on purpose"
            )
        warn(
            f"{where}: {len(missing)} weight tensor(s) missing from the checkpoint are randomly initialised "
            f"(e.g. {missing[0]}); --allow-missing-weights was given",
            notes,
        )
        if notes is not None:
            notes["missing_weights"] = missing
    unused = sorted(info.get("unexpected_keys") or [])
    if unused:
        warn(
            f"{where}: {len(unused)} weight tensor(s) in the checkpoint are not used by the model config.json "
            f"describes (e.g. {unused[0]}); does it declare fewer layers than were saved?",
            notes,
        )
        if notes is not None:
            notes["unused_weights"] = unused


_SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from checkpoint, "
    r"the shape in current model is torch\.Size\((\[[^\]]*\])\)"
)


def _apply_adapter(model: Any, adapter: Path, model_ref: str, notes: dict[str, Any] | None) -> Any:
    """``PeftModel.from_pretrained`` with every way an adapter directory can be wrong as one UserError.

    An adapter whose ``adapter_config.json`` names another base model loads without complaint from peft when
    the shapes agree; we warn (and ``notes`` records both names), since its results are then for a pairing
    it was not trained for.
    """
    from peft import PeftConfig, PeftModel
    from safetensors import SafetensorError

    cfg = read_adapter_config(adapter)
    recorded = cfg.get("base_model_name_or_path")
    recorded = str(recorded) if recorded else None
    if not isinstance(cfg.get("peft_type"), str):
        raise UserError(f"{adapter / ADAPTER_CONFIG} names no peft_type (LORA, ...); is it a PEFT adapter?")
    try:
        config = PeftConfig.from_pretrained(str(adapter))
    except (KeyError, TypeError, ValueError) as exc:  # unknown peft_type, values of the wrong type
        raise UserError(
            f"{adapter / ADAPTER_CONFIG} is not a valid PEFT adapter config ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    if not any((adapter / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin")):
        raise UserError(
            f"adapter {adapter} has no weights (adapter_model.safetensors); was it saved completely?"
        )
    try:
        with (
            warnings.catch_warnings()
        ):  # peft asks transformers 5 for a renamed attribute: not the user's concern
            warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
            peft_model = PeftModel.from_pretrained(model, str(adapter), config=config)
    except RuntimeError as exc:  # torch's load_state_dict: "size mismatch for <key>: copying a param ..."
        mismatches = _SIZE_MISMATCH.findall(str(exc))
        if not mismatches:
            raise
        key, in_adapter, in_model = mismatches[0]
        base = f" ({ADAPTER_CONFIG} names '{recorded}')" if recorded else ""
        raise UserError(
            f"adapter {adapter} does not fit model '{model_ref}': it was made for a base of other sizes{base}; "
            f"{key} is {in_adapter} in the adapter but {in_model} in the model ({len(mismatches)} tensor(s) differ)"
        ) from None
    except TypeError as exc:  # peft compares config values only when it builds the layers (r: "four")
        raise UserError(
            f"{adapter / ADAPTER_CONFIG} is not a valid PEFT adapter config: a value has the wrong type "
            f"({_first_line(exc)})"
        ) from None
    except SafetensorError as exc:
        raise UserError(
            f"adapter weights in {adapter} are damaged or truncated ({_first_line(exc)})"
        ) from None
    except (OSError, ValueError) as exc:  # target modules absent from this model, unreadable files
        raise UserError(f"cannot apply adapter {adapter} to '{model_ref}': {_first_line(exc)}") from None
    if notes is not None:
        notes["adapter_base_model"] = recorded
    if recorded and not same_model_ref(recorded, model_ref):
        warn(
            f"adapter {adapter} was trained on '{recorded}' (its {ADAPTER_CONFIG}) but is applied to "
            f"'{model_ref}'; the shapes agree, so it loads, but results are for this other pairing",
            notes,
        )
    return peft_model


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------


def _finish_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Batching needs a pad token; models without one pad with end-of-sequence, which attention masks hide."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif getattr(tokenizer, "unk_token", None) is not None:
            tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def load_tokenizer(ref: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer for any model reference (alias, .gguf, checkpoint or adapter dir, Hub id), with a pad token.

    For an adapter directory the tokenizer saved next to the adapter wins (training may have added tokens),
    else the base model's. The padding side is left to the caller (left for generation, right for training).
    """
    from transformers import AutoTokenizer

    resolved = resolve_model(ref)
    if resolved.lower().endswith(".gguf") and Path(resolved).is_file():
        return _finish_tokenizer(load_gguf_tokenizer(Path(resolved)))
    if _is_adapter_dir(resolved) and not (Path(resolved) / "tokenizer_config.json").is_file():
        return load_tokenizer(_adapter_base(Path(resolved)), trust_remote_code=trust_remote_code)
    _check_model_dir(resolved)
    if _is_hub_ref(resolved):
        tok = _from_hub(AutoTokenizer, resolved, trust_remote_code=trust_remote_code)
    else:
        try:
            tok = AutoTokenizer.from_pretrained(resolved, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise UserError(
                f"cannot load a tokenizer from {resolved}: {str(exc).splitlines()[0][:200]}"
            ) from None
    return _finish_tokenizer(tok)


def default_dtype(device: str | torch.device) -> torch.dtype:
    """bfloat16 on CUDA (half the memory, native speed), float32 on CPU (bf16 matmuls are slow and lossy there)."""
    import torch

    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def load_model(
    ref: str,
    *,
    adapter: str | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    merge_adapter: bool = False,
    allow_missing_weights: bool = False,
    notes: dict[str, Any] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load model and tokenizer for ``ref`` (see module docstring), optionally with a PEFT adapter, in eval mode.

    ``ref`` may itself be an adapter directory: its base model is loaded, then the adapter. A ``.gguf`` file is
    converted in memory to a plain model so it can be fine-tuned. ``merge_adapter`` folds the adapter into the
    weights (faster inference, a plain model again). A checkpoint whose config.json does not describe its
    weights is refused (see :func:`check_loading_info`; ``allow_missing_weights`` lets missing ones through).
    ``notes``, when given, receives what results should record: warnings, the adapter's recorded base model,
    missing or unused weights.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    dtype = dtype or default_dtype(device)
    base_ref, resolved = ref, resolve_model(ref)
    if _is_adapter_dir(resolved):
        if adapter is not None:
            raise UserError(f"{ref} is itself an adapter directory; pass its base model with --model instead")
        base_ref = _adapter_base(Path(resolved))
        adapter, resolved = resolved, resolve_model(base_ref)
    if adapter is not None:
        adapter_path = Path(adapter).expanduser()
        if not (adapter_path / ADAPTER_CONFIG).is_file():
            what = "does not exist" if not adapter_path.exists() else f"has no {ADAPTER_CONFIG}"
            raise UserError(f"adapter {adapter} {what}; pass a directory saved by PEFT (save_pretrained)")

    if resolved.lower().endswith(".gguf") and Path(resolved).is_file():
        model = plain_copy(load_gguf_model(Path(resolved), dtype))
        model.name_or_path = resolved  # adapters trained on it then record the .gguf as their base
    else:
        _check_model_dir(resolved)
        # Mismatched shapes are let through (not raised with a 60-line report) so that check_loading_info can
        # refuse them, and every other disagreement between config and weights, in one line.
        kwargs: dict[str, Any] = {
            "dtype": dtype,
            "trust_remote_code": trust_remote_code,
            "output_loading_info": True,
            "ignore_mismatched_sizes": True,
        }
        with _no_load_report():
            if _is_hub_ref(resolved):
                model, info = _from_hub(AutoModelForCausalLM, resolved, is_model=True, **kwargs)
            else:
                try:
                    model, info = AutoModelForCausalLM.from_pretrained(resolved, **kwargs)
                except SafetensorError as exc:
                    raise UserError(
                        f"cannot load model from {resolved}: its weights file is damaged or truncated ({_first_line(exc)})"
                    ) from None
                except (OSError, ValueError, *_config_errors()) as exc:
                    raise UserError(f"cannot load model from {resolved}: {_first_line(exc)}") from None
        check_loading_info(info, resolved, allow_missing_weights=allow_missing_weights, notes=notes)
        if base_ref in ALIASES:
            # Adapters record name_or_path as their base; the alias name is portable, the cache path is not.
            model.name_or_path = base_ref
            model.config._name_or_path = base_ref

    # A tokenizer saved beside the adapter wins (training may have added tokens); else the base model's.
    own_tokenizer = adapter is not None and (Path(adapter).expanduser() / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(adapter if own_tokenizer else resolved, trust_remote_code=trust_remote_code)
    if adapter is not None:
        model = _apply_adapter(model, Path(adapter).expanduser(), base_ref, notes)
        if merge_adapter:
            model = model.merge_and_unload()
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(device)
    model.eval()
    return model, tokenizer


def base_model(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (its adapter layers stay in place inside it); the model
    itself when it is not wrapped. Its ``forward`` signature and ``config`` are the architecture's."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_chat_model(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Chat models are prompted through their chat template; base models get plain text."""
    return bool(getattr(tokenizer, "chat_template", None))


_GENERIC_DIR_NAMES = re.compile(
    r"(model|merged|final|adapter|best|last|output|checkpoint-\d+)", re.IGNORECASE
)


def model_name_for_results(ref: str) -> str:
    """A short, stable, filesystem-safe name for result files.

    Alias -> the alias; Hub id -> its last part; ``.gguf`` -> file stem; directory -> its name, prefixed by
    the parent's when the name alone says nothing (``run1/checkpoint-500`` -> ``run1-checkpoint-500``).
    """
    if ref in ALIASES:
        return ref
    path = Path(ref.rstrip("/\\")).expanduser()
    if ref.lower().endswith(".gguf"):
        name = path.stem
    elif _HUB_ID.fullmatch(ref) and not path.exists():
        name = ref.split("/")[-1]
    else:
        name = path.name or str(path)
        if _GENERIC_DIR_NAMES.fullmatch(name) and path.parent.name:
            name = f"{path.parent.name}-{name}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"
