"""The slot decoder computes what the model's own forward computes, and continuous batching over it gives
exactly `generate`'s greedy tokens: rows refilling freed slots, a shared prefix, Qwen2 biases, unmerged
LoRA layers, and architectures it does not handle (which fall back to the model's forward)."""

from __future__ import annotations

import pytest
import torch

from tinyslm.evaluate import decoder
from tinyslm.evaluate.decoder import CASCADE_MIN_PREFIX, SlotDecoder, unsupported_reason
from tinyslm.evaluate.generation import decode_rows, shared_prefix_length

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(kind: str = "llama", vocab: int = 300, init: float = 0.2):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    # A large init makes the random model emit varied tokens (the default init repeats one token); a
    # middling one (0.05) gives varied outputs that repeat their spans, as a small model's loops do.
    common = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=init,
        max_position_embeddings=512,
    )
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common)).eval()  # q/k/v projections with biases
    return LlamaForCausalLM(LlamaConfig(**common)).eval()


class _Tok:
    """Enough of a tokenizer for decode_rows on token ids (no text stop rule fires on these strings)."""

    pad_token_id = 0
    eos_token_id = 1
    eos_token = "<eos>"
    padding_side = "left"

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"t{i}" for i in ids)

    def pad(self, batch, return_tensors="pt"):
        rows = batch["input_ids"]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        from transformers import BatchEncoding

        return BatchEncoding({"input_ids": ids, "attention_mask": mask})


