"""Running the notebooks: their ``parameters`` cells and papermill execution into run folders.

A notebook's ``parameters`` cell holds literals only (``fold = 0``); :func:`parameters` reads
them without executing anything, so a sweep can refuse a parameter the notebook does not declare
before it spends any time, naming the notebook and the parameter. Papermill itself only logs
"Passed unknown parameter"; a notebook run with the papermill command line is refused from inside
the kernel instead (:func:`check_injected_parameters`, called by ``config.resolve``).

:func:`execute` runs the kernel over IPC (Unix sockets in a private temporary folder) rather than
TCP: ipykernel warns "Kernel is running over TCP without encryption" for every TCP kernel, and a
local run has no use for a network port. (Windows has no IPC transport; kernels there use TCP.)
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ambinb import progress as progress_bars
from ambinb.paths import project_root

NOTEBOOKS = ("01_labels", "02_curate_cot", "03_sft", "04_dpo", "05_grpo", "06_ablations")
INJECTED_HEADER = "# Parameters\n"  # how papermill's injected-parameters cell starts


class NotebookError(RuntimeError):
    """A notebook that failed while it ran; the message's first line names the notebook, the cell and the error."""


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


def check_injected_parameters(history: list[str] | None = None) -> None:
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
        declared = literal_assignments(history[at - 1], "the notebook's parameters cell")
    except (SyntaxError, ValueError):
        return  # the cell before is not a parameters cell: papermill put its cell first (no parameters cell)
    injected_names = {t.id for node in ast.parse(history[at]).body if isinstance(node, ast.Assign)
                      for t in node.targets if isinstance(t, ast.Name)}
    unknown = sorted(injected_names - set(declared))
    if unknown:
        raise ValueError(f"this notebook has no parameter {unknown} (its parameters cell declares "
                         f"{sorted(declared)}); extra keys go in as -y \"overrides: {{key: value}}\"")


def _kernel_history() -> list[str]:
    if "IPython" not in sys.modules:
        return []
    from IPython import get_ipython

    shell = get_ipython()
    return list(shell.user_ns.get("In", [])) if shell is not None else []


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
    working directory. It talks to this process over IPC, never TCP (see the module docstring).
    Progress bars in the kernel leave one line each in the notebook and log their details to
    ``<output without .ipynb>.log`` beside it (:func:`ambinb.progress.logging_to`).

    Raises:
        ValueError: a parameter the notebook does not declare, before anything runs.
        NotebookError: a cell failed; the first line says which notebook, which cell and the error
            (``03_sft.ipynb failed at In [4]: ValueError: ...``), the output notebook holds the rest.
    """
    import papermill  # imported here: heavy, and only the runners need it
    from papermill.exceptions import PapermillExecutionError
    from traitlets.config import Config

    src = notebook_path(name)
    params = dict(params or {})
    os.environ.setdefault("TQDM_MININTERVAL", "10")  # a bar in an executed notebook: a few lines, not hundreds
    check_parameters(src, params)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.running.ipynb")
    sockets = tempfile.mkdtemp(prefix="ambinb-kernel-")
    ipc = Config({"KernelManager": {"transport": "ipc", "ip": str(Path(sockets) / "k")}} if os.name != "nt" else {})
    try:
        with progress_bars.logging_to(progress_bars.log_path(output)):  # bars: one line each, details in the log
            papermill.execute_notebook(str(src), str(tmp), parameters=params, progress_bar=progress,
                                       cwd=str(src.parent), kernel_name="python3", execution_timeout=timeout,
                                       config=ipc)
    except PapermillExecutionError as err:
        first = (str(err.evalue).strip().splitlines() or [""])[0]
        raise NotebookError(f"{src.name} failed at {err.exec_count and f'In [{err.exec_count}]' or 'a cell'}: "
                            f"{err.ename}: {first}\n(the executed notebook is {tmp})") from err
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
    os.replace(tmp, output)
    return output
