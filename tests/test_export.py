"""GGUF export (issue 14): the file round-trips through transformers, llama.cpp decodes it token for token
like the torch engine, quantised files are scored into edge/ and the report's on-device table reads them,
and bad input is one clear line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tinyslm.core.errors import UserError
from tinyslm.export import ExportConfig, export_model, float_eval_settings, resolve_source
from tinyslm.export.gguf import parse_quant_types, pre_tokenizer, write_gguf

pytestmark = pytest.mark.usefixtures("one_thread")

try:  # the edge extra; `make test` installs it, so CI runs every test here
    import llama_cpp  # noqa: F401

    HAVE_LLAMA = True
except ImportError:
    HAVE_LLAMA = False
needs_llama = pytest.mark.skipif(not HAVE_LLAMA, reason="llama-cpp-python (the edge extra) is not installed")


def _tiny(arch: str, tokenizer, tiny_model_dir: Path):
    """The shared tiny random Llama, or a Qwen2 of the same size (untied head, biased q/k/v)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen2ForCausalLM

    if arch == "llama":
        return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    torch.manual_seed(0)
    shape = LlamaConfig.from_pretrained(tiny_model_dir).to_dict()
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    cfg = Qwen2Config(**{k: shape[k] for k in keep}, num_key_value_heads=2, tie_word_embeddings=False)
    return Qwen2ForCausalLM(cfg).eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_f32_gguf_round_trips_through_transformers(tmp_path, real_tokenizer, tiny_model_dir, arch):
    """Weights (q/k permuted for llama.cpp and back), tokenizer and chat template survive the file exactly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = _tiny(arch, real_tokenizer, tiny_model_dir)
    if arch == "qwen2":  # random biases, so a dropped or misnamed bias tensor would show
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.5)
    facts = write_gguf(model, real_tokenizer, tmp_path / "m.gguf", ftype="f32")
    assert facts["architecture"] == arch and facts["pre_tokenizer"] == "smollm"
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="m.gguf").eval()
    ids = real_tokenizer("Tom has 3 apples and buys 4 more. How many?")["input_ids"]
    torch.testing.assert_close(_logits(back, ids), _logits(model, ids), atol=1e-5, rtol=1e-5)
    tok = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m.gguf")
    text = "Question: 1,234 + 5 = ?\n\n  <|im_start|>user"
    assert tok(text)["input_ids"] == real_tokenizer(text)["input_ids"]
    assert tok.chat_template == real_tokenizer.chat_template


def test_f16_gguf_is_close_with_half_precision_matrices(tmp_path, real_tokenizer, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = _tiny("llama", real_tokenizer, tiny_model_dir)
    write_gguf(model, real_tokenizer, tmp_path / "f32.gguf", ftype="f32")
    write_gguf(model, real_tokenizer, tmp_path / "f16.gguf", ftype="f16")
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="f16.gguf").eval()
    ids = real_tokenizer("What is 7 times 8?")["input_ids"]
    torch.testing.assert_close(_logits(back, ids), _logits(model, ids), atol=2e-2, rtol=0)
    import gguf

    types = {
        t.name: (len(t.shape), t.tensor_type.name) for t in gguf.GGUFReader(tmp_path / "f16.gguf").tensors
    }
    assert {ty for dims, ty in types.values() if dims == 2} == {"F16"}  # matrices in half precision
    assert {ty for dims, ty in types.values() if dims == 1} == {
        "F32"
    }  # norms stay f32, as llama.cpp keeps them


def test_lora_is_merged_before_export(tmp_path, real_tokenizer, tiny_model_dir):
    """An adapter directory exports as base + adapter: the GGUF gives the PeftModel's logits."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for n, p in peft.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)  # a nonzero update, so forgetting to merge shows
    adapter = tmp_path / "adapter"
    peft.save_pretrained(adapter)
    real_tokenizer.save_pretrained(adapter)
    record = export_model(ExportConfig(source=str(adapter), quant="f32", output=str(tmp_path / "out")))
    assert record["files"]["f32"]["file"] == "model-f32.gguf"
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), gguf_file="model-f32.gguf").eval()
    ids = real_tokenizer("Sam has 5 pens.")["input_ids"]
    merged = _logits(peft.eval(), ids)
    torch.testing.assert_close(_logits(back, ids), merged, atol=1e-4, rtol=1e-4)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()  # (get_peft_model wrapped `base`)
    assert not torch.allclose(merged, _logits(plain, ids), atol=1e-3)  # the adapter did change it
    assert not list((tmp_path / "out").glob("*.tmp"))  # no temporary file left behind


def test_bad_input_is_one_clear_error(tmp_path, real_tokenizer, monkeypatch):
    with pytest.raises(UserError, match="unknown quant type q3_x; choose from"):
        parse_quant_types("q8_0,q3_x")
    with pytest.raises(UserError, match="empty"):
        parse_quant_types(" , ")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    with pytest.raises(UserError, match="has no final model"):
        resolve_source(str(run))
    with pytest.raises(UserError, match="no finished evaluation"):
        float_eval_settings(run)
    with pytest.raises(UserError, match="already a GGUF"):
        resolve_source(str(tmp_path / "x.gguf"))
    with pytest.raises(UserError, match="--output is required"):
        export_model(ExportConfig(source="smollm2-135m-instruct", quant="f32"))

    class Unknown:  # a tokenizer whose pre-tokenizer llama.cpp would not be told correctly
        def encode(self, text, add_special_tokens=False):
            return [len(text)]

    with pytest.raises(UserError, match="pre-tokenizer is not one tiny-slm knows"):
        pre_tokenizer(Unknown())


