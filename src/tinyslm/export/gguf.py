"""A transformers model in memory -> a GGUF file llama.cpp runs, then llama.cpp's own quantiser.

Why not llama.cpp's ``convert_hf_to_gguf.py``: it is not on PyPI as a library, it pins transformers 4.57
and cannot read a tokenizer config saved by transformers 5 (what every tiny-slm checkpoint has). The
format itself is small and well kept in the ``gguf`` package (llama.cpp's own ``gguf-py``: the writer, the
tensor-name map, the vocabulary helper), so this module writes the two architectures our zoo trains
(Llama: SmolLM2; Qwen2: Qwen2.5) with it and follows the converter's conventions where they matter:

* Llama's q/k projections are permuted from transformers' half-split rotary layout to llama.cpp's
  interleaved one (``_permute_rotary``; Qwen2 uses the NeoX layout on both sides and is written as is).
* The BPE pre-tokenizer is named by hashing the tokenizer's ids on llama.cpp's probe text, as its
  converter does; an unknown hash is refused rather than guessed (a wrong pre-tokenizer splits text
  differently and changes every answer).
* Tied embeddings write no ``output.weight``; llama.cpp then reuses ``token_embd``.

Quantisation is llama.cpp's own (``llama_model_quantize`` through the ``llama-cpp-python`` binding), from
an F32 file, so a q4_k_m here is the q4_k_m a user gets from ``llama-quantize``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tinyslm.core.errors import UserError
from tinyslm.core.files import writing
from tinyslm.models.llamacpp import QUANT_TYPES, import_llama_cpp

# llama.cpp's probe text for the BPE pre-tokenizer (convert_hf_to_gguf_update.py, ``CHK_TXT``): the ids a
# tokenizer gives it, hashed, name the pre-tokenizer llama.cpp must use.
PROBE_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ "
    "🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
# sha256 of str(ids of PROBE_TEXT) -> llama.cpp's pre-tokenizer name (values from its converter's table).
PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM, SmolLM2
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5, Qwen2, Qwen2.5
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # GPT-2
}

# transformers architecture -> (GGUF architecture, permute q/k for llama.cpp's rotary layout)
ARCHITECTURES = {
    "LlamaForCausalLM": ("llama", True),
    "Qwen2ForCausalLM": ("qwen2", False),
}

WRITTEN_DIRECTLY = ("f32", "f16")  # by this module; every other type goes through llama.cpp's quantiser


def parse_quant_types(spec: str) -> list[str]:
    """``"q8_0, Q4_K_M"`` -> ``["q8_0", "q4_k_m"]``; an unknown name is one clear error listing the known ones."""
    names = [s.strip().lower() for s in spec.split(",") if s.strip()]
    if not names:
        raise UserError("--quant is empty; give one or more of " + ", ".join(QUANT_TYPES))
    unknown = [n for n in names if n not in QUANT_TYPES]
    if unknown:
        raise UserError(f"unknown quant type {', '.join(unknown)}; choose from {', '.join(QUANT_TYPES)}")
    return list(dict.fromkeys(names))


def _permute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """transformers' half-split rotary rows -> llama.cpp's interleaved pairs, per head (the converter's
    ``LlamaModel.permute``); transformers' GGUF loader applies the inverse."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def pre_tokenizer(tokenizer: Any) -> str:
    """llama.cpp's name for the tokenizer's BPE pre-tokenizer, from the hash of its ids on the probe text."""
    ids = tokenizer.encode(PROBE_TEXT, add_special_tokens=False)
    digest = hashlib.sha256(str(ids).encode()).hexdigest()
    if digest not in PRE_TOKENIZERS:
        raise UserError(
            "this tokenizer's pre-tokenizer is not one tiny-slm knows how to name for llama.cpp "
            f"(probe hash {digest[:16]}...; known: {', '.join(sorted(set(PRE_TOKENIZERS.values())))})"
        )
    return PRE_TOKENIZERS[digest]


