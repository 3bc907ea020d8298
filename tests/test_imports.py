"""The shape of the library's import graph, read from the source (every import counts: at the top of a
module, inside a function, under ``if TYPE_CHECKING``, or a literal ``importlib.import_module("ambinb...")``):

* no import cycle;
* every module sits in one layer of :data:`LAYERS`, and no module imports one of a higher layer;
* the strategies are siblings: no strategy module imports another;
* ``ambinb`` modules are imported at the top of a module, never inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parent.parent / "ambinb"

# bottom to top; a package name covers its submodules
LAYERS: list[tuple[str, set[str]]] = [
    ("foundations", {"ambinb", "paths", "files", "metrics", "losses", "cot", "sampling", "stopping", "merge",
                     "progress", "paper", "parameters", "runlock", "learning"}),
    ("files and parameters", {"results", "rewards", "prosody", "config", "notebook", "outputs", "benchpage"}),
    ("data and curation", {"labels", "toy", "cues", "perception", "plots", "curation", "classical"}),
    ("the model", {"families", "lm", "audio", "prompt", "readout", "standin", "model", "vocab"}),
    ("sampling and evaluation", {"rollout", "vllm_rollout", "evaluate", "probe"}),
    ("training", {"examples", "engine", "policy", "strategies", "run"}),
    ("running and reporting", {"sweep", "aggregate", "recap", "book", "report"}),
]
STRATEGY_MODULES = {"ambinb.strategies.sft", "ambinb.strategies.dpo", "ambinb.strategies.grpo"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(LIB.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(LIB.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The module of ``MODULES`` that an imported dotted name refers to (its longest known prefix)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.AST, here: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = here.split(".") if is_package else here.split(".")[:-1]
            parts = parts[: len(parts) - node.level + 1]
            base = ".".join(parts + ([node.module] if node.module else []))
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args \
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
        return [node.args[0].value]
    return []


def edges(source: str, name: str, is_package: bool = False) -> list[tuple[str, int, bool]]:
    """[(imported ambinb module, line, not at the module's top level)] of one module's source."""
    tree = ast.parse(source)
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        for target in _targets(node, name, is_package):
            resolved = _resolve(target) if target.startswith("ambinb") else None
            if resolved and resolved != name:
                found.append((resolved, node.lineno, id(node) not in top))
    return found


def imports() -> dict[str, list[tuple[str, int, bool]]]:
    """module -> its :func:`edges`."""
    return {name: edges(path.read_text(), name, path.name == "__init__.py") for name, path in MODULES.items()}


def layer_of(module: str) -> int:
    short = module.split(".")[1] if "." in module else module
    for i, (_, names) in enumerate(LAYERS):
        if short in names:
            return i
    raise AssertionError(f"{module} is in no layer of tests/test_imports.py: place it in LAYERS")


def test_the_import_graph_has_no_cycle():
    graph = {m: {t for t, _, _ in found} for m, found in imports().items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = path[path.index(t):] + [t] if t in path else [m, t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_no_module_imports_a_higher_layer():
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) -> {t} ({LAYERS[layer_of(t)][0]}), line {line}"
              for m, found in imports().items() for t, line, _ in found if layer_of(t) > layer_of(m)]
    assert not upward, "\n".join(upward)


def test_the_strategies_import_no_sibling():
    crossing = [f"{m} -> {t}" for m, found in imports().items() if m in STRATEGY_MODULES
                for t, _, _ in found if t in STRATEGY_MODULES or t == "ambinb.strategies"]
    assert not crossing, crossing


def test_ambinb_modules_are_imported_at_the_top():
    inside = [f"{MODULES[m].relative_to(LIB.parent)}:{line} imports {t}" for m, found in imports().items()
              for t, line, local in found if local]
    assert not inside, "\n".join(inside)


def test_the_graph_reader_sees_every_kind_of_import():
    """The reader itself: a top-level, a TYPE_CHECKING, a function-local and an importlib import each count."""
    source = ("import importlib\nfrom typing import TYPE_CHECKING\n\nfrom ambinb import metrics\n"
              "if TYPE_CHECKING:\n    from ambinb.run import Example\n"
              "def f():\n    from ambinb import lm\n    return importlib.import_module('ambinb.toy')\n")
    found = {(t, line, local) for t, line, local in edges(source, "ambinb.x")}
    assert found == {("ambinb.metrics", 4, False), ("ambinb.run", 6, True), ("ambinb.lm", 8, True),
                     ("ambinb.toy", 9, True)}
