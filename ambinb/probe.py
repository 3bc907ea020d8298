"""The tower probe: can a linear read-out of one clip's audio-tower output tell its prosody words?

The curator words each prosody dimension as below, close to, or above a reference voice
(:func:`ambinb.prosody.describe`: ``|z| < NEAR`` is "close to"). A model can only learn words its
audio carries. The probe asks, per dimension, whether the frozen tower's output of one clip
predicts that three-way bin (-1, 0, +1) of the gold z-score:

1. :func:`pool` summarises each utterance's tower output (n_i frames x d) by its mean and
   standard deviation over frames (2d features);
2. :func:`probe_dimension` fits a standardised logistic regression on all groups but one (a
   session, or a speaker: the held-out voices are never seen) and scores the held-out group, for
   every group in turn;
3. :func:`probe` does this for every dimension and sets each accuracy beside its chance: on each
   held-out group, the share of rows in the training groups' majority bin; :func:`by_reference`
   does it for the bins against the corpus and against the speaker, side by side.

:func:`tower_features` computes the pooled tower outputs of a dataset table with the run's model
and feature cache (``feature_cache_dir``), so later chapters reuse what it computed.
:func:`tower_probe` is the probe of ``02_curate_cot``: it runs only where there are clips and the
model is on this machine, and otherwise says why it skipped (:func:`why_skipped`): curating with a
remote LLM needs neither audio nor the 7B weights.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ambinb import audio, prosody
from ambinb import model as model_mod
from ambinb.files import write_atomic
from ambinb.progress import bar

C = 1.0  # the logistic regression's inverse L2 strength (on standardised features)


def pool(features: Sequence[Any]) -> np.ndarray:
    """Mean and standard deviation (ddof 0) over frames of each utterance's tower output.

    Args:
        features: one (n_i, d) array or tensor per utterance.

    Returns:
        (N, 2d) float64: the d means, then the d standard deviations.

    Example: one utterance ``[[1, 2], [3, 2]]`` -> ``[[2, 2, 1, 0]]``.
    """
    rows = []
    for f in features:
        a = f.detach().float().cpu().numpy() if hasattr(f, "detach") else np.asarray(f)
        a = a.astype(np.float64)
        rows.append(np.concatenate([a.mean(axis=0), a.std(axis=0)]))
    return np.stack(rows)


def held_out_predictions(x: np.ndarray, y: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The probe's and the majority class's predictions for the rows outside ``train`` (a boolean mask).

    The probe is ``StandardScaler`` then multinomial ``LogisticRegression(C=C)`` fit on the training
    rows; with one class among them it predicts that class. Example: training bins ``[0, 0, 1]`` ->
    the majority prediction is 0 for every held-out row.
    """
    from sklearn.linear_model import LogisticRegression  # heavy
    from sklearn.pipeline import make_pipeline  # heavy
    from sklearn.preprocessing import StandardScaler  # heavy

    values, counts = np.unique(y[train], return_counts=True)
    majority = np.full(int((~train).sum()), values[int(np.argmax(counts))])
    if len(values) == 1:
        return majority.copy(), majority
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    model.fit(x[train], y[train])
    return model.predict(x[~train]), majority


def probe_dimension(x: np.ndarray, z: Any, groups: Any) -> dict[str, float]:
    """Leave-one-group-out accuracy of the probe on the bins of ``z`` (rows with NaN ``z`` are left out).

    Args:
        x: (N, k) features (e.g. :func:`pool`).
        z: (N,) gold z-scores of one dimension.
        groups: (N,) the held-out unit of each row (session or speaker).

    Returns:
        ``accuracy`` and ``chance`` (the training majority's accuracy) over every held-out row, and ``n``.

    Example: features equal to the bins, two groups -> accuracy 1.0.
    """
    y = prosody.bins(z)
    keep = ~np.isnan(y)
    x, y, groups = np.asarray(x, dtype=np.float64)[keep], y[keep].astype(int), np.asarray(groups)[keep]
    right = chance = n = 0
    for g in pd.unique(groups):
        train = groups != g
        if not train.any():  # one group: nothing to hold out
            continue
        predicted, majority = held_out_predictions(x, y, train)
        right += int((predicted == y[~train]).sum())
        chance += int((majority == y[~train]).sum())
        n += int((~train).sum())
    return {"accuracy": right / n if n else float("nan"), "chance": chance / n if n else float("nan"), "n": n}


