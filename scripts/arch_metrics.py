"""Architecture facts of src/tinyslm (issue 13's before/after numbers).

    python scripts/arch_metrics.py [REPO]

Prints the longest functions, the import graph's cycles (strongly connected components, function-local
imports included) and every private name (``_x``) that one module takes from another, whether imported
(``from tinyslm.train import _x``) or reached through an imported module (``train._x``).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def load(repo: Path) -> dict[str, ast.Module]:
    root = repo / "src" / "tinyslm"
    mods = {}
    for f in sorted(root.rglob("*.py")):
        name = ".".join(f.relative_to(root.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = ast.parse(f.read_text(encoding="utf-8"))
    return mods


def facts(mods: dict[str, ast.Module]) -> tuple[list[tuple[int, str]], dict[str, set[str]], list[str]]:
    funcs, edges, private = [], {m: set() for m in mods}, []
    for m, tree in mods.items():
        aliases = {}  # local name -> tinyslm module
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                funcs.append((node.end_lineno - node.lineno + 1, f"{m}.{node.name}"))
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tinyslm"):
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    dst = full if full in mods else node.module
                    if dst in mods and dst != m:
                        edges[m].add(dst)
                    if full in mods:
                        aliases[a.asname or a.name] = full
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        private.append(f"{m} imports {full}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in mods and a.name != m:
                        edges[m].add(a.name)
                        aliases[a.asname or a.name.split(".")[0]] = a.name
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and aliases.get(node.value.id, m) != m
            ):
                private.append(f"{m} uses {aliases[node.value.id]}.{node.attr}")
    return sorted(funcs, reverse=True), edges, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def main() -> None:
    repo = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    funcs, edges, private = facts(load(repo))
    print("longest functions:", ", ".join(f"{n} ({length})" for length, n in funcs[:8]))
    print("import cycles:", cycles(edges) or "none")

    def package(module: str) -> str:  # tinyslm.scoring.extract -> scoring; a flat module is its own package
        return module.split(".")[1] if "." in module else module

    across = [p for p in private if package(p.split()[0]) != package(p.split()[2])]
    print(f"private names across modules: {len(private)}, across packages: {len(across)}")
    for p in private:
        print("  ", p, "(across packages)" if p in across else "(inside its package)")


if __name__ == "__main__":
    main()
