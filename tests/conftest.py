"""Shared fixtures: the offline data directory, the real SmolLM2 tokenizer, a tiny random Llama."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: a second intra-op thread only adds synchronisation (and on a loaded 2-core machine it
    makes each step several times slower). Modules opt in with ``pytestmark = pytest.mark.usefixtures(
    "one_thread")``; the thread count is restored for the other modules."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The offline benchmark files (`../shared/data` beside the checkout, or $TINYSLM_DATA_DIR)."""
    d = Path(os.environ.get("TINYSLM_DATA_DIR") or REPO.parent / "shared" / "data").resolve()
    if not (d / "gsm8k" / "test.jsonl").is_file():
        pytest.skip(f"offline data directory not found at {d}")
    return d


@pytest.fixture(scope="session")
def real_tokenizer():
    """The real SmolLM2-135M-Instruct tokenizer (installed by `make setup`; installs it if missing)."""
    from tinyslm.models.load import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, real_tokenizer) -> Path:
    """A 2-layer random Llama with the real tokenizer, saved as a local checkpoint directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(real_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=real_tokenizer.bos_token_id,
        eos_token_id=real_tokenizer.eos_token_id,
        pad_token_id=real_tokenizer.pad_token_id,
    )
    d = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(d)
    real_tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def small_jsonl(tmp_path_factory) -> Path:
    """Sixteen short word problems for tiny training runs: prompt + target fit in 128 tokens of the real
    tokenizer. Shared by the training, hostile-input and diagnostics tests (one file, written once)."""
    import json

    rows = []
    for i in range(16):
        a, b = i + 2, (3 * i) % 7 + 1
        rows.append(
            {
                "question": f"Tom has {a} apples and gets {b} more. How many apples?",
                "answer": f"{a} + {b} = {a + b}.\n#### {a + b}",
            }
        )
    p = tmp_path_factory.mktemp("data") / "small.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p
