"""Where things live: the project root, the params folder, and every run folder.

One function, :func:`run_dir`, builds every run path, so the book, the sweeps and the
notebooks always find a run by its name: ``runs/<dataset>/<strategy>/fold<k>/``.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def project_root() -> Path:
    """The folder holding ``params/`` (``$AMBINB_ROOT`` if set, else the checkout of this package).

    Notebooks run with the notebook folder as the working directory (JupyterLab, nbval) or the
    caller's (papermill), so relative paths in params are resolved against this root, never
    against the working directory.
    """
    env = os.environ.get("AMBINB_ROOT")
    return Path(env).resolve() if env else _PACKAGE_ROOT


def params_dir() -> Path:
    """The folder of layered YAML parameter files."""
    return project_root() / "params"


def resolve_path(path: str | os.PathLike) -> Path:
    """An absolute path: ``path`` itself if absolute, else relative to :func:`project_root`.

    Example: ``resolve_path("runs")`` -> ``<root>/runs``; ``resolve_path("/data/x")`` -> ``/data/x``.
    """
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p


def run_dir(dataset: str, strategy: str, fold: int | None = None, root: str | os.PathLike = "runs") -> Path:
    """The run folder ``<root>/<dataset>/<strategy>/fold<k>/`` (no fold part when ``fold`` is None).

    Fold-independent artefacts (labels, curated CoTs) use ``fold=None``:
    ``run_dir("toy", "labels")`` -> ``<root>/runs/toy/labels``.
    The folder is not created here.
    """
    for name, value in (("dataset", dataset), ("strategy", strategy)):
        if not value or not str(value).replace("_", "").isalnum() or str(value) != str(value).lower():
            raise ValueError(f"{name}={value!r}: names become paths, use lower-case snake_case")
    base = resolve_path(root) / dataset / strategy
    if fold is None:
        return base
    if int(fold) != fold or fold < 0:
        raise ValueError(f"fold={fold!r}: expected a non-negative integer")
    return base / f"fold{int(fold)}"