def test_no_space_and_no_extra_are_clear_errors(tmp_path, tiny_model_dir, monkeypatch):
    import builtins

    import tinyslm.export as export

    real_usage = shutil.disk_usage
    monkeypatch.setattr(export.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=1000))
    with pytest.raises(UserError, match="not enough space"):
        export_model(ExportConfig(source=str(tiny_model_dir), quant="f32", output=str(tmp_path / "o")))
    assert not list((tmp_path / "o").glob("*.gguf"))
    monkeypatch.undo()

    real_import = builtins.__import__

    def no_llama(name, *a, **k):
        if name == "llama_cpp":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_llama)
    with pytest.raises(UserError, match=r"pip install 'tiny-slm\[edge\]'"):
        export_model(ExportConfig(source=str(tiny_model_dir), quant="q8_0", output=str(tmp_path / "o")))


def test_cli_export_errors_are_one_line(tmp_path, capsys):
    from tinyslm.cli import main

    for argv, words in (
        (
            ["export", str(tmp_path / "missing"), "--quant", "q8_0", "--output", str(tmp_path / "o")],
            "does not exist",
        ),
        (
            ["export", str(tmp_path), "--quant", "q9_9", "--output", str(tmp_path / "o")],
            "unknown quant type q9_9",
        ),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # refused before anything was written


# ---------------------------------------------------------------------------------------------------
# llama.cpp: decoding, quantising, scoring (the edge extra).


@needs_llama
def test_llama_cpp_f32_decodes_the_same_tokens_as_torch(tmp_path, real_tokenizer, tiny_model_dir):
    """Same rows, same greedy tokens: continuous batching with slot refills and a shared prefix."""
    from transformers import AutoModelForCausalLM

    from tinyslm.evaluate.generation import decode_rows, shared_prefix_length
    from tinyslm.evaluate.llamacpp import LlamaCppModel

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    write_gguf(model, real_tokenizer, tmp_path / "m.gguf", ftype="f32")
    system = "You are a careful assistant who solves grade-school math problems step by step. "
    qs = ["Tom has 3 apples.", "What is 12 times 12?", "Sara reads 20 pages a day for a week.", "Hi", "7+8?"]
    rows = [real_tokenizer(system + q)["input_ids"] for q in qs]
    assert shared_prefix_length(rows) >= 16  # the prefix path is exercised
    ref = dict(decode_rows(model, real_tokenizer, rows, max_new_tokens=24, batch_size=2, stop_ids=[]))
    gguf_model = LlamaCppModel(tmp_path / "m.gguf", threads=1)
    got = dict(decode_rows(gguf_model, real_tokenizer, rows, max_new_tokens=24, batch_size=2, stop_ids=[]))
    assert got == ref


@needs_llama
def test_export_score_and_report_end_to_end(tmp_path, real_tokenizer, tiny_model_dir, data_dir):
    """A run directory -> f32 and q8_0 files -> scored into edge/ with the run's own settings -> Table 4."""
    from tinyslm.evaluate.runner import EvalConfig, run_eval
    from tinyslm.models.llamacpp import gguf_facts
    from tinyslm.report import write_report

    run = tmp_path / "study" / "tiny" / "full" / "seed1234"
    shutil.copytree(tiny_model_dir, run / "final")
    common = dict(
        benchmarks="gsm8k", limit=3, max_new_tokens=12, batch_size=2, data_dir=str(data_dir), progress=False
    )
    run_eval(EvalConfig(model=str(run / "final"), output=str(run / "eval"), **common))
    (run / "cell.json").write_text(
        json.dumps(
            {
                "id": "tiny/full/seed1234",
                "model": "tiny",
                "method": "full",
                "seed": 1234,
                "status": "finished",
            }
        )
    )
    cfg = ExportConfig(
        source=str(run), quant="f32,q8_0", score=True, threads=1, progress=False, data_dir=str(data_dir)
    )
    export_model(cfg)
    assert gguf_facts(run / "export" / "model-q8_0.gguf")["file_type"] == "q8_0"
    rec = json.loads((run / "export" / "export.json").read_text())
    assert set(rec["files"]) == {"f32", "q8_0"} and rec["architecture"] == "llama"
    assert rec["files"]["q8_0"]["tensor_types"]["q8_0"] > 0 and "f32" in rec["files"]["q8_0"]["tensor_types"]

    f32 = json.loads((run / "edge" / "f32" / "gsm8k" / "results.json").read_text())
    assert f32["engine"] == "llama-cpp" and f32["dtype"] == "f32" and f32["n"] == 3
    assert f32["tokens_per_s_batch1"] > 0 and f32["peak_rss_mib"] > 0 and f32["gguf_bytes"] > 0

    # Same prompts, same tokens, same scorer: the F32 file's predictions are the float model's.
    def preds(d: Path) -> dict:
        return {
            r["id"]: (r["prompt"], r["output"]) for r in map(json.loads, (d / "predictions.jsonl").open())
        }

    assert preds(run / "edge" / "f32" / "gsm8k") == preds(run / "eval" / "gsm8k")

    # A second export keeps the files; a second score resumes (nothing regenerated).
    again = export_model(cfg)
    assert again["scored"]["q8_0"]["gsm8k"]["n"] == 3

    out = tmp_path / "report"
    write_report([tmp_path / "study"], out)
    md = (out / "report.md").read_text()
    assert "Table 4: on device (llama.cpp on this CPU)" in md
    line = next(r for r in md.splitlines() if r.startswith("| tiny | full | f32 |"))
    assert "| 100.0 |" in line  # the F32 file gives the float model's output on every problem
