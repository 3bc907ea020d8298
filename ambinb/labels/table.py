"""The label table: its schema, its checks, how it is built from rows, and its file.

One row per utterance: ``utt_id, dataset, speaker, session, fold, transcript, audio_path,
consensus, n_votes``, then ``votes_<class>`` (int) for every class, then ``p_<class>`` (float,
each row sums to 1), then loader-specific extra columns. ``p_<class> = votes_<class> / n_votes``
(Eq. 1 of the paper), except for rows with ``n_votes == 0``, whose ``p`` is one-hot at the
consensus label. ``fold`` is the 0-based test fold; :data:`TRAIN_ONLY_FOLD` marks rows that are
never tested.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ambinb.labels.tally import LabelError
from ambinb.results import write_atomic, write_json

CLASSES: dict[str, list[str]] = {
    "iemocap": ["anger", "happiness", "sadness", "neutral"],
    "crema_d": ["anger", "disgust", "fear", "happiness", "neutral", "sadness"],
    "toy": ["anger", "happiness", "sadness", "neutral"],
}
SCHEMA_COLUMNS = ("utt_id", "dataset", "speaker", "session", "fold", "transcript", "audio_path", "consensus",
                  "n_votes")
TRAIN_ONLY_FOLD = -1  # rows that are never a test fold (the ``emobox`` split's training part)
ATTRS_SUFFIX = ".attrs.json"
P_TOL = 1e-6


def _prefixed(df: pd.DataFrame, prefix: str) -> list[str]:
    return [c[len(prefix):] for c in df.columns if c.startswith(prefix)]


def class_names(df: pd.DataFrame) -> list[str]:
    """The class names, in column order, from the ``p_<class>`` columns.

    Example: columns ``p_anger, p_happiness`` -> ``["anger", "happiness"]``.
    """
    names = _prefixed(df, "p_")
    if not names:
        raise LabelError(f"no p_<class> columns in the table (columns: {list(df.columns)})")
    return names


def p_matrix(df: pd.DataFrame) -> np.ndarray:
    """The soft labels as a float64 array of shape (N, C), columns in :func:`class_names` order."""
    return df[[f"p_{c}" for c in class_names(df)]].to_numpy(dtype=np.float64)


def vote_matrix(df: pd.DataFrame) -> np.ndarray:
    """The vote counts as an int64 array of shape (N, C), columns in :func:`class_names` order."""
    return df[[f"votes_{c}" for c in class_names(df)]].to_numpy(dtype=np.int64)


def column_dtype(col: str) -> str:
    """The dtype of a schema or extra column: ``"fold"`` -> int64, ``"p_anger"`` -> float64, ..."""
    if col in ("session", "fold", "n_votes", "n_raters") or col.startswith("votes_"):
        return "int64"
    if col.startswith("p_"):
        return "float64"
    if col == "fallback":
        return "bool"
    return "str"


def _rows(df: pd.DataFrame, mask: np.ndarray, limit: int = 3) -> str:
    idx = np.flatnonzero(mask)
    shown = ", ".join(f"row {i} (utt_id {df['utt_id'].iloc[i]!r})" for i in idx[:limit])
    return shown + (f" and {len(idx) - limit} more" if len(idx) > limit else "")


def validate_table(df: pd.DataFrame, where: str = "label table") -> pd.DataFrame:
    """Check that ``df`` follows the label schema; return it unchanged, or raise :class:`LabelError`.

    Checks: the schema columns exist; ``votes_<c>`` and ``p_<c>`` name the same classes (at least
    two, and ``CLASSES[dataset]`` when the dataset is a known one); no missing values; ``utt_id``
    unique and non-empty; ``fold`` and ``session`` integers, fold >= -1; votes non-negative
    integers summing to ``n_votes``; ``p`` in [0, 1], rows summing to 1; ``p = votes / n_votes``
    where ``n_votes > 0`` and one-hot at the consensus where ``n_votes == 0``; ``consensus`` a class.
    Errors name ``where`` and the offending rows by position and ``utt_id``.
    """
    classes = _check_columns(df, where)
    _check_ids_and_types(df, classes, where)
    _check_values(df, classes, where)
    return df


def _check_columns(df: pd.DataFrame, where: str) -> list[str]:
    """The table's classes, after checking its columns, missing values and known datasets."""
    missing = [c for c in SCHEMA_COLUMNS if c not in df.columns]
    if missing:
        raise LabelError(f"{where}: missing columns {missing}; the schema is {list(SCHEMA_COLUMNS)} "
                         f"+ votes_<class> + p_<class>")
    classes, vote_classes = _prefixed(df, "p_"), _prefixed(df, "votes_")
    if len(classes) < 2 or classes != vote_classes:
        raise LabelError(f"{where}: p_<class> columns {classes} and votes_<class> columns {vote_classes} must "
                         f"name the same classes (at least two) in the same order")
    cols = list(SCHEMA_COLUMNS) + [f"votes_{c}" for c in classes] + [f"p_{c}" for c in classes]
    nan = df[cols].isna().to_numpy()
    if nan.any():
        bad_cols = [c for c, b in zip(cols, nan.any(axis=0), strict=True) if b]
        raise LabelError(f"{where}: missing values in {bad_cols} at {_rows(df, nan.any(axis=1))}")
    for name in sorted(set(df["dataset"].astype(str))):
        if name in CLASSES and CLASSES[name] != classes:
            raise LabelError(f"{where}: dataset {name!r} has classes {CLASSES[name]}, the table has {classes}")
    return classes


