"""The dataset a config names: its label table, its folds, and a run's train and evaluated parts."""

from __future__ import annotations

import os
import warnings
from typing import Any, TextIO

import pandas as pd

from ambinb import toy
from ambinb.labels.crema_d import load_crema_d
from ambinb.labels.iemocap import load_iemocap
from ambinb.labels.table import CLASSES, class_names
from ambinb.labels.tally import LabelError, LabelNote, LabelWarning, problem_summary, write_report
from ambinb.paths import resolve_path, validation_fold
from ambinb.progress import RUN_LOG_ENV

DEFAULT_ROOTS = {"toy": "data/toy"}


def make_toy(out_dir: str | os.PathLike, n: int = 800, seed: int = 0, sessions: int = 5, **kwargs: Any) -> pd.DataFrame:
    """Write the toy corpus to ``out_dir`` and return its label table (see :mod:`ambinb.toy`)."""
    return toy.make_toy(out_dir, n=n, seed=seed, sessions=sessions, **kwargs)


def load_dataset(cfg: dict[str, Any]) -> pd.DataFrame:
    """The label table named by a resolved config.

    Reads ``dataset`` ("toy", "iemocap", "crema_d"), ``data_root`` (relative paths are resolved
    against the project root; "" means the dataset's default, ``data/toy`` for the toy corpus),
    ``strict``, ``require_audio``, ``fold_scheme``, ``seed``, ``n_folds`` and, for the toy corpus,
    ``toy_n``, ``toy_seed``, ``toy_sessions`` (built once by ``ambinb.toy.ensure_toy``, then reloaded).
    When ``cfg["classes"]`` is non-empty it must equal the table's classes.
    """
    name = cfg["dataset"]
    if name not in CLASSES:
        raise ValueError(f"dataset={name!r}: choose one of {sorted(CLASSES)}")
    data_root = cfg["data_root"] or DEFAULT_ROOTS.get(name, "")
    if not data_root:
        raise ValueError(f"dataset={name!r} needs data_root (the corpus folder); none given")
    root = resolve_path(data_root)
    strict, require_audio = bool(cfg["strict"]), bool(cfg["require_audio"])
    if name == "toy":
        df = toy.ensure_toy(root, n=cfg["toy_n"], seed=cfg["toy_seed"], sessions=cfg["toy_sessions"])
    elif name == "iemocap":
        df = load_iemocap(root, strict=strict, require_audio=require_audio)
    else:
        df = load_crema_d(root, strict=strict, require_audio=require_audio, fold_scheme=cfg["fold_scheme"],
                          seed=int(cfg["seed"]), n_folds=int(cfg["n_folds"]))
    expected = list(cfg["classes"])
    if expected and expected != class_names(df):
        raise LabelError(f"dataset {name!r}: params say classes {expected}, the table has {class_names(df)}")
    return df


def load_and_report(cfg: dict[str, Any], stream: TextIO | None = None) -> pd.DataFrame:
    """:func:`load_dataset`, with its problems and notes written once, as a short report, where a user looks.

    Instead of Python warnings, the report (:func:`ambinb.labels.tally.problem_summary`: one line
    per problem kind with its count and first places, then the hint to use ``strict``; then one
    ``note:`` line per note) goes to ``stream`` (None: the process's own stderr, which in a Jupyter
    kernel is both the notebook's output and the terminal or log of whoever runs the kernel), and
    is appended to the run's log file when ``$AMBINB_RUN_LOG`` names one. Errors (``strict``) raise
    as from :func:`load_dataset`.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LabelWarning)
        warnings.simplefilter("ignore", LabelNote)
        df = load_dataset(cfg)
    lines = [problem_summary(df.attrs)] if df.attrs.get("warnings") else []
    lines += [f"note: {note}" for note in df.attrs.get("notes", [])]
    write_report("\n".join(lines), stream, os.environ.get(RUN_LOG_ENV) or None)
    return df


def split(df: pd.DataFrame, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(train, test)`` for one test fold: test rows have ``fold == fold``, train rows all others.

    Raises:
        LabelError: when no row has that fold (the message lists the folds there are).
    """
    if isinstance(fold, bool) or int(fold) != fold:
        raise LabelError(f"fold={fold!r}: expected an integer")
    is_test = (df["fold"] == int(fold)).to_numpy()
    if fold < 0 or not is_test.any():
        present = sorted(int(k) for k in set(df["fold"]) if k >= 0)
        raise LabelError(f"fold={fold}: no test rows; the table's test folds are {present}")
    return df[~is_test].reset_index(drop=True), df[is_test].reset_index(drop=True)


def split_for_run(df: pd.DataFrame, cfg: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(train, evaluated)`` for a run: :func:`split` on the test fold, or, with ``eval_split:
    validation``, the test fold dropped and :func:`split` of the rest on the validation fold
    (:func:`ambinb.paths.validation_fold`), so settings are chosen without seeing the test fold."""
    train, test = split(df, int(cfg["fold"]))
    v = validation_fold(cfg)
    if v is None:
        return train, test
    try:
        return split(train, v)
    except LabelError as err:
        raise LabelError(f"validation_fold: {err}") from None