def _vocab(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings by id and their llama.cpp token types (added special tokens are CONTROL)."""
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        tok = by_id.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            looks_special = tok.startswith("<|") and tok.endswith("|>")
            special = bool(getattr(added[i], "special", False)) or looks_special
            tokens.append(tok)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(tok)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(theta if theta is not None else getattr(config, "rope_theta", 10000.0))


def _check_supported(model: Any) -> tuple[str, bool]:
    config = model.config
    archs = [type(model).__name__, *(getattr(config, "architectures", None) or [])]
    arch = next((a for a in archs if a in ARCHITECTURES), None)
    if arch is None:
        raise UserError(f"GGUF export supports {', '.join(ARCHITECTURES)}; this model is {archs[0]}")
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = (
        params.get("rope_type", params.get("type", "default")) if isinstance(params, dict) else "default"
    )
    if rope_type not in (None, "default"):
        raise UserError(f"GGUF export does not write rope scaling ({rope_type!r}) yet")
    return ARCHITECTURES[arch]


def write_gguf(
    model: Any, tokenizer: Any, dest: Path, *, ftype: str = "f32", name: str = "model"
) -> dict[str, Any]:
    """Write ``model`` (a plain transformers causal LM, adapters already merged) and ``tokenizer`` to ``dest``.

    ``ftype`` is ``f32`` or ``f16`` (2-D weights in half precision, norms and biases kept in f32, as
    llama.cpp does). The file is written beside ``dest`` and renamed into place, so a failed write never
    leaves a truncated GGUF that a later eval would load. Returns facts for ``export.json``.
    """
    import gguf

    if ftype not in WRITTEN_DIRECTLY:
        raise ValueError(f"write_gguf writes {WRITTEN_DIRECTLY}, not {ftype!r}")
    arch, permute = _check_supported(model)
    pre = pre_tokenizer(tokenizer)  # refused here, before anything is written
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with writing(dest):  # a full disk is one line naming the file
            w = gguf.GGUFWriter(tmp, arch)
            w.add_name(name)
            _write_hparams(w, model.config, ftype)
            _write_tokenizer(w, tokenizer, pre, int(model.config.vocab_size))
            n_params = _add_tensors(w, model, arch, permute, ftype)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
            os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "architecture": arch,
        "pre_tokenizer": pre,
        "parameters": n_params,
        "vocab_size": int(model.config.vocab_size),
    }


def _heads(cfg: Any) -> tuple[int, int, int]:
    """(query heads, key/value heads, head size)."""
    n_head = int(cfg.num_attention_heads)
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_head)
    return n_head, n_kv, int(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head)


def _write_hparams(w: Any, cfg: Any, ftype: str) -> None:
    """The hyperparameters llama.cpp's loader reads for the Llama and Qwen2 architectures."""
    import gguf

    n_head, n_kv, head_dim = _heads(cfg)
    w.add_context_length(int(cfg.max_position_embeddings))
    w.add_embedding_length(int(cfg.hidden_size))
    w.add_block_count(int(cfg.num_hidden_layers))
    w.add_feed_forward_length(int(cfg.intermediate_size))
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(_rope_theta(cfg))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(int(cfg.vocab_size))
    w.add_file_type(getattr(gguf.LlamaFileType, QUANT_TYPES[ftype]))


def _write_tokenizer(w: Any, tokenizer: Any, pre: str, vocab_size: int) -> None:
    """The BPE vocabulary, merges, special ids and chat template (the last three read by gguf's SpecialVocab
    from a saved copy of the tokenizer, the files it understands)."""
    import gguf

    tokens, types = _vocab(tokenizer, vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    with tempfile.TemporaryDirectory() as tok_dir:
        tokenizer.save_pretrained(tok_dir)
        special = gguf.SpecialVocab(tok_dir, load_merges=True, n_vocab=vocab_size)
    # add_bos as the tokenizer behaves (not as its config says): a BOS is added iff encoding adds one
    plain = tokenizer("a")["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    special.add_special_token["bos"] = len(plain) > len(bare) and plain[0] == tokenizer.bos_token_id
    special.add_special_token.pop("eos", None)
    special.add_to_gguf(w, quiet=True)


def _add_tensors(w: Any, model: Any, arch: str, permute: bool, ftype: str) -> int:
    """Every weight under llama.cpp's name (q/k permuted for Llama's rotary layout); the parameter count."""
    import gguf

    cfg = model.config
    n_head, n_kv, _ = _heads(cfg)
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), int(cfg.num_hidden_layers))
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    n_params = 0
    for hf_name, t in model.state_dict().items():
        if (tied and hf_name == "lm_head.weight") or hf_name.endswith("rotary_emb.inv_freq"):
            continue
        new = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise UserError(f"GGUF export: no llama.cpp name for tensor {hf_name}")
        data = t.detach().to("cpu").float().numpy()
        if permute and hf_name.endswith("q_proj.weight"):
            data = _permute_rotary(data, n_head)
        elif permute and hf_name.endswith("k_proj.weight"):
            data = _permute_rotary(data, n_kv)
        if ftype == "f16" and data.ndim == 2:
            data = data.astype(np.float16)
        w.add_tensor(new, np.ascontiguousarray(data))
        n_params += data.size
    return n_params


def quantize(src: Path, dest: Path, quant: str, *, threads: int | None = None) -> None:
    """``src`` (an F32 GGUF) -> ``dest`` in ``quant`` with llama.cpp's quantiser; written beside and renamed."""
    import gguf

    llama_cpp = import_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(getattr(gguf.LlamaFileType, QUANT_TYPES[quant]))
    params.nthread = threads or os.cpu_count() or 1
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0 or not tmp.is_file():
            raise UserError(
                f"llama.cpp could not quantise {src.name} to {quant} (code {rc}; is the disk full?)"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def read_export_record(path: Path) -> dict[str, Any] | None:
    """``export.json`` beside a GGUF (written by ``tiny-slm export``), or None."""
    try:
        return json.loads((path.parent / "export.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
