"""A notebook's ``parameters`` cell: its literals, read without running anything, and what papermill injected.

A parameters cell holds ``name = <literal>`` lines only (papermill injects its own cell right after
it, so nothing derived belongs there). :func:`declared` reads them from a notebook file;
:func:`check_given` refuses a parameter a notebook does not declare before anything runs (the
sweeps, :func:`ambinb.notebook.execute`); :func:`check_injected` does the same from inside a
papermill kernel, where the command line's ``-p`` values have already been injected
(:func:`ambinb.config.resolve` calls it).

Example: a cell ``fold = 0\noverrides = {}`` -> ``{"fold": 0, "overrides": {}}``; then
``papermill ... -p folds 2`` fails in the kernel: "this notebook has no parameter ['folds'] ...".
"""

from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path
from typing import Any

INJECTED_HEADER = "# Parameters\n"  # how papermill's injected-parameters cell starts


def declared(path: str | os.PathLike) -> dict[str, Any]:
    """The literal assignments of a notebook's cell tagged ``parameters``.

    Raises:
        ValueError: no such cell, or a statement in it that is not ``name = <literal>``.
    """
    path = Path(path)
    nb = json.loads(path.read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{path}: expected one cell tagged 'parameters', found {len(cells)}")
    return literal_assignments("".join(cells[0]["source"]), f"{path}: parameters cell")


def literal_assignments(source: str, where: str) -> dict[str, Any]:
    """``{name: value}`` of a cell made of ``name = <literal>`` lines only.

    Example: ``literal_assignments("fold = 1\\nseed = 2", "cell")`` -> ``{"fold": 1, "seed": 2}``.

    Raises:
        ValueError: a statement that is not ``name = <literal>``, naming ``where`` and the line.
    """
    out: dict[str, Any] = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ValueError(f"{where} line {node.lineno}: only `name = literal` belongs there")
        try:
            out[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError as err:
            raise ValueError(f"{where} line {node.lineno}: not a literal") from err
    return out


def check_injected(history: list[str] | None = None) -> None:
    """In a papermill run, refuse a parameter the notebook's ``parameters`` cell does not declare.

    Papermill injects its ``# Parameters`` cell right after the notebook's ``parameters`` cell,
    and IPython keeps the source of every executed cell (``In``), so the kernel sees both. Outside
    a kernel, or in a kernel without an injected cell (JupyterLab, nbval), this does nothing.

    Args:
        history: the executed cells' sources, oldest first; None reads the running kernel's ``In``.

    Raises:
        ValueError: naming the unknown parameter(s) and the declared ones.
    """
    if history is None:
        history = _kernel_history()
    injected = [i for i, src in enumerate(history) if src.startswith(INJECTED_HEADER)]
    if not injected or injected[-1] == 0:
        return
    at = injected[-1]
    try:
        names = literal_assignments(history[at - 1], "the notebook's parameters cell")
    except (SyntaxError, ValueError):
        return  # the cell before is not a parameters cell: papermill put its cell first (no parameters cell)
    injected_names = {t.id for node in ast.parse(history[at]).body if isinstance(node, ast.Assign)
                      for t in node.targets if isinstance(t, ast.Name)}
    unknown = sorted(injected_names - set(names))
    if unknown:
        raise ValueError(f"this notebook has no parameter {unknown} (its parameters cell declares "
                         f"{sorted(names)}); extra keys go in as -y \"overrides: {{key: value}}\"")


def _kernel_history() -> list[str]:
    if "IPython" not in sys.modules:
        return []
    from IPython import get_ipython  # optional

    shell = get_ipython()
    return list(shell.user_ns.get("In", [])) if shell is not None else []


def check_given(path: str | os.PathLike, given: dict[str, Any]) -> None:
    """Raise naming the notebook and the key when ``given`` has a parameter the notebook lacks."""
    names = declared(path)
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ValueError(f"{path}: no parameter {unknown} in its parameters cell (it has {sorted(names)})")
