"""The package layout's rules (docs/architecture.md), checked on the source: imports point one way down the
layers, nothing imports the CLI, and no private name crosses a package boundary."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tinyslm"

# Lowest first. A package may import its own modules and any package listed before it, never one after.
LAYERS = [
    "core",
    "config",
    "scoring",
    "data",
    "models",
    "results",
    "evaluate",
    "train",
    "export",
    "diagnostics",
    "report",
    "study",
    "cli",
]


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _modules() -> dict[str, ast.Module]:
    out = {}
    for f in sorted(SRC.rglob("*.py")):
        name = ".".join(f.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")
        out[name] = ast.parse(f.read_text(encoding="utf-8"))
    return out


def _imports(tree: ast.Module) -> list[tuple[str, str]]:
    """(module imported, name taken from it) for every tinyslm import, function-local ones included."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tinyslm":
            out += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names if a.name.split(".")[0] == "tinyslm"]
    return out


def test_every_module_is_in_a_layer() -> None:
    stray = {m for m in _modules() if m != "tinyslm" and _package(m) not in LAYERS}
    assert not stray, f"modules outside the layered packages: {sorted(stray)}"


def test_imports_point_down_the_layers() -> None:
    bad = []
    for module, tree in _modules().items():
        if module == "tinyslm":
            continue
        mine = LAYERS.index(_package(module))
        for target, name in _imports(tree):
            pkg = _package(target) or name  # "from tinyslm import study" names the package
            if pkg in LAYERS and LAYERS.index(pkg) > mine:
                bad.append(f"{module} imports {target}.{name}".rstrip("."))
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_no_private_name_crosses_a_package() -> None:
    bad = []
    for module, tree in _modules().items():
        for target, name in _imports(tree):
            if name.startswith("_") and not name.startswith("__") and _package(target) != _package(module):
                bad.append(f"{module} imports {target}.{name}")
    assert not bad, "\n".join(bad)


def test_the_rule_checker_sees_a_violation() -> None:
    """The checks above are only worth something if they can fail: an upward import is caught."""
    tree = ast.parse("from tinyslm.cli.args import Parser\n")
    assert [(t, n) for t, n in _imports(tree)] == [("tinyslm.cli.args", "Parser")]
    assert LAYERS.index(_package("tinyslm.cli.args")) > LAYERS.index(_package("tinyslm.core.files"))
