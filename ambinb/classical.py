"""The ``classical`` reference: soft-label softmax regression on speaker-normalised eGeMAPS and a bag of words.

No language model: it tells a reader how far plain features get on a corpus (on the toy corpus,
whose cues are plain, they get far), so it is a row of every results table, evaluated and
written exactly like the others (:func:`ambinb.results.write_evaluation`).

Model. For features ``x_n`` and soft labels ``p_n`` the softmax regression ``q(x) =
softmax(W x + b)`` minimises ``sum_n sum_c -p_nc log q_c(x_n) + ||W||^2 / (2 C)``: the cross-entropy
to the soft label. Duplicating each training row once per class ``c`` with sample weight ``p_nc``
turns this into the ordinary weighted multinomial log-loss, so scikit-learn's
``LogisticRegression`` fits it exactly (:func:`fit_soft`); with one-hot labels it is the usual
hard-label fit.

Features (fitted on the training folds only):

- audio: the 88 eGeMAPS v02 functionals as z-scores within each speaker
  (:func:`ambinb.prosody.speaker_normalised`; a test speaker is normalised by its own utterances'
  audio, never by any label), clipped to +-5;
- text: a binary bag of words whose vocabulary comes from the training transcripts (words in at
  least ``classical_min_df`` of them).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from ambinb import labels, metrics, prosody, runlock
from ambinb.paths import run_folder
from ambinb.results import prior_distribution, write_evaluation

log = logging.getLogger(__name__)

Z_CLIP = 5.0
TOKEN_PATTERN = r"(?u)\b\w[\w']*\b"


def bag_of_words(train_text: list[str], test_text: list[str], min_df: int = 2
                 ) -> tuple[sparse.csr_matrix, sparse.csr_matrix, list[str]]:
    """Binary word-presence matrices; the vocabulary is fitted on ``train_text`` only.

    Example: train ``["I hate this", "I love this"]`` with ``min_df=1`` -> vocabulary
    ``["hate", "i", "love", "this"]``; the test text ``"love it"`` -> ``[0, 0, 1, 0]``.
    """
    from sklearn.feature_extraction.text import CountVectorizer  # heavy

    vec = CountVectorizer(binary=True, lowercase=True, token_pattern=TOKEN_PATTERN,
                          min_df=min(int(min_df), max(1, len(train_text))))
    try:
        x_train = vec.fit_transform(train_text)
    except ValueError:  # no word reaches min_df
        empty = sparse.csr_matrix((len(train_text), 0)), sparse.csr_matrix((len(test_text), 0))
        return empty[0], empty[1], []
    return x_train.tocsr().astype(np.float64), vec.transform(test_text).tocsr().astype(np.float64), \
        list(vec.get_feature_names_out())


def audio_features(df: pd.DataFrame, cfg: dict[str, Any]) -> pd.DataFrame | None:
    """Speaker-normalised eGeMAPS per utterance (index ``utt_id``), clipped; NaN (no audio) -> 0.

    None when no utterance of the table has audio.
    """
    if not (df["audio_path"].fillna("").astype(str) != "").any():
        return None
    z = prosody.speaker_normalised(df, cfg)
    missing = int(z.isna().all(axis=1).sum())
    if missing:
        log.warning("classical: %d of %d utterances have no audio; their audio features are 0", missing, len(z))
    return z.clip(-Z_CLIP, Z_CLIP).fillna(0.0)


def design_matrices(train: pd.DataFrame, test: pd.DataFrame, audio: pd.DataFrame | None,
                    cfg: dict[str, Any]) -> tuple[sparse.csr_matrix, sparse.csr_matrix, list[str]]:
    """(X_train, X_test, feature names) from the enabled feature groups."""
    blocks_train, blocks_test, names = [], [], []
    if cfg["classical_audio"]:
        if audio is None:
            log.warning("classical: the table has no audio; using text features only")
        else:
            blocks_train.append(sparse.csr_matrix(audio.loc[train["utt_id"].astype(str)].to_numpy()))
            blocks_test.append(sparse.csr_matrix(audio.loc[test["utt_id"].astype(str)].to_numpy()))
            names += [f"egemaps:{c}" for c in audio.columns]
    if cfg["classical_text"]:
        x_tr, x_te, vocab = bag_of_words(train["transcript"].astype(str).tolist(),
                                         test["transcript"].astype(str).tolist(), int(cfg["classical_min_df"]))
        blocks_train.append(x_tr)
        blocks_test.append(x_te)
        names += [f"word:{w}" for w in vocab]
    if not names:
        raise ValueError("classical: no features (classical_audio and classical_text are off, or there is "
                         "no audio and no word reaches classical_min_df)")
    return sparse.hstack(blocks_train).tocsr(), sparse.hstack(blocks_test).tocsr(), names


@dataclass
class SoftModel:
    """A fitted soft-label regression: the sklearn model and the number of classes of its targets."""

    model: Any
    n_classes: int


def fit_soft(x: Any, p: np.ndarray, c: float = 1.0, max_iter: int = 2000) -> SoftModel:
    """Fit a multinomial logistic regression to soft labels ``p`` (N, C) by class-weighted duplication.

    Row ``n`` becomes one row per class ``c`` with ``p[n, c] > 0``, labelled ``c`` and weighted
    ``p[n, c]``; ``c`` is scikit-learn's inverse L2 strength.

    Raises:
        ValueError: when the training labels put mass on fewer than two classes.
    """
    from sklearn.linear_model import LogisticRegression  # heavy

    p = metrics.check_distributions(p, "p_train")
    rows, labels_ = np.nonzero(p > 0)
    if len(set(labels_.tolist())) < 2:
        raise ValueError(f"classical: the training labels put mass on {len(set(labels_.tolist()))} class(es); "
                         "need at least 2")
    x_rep = x[rows] if sparse.issparse(x) else np.asarray(x)[rows]
    model = LogisticRegression(C=float(c), max_iter=max_iter, tol=1e-8)
    model.fit(x_rep, labels_, sample_weight=p[rows, labels_])
    return SoftModel(model, p.shape[1])


def predict_soft(fitted: SoftModel, x: Any) -> np.ndarray:
    """p_hat (N, C) over all classes (a class no training row had mass on gets ~0), smoothed."""
    proba = fitted.model.predict_proba(x)
    out = np.zeros((proba.shape[0], fitted.n_classes))
    out[:, fitted.model.classes_] = proba
    return metrics.smooth(out)


def run_classical(cfg: dict[str, Any], df: pd.DataFrame | None = None) -> dict[str, Any]:
    """Fit on the training folds of ``cfg["fold"]``, predict its test fold (or the validation fold,
    ``eval_split: validation``), write the run folder.

    The folder is ``ambinb.paths.run_folder(cfg, "classical")`` with
    ``predictions.jsonl``, ``params.json`` and ``metrics.json`` (``write_evaluation``).

    Returns:
        The ``metrics.json`` content.

    Raises:
        RunningElsewhere: another process holds the run folder (:mod:`ambinb.runlock`).
    """
    start = time.perf_counter()
    with runlock.hold_run(run_folder(cfg, "classical")) as out:
        df = labels.load_dataset(cfg) if df is None else df
        classes = labels.class_names(df)
        train, test = labels.split_for_run(df, cfg)
        audio = audio_features(df, cfg) if cfg["classical_audio"] else None
        x_train, x_test, names = design_matrices(train, test, audio, cfg)
        p_train, p_test = labels.p_matrix(train), labels.p_matrix(test)
        model = fit_soft(x_train, p_train, float(cfg["classical_c"]))
        p_hat = predict_soft(model, x_test)
        extra = {"n_train": len(train), "n_test": len(test), "n_features": len(names),
                 "n_audio_features": sum(n.startswith("egemaps:") for n in names),
                 "n_words": sum(n.startswith("word:") for n in names),
                 "wall_s": round(time.perf_counter() - start, 2)}
        return write_evaluation(out, test["utt_id"].astype(str).tolist(), classes, p_test, p_hat,
                                prior_distribution(p_train), {**cfg, "strategy": "classical"}, extra=extra)
