"""Provenance: digests of weights, data and chat template in results.json / run.json, cached hashing, and
resumes that refuse swapped files (but accept old result directories that never recorded them).

The evaluation and training checks run the tiny random Llama of conftest.py on a few problems; the hash
cache is redirected to a temporary $TINYSLM_HOME in every test that writes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from tinyslm.core.errors import UserError
from tinyslm.evaluate.runner import EvalConfig, run_eval
from tinyslm.results import provenance as pv

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A private $TINYSLM_HOME, so the hash cache of these tests is their own (set after the session's
    fixtures have found the installed alias)."""
    h = tmp_path / "home"
    monkeypatch.setenv("TINYSLM_HOME", str(h))
    return h


# ---------------------------------------------------------------------------------------------------
# Hashing and its cache.


def test_hash_cache_reads_a_file_once_and_again_after_a_change(tmp_path, home):
    f = tmp_path / "model.safetensors"
    f.write_bytes(os.urandom(300_000))
    want = hashlib.sha256(f.read_bytes()).hexdigest()
    cache = pv.HashCache()
    assert cache.sha256(f) == want and cache.hashed == [str(f.resolve())]
    assert cache.sha256(f) == want and len(cache.hashed) == 1  # same process: not read again
    saved = json.loads((home / "hash-cache.json").read_text())
    st = f.stat()
    assert saved == {f"{f.resolve()}|{st.st_mtime_ns}|{st.st_size}": want}
    again = pv.HashCache()  # a later run: the digest comes from the JSON file, the 300 KB are not read
    assert again.sha256(f) == want and again.hashed == []

    # Same size, new content, new mtime (a checkpoint rewritten in place): hashed again, old entry dropped.
    f.write_bytes(os.urandom(300_000))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    later = pv.HashCache()
    new = later.sha256(f)
    assert new == hashlib.sha256(f.read_bytes()).hexdigest() != want and later.hashed == [str(f.resolve())]
    assert list(json.loads((home / "hash-cache.json").read_text()).values()) == [new]


def test_damaged_hash_cache_costs_time_not_correctness(tmp_path, home):
    home.mkdir()
    (home / "hash-cache.json").write_text("{not json")
    f = tmp_path / "data.jsonl"
    f.write_text('{"question": "q", "answer": "#### 1"}\n')
    cache = pv.HashCache()
    assert cache.sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest() and cache.hashed


def test_sharded_checkpoint_hashes_its_index_and_every_shard(tmp_path, home):
    d = tmp_path / "ckpt"
    d.mkdir()
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": shards[0], "b": shards[1], "c": shards[0]}})
    )
    for s in shards:
        (d / s).write_bytes(os.urandom(1000))
    (d / "training_args.bin").write_bytes(b"not weights")
    rec = pv.weights_record(d, pv.HashCache())
    assert sorted(rec["files"]) == sorted(["model.safetensors.index.json", *shards])
    assert rec["files"][shards[1]] == hashlib.sha256((d / shards[1]).read_bytes()).hexdigest()
    assert rec["sha256"] == pv.combined_digest(rec["files"])
    (d / shards[1]).write_bytes(os.urandom(1001))
    assert pv.weights_record(d, pv.HashCache())["sha256"] != rec["sha256"]
    (d / shards[1]).unlink()
    broken = pv.weights_record(d, pv.HashCache())
    assert broken["sha256"] is None and shards[1] in broken["reason"]


def test_hub_model_digest_from_the_hf_cache_or_unknown_with_a_reason(tmp_path, home, monkeypatch):
    from huggingface_hub import constants

    hub = tmp_path / "hf"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    missing = pv.model_record("someorg/not-downloaded", pv.HashCache())
    assert missing["sha256"] is None and "Hugging Face cache" in missing["reason"]
    repo = hub / "models--someorg--cached"
    snap = repo / "snapshots" / ("ab" * 20)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("ab" * 20)
    (snap / "config.json").write_text("{}")
    (snap / "model.safetensors").write_bytes(b"weights")
    rec = pv.model_record("someorg/cached", pv.HashCache())
    assert rec["hub_revision"] == "ab" * 20
    assert rec["files"] == {"model.safetensors": hashlib.sha256(b"weights").hexdigest()}


def test_unknown_digests_never_count_as_a_mismatch():
    new = {"model": "a" * 64, "adapter": None, "data/benchmark": "b" * 64, "chat_template": "none"}
    assert pv.hash_mismatches(None, new) == []  # results written before provenance existed
    assert pv.hash_mismatches({"model": None, "data/benchmark": "b" * 64}, new) == []
    diffs = pv.hash_mismatches({**new, "data/benchmark": "c" * 64}, new)
    assert diffs == ["data file (benchmark): sha256 cccccccccccc then, bbbbbbbbbbbb now"]


