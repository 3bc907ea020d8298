"""Hedges: how a synthesis words a share of listeners, and how a reader reads the words back."""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

MIN_SHARE = 0.05  # a class with less than this share of p_gt is not named in a synthesis

# (phrase, lower bound of the share it is used for, the share a reader takes it to mean)
HEDGES: tuple[tuple[str, float, float], ...] = (
    ("almost certain", 0.85, 0.93),
    ("likely", 0.60, 0.72),
    ("about as likely as not", 0.40, 0.50),
    ("a real possibility", 0.25, 0.32),
    ("possible", 0.12, 0.18),
    ("a faint possibility", MIN_SHARE, 0.08),
)


def join_and(words: list[str]) -> str:
    """``["a"]`` -> ``"a"``; ``["a", "b", "c"]`` -> ``"a, b and c"``."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def hedge(share: float) -> str | None:
    """The hedge phrase for a share of listeners (None below :data:`MIN_SHARE`).

    Examples: ``hedge(0.9)`` -> ``"almost certain"``; ``hedge(0.3)`` -> ``"a real possibility"``.
    """
    for phrase, low, _ in HEDGES:
        if share >= low:
            return phrase
    return None


def synthesis_sentence(classes: Iterable[str], p: Iterable[float]) -> str:
    """The hedged statement of a distribution, most likely class first.

    Example: ``synthesis_sentence(["anger", "sadness", "neutral"], [0.7, 0.0, 0.3])`` ->
    ``"Weighing text and voice, anger is likely and neutral is a real possibility."``
    """
    ranked = sorted(zip(classes, p, strict=True), key=lambda cp: -cp[1])
    parts = [f"{c} is {hedge(share)}" for c, share in ranked if hedge(share)]
    return f"Weighing text and voice, {join_and(parts)}."


def read_hedges(text: str, classes: list[str]) -> np.ndarray | None:
    """The distribution a synthesis states through :data:`HEDGES` (None when it states none).

    Unnamed classes get 0; the named classes' shares are renormalised.
    Example: ``"anger is likely and neutral is a real possibility"`` over (anger, sadness, neutral)
    -> (0.72, 0, 0.32) / 1.04 = (0.692, 0, 0.308).
    """
    meaning = {phrase: mid for phrase, _, mid in HEDGES}
    alternatives = "|".join(re.escape(ph) for ph in sorted(meaning, key=len, reverse=True))
    q = np.zeros(len(classes))
    for i, c in enumerate(classes):
        m = re.search(rf"\b{re.escape(c)} is ({alternatives})\b", text, flags=re.IGNORECASE)
        if m:
            q[i] = meaning[m.group(1).lower()]
    return q / q.sum() if q.sum() > 0 else None