def probe(x: np.ndarray, table: pd.DataFrame, groups: Any) -> pd.DataFrame:
    """:func:`probe_dimension` for every prosody dimension of ``table`` (:func:`ambinb.prosody.prosody_table`,
    rows in the order of ``x``).

    Returns:
        One row per dimension: ``accuracy``, ``chance``, ``gain`` (accuracy - chance) and ``n``.
    """
    rows = {dim: probe_dimension(x, table[dim].to_numpy(), groups) for dim in prosody.DIMENSIONS}
    out = pd.DataFrame(rows).T[["accuracy", "chance", "n"]]
    out.insert(2, "gain", out["accuracy"] - out["chance"])
    out["n"] = out["n"].astype(int)
    out.index.name = "dimension"
    return out


def by_reference(x: np.ndarray, df: pd.DataFrame, cfg: dict[str, Any]) -> pd.DataFrame:
    """:func:`probe` of the gold bins under each ``prosody_reference`` (:data:`ambinb.prosody.REFERENCES`),
    side by side: columns (reference, metric), one row per dimension.

    ``df`` holds the rows of ``x`` in order, each with audio (the corpus reference is every one of
    them); the groups are :func:`probe_groups`. The corpus bins are the words a clip can carry; the
    speaker bins need the speaker's usual voice, so a probe of one clip should find less of them.
    """
    groups = probe_groups(df)
    utts = df["utt_id"].astype(str)
    return pd.concat({ref: probe(x, prosody.prosody_table(df, {**cfg, "prosody_reference": ref}).loc[utts], groups)
                      for ref in prosody.REFERENCES}, axis=1)


def probe_groups(df: pd.DataFrame) -> np.ndarray:
    """The held-out unit of each row of a dataset table: its ``session`` if the table has one, else its ``speaker``."""
    column = "session" if "session" in df.columns else "speaker"
    return df[column].astype(str).to_numpy()


def tower_features(df: pd.DataFrame, cfg: dict[str, Any], progress: bool = True) -> np.ndarray:
    """:func:`pool` of the frozen tower's output for every row of a dataset table (each needs audio).

    The model is the run's (:func:`ambinb.model.load_model`); the outputs go through the run's
    feature cache (:func:`ambinb.audio.feature_cache`), so a later chapter reads them back.
    """
    model, processor = model_mod.load_model(cfg)
    cache = audio.feature_cache(model, processor, cfg)
    records = df.to_dict("records")
    pooled = []
    step = 64
    for start in bar(range(0, len(records), step), desc="tower outputs", disable=not progress):
        chunk = records[start: start + step]
        waves = [audio.load_row_audio(r, cfg) for r in chunk]
        pooled.append(pool(cache.features([str(r["utt_id"]) for r in chunk], waves)))
    return np.concatenate(pooled)


def why_skipped(df: pd.DataFrame, cfg: dict[str, Any]) -> str:
    """Why the tower probe cannot run here, or "" when it can: it needs clips (a label-only copy has
    none) and the model whose tower it reads on this machine (:func:`ambinb.model.why_absent`).
    Loads nothing.

    Example: label-only CREMA-D with ``model_name_or_path: Qwen/Qwen2-Audio-7B-Instruct``, never
    downloaded -> ``"none of the 7442 utterances has audio (a label-only copy); Qwen/Qwen2-Audio-7B-Instruct
    is not on this machine (a hub id, not in the Hugging Face cache)"``.
    """
    reasons = []
    if not (df["audio_path"].fillna("").astype(str) != "").any():
        reasons.append(f"none of the {len(df)} utterances has audio (a label-only copy)")
    absent = model_mod.why_absent(cfg)
    if absent:
        reasons.append(absent)
    return "; ".join(reasons)


def tower_probe(df: pd.DataFrame, cfg: dict[str, Any], path: str | os.PathLike,
                progress: bool = True) -> pd.DataFrame | None:
    """:func:`by_reference` of :func:`tower_features` for the rows of ``df`` that have audio, saved as
    CSV to ``path``; prints one line, what it did or why it skipped (:func:`why_skipped`).

    Returns:
        The probe table, or None when skipped (then no model is loaded and nothing is written).

    Example: the toy corpus -> ``tower outputs of 240 clips in 3.1 s; saved runs/toy/curation/tower_probe.csv``;
    label-only CREMA-D -> ``tower probe skipped: none of the 7442 utterances has audio (...)``.
    """
    why = why_skipped(df, cfg)
    if why:
        print(f"tower probe skipped: {why}. Curation needs neither; the chapter goes on without the probe")
        return None
    start = time.perf_counter()
    heard = df[df["audio_path"].fillna("").astype(str) != ""]
    hearing = by_reference(tower_features(heard, cfg, progress), heard, cfg)
    write_atomic(path, hearing.to_csv())
    print(f"tower outputs of {len(heard)} clips in {time.perf_counter() - start:.1f} s; saved {path}")
    return hearing
