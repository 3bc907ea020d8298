"""Running the notebooks: papermill execution into run folders.

A notebook's ``parameters`` cell holds literals only (``fold = 0``); :mod:`ambinb.parameters` reads
them without executing anything, so :func:`execute` (and a sweep) refuses a parameter the notebook
does not declare before it spends any time, naming the notebook and the parameter. Papermill itself
only logs "Passed unknown parameter"; a notebook run with the papermill command line is refused from
inside the kernel instead (:func:`ambinb.parameters.check_injected`, called by ``config.resolve``).

:func:`execute` runs the kernel over IPC (Unix sockets in a private temporary folder) rather than
TCP: ipykernel warns "Kernel is running over TCP without encryption" for every TCP kernel, and a
local run has no use for a network port. (Windows has no IPC transport; kernels there use TCP.)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ambinb import parameters, runlock
from ambinb import progress as progress_bars
from ambinb.paths import project_root

NOTEBOOKS = ("01_labels", "02_curate_cot", "03_sft", "04_dpo", "05_grpo", "06_ablations")


class NotebookError(RuntimeError):
    """A notebook that failed while it ran; the message's first line names the notebook, the cell and the error."""


def notebook_path(name: str) -> Path:
    """``notebooks/<name>.ipynb`` under the project root (``name`` with or without the suffix)."""
    return project_root() / "notebooks" / (name if name.endswith(".ipynb") else f"{name}.ipynb")


def execute(name: str, output: str | os.PathLike, params: dict[str, Any] | None = None,
            progress: bool = False, timeout: int | None = None) -> Path:
    """Run ``notebooks/<name>.ipynb`` through papermill into ``output`` with ``params``.

    The kernel starts in the notebooks folder, as in JupyterLab; relative paths inside the
    library resolve against the project root, so the result does not depend on the caller's
    working directory. It talks to this process over IPC, never TCP (see the module docstring).
    Progress bars in the kernel leave one line each in the notebook and log their details to
    ``<output without .ipynb>.log`` beside it (:func:`ambinb.progress.logging_to`). The output's
    folder is held for the whole run (:func:`ambinb.runlock.hold`; the kernel inherits the lock), so
    two executions never write one folder at once.

    Raises:
        ValueError: a parameter the notebook does not declare, before anything runs.
        RunningElsewhere: another process holds the output's folder
            (``runs/toy/sft/fold0 is running in process 4242; skipped``), before the kernel starts.
        NotebookError: a cell failed; the first line says which notebook, which cell and the error
            (``03_sft.ipynb failed at In [4]: ValueError: ...``), the output notebook holds the rest.
    """
    import papermill  # heavy
    from papermill.exceptions import PapermillExecutionError  # heavy
    from traitlets.config import Config  # heavy

    src = notebook_path(name)
    params = dict(params or {})
    os.environ.setdefault("TQDM_MININTERVAL", "10")  # a bar in an executed notebook: a few lines, not hundreds
    parameters.check_given(src, params)
    output = Path(output)
    tmp = output.with_name(f".{output.name}.running.ipynb")
    sockets = tempfile.mkdtemp(prefix="ambinb-kernel-")
    ipc = Config({"KernelManager": {"transport": "ipc", "ip": str(Path(sockets) / "k")}} if os.name != "nt" else {})
    try:
        with runlock.hold(output.parent.absolute()), progress_bars.logging_to(progress_bars.log_path(output)):
            papermill.execute_notebook(str(src), str(tmp), parameters=params, progress_bar=progress,
                                       cwd=str(src.parent), kernel_name="python3", execution_timeout=timeout,
                                       config=ipc)  # the kernel inherits the lock (ambinb.runlock)
            os.replace(tmp, output)
    except PapermillExecutionError as err:
        first = (str(err.evalue).strip().splitlines() or [""])[0]
        raise NotebookError(f"{src.name} failed at {err.exec_count and f'In [{err.exec_count}]' or 'a cell'}: "
                            f"{err.ename}: {first}\n(the executed notebook is {tmp})") from err
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
    return output
