"""Running the notebooks: their ``parameters`` cells and papermill execution into run folders.

A notebook's ``parameters`` cell holds literals only (``fold = 0``); :func:`parameters` reads
them without executing anything, so a sweep can refuse a parameter the notebook does not declare
before it spends any time, naming the notebook and the parameter.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from typing import Any

from ambinb.paths import project_root

NOTEBOOKS = ("01_labels", "02_curate_cot", "03_sft", "04_dpo", "05_grpo", "06_ablations")


def notebook_path(name: str) -> Path:
    """``notebooks/<name>.ipynb`` under the project root (``name`` with or without the suffix)."""
    return project_root() / "notebooks" / (name if name.endswith(".ipynb") else f"{name}.ipynb")


def parameters(path: str | os.PathLike) -> dict[str, Any]:
    """The literal assignments of a notebook's cell tagged ``parameters``.

    Raises:
        ValueError: no such cell, or a statement in it that is not ``name = <literal>``.
    """
    path = Path(path)
    nb = json.loads(path.read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{path}: expected one cell tagged 'parameters', found {len(cells)}")
    source = "".join(cells[0]["source"])
    out: dict[str, Any] = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ValueError(f"{path}: parameters cell line {node.lineno}: only `name = literal` belongs there")
        try:
            out[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError as err:
            raise ValueError(f"{path}: parameters cell line {node.lineno}: not a literal") from err
    return out


def check_parameters(path: str | os.PathLike, given: dict[str, Any]) -> None:
    """Raise naming the notebook and the key when ``given`` has a parameter the notebook lacks."""
    declared = parameters(path)
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ValueError(f"{path}: no parameter {unknown} in its parameters cell (it has {sorted(declared)})")


def execute(name: str, output: str | os.PathLike, params: dict[str, Any] | None = None,
            progress: bool = False, timeout: int | None = None) -> Path:
    """Run ``notebooks/<name>.ipynb`` through papermill into ``output`` with ``params``.

    The kernel starts in the notebooks folder, as in JupyterLab; relative paths inside the
    library resolve against the project root, so the result does not depend on the caller's
    working directory.
    """
    import papermill  # imported here: heavy, and only the runners need it

    src = notebook_path(name)
    params = dict(params or {})
    os.environ.setdefault("TQDM_MININTERVAL", "10")  # a bar in an executed notebook: a few lines, not hundreds
    check_parameters(src, params)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.running.ipynb")
    papermill.execute_notebook(str(src), str(tmp), parameters=params, progress_bar=progress,
                               cwd=str(src.parent), kernel_name="python3", execution_timeout=timeout)
    os.replace(tmp, output)
    return output