def _rows(n: int, shared: int, vocab: int = 300, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(2, vocab, (shared,), generator=g).tolist()
    return [
        prefix
        + torch.randint(2, vocab, (int(torch.randint(3, 15, (1,), generator=g)),), generator=g).tolist()
        for _ in range(n)
    ]


def _stops_at_various_steps(model, tok, rows, max_new_tokens) -> list[int]:
    """Tokens that the free-running rows emit at different steps: used as stop tokens, rows then leave
    (and new rows enter) at many different steps."""
    free = dict(decode_rows(model, tok, rows, engine="hf", max_new_tokens=max_new_tokens, stop_ids=[]))
    picks = {
        free[i][k]
        for i, k in zip(range(len(rows)), (2, 5, 9, 13, 17, 25, 40, 40), strict=False)
        if k < len(free[i])
    }
    return sorted(picks)


@pytest.mark.parametrize(
    ("shared", "cpu_flash"),
    [
        (0, True),
        (20, True),  # no prefix; a short one copied into the slots
        (CASCADE_MIN_PREFIX + 10, True),
        (CASCADE_MIN_PREFIX + 10, False),  # read once: CPU flash op, or plain math (GPUs)
    ],
)
@torch.inference_mode()
def test_decoder_logits_equal_the_models_forward(shared, cpu_flash, monkeypatch):
    monkeypatch.setattr(decoder, "CPU_FLASH_LSE", cpu_flash and decoder.CPU_FLASH_LSE)
    model = _model()
    rows = _rows(3, shared=shared)
    p = shared_prefix_length(rows)
    dec = SlotDecoder(model, slots=3, capacity=40, device="cpu", prefix=rows[0][:p])
    assert dec.cascade == (p >= CASCADE_MIN_PREFIX)
    got = [dec.admit([r[p:] for r in rows])]
    nxt = got[0].argmax(-1)
    seqs = [r + [t] for r, t in zip(rows, nxt.tolist(), strict=True)]
    for _ in range(4):
        got.append(dec.step(nxt))
        nxt = got[-1].argmax(-1)
        seqs = [s + [t] for s, t in zip(seqs, nxt.tolist(), strict=True)]
    for j, seq in enumerate(seqs):  # each row alone through the model's forward, no cache
        ref = model(input_ids=torch.tensor([seq])).logits[0]
        for s, logits in enumerate(got):
            torch.testing.assert_close(logits[j], ref[len(rows[j]) - 1 + s], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shared", [0, 20, CASCADE_MIN_PREFIX + 10])
@torch.inference_mode()
def test_extend_feeds_runs_of_different_lengths_and_keep_drops_the_rest(shared):
    """Rows fed 1, 3 and 2 tokens in one pass get the logits the model's forward gives after each of them;
    of those runs only the kept tokens stay: the next step sees the row as if the rest were never fed."""
    model = _model()
    rows = _rows(3, shared=shared)
    p = shared_prefix_length(rows)
    dec = SlotDecoder(model, slots=3, capacity=40, device="cpu", prefix=rows[0][:p])
    first = dec.admit([r[p:] for r in rows]).argmax(-1).tolist()
    runs = [[first[0]], [first[1], 7, 8], [first[2], 9]]
    got = dec.extend(runs)
    assert got.shape[0] == 6
    at = 0
    for r, run in zip(rows, runs, strict=True):
        ref = model(input_ids=torch.tensor([r + run])).logits[0, len(r) :]
        torch.testing.assert_close(got[at : at + len(run)], ref, rtol=1e-5, atol=1e-5)
        at += len(run)
    kept = [1, 2, 1]  # row 1 keeps one guess (7), row 2 none (9 is dropped)
    dec.keep(kept)
    nxt = [5, 6, 4]
    after = dec.step(nxt)
    for j, (r, run) in enumerate(zip(rows, runs, strict=True)):
        seq = r + run[: kept[j]] + [nxt[j]]
        ref = model(input_ids=torch.tensor([seq])).logits[0, -1]
        torch.testing.assert_close(after[j], ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one non-empty run"):
        dec.extend([[1], [2]])
    with pytest.raises(ValueError, match="outgrew"):
        dec.extend([[1] * 41, [2], [3]])


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("shared", [0, 24, CASCADE_MIN_PREFIX + 10])
@pytest.mark.parametrize("draft", [0, 3])
def test_continuous_batching_gives_generates_tokens(kind, shared, draft, monkeypatch):
    model, tok = _model(kind), _Tok()
    rows = _rows(11, shared=shared)  # 11 rows through 4 slots: freed slots are refilled many times
    assert (shared_prefix_length(rows) >= 16) == bool(shared)
    stops = _stops_at_various_steps(model, tok, rows, 48)
    fed = _record_fed_runs(monkeypatch)
    kw = dict(max_new_tokens=48, batch_size=4, stop_ids=stops)
    fast = dict(decode_rows(model, tok, rows, engine="fast", draft=draft, **kw))
    ref = dict(decode_rows(model, tok, rows, engine="hf", **kw))
    assert sorted(fast) == list(range(len(rows)))
    assert fast == ref
    assert len({len(g) for g in fast.values()}) > 3, "rows should stop at many different steps"
    if not draft:
        assert {len(r) for r in fed} == {1}  # without guesses a decoding row is fed its last token only
    else:
        assert max(len(r) for r in fed) > 1


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("shared", [0, 24, CASCADE_MIN_PREFIX + 10])
def test_fixed_shape_steps_give_generates_tokens(kind, shared, monkeypatch):
    """The steps a CUDA graph replays (every slot fed, idle ones too; each row's whole cache stretch read
    under a mask), run eagerly here: the same tokens as generate, and every decoding step goes that way."""
    model, tok = _model(kind), _Tok()
    rows = _rows(11, shared=shared)
    stops = _stops_at_various_steps(model, tok, rows, 48)
    fed = _record_fed_runs(monkeypatch)
    steps = []
    fixed = SlotDecoder.fixed_step
    monkeypatch.setattr(SlotDecoder, "fixed_step", lambda self, t: steps.append(len(t)) or fixed(self, t))
    kw = dict(max_new_tokens=48, batch_size=4, stop_ids=stops)
    graphed = dict(decode_rows(model, tok, rows, engine="fast", graph=True, **kw))
    assert graphed == dict(decode_rows(model, tok, rows, engine="hf", **kw))
    assert not [r for r in fed if len(r)], "extend only admits new rows; no step goes through it"
    assert steps and min(steps) < 4 == max(steps), "steps with idle slots (the last rows) were taken too"


@pytest.mark.slow
@pytest.mark.parametrize("shared", [0, CASCADE_MIN_PREFIX + 10])
def test_a_compiled_fixed_step_gives_generates_tokens(shared):
    """``compile_step``: the fixed-shape step compiled by inductor (here its CPU code, on plain weights) is
    the same arithmetic: generate's tokens, with and without the shared prefix read apart."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()  # count this test's graphs only
    model, tok = _model("llama"), _Tok()
    rows = _rows(7, shared=shared)
    kw = dict(max_new_tokens=24, batch_size=4, stop_ids=_stops_at_various_steps(model, tok, rows, 24))
    compiled = dict(decode_rows(model, tok, rows, engine="fast", graph=True, compile_step=True, **kw))
    assert compiled == dict(decode_rows(model, tok, rows, engine="hf", **kw))
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]  # one graph, whole


def test_compiling_a_step_needs_the_fixed_shape():
    with pytest.raises(ValueError, match="needs graph=True"):
        SlotDecoder(_model("llama"), slots=2, capacity=8, device="cpu", compile_step=True)


def _record_fed_runs(monkeypatch) -> list[list[int]]:
    """The runs ``extend`` feeds to rows already decoding (not the prompts of new rows), call by call."""
    fed: list[list[int]] = []
    extend = SlotDecoder.extend

    def spy(self, runs, new=0):
        fed.extend(runs[: len(runs) - new])
        return extend(self, runs, new)

    monkeypatch.setattr(SlotDecoder, "extend", spy)
    return fed


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_confirmed_guesses_give_generates_tokens_in_fewer_steps(kind, monkeypatch):
    """A model whose outputs repeat their spans (as a small model's loops do): prompt-lookup guesses are
    confirmed often, a step keeps several tokens of a row, and the tokens are still generate's."""
    model, tok = _model(kind, init=0.05), _Tok()
    rows = _rows(11, shared=0)
    fed = _record_fed_runs(monkeypatch)
    kw = dict(max_new_tokens=48, batch_size=4, stop_ids=[])
    fast = dict(decode_rows(model, tok, rows, engine="fast", draft=3, **kw))
    assert fast == dict(decode_rows(model, tok, rows, engine="hf", **kw))
    # a row's first token comes with its prompt; every later one from a step that fed the row a run
    from_steps = sum(len(g) for g in fast.values()) - len(rows)
    assert from_steps > 1.3 * len(fed), "guesses should be confirmed often on this model"


def test_unmerged_lora_layers_are_applied():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        _model(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    with torch.no_grad():  # a non-zero B, so that the adapter changes the outputs
        for name, prm in model.named_parameters():
            if "lora_B" in name:
                prm.normal_(0, 0.5)
    model.eval()
    tok, rows = _Tok(), _rows(6, shared=20)
    kw = dict(max_new_tokens=12, batch_size=4, stop_ids=[])
    fast = dict(decode_rows(model, tok, rows, engine="fast", **kw))
    assert fast == dict(decode_rows(model, tok, rows, engine="hf", **kw))
    with model.disable_adapter():
        assert fast != dict(decode_rows(model, tok, rows, engine="fast", **kw))


def test_other_architectures_fall_back_to_the_models_forward():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=300, n_embd=32, n_layer=2, n_head=4, initializer_range=0.2)
    ).eval()
    assert "gpt2" in unsupported_reason(model, 100)
    tok, rows = _Tok(), _rows(5, shared=20)
    kw = dict(max_new_tokens=10, batch_size=2, stop_ids=[])
    assert dict(decode_rows(model, tok, rows, engine="fast", **kw)) == dict(
        decode_rows(model, tok, rows, engine="hf", **kw)
    )


def test_sliding_window_shorter_than_the_cache_is_refused():
    from transformers import MistralConfig, MistralForCausalLM

    model = MistralForCausalLM(
        MistralConfig(
            vocab_size=300,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            sliding_window=64,
        )
    )
    assert unsupported_reason(model, 64) is None
    assert "sliding" in unsupported_reason(model, 65)


def test_admitting_more_rows_than_free_slots_is_an_error():
    dec = SlotDecoder(_model(), slots=2, capacity=16, device="cpu")
    with pytest.raises(ValueError, match="free slots"):
        dec.admit([[3, 4], [5], [6]])
    with pytest.raises(ValueError, match="positions"):
        dec.admit([list(range(2, 20))])
