"""One definition per setting, one device rule, and imports that point one way (issue 13, first part)."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tinyslm.cli.args import Parser
from tinyslm.cli.train import add_train_args, config_from_args
from tinyslm.config.settings import rule_text
from tinyslm.core.errors import UserError
from tinyslm.core.runtime import device_problem
from tinyslm.models.zoo import DEFAULT_MODEL
from tinyslm.study import grid as study
from tinyslm.train.config import RESUMABLE_CHANGES, TrainConfig, resolve_config

SRC = Path(__file__).resolve().parents[1] / "src" / "tinyslm"


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every import in ``path``, function-local ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
    return out


def test_the_library_never_imports_the_command_line():
    offenders = [
        f"{p.relative_to(SRC)}: {mod}"
        for p in SRC.rglob("*.py")
        if "cli" not in p.relative_to(SRC).parts
        for mod, names in _imports(p)
        if mod == "tinyslm.cli" or mod.startswith("tinyslm.cli.") or (mod == "tinyslm" and "cli" in names)
    ]
    assert offenders == []


def test_no_private_name_crosses_a_module_boundary():
    offenders = [
        f"{p.relative_to(SRC)}: {mod}.{n}"
        for p in SRC.rglob("*.py")
        for mod, names in _imports(p)
        if mod.startswith("tinyslm")
        for n in names
        if n.startswith("_") and not n.startswith("__")
    ]
    assert offenders == []


def _parser() -> Parser:
    p = Parser(prog="tiny-slm-train")
    add_train_args(p)
    return p


def test_train_flags_are_generated_from_every_config_field_with_its_default():
    cfg = config_from_args(_parser().parse_args(["--method", "lora", "--output", "out"]))
    assert cfg == TrainConfig(model=DEFAULT_MODEL, method="lora", output="out")
    flags = {a.dest for a in _parser()._actions} - {"help"}
    assert flags == {f.name for f in dataclasses.fields(TrainConfig)}


def _outside(f: dataclasses.Field) -> object:
    """A value just outside the field's bounds."""
    m = f.metadata
    if m.get("ge") is not None:
        return m["ge"] - 1
    if m.get("gt") is not None:
        return m["gt"]
    return m["lt"] if m.get("lt") is not None else m["le"] + 1


BOUNDED = [f for f in dataclasses.fields(TrainConfig) if rule_text(f) is not None and f.name != "seed"]


@pytest.mark.parametrize("f", BOUNDED, ids=lambda f: f.name)
def test_a_bound_written_on_the_field_is_enforced_by_flags_library_and_study(f, tmp_path, capsys):
    bad = _outside(f)
    flag = "--" + f.name.replace("_", "-")
    with pytest.raises(SystemExit) as e:
        _parser().parse_args(["--method", "lora", "--output", "o", flag, str(bad)])
    assert e.value.code == 2 and flag in capsys.readouterr().err
    with pytest.raises(UserError, match=rf"^{flag} must be "):
        resolve_config(TrainConfig(model="m", method="lora", output="o", **{f.name: bad}))
    for section, names in (("train", study.TRAIN_SECTION_FIELDS), ("overrides", study.OVERRIDE_FIELDS)):
        if f.name not in names:
            continue
        raw = {"models": ["m"], "methods": ["lora"]}
        raw[section] = {"lora": {f.name: bad}} if section == "overrides" else {f.name: bad}
        path = tmp_path / f"{section}.yaml"
        path.write_text(yaml.safe_dump(raw))
        with pytest.raises(UserError, match=rf"{section}\.(lora\.)?{f.name}: "):
            study.load_config(path)


def test_study_sections_take_the_config_defaults():
    section = study.TrainSection()
    default = TrainConfig(model="m", method="lora", output="o")
    assert {n: getattr(section, n) for n in study.TRAIN_SECTION_FIELDS} == {
        n: getattr(default, n) for n in study.TRAIN_SECTION_FIELDS
    }
    assert all(v is None for v in study.MethodOverrides().model_dump().values())


def test_resumable_settings_are_marked_on_the_fields():
    assert {"output", "device", "progress", "divergence_factor"} <= RESUMABLE_CHANGES
    assert not {"lr", "seed", "method", "model", "lora_r"} & RESUMABLE_CHANGES


@pytest.mark.parametrize(
    ("device", "training", "ok"),
    [("auto", True, True), ("cpu", True, True), ("cuda", True, True), ("cuda:1", False, True),
     ("cuda:1", True, False), ("gpu", False, False), ("cudax", False, False)],
)  # fmt: skip
def test_one_device_rule(device, training, ok):
    problem = device_problem(device, training=training)
    assert (problem is None) == ok
    if not ok and training:
        assert "CUDA_VISIBLE_DEVICES" in problem


def test_device_rule_is_the_same_for_training_and_the_study(tmp_path):
    with pytest.raises(UserError, match=r"^--device: unknown device 'cuda:1'.*CUDA_VISIBLE_DEVICES"):
        resolve_config(TrainConfig(model="m", method="lora", output="o", device="cuda:1"))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"models": ["m"], "methods": ["lora"], "hardware": {"device": "cuda:1"}}))
    with pytest.raises(UserError, match=r"hardware\.device: unknown device 'cuda:1'.*CUDA_VISIBLE_DEVICES"):
        study.load_config(path)


def test_old_module_entry_point_says_where_the_command_went():
    proc = subprocess.run([sys.executable, "-m", "tinyslm.train", "--help"], capture_output=True, text=True,
                          env={"PYTHONPATH": str(SRC.parent), "PATH": ""}, check=False)  # fmt: skip
    assert proc.returncode == 1 and "python -m tinyslm.cli.train" in proc.stderr
