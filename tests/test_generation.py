"""The decoding engines give exactly the tokens of `model.generate` (greedy), rows stopping at any time.

`_decode_batch_fast` is the fallback for architectures the slot decoder does not cover (tested here on
Llama all the same); `generate(engine="fast")` runs continuous batching (tests/test_decoder.py)."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyslm.evaluate.generation import (
    MIN_SHARED_PREFIX,
    StopCheck,
    _decode_batch_fast,
    _decode_batch_hf,
    cut_at_stop,
    generate,
    greedy,
    shared_prefix_length,
)


def _prompts(tokenizer, data_dir, n: int) -> list[str]:
    rows = [json.loads(x) for x in (data_dir / "gsm8k" / "test.jsonl").read_text().splitlines()[:n]]
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": r["question"]}], tokenize=False, add_generation_prompt=True
        )
        for r in rows
    ]


@torch.inference_mode()
def test_fast_equals_hf_when_rows_stop_at_different_steps(real_tokenizer, data_dir):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = real_tokenizer
    torch.manual_seed(0)
    # Large init so that the random model emits varied tokens (the default init repeats one token).
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.2,
    )
    model = LlamaForCausalLM(cfg).eval()
    tok.padding_side = "left"
    rows = [tok(p, add_special_tokens=False)["input_ids"] for p in _prompts(tok, data_dir, 6)]
    assert shared_prefix_length(rows) >= MIN_SHARED_PREFIX  # the chat template's system turn: computed once
    kw = dict(max_new_tokens=24, pad_id=tok.pad_token_id, device="cpu")
    free = _decode_batch_hf(model, tok, rows, stop_ids=[tok.eos_token_id], **kw)
    # Make some tokens that the rows emit at different steps act as stop tokens, so that rows leave the
    # fast engine's batch one by one while the others go on.
    stops = sorted({g[k] for g, k in zip(free, (3, 7, 12, 30, 30, 30), strict=True) if k < len(g)})
    fast = _decode_batch_fast(model, tok, rows, stop_ids=stops, **kw)
    ref = _decode_batch_hf(model, tok, rows, stop_ids=stops, **kw)
    assert fast == ref
    assert len({len(g) for g in fast}) > 1, "the rows should have stopped at different steps"


def test_shared_prefix_leaves_every_row_a_token_of_its_own():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5]]) == 3
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter row keeps its last token
    assert shared_prefix_length([[7, 2], [1, 2]]) == 0
    assert shared_prefix_length([[1, 2, 3]]) == 0  # a lone row has nothing to share


@torch.inference_mode()
def test_fast_equals_hf_with_a_long_shared_prefix(tiny_model_dir, real_tokenizer, data_dir):
    """Few-shot prompts: hundreds of shared tokens, suffixes of different lengths padded after the prefix."""
    from transformers import AutoModelForCausalLM

    from tinyslm.data.benchmarks import Example
    from tinyslm.data.prompts import build_prompt

    tok = real_tokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    shots = [
        Example(
            id=f"s{i}",
            question=f"What is {i} plus {i}?",
            reference=str(2 * i),
            solution=f"{i} + {i} = {2 * i}\n#### {2 * i}",
        )
        for i in range(3)
    ]
    qs = [
        "How many legs do 3 cats have?",
        "Tom had 5 apples and ate 2 of them. How many apples are left now?",
        "What is 7 times 6?",
    ]
    rows = [
        tok(
            build_prompt(tok, Example(id=str(i), question=q, reference="0"), "number", shots),
            add_special_tokens=False,
        )["input_ids"]
        for i, q in enumerate(qs)
    ]
    assert shared_prefix_length(rows) > 100 and len({len(r) for r in rows}) == 3
    tok.padding_side = "left"
    kw = dict(max_new_tokens=12, stop_ids=[tok.eos_token_id], pad_id=tok.pad_token_id, device="cpu")
    assert _decode_batch_fast(model, tok, rows, **kw) == _decode_batch_hf(model, tok, rows, **kw)


def test_generate_returns_every_prompt_once(tiny_model_dir, real_tokenizer, data_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    prompts = _prompts(real_tokenizer, data_dir, 5)
    out = dict(generate(model, real_tokenizer, prompts, max_new_tokens=5, batch_size=2))
    assert sorted(out) == list(range(5))
    assert all(1 <= g.n_tokens <= 5 and g.prompt_tokens > 0 for g in out.values())


@pytest.mark.slow
def test_fast_engine_matches_generate_on_the_real_model(real_tokenizer, data_dir):
    """Token-for-token equality with HF generate on SmolLM2-135M-Instruct, fp32 CPU, 50 GSM8K prompts.

    96 new tokens is where most answers are still being written (so rows leave the fast engine's batch at
    many different steps, the case to get right) while the test stays near a minute on one core.
    """
    from tinyslm.models.load import load_model

    n = 50
    model, tok = load_model("smollm2-135m-instruct")
    prompts = _prompts(tok, data_dir, n)
    kw = dict(max_new_tokens=96, batch_size=16)
    fast = dict(generate(model, tok, prompts, engine="fast", **kw))
    ref = dict(generate(model, tok, prompts, engine="hf", **kw))
    assert [fast[i].n_tokens for i in range(n)] == [ref[i].n_tokens for i in range(n)]
    assert [fast[i].text for i in range(n)] == [ref[i].text for i in range(n)]
    assert len({fast[i].n_tokens for i in range(n)}) > 5, "rows should stop at many different steps"


@pytest.mark.slow
def test_fast_engine_matches_generate_on_the_real_model_few_shot(data_dir):
    """The same with 3-shot prompts (as `tiny-slm-eval --shots 3` builds them): ~640 shared tokens, long
    enough that the fast engine keeps the prefix in one place and merges its attention with each row's."""
    from tinyslm.data.benchmarks import get_benchmark, load_examples, plan_fewshot
    from tinyslm.data.prompts import build_prompt
    from tinyslm.evaluate.decoder import CASCADE_MIN_PREFIX
    from tinyslm.models.load import load_model

    n = 24
    model, tok = load_model("smollm2-135m-instruct")
    plan = plan_fewshot(load_examples(get_benchmark("gsm8k"), data_dir), 3, 1234, data_dir)
    prompts = [build_prompt(tok, e, "number", plan.exemplars) for e in plan.eval_examples[:n]]
    rows = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    assert shared_prefix_length(rows) >= CASCADE_MIN_PREFIX
    kw = dict(max_new_tokens=64, batch_size=8)
    fast = dict(generate(model, tok, prompts, engine="fast", **kw))
    ref = dict(generate(model, tok, prompts, engine="hf", **kw))
    assert [fast[i].text for i in range(n)] == [ref[i].text for i in range(n)]
    assert [fast[i].n_tokens for i in range(n)] == [ref[i].n_tokens for i in range(n)]


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(1, 5),
    vocab=st.integers(1, 300),
    values=st.integers(0, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_greedy_is_argmax_ties_included(rows, vocab, values, seed):
    """The engine's greedy pick is argmax's, ties to the lowest id (logits with few distinct values tie a lot),
    and so is it on a vocabulary as wide as SmolLM2's, where the reduction is split into vectorised blocks."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randint(0, values + 1, (rows, vocab), generator=g).float()
    assert torch.equal(greedy(logits), logits.argmax(-1))
    wide = torch.randint(0, values + 1, (rows, 49152), generator=g).float()
    wide[:, -1] = values + 1  # one clear maximum at the end, then a tie with it near the start
    wide[:, 7] = values + 1
    assert torch.equal(greedy(wide), wide.argmax(-1)) and greedy(wide).tolist() == [7] * rows
    assert torch.equal(greedy(logits.numpy()), logits.argmax(-1))  # llama.cpp's logits are numpy arrays


# Pieces an answer is made of, stop points included: the check must fire on exactly the token where the
# decoded text first reaches one, whichever way the tokenizer splits it.
_PIECES = [
    "####",
    " 42",
    "\n",
    "\n\n",
    "Question",
    ":",
    " Question:",
    "\\boxed{",
    "7",
    "}",
    " so",
    ".",
    "é",
    "’",
]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), min_size=1, max_size=14))
def test_the_stop_check_fires_where_decoding_the_whole_text_does(real_tokenizer, pieces):
    ids = real_tokenizer("".join(pieces), add_special_tokens=False)["input_ids"]
    check = StopCheck(real_tokenizer)
    fired = next((n for n in range(1, len(ids) + 1) if check(ids[:n])), None)
    full = next(
        (n for n in range(1, len(ids) + 1) if cut_at_stop(real_tokenizer.decode(ids[:n]))[1]),
        None,
    )
    assert fired == full
