"""Where things live: the project root, the params folder, and every run folder.

One function, :func:`run_dir`, builds every run path, so the book, the sweeps and the
notebooks always find a run by its name: ``runs/<dataset>/<strategy>/fold<k>/`` (validation runs,
which choose settings without the test fold, under ``runs/<dataset>/<strategy>/validation/``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

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


def display_path(path: str | os.PathLike, run_root: str | os.PathLike | None = None) -> str:
    """``path`` as printed for a reader: never the absolute path of the machine that ran it.

    Under ``run_root``: relative to the run root's parent (``runs/toy/sft/fold0``); else under the
    project root: relative to it (``params/defaults.yaml``); else under the home folder: ``~/...``;
    else the path as given. Example: ``display_path("/tmp/x/runs/toy/labels", "/tmp/x/runs")`` ->
    ``"runs/toy/labels"``.
    """
    p = Path(path).expanduser()
    if not p.is_absolute():
        return p.as_posix()
    for base, prefix in display_bases(run_root):
        if p.is_relative_to(base):
            return prefix + (p.relative_to(base).as_posix() or ".")
    return p.as_posix()


def display_bases(run_root: str | os.PathLike | None = None) -> list[tuple[Path, str]]:
    """The folders a printed path is made relative to, first match first, with the prefix that replaces
    each: the run root's parent and the project root (nothing), then the home folder (``~/``)."""
    bases = [(resolve_path(run_root).parent, "")] if run_root else []
    return bases + [(project_root(), ""), (Path.home(), "~/")]


def is_path_name(value: Any) -> bool:
    """Whether ``value`` may name a folder of a run path: lower-case letters, digits and ``_``."""
    return bool(value) and str(value).replace("_", "").isalnum() and str(value) == str(value).lower()


def run_dir(dataset: str, strategy: str, fold: int | None = None, root: str | os.PathLike = "runs",
            validation: int | None = None, seed: int = 0) -> Path:
    """The run folder ``<root>/<dataset>/<strategy>/fold<k>/`` (no fold part when ``fold`` is None), and
    ``fold<k>-seed<s>/`` for a seed other than 0: runs that differ only by their seed never share a folder
    (``run_dir("toy", "dpo", 1, seed=2)`` -> ``<root>/toy/dpo/fold1-seed2``; :func:`parse_run_name` reads
    the name back).

    Fold-independent artefacts (labels, curated CoTs) use ``fold=None``:
    ``run_dir("toy", "labels")`` -> ``<root>/runs/toy/labels``. A validation run (test fold ``k``
    withheld, fold ``validation`` held out of training and evaluated) lives apart, where no table of
    test results looks: ``run_dir("toy", "dpo", 0, validation=1)`` -> ``<root>/toy/dpo/validation/fold0-val1``.
    The folder is not created here.
    """
    for name, value in (("dataset", dataset), ("strategy", strategy)):
        if not is_path_name(value):
            raise ValueError(f"{name}={value!r}: names become paths, use lower-case snake_case")
    base = resolve_path(root) / dataset / strategy
    if fold is None:
        return base
    for name, value in (("fold", fold), ("validation", validation)):
        if value is not None and (int(value) != value or value < 0):
            raise ValueError(f"{name}={value!r}: expected a non-negative integer")
    tail = f"-seed{int(seed)}" if int(seed) else ""
    if validation is None:
        return base / f"fold{int(fold)}{tail}"
    if int(validation) == int(fold):
        raise ValueError(f"validation fold {validation} is the test fold: it must be one of the training folds")
    return base / "validation" / f"fold{int(fold)}-val{int(validation)}{tail}"


def parse_run_name(name: str) -> tuple[int, int] | None:
    """``(fold, seed)`` of a test run's folder name (:func:`run_dir`), or None for any other name.

    Example: ``parse_run_name("fold1")`` -> ``(1, 0)``; ``"fold1-seed2"`` -> ``(1, 2)``; ``"fold0-val4"`` -> None.
    """
    match = re.fullmatch(r"fold(\d+)(?:-seed(\d+))?", name)
    return (int(match.group(1)), int(match.group(2) or 0)) if match else None


def fold_count(cfg: dict[str, Any]) -> int:
    """How many test folds the run's dataset has: ``toy_sessions`` for the toy corpus (one fold per
    session), 1 for CREMA-D's ``emobox`` split (fold 0 is its test part), else ``n_folds``.

    Example: ``{"dataset": "toy", "toy_sessions": 5, ...}`` -> 5; ``crema_d`` with ``emobox`` -> 1.
    """
    if cfg["dataset"] == "toy":
        return int(cfg["toy_sessions"])
    if cfg["dataset"] == "crema_d" and cfg["fold_scheme"] == "emobox":
        return 1
    return int(cfg["n_folds"])


def validation_fold(cfg: dict[str, Any]) -> int | None:
    """The fold a run evaluates on instead of its test fold, or None (``eval_split: test``).

    ``eval_split: validation`` holds out ``validation_fold`` of the training folds (``-1``: the next
    fold, ``(fold + 1) mod`` :func:`fold_count`); the test fold stays unseen. Example: fold 4 of 5 ->
    validation 0.
    """
    split = cfg["eval_split"]
    if split == "test":
        return None
    if split != "validation":
        raise ValueError(f"eval_split={split!r}: expected test or validation")
    v = int(cfg["validation_fold"])
    return v if v >= 0 else (int(cfg["fold"]) + 1) % fold_count(cfg)


def run_folder(cfg: dict[str, Any], strategy: str | None = None) -> Path:
    """The run folder of a resolved config (its dataset, ``strategy`` or its own, fold, run root and split)."""
    return run_dir(cfg["dataset"], strategy or cfg["strategy"], int(cfg["fold"]), cfg["run_root"],
                   validation_fold(cfg), int(cfg["seed"]))


def init_run_folder(cfg: dict[str, Any]) -> Path | None:
    """The run folder a DPO/GRPO run starts from (``init_from``), or None: that strategy's seed-0 run of the
    same dataset, fold and split, under ``init_root`` (empty: this run's own run root).

    Example: ``init_from: sft`` for ``dpo`` fold 0, seed 2 -> ``<run_root>/toy/sft/fold0``: every seed of an
    on-policy strategy starts from the same SFT model.
    """
    if not cfg.get("init_from"):
        return None
    return run_folder({**cfg, "seed": 0, "run_root": cfg.get("init_root") or cfg["run_root"]}, cfg["init_from"])
