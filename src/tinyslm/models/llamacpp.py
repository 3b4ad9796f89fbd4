"""llama.cpp from Python: the optional ``llama-cpp-python`` binding, GGUF file facts, the quant-type names.

Shared by the exporter (which quantises with llama.cpp) and the ``llama-cpp`` evaluation backend (which
decodes with it). ``llama-cpp-python`` is the ``edge`` extra: it compiles llama.cpp from source, so the
default install does not carry it, and every entry point says how to get it in one line.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from tinyslm.core.errors import UserError

# --quant names (lower case, as llama-quantize spells them) -> gguf.LlamaFileType member names.
QUANT_TYPES = {
    "f32": "ALL_F32",
    "f16": "MOSTLY_F16",
    "bf16": "MOSTLY_BF16",
    "q8_0": "MOSTLY_Q8_0",
    "q6_k": "MOSTLY_Q6_K",
    "q5_k_m": "MOSTLY_Q5_K_M",
    "q5_k_s": "MOSTLY_Q5_K_S",
    "q5_0": "MOSTLY_Q5_0",
    "q5_1": "MOSTLY_Q5_1",
    "q4_k_m": "MOSTLY_Q4_K_M",
    "q4_k_s": "MOSTLY_Q4_K_S",
    "q4_0": "MOSTLY_Q4_0",
    "q4_1": "MOSTLY_Q4_1",
    "q3_k_m": "MOSTLY_Q3_K_M",
    "q2_k": "MOSTLY_Q2_K",
}


def import_llama_cpp() -> Any:
    """The ``llama_cpp`` binding, or one clear error naming the extra that provides it."""
    try:
        import llama_cpp
    except ImportError:
        raise UserError(
            "llama.cpp is not installed: pip install 'tiny-slm[edge]' (builds llama-cpp-python from source: "
            "a C++ compiler and cmake, about 10-25 minutes on two cores)"
        ) from None
    except OSError as e:  # the binding is there but its shared library is not
        raise UserError(f"llama.cpp's library does not load ({e}); reinstall 'tiny-slm[edge]'") from None
    # llama.cpp logs every tensor it loads to stderr through the binding's logger; errors only, unless asked.
    if os.environ.get("TINYSLM_LLAMA_VERBOSE") != "1":
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    return llama_cpp


def gguf_facts(path: Path) -> dict[str, Any]:
    """What a GGUF says about itself: architecture, file type, context length, parameter count, size."""
    import gguf

    r = gguf.GGUFReader(path)
    arch = _field(r, "general.architecture")
    ftype = _field(r, "general.file_type")
    names = {int(getattr(gguf.LlamaFileType, v)): k for k, v in QUANT_TYPES.items()}
    return {
        "architecture": arch,
        "file_type": names.get(int(ftype), str(ftype)) if ftype is not None else None,
        "context_length": _field(r, f"{arch}.context_length"),
        "parameters": int(sum(int(np.prod(t.shape)) for t in r.tensors)),
        # what each tensor was stored as: a k-quant falls back to another type for rows it cannot split
        "tensor_types": dict(Counter(t.tensor_type.name.lower() for t in r.tensors).most_common()),
        "file_bytes": path.stat().st_size,
    }


def _field(reader: Any, key: str) -> Any:
    f = reader.get_field(key)
    if f is None:
        return None
    v = f.contents()
    return int(v) if isinstance(v, (np.integer,)) else v