def test_code_and_device_records():
    import subprocess

    import tinyslm

    code = pv.code_record()
    assert code["tiny_slm"]
    # Run from a git checkout (a developer's tree, CI's clean clone), the record must name its commit;
    # from an installed copy outside a checkout there is none to name.
    checkout = Path(tinyslm.__file__).resolve().parents[2]
    if (checkout / ".git").exists() and (checkout / "src" / "tinyslm").is_dir():
        head = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True
        )
        assert code["git_commit"] == head.stdout.strip()
        assert isinstance(code["git_dirty"], bool)
    else:
        assert code["git_commit"] is None
    dev = pv.device_record("cpu")
    assert dev["name"] and dev["threads"] >= 1


# ---------------------------------------------------------------------------------------------------
# Evaluation: results.json records the provenance; a resume refuses swapped files.


def _copy_model(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _reseed_weights(model_dir: Path) -> None:
    """Replace the checkpoint's weights with another random draw (same architecture, same file names)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(99)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir)).save_pretrained(model_dir)


def _eval_cfg(model: Path, out: Path, data_dir: Path, **kw) -> EvalConfig:
    base = dict(
        model=str(model),
        benchmarks="gsm8k",
        output=str(out),
        limit=3,
        batch_size=3,
        max_new_tokens=4,
        data_dir=str(data_dir),
        progress=False,
    )
    return EvalConfig(**{**base, **kw})


def _interrupt(bench_dir: Path) -> str:
    """What a kill leaves: no results.json, the last prediction not yet written. Returns the file's text."""
    (bench_dir / "results.json").unlink()
    lines = (bench_dir / "predictions.jsonl").read_text().splitlines(keepends=True)
    (bench_dir / "predictions.jsonl").write_text("".join(lines[:-1]))
    return "".join(lines[:-1])


@pytest.fixture
def own_data(tmp_path, data_dir) -> Path:
    """A private copy of the GSM8K files, so a test can change them."""
    d = tmp_path / "data"
    shutil.copytree(data_dir / "gsm8k", d / "gsm8k")
    return d


def test_results_json_records_weights_data_template_code_device(tiny_model_dir, tmp_path, own_data, home):
    res = run_eval(_eval_cfg(tiny_model_dir, tmp_path / "out", own_data, shots=1))["gsm8k"]
    prov = res["provenance"]
    weights = (tiny_model_dir / "model.safetensors").read_bytes()
    assert prov["model"]["files"] == {"model.safetensors": hashlib.sha256(weights).hexdigest()}
    assert prov["adapter"] is None
    for role, name in (("benchmark", "test.jsonl"), ("fewshot_pool", "train.jsonl")):
        f = own_data / "gsm8k" / name
        assert prov["data"][role] == {
            "path": str(f.resolve()),
            "sha256": hashlib.sha256(f.read_bytes()).hexdigest(),
        }
    from transformers import AutoTokenizer

    template = AutoTokenizer.from_pretrained(tiny_model_dir).chat_template
    assert prov["chat_template_sha256"] == hashlib.sha256(template.encode()).hexdigest()
    assert prov["code"]["tiny_slm"] and prov["device"]["threads"] >= 1
    run_config = json.loads((tmp_path / "out" / "gsm8k" / "run_config.json").read_text())
    assert run_config["hashes"] == pv.resume_hashes(prov)


def test_eval_resume_refuses_a_swapped_data_file(tiny_model_dir, tmp_path, own_data, home):
    cfg = _eval_cfg(tiny_model_dir, tmp_path / "out", own_data)
    run_eval(cfg)
    d = tmp_path / "out" / "gsm8k"
    kept = _interrupt(d)
    test_file = own_data / "gsm8k" / "test.jsonl"
    lines = test_file.read_text().splitlines(keepends=True)
    lines[-1] = lines[-1].replace(
        '"question": "', '"question": "Edited. ', 1
    )  # outside --limit 3, still a change
    test_file.write_text("".join(lines))
    with pytest.raises(
        UserError, match=r"predictions made from other files \(data file \(benchmark\): sha256"
    ):
        run_eval(cfg)
    assert (d / "predictions.jsonl").read_text() == kept and not (d / "results.json").exists()


def test_eval_resume_refuses_a_swapped_model(tiny_model_dir, tmp_path, own_data, home):
    model = _copy_model(tiny_model_dir, tmp_path / "model")
    cfg = _eval_cfg(model, tmp_path / "out", own_data)
    run_eval(cfg)
    d = tmp_path / "out" / "gsm8k"
    kept = _interrupt(d)
    _reseed_weights(model)
    with pytest.raises(UserError, match=r"other files \(model weights: sha256 \w{12} then, \w{12} now\)"):
        run_eval(cfg)
    assert (d / "predictions.jsonl").read_text() == kept and not (d / "results.json").exists()
    # --overwrite starts afresh with the new weights
    res = run_eval(_eval_cfg(model, tmp_path / "out", own_data, overwrite=True))["gsm8k"]
    assert res["resumed_predictions"] == 0
    assert res["provenance"]["model"]["files"]["model.safetensors"] == pv.sha256_file(
        model / "model.safetensors"
    )


def test_eval_dir_written_without_provenance_still_resumes(tiny_model_dir, tmp_path, own_data, home):
    cfg = _eval_cfg(tiny_model_dir, tmp_path / "out", own_data)
    run_eval(cfg)
    d = tmp_path / "out" / "gsm8k"
    old = json.loads((d / "run_config.json").read_text())
    del old["hashes"]  # what an older tiny-slm wrote
    (d / "run_config.json").write_text(json.dumps(old))
    _interrupt(d)
    res = run_eval(cfg)["gsm8k"]
    assert res["resumed_predictions"] == 2 and res["n"] == 3 and res["provenance"]["model"]["sha256"]
    assert "hashes" not in json.loads((d / "run_config.json").read_text()), (
        "old predictions are not re-labelled"
    )


def test_adapter_weights_are_hashed(tmp_path, home):
    d = tmp_path / "final"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "base")}))
    (d / "adapter_model.safetensors").write_bytes(b"lora")
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    (base / "model.safetensors").write_bytes(b"base")
    cache = pv.HashCache()
    # --model BASE --adapter DIR, and --model DIR (an adapter naming its base): the same two records
    for ref, adapter in ((str(base), str(d)), (str(d), None)):
        model_rec, adapter_rec = pv.model_provenance(ref, adapter, cache)
        assert model_rec["files"] == {"model.safetensors": hashlib.sha256(b"base").hexdigest()}
        assert adapter_rec["files"] == {"adapter_model.safetensors": hashlib.sha256(b"lora").hexdigest()}


