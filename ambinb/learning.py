"""Did the samples improve? The first and the last fifth of a training log, smoothed curves, and the verdict.

An on-policy method learns when what it samples gets better, not when its surrogate loss falls. Each
family names the per-step quantity of its own samples that ``train_log.jsonl`` records
(:data:`SAMPLED`): DPO's ``rollout_js`` (mean JS of its rollouts' read-outs to the annotators, lower
is better) and GRPO's ``reward_mean`` (mean Eq. 6 reward of the sampled members, higher is better).
:func:`trend` compares the mean of the first fifth of the steps with the mean of the last fifth;
the strategies' ``summary`` writes those two numbers into ``metrics.json``, chapters 04 and 05
plot the smoothed curve (:func:`ambinb.plots.sampled_curve`) and 06 tabulates the verdict of every
run (:func:`ambinb.aggregate.sampled_trends`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# family -> (the per-step key of its samples' quality, whether higher is better)
SAMPLED: dict[str, tuple[str, bool]] = {"dpo": ("rollout_js", False), "grpo": ("reward_mean", True)}


@dataclass(frozen=True)
class Trend:
    """The first- and last-fifth means of one logged quantity, and whether it moved the good way."""

    key: str
    first: float
    last: float
    higher_is_better: bool

    @property
    def change(self) -> float:
        return self.last - self.first

    @property
    def improved(self) -> bool:
        return bool(self.change > 0) if self.higher_is_better else bool(self.change < 0)

    def sentence(self) -> str:
        """``"rollout_js 0.401 -> 0.377 (-0.024): improved"``."""
        verdict = "improved" if self.improved else "did not improve"
        return f"{self.key} {self.first:.3f} -> {self.last:.3f} ({self.change:+.3f}): {verdict}"


def values(history: list[dict[str, Any]], key: str) -> np.ndarray:
    """The finite values of ``key`` over the steps that logged it, in step order."""
    out = [float(row[key]) for row in history if key in row and row[key] is not None]
    arr = np.asarray(out, dtype=np.float64)
    return arr[np.isfinite(arr)]


def fifths(series: np.ndarray) -> tuple[float, float]:
    """Means of the first and the last fifth of ``series`` (at least one value each; NaN when empty).

    Example: ``fifths(np.arange(10.0))`` -> ``(0.5, 8.5)``.
    """
    series = np.asarray(series, dtype=np.float64)
    if series.size == 0:
        return float("nan"), float("nan")
    n = max(1, series.size // 5)
    return float(series[:n].mean()), float(series[-n:].mean())


def trend(history: list[dict[str, Any]], key: str, higher_is_better: bool) -> Trend:
    """:class:`Trend` of ``key`` over a training log."""
    first, last = fifths(values(history, key))
    return Trend(key, first, last, higher_is_better)


def sampled_trend(history: list[dict[str, Any]], family: str) -> Trend:
    """:class:`Trend` of the quantity a family's own samples are judged by (:data:`SAMPLED`).

    Raises:
        KeyError: a family that does not sample (``sft``), naming the ones that do.
    """
    if family not in SAMPLED:
        raise KeyError(f"family {family!r} trains on no samples of its own; sampling families: {sorted(SAMPLED)}")
    return trend(history, *SAMPLED[family])


def smooth(series: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` steps (shorter at the start), one value per step.

    Example: ``smooth([0, 2, 4, 6], 2)`` -> ``[0, 1, 3, 5]``.
    """
    series = np.asarray(series, dtype=np.float64)
    if series.size == 0:
        return series
    window = max(1, int(window))
    csum = np.concatenate([[0.0], np.cumsum(series)])
    ends = np.arange(1, series.size + 1)
    starts = np.maximum(0, ends - window)
    return (csum[ends] - csum[starts]) / (ends - starts)
