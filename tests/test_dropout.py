"""The CPU LoRA dropout: nn.Dropout's distribution and gradient, a boolean mask saved, swapped in by type."""

from __future__ import annotations

import pytest
import torch

from tinyslm.models.dropout import UniformMaskDropout, use_uniform_mask_dropout


def test_keeps_one_minus_p_scaled_and_backprops_through_the_same_mask():
    torch.manual_seed(0)
    drop = UniformMaskDropout(0.05).train()
    x = torch.full((400, 1000), 2.0, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(0.95, abs=0.002)  # 400k draws: sd 0.0003
    assert torch.allclose(y[kept], torch.tensor(2.0 / 0.95))
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad != 0, kept)
    assert torch.allclose(x.grad[kept], torch.tensor(1.0 / 0.95))


def test_identity_in_eval_mode_and_at_zero():
    x = torch.randn(3, 4)
    assert UniformMaskDropout(0.5).eval()(x) is x
    assert UniformMaskDropout(0.0).train()(x) is x
    with pytest.raises(ValueError):
        UniformMaskDropout(1.0)


def test_saves_a_boolean_mask_not_a_float_copy():
    drop = UniformMaskDropout(0.1).train()
    x = torch.randn(8, 16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        drop(x)
    assert [t.dtype for t in saved] == [torch.bool]


def test_swaps_peft_dropout_layers_only():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    model = get_peft_model(
        LlamaForCausalLM(cfg), LoraConfig(r=2, lora_dropout=0.05, target_modules="all-linear")
    )
    assert use_uniform_mask_dropout(model) == 2 * 7
    drops = [m for m in model.modules() if isinstance(m, UniformMaskDropout)]
    assert len(drops) == 14 and all(d.p == 0.05 for d in drops)
    assert not any(type(m) is torch.nn.Dropout for m in model.modules() if m is not model)
    no_drop = get_peft_model(
        LlamaForCausalLM(cfg), LoraConfig(r=2, lora_dropout=0.0, target_modules="all-linear")
    )
    assert use_uniform_mask_dropout(no_drop) == 0  # nn.Identity stays: peft skips work for it
