"""Tidy summaries of a label table, for the labels chapter (``01_labels``): each one plots directly."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ambinb import metrics
from ambinb.labels.table import class_names, p_matrix, vote_matrix


def describe(df: pd.DataFrame, ambiguous_max_p: float = metrics.AMBIGUOUS_MAX_P) -> dict[str, Any]:
    """Tidy summary tables of a label table (for ``01_labels``; each DataFrame plots directly).

    Returns a dict with:
        ``counts``: one-row DataFrame: utterances, speakers, folds, votes, ambiguous share, fallback rows.
        ``votes_per_class``: class, votes, vote_share, consensus (utterances), mean_p.
        ``votes_per_utterance``: n_votes, utterances (``raters_per_utterance`` alike from ``n_raters``).
        ``entropy``: per utterance: utt_id, fold, entropy_bits, max_p, ambiguous.
        ``entropy_summary``: count, mean, std, min, 25%, 50%, 75%, max of the entropy in bits.
        ``ambiguous_share``: float, share of utterances with max p < ``ambiguous_max_p``.
        ``fold_balance``: one row per fold: utterances, speakers, then the consensus count per class.
        ``fallback``: int, rows whose p is the one-hot consensus fallback.
        ``warnings``, ``skipped``: DataFrames kind/reason -> count from ``df.attrs``.
    """
    classes = class_names(df)
    p, votes = p_matrix(df), vote_matrix(df)
    h = metrics.entropy(p)
    max_p = p.max(axis=1)
    ambiguous = max_p < ambiguous_max_p
    fallback = int(df["fallback"].sum()) if "fallback" in df.columns else int((df["n_votes"] == 0).sum())
    per_class = pd.DataFrame({
        "class": classes,
        "votes": votes.sum(axis=0),
        "vote_share": votes.sum(axis=0) / max(int(votes.sum()), 1),
        "consensus": [int((df["consensus"] == c).sum()) for c in classes],
        "mean_p": p.mean(axis=0) if len(df) else np.zeros(len(classes)),
    })
    entropy = pd.DataFrame({"utt_id": df["utt_id"].to_numpy(), "fold": df["fold"].to_numpy(), "entropy_bits": h,
                            "max_p": max_p, "ambiguous": ambiguous})
    consensus = pd.crosstab(df["fold"], df["consensus"]).reindex(columns=classes, fill_value=0)
    balance = pd.concat([df.groupby("fold").agg(utterances=("utt_id", "size"), speakers=("speaker", "nunique")),
                         consensus], axis=1).reset_index()
    out = {
        "counts": pd.DataFrame([{"utterances": len(df), "speakers": df["speaker"].nunique(),
                                 "folds": df["fold"].nunique(), "votes": int(votes.sum()),
                                 "ambiguous_share": float(ambiguous.mean()) if len(df) else float("nan"),
                                 "fallback": fallback}]),
        "votes_per_class": per_class,
        "votes_per_utterance": _value_counts(df["n_votes"], "n_votes"),
        "entropy": entropy,
        "entropy_summary": entropy["entropy_bits"].describe().to_frame().T.reset_index(drop=True),
        "ambiguous_share": float(ambiguous.mean()) if len(df) else float("nan"),
        "fold_balance": balance,
        "fallback": fallback,
        "warnings": _count_table(df.attrs.get("warnings", {}), "kind"),
        "skipped": _count_table(df.attrs.get("skipped", {}), "reason"),
    }
    if "n_raters" in df.columns:
        out["raters_per_utterance"] = _value_counts(df["n_raters"], "n_raters")
    return out


def _value_counts(values: pd.Series, name: str) -> pd.DataFrame:
    counts = values.value_counts().sort_index()
    return pd.DataFrame({name: counts.index.to_numpy(), "utterances": counts.to_numpy()})


def _count_table(counts: dict[str, int], name: str) -> pd.DataFrame:
    return pd.DataFrame({name: list(counts), "count": [int(v) for v in counts.values()]},
                        columns=[name, "count"]).astype({name: "str", "count": "int64"})