# ---------------------------------------------------------------------------------------------------
# Training: run.json records the provenance; --resume refuses swapped files.


@pytest.fixture
def interrupted_run(tiny_model_dir, tmp_path, home) -> tuple[Path, Path, Path]:
    """A two-step LoRA run on copies of the tiny model and a small JSONL file, marked as interrupted after
    its last checkpoint (what a kill leaves, minus the wait). Returns (run dir, model dir, data file)."""
    from tinyslm.train.config import TrainConfig
    from tinyslm.train.recipe import train

    model = _copy_model(tiny_model_dir, tmp_path / "model")
    data = tmp_path / "train.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"}) + "\n"
            for i in range(8)
        )
    )
    out = tmp_path / "run"
    train(
        TrainConfig(
            model=str(model),
            method="lora",
            output=str(out),
            dataset=str(data),
            limit=4,
            max_steps=2,
            batch_size=2,
            micro_batch_size=2,
            max_length=128,
            save_every=1,
            seed=0,
            progress=False,
        )
    )
    run = json.loads((out / "run.json").read_text())
    run["status"] = "interrupted"
    (out / "run.json").write_text(json.dumps(run))
    return out, model, data


def _resume(out: Path, model: Path, data: Path) -> dict:
    from tinyslm.train.config import TrainConfig
    from tinyslm.train.recipe import train

    return train(
        TrainConfig(
            model=str(model),
            method="lora",
            output=str(out),
            dataset=str(data),
            limit=4,
            max_steps=2,
            batch_size=2,
            micro_batch_size=2,
            max_length=128,
            save_every=1,
            seed=0,
            progress=False,
            resume=True,
        )
    )


def test_run_json_records_provenance(interrupted_run):
    out, model, data = interrupted_run
    prov = json.loads((out / "run.json").read_text())["provenance"]
    assert prov["model"]["files"] == {"model.safetensors": pv.sha256_file(model / "model.safetensors")}
    assert prov["data"]["training_set"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert len(prov["chat_template_sha256"]) == 64 and prov["device"]["name"]


def test_train_resume_refuses_a_swapped_data_file(interrupted_run):
    out, model, data = interrupted_run
    before = (out / "run.json").read_bytes()
    data.write_text(data.read_text().replace("What is 7", "What is 70"))
    with pytest.raises(UserError, match=r"a training run made from other files \(data file \(training_set\)"):
        _resume(out, model, data)
    assert (out / "run.json").read_bytes() == before


def test_train_resume_refuses_a_swapped_model(interrupted_run):
    out, model, data = interrupted_run
    before = (out / "run.json").read_bytes()
    _reseed_weights(model)
    with pytest.raises(UserError, match=r"other files \(model weights: sha256"):
        _resume(out, model, data)
    assert (out / "run.json").read_bytes() == before


def test_train_run_written_without_provenance_still_resumes(interrupted_run):
    out, model, data = interrupted_run
    run = json.loads((out / "run.json").read_text())
    del run["provenance"]
    (out / "run.json").write_text(json.dumps(run))
    data.write_text(data.read_text() + "\n")  # unknown before, so not a mismatch
    run = _resume(out, model, data)
    assert run["status"] == "finished"
    assert "earlier steps were not recorded" in run["provenance"]["note"]
    assert run["provenance"]["data"]["training_set"]["sha256"] == pv.sha256_file(data)