def _check_ids_and_types(df: pd.DataFrame, classes: list[str], where: str) -> None:
    ids = df["utt_id"].astype(str)
    bad = (ids.str.strip() == "").to_numpy()
    if bad.any():
        raise LabelError(f"{where}: empty utt_id at {_rows(df, bad)}")
    bad = ids.duplicated(keep=False).to_numpy()
    if bad.any():
        raise LabelError(f"{where}: duplicate utt_id at {_rows(df, bad)}")
    for col in ("fold", "session", "n_votes", *[f"votes_{c}" for c in classes]):
        if not pd.api.types.is_integer_dtype(df[col]):
            raise LabelError(f"{where}: column {col!r} must hold integers, has dtype {df[col].dtype}")
    bad = (df["fold"] < TRAIN_ONLY_FOLD).to_numpy()
    if bad.any():
        raise LabelError(f"{where}: fold must be >= 0 (or {TRAIN_ONLY_FOLD} for train-only rows) at {_rows(df, bad)}")


def _check_values(df: pd.DataFrame, classes: list[str], where: str) -> None:
    votes, p = vote_matrix(df), p_matrix(df)
    bad = (votes < 0).any(axis=1)
    if bad.any():
        raise LabelError(f"{where}: negative votes at {_rows(df, bad)}")
    n_votes = df["n_votes"].to_numpy()
    bad = votes.sum(axis=1) != n_votes
    if bad.any():
        raise LabelError(f"{where}: n_votes is not the sum of the votes_ columns at {_rows(df, bad)}")
    bad = ~np.isfinite(p).all(axis=1) | (p < 0).any(axis=1) | (p > 1).any(axis=1)
    if bad.any():
        raise LabelError(f"{where}: p_ values outside [0, 1] at {_rows(df, bad)}")
    bad = np.abs(p.sum(axis=1) - 1.0) > P_TOL
    if bad.any():
        raise LabelError(f"{where}: p_ columns do not sum to 1 (tolerance {P_TOL}) at {_rows(df, bad)}")
    consensus = df["consensus"].astype(str).to_numpy()
    bad = ~np.isin(consensus, classes)
    if bad.any():
        raise LabelError(f"{where}: consensus is not one of {classes} at {_rows(df, bad)}")
    expected = np.zeros_like(p)
    voted = n_votes > 0
    expected[voted] = votes[voted] / n_votes[voted, None]
    expected[~voted, [classes.index(c) for c in consensus[~voted]]] = 1.0
    bad = (np.abs(p - expected) > P_TOL).any(axis=1)
    if bad.any():
        raise LabelError(f"{where}: p_ is not votes_/n_votes (or one-hot at the consensus when n_votes is 0) "
                         f"at {_rows(df, bad)}")


def build_table(rows: list[dict[str, Any]], classes: list[str], extra: list[str]) -> pd.DataFrame:
    """The schema-ordered table from row dicts that hold the schema columns (less ``n_votes``),
    ``votes`` (a list of ints in ``classes`` order) and the ``extra`` columns.

    Example: one row with ``votes=[0, 3, 0, 1]`` gets ``n_votes=4`` and ``p=(0, .75, 0, .25)``; a
    row with no vote gets ``p`` one-hot at its ``consensus``.
    """
    cols = list(SCHEMA_COLUMNS) + [f"votes_{c}" for c in classes] + [f"p_{c}" for c in classes] + extra
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=column_dtype(c)) for c in cols})
    votes = np.array([r["votes"] for r in rows], dtype=np.int64).reshape(len(rows), len(classes))
    n_votes = votes.sum(axis=1)
    p = np.zeros(votes.shape, dtype=np.float64)
    voted = n_votes > 0
    p[voted] = votes[voted] / n_votes[voted, None]
    for i in np.flatnonzero(~voted):
        p[i, classes.index(rows[i]["consensus"])] = 1.0
    data: dict[str, Any] = {c: [r[c] for r in rows] for c in SCHEMA_COLUMNS if c != "n_votes"}
    data["n_votes"] = n_votes
    for j, c in enumerate(classes):
        data[f"votes_{c}"] = votes[:, j]
    for j, c in enumerate(classes):
        data[f"p_{c}"] = p[:, j]
    for c in extra:
        data[c] = [r[c] for r in rows]
    df = pd.DataFrame(data, columns=cols)
    return df.astype({c: column_dtype(c) for c in cols})


def _attrs_path(path: Path) -> Path:
    return path.with_name(path.name + ATTRS_SUFFIX)


def save_labels(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Validate ``df`` and write it as CSV atomically; ``df.attrs`` go beside it (``<path>.attrs.json``)."""
    path = Path(path)
    validate_table(df, where=str(path))
    write_atomic(path, df.to_csv(index=False, lineterminator="\n"))
    if df.attrs:
        write_json(_attrs_path(path), df.attrs)
    else:
        _attrs_path(path).unlink(missing_ok=True)
    return path


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by :func:`save_labels` (with its ``attrs``), validated."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no label table there")
    with open(path, newline="") as fh:
        header = next(csv.reader(fh), [])
    dtypes = {c: column_dtype(c) for c in header if c in SCHEMA_COLUMNS or c.startswith(("votes_", "p_"))
              or c in ("n_raters", "sex", "intended", "level")}
    try:
        df = pd.read_csv(path, dtype=dtypes, keep_default_na=False)
    except ValueError as err:
        raise LabelError(f"{path}: cannot read as a label table: {err}") from err
    validate_table(df, where=str(path))
    attrs = _attrs_path(path)
    if attrs.is_file():
        try:
            df.attrs.update(json.loads(attrs.read_text()))
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
            raise LabelError(f"{attrs}: not the JSON that save_labels writes: {err}") from err
    return df
