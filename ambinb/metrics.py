"""Distribution metrics over arrays of shape (N, C): JS, BC, R2 and Brier as the paper scores them.

Per-utterance functions return shape (N,); :func:`score` returns their means and the
ambiguity diagnostics the paper lacks. Every log is taken after adding ``EPS`` and
renormalising. Worked example (two classes)::

    p = [[0.5, 0.5]], q = [[1.0, 0.0]]
    bc    = sqrt(.5*1) + 0                       = 0.7071
    brier = ((0.5-1)^2 + (0.5-0)^2) / 2          = 0.25
    js    = 0.5*KL(p||m) + 0.5*KL(q||m), m=(.75,.25), log2
          = 0.5*(.5*log2(.5/.75) + .5*log2(.5/.25)) + 0.5*log2(1/.75) = 0.3113
"""

from __future__ import annotations

import numpy as np

EPS = 1e-10
SUM_TOL = 1e-3
AMBIGUOUS_MAX_P = 0.8
COLLAPSE_MAX_P = 0.9
PER_UTTERANCE = ("js", "bc", "r2", "brier", "kl")


def check_distributions(p: np.ndarray, name: str = "p") -> np.ndarray:
    """Return ``p`` as float64 (N, C) after checking it is a batch of distributions.

    Raises:
        ValueError: naming ``name`` and the first offending row, for a wrong rank, fewer than two
            classes, NaN or inf, negative entries, or rows that do not sum to 1 within ``SUM_TOL``.
    """
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected shape (N, C), got {arr.shape}")
    if arr.shape[1] < 2:
        raise ValueError(f"{name}: expected at least 2 classes, got shape {arr.shape}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise ValueError(f"{name}: row {int(np.argmax(bad))} has NaN or inf: {arr[np.argmax(bad)]}")
    bad = (arr < 0).any(axis=1)
    if bad.any():
        raise ValueError(f"{name}: row {int(np.argmax(bad))} has negative entries: {arr[np.argmax(bad)]}")
    sums = arr.sum(axis=1)
    bad = np.abs(sums - 1.0) > SUM_TOL
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name}: row {i} sums to {sums[i]:.6f}, not 1 (tolerance {SUM_TOL})")
    return arr


def _pair(p_gt: np.ndarray, p_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = check_distributions(p_gt, "p_gt")
    q = check_distributions(p_hat, "p_hat")
    if p.shape != q.shape:
        raise ValueError(f"p_gt has shape {p.shape} but p_hat has shape {q.shape}")
    return p, q


def smooth(p: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Add ``eps`` to every entry and renormalise each row (the smoothing before every log)."""
    p = np.asarray(p, dtype=np.float64) + eps
    return p / p.sum(axis=-1, keepdims=True)


def kl(p_gt: np.ndarray, p_hat: np.ndarray) -> np.ndarray:
    """KL(p_gt || p_hat) in nats per utterance (the forward KL used everywhere in ambinb)."""
    p, q = _pair(p_gt, p_hat)
    p, q = smooth(p), smooth(q)
    return np.sum(p * (np.log(p) - np.log(q)), axis=1)


def js(p_gt: np.ndarray, p_hat: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence, log base 2 (0..1), per utterance."""
    p, q = _pair(p_gt, p_hat)
    p, q = smooth(p), smooth(q)
    m = 0.5 * (p + q)
    return 0.5 * np.sum(p * np.log2(p / m), axis=1) + 0.5 * np.sum(q * np.log2(q / m), axis=1)


def bc(p_gt: np.ndarray, p_hat: np.ndarray) -> np.ndarray:
    """Bhattacharyya coefficient sum_i sqrt(p_i q_i), per utterance (1 = identical)."""
    p, q = _pair(p_gt, p_hat)
    return np.sum(np.sqrt(p * q), axis=1)


def r2(p_gt: np.ndarray, p_hat: np.ndarray) -> np.ndarray:
    """Squared Pearson correlation between p_gt and p_hat across classes, per utterance.

    A row that is constant across classes (e.g. uniform) has no correlation; it scores 0,
    since such a prediction shows no linear relation to the annotations.
    """
    p, q = _pair(p_gt, p_hat)
    pc = p - p.mean(axis=1, keepdims=True)
    qc = q - q.mean(axis=1, keepdims=True)
    denom = np.sqrt((pc**2).sum(axis=1) * (qc**2).sum(axis=1))
    num = (pc * qc).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(denom > 1e-15, num / np.where(denom > 1e-15, denom, 1.0), 0.0)
    return r**2


def brier(p_gt: np.ndarray, p_hat: np.ndarray) -> np.ndarray:
    """Mean over classes of (p_hat_i - p_gt_i)^2, per utterance."""
    p, q = _pair(p_gt, p_hat)
    return np.mean((q - p) ** 2, axis=1)


def r2_cod(p_gt: np.ndarray, p_hat: np.ndarray) -> float:
    """Coefficient of determination over all probabilities, p_gt as truth (sklearn's r2_score)."""
    return _r2_cod(*_pair(p_gt, p_hat))


def _r2_cod(p: np.ndarray, q: np.ndarray) -> float:
    y, f = p.ravel(), q.ravel()
    ss_tot = np.sum((y - y.mean()) ** 2)
    return float(1.0 - np.sum((y - f) ** 2) / ss_tot) if ss_tot > 0 else float("nan")


def entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy in bits per row."""
    p = smooth(check_distributions(p))
    return -np.sum(p * np.log2(p), axis=1)


def entropy_corr(p_gt: np.ndarray, p_hat: np.ndarray) -> float:
    """Pearson correlation between the entropies of p_gt and of p_hat across utterances
    (does the model hedge where annotators disagree?). NaN when either is constant."""
    p, q = _pair(p_gt, p_hat)
    return _corr(entropy(p), entropy(q))


def _corr(h_p: np.ndarray, h_q: np.ndarray) -> float:
    if h_p.std() < 1e-12 or h_q.std() < 1e-12:
        return float("nan")
    return float(np.corrcoef(h_p, h_q)[0, 1])


def collapse_rate(p_gt: np.ndarray, p_hat: np.ndarray, ambiguous_max_p: float = AMBIGUOUS_MAX_P,
                  collapse_max_p: float = COLLAPSE_MAX_P) -> float:
    """Share of ambiguous utterances (max p_gt < ``ambiguous_max_p``) whose max p_hat exceeds
    ``collapse_max_p``: how often the model is confidently single-label where people were not.
    NaN when no utterance is ambiguous."""
    p, q = _pair(p_gt, p_hat)
    return float(_collapse_rates(p, q, np.arange(p.shape[0])[None, :], ambiguous_max_p, collapse_max_p)[0])


def _collapse_rates(p: np.ndarray, q: np.ndarray, idx: np.ndarray, ambiguous_max_p: float = AMBIGUOUS_MAX_P,
                    collapse_max_p: float = COLLAPSE_MAX_P) -> np.ndarray:
    """:func:`collapse_rate` of each row of ``idx`` (B, N), a resample of the utterances, at once.

    Counts of booleans are exact, so each value equals the rate computed on ``p[idx[b]]`` alone.
    """
    ambiguous = p.max(axis=1) < ambiguous_max_p
    collapsed = ambiguous & (q.max(axis=1) > collapse_max_p)
    n_ambiguous = ambiguous[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_ambiguous > 0, collapsed[idx].sum(axis=1) / np.maximum(n_ambiguous, 1), np.nan)


def _summary(p: np.ndarray, q: np.ndarray) -> dict[str, float]:
    out = {name: float(np.mean(globals()[name](p, q))) for name in PER_UTTERANCE}
    out["r2_cod"] = r2_cod(p, q)
    out["entropy_corr"] = entropy_corr(p, q)
    out["collapse_rate"] = collapse_rate(p, q)
    return out


def score(p_gt: np.ndarray, p_hat: np.ndarray) -> dict[str, float]:
    """All metrics for one evaluation: means of ``js``, ``bc``, ``r2``, ``brier``, ``kl``, plus
    ``r2_cod``, ``entropy_corr``, ``collapse_rate`` and ``n`` (utterances)."""
    p, q = _pair(p_gt, p_hat)
    out = _summary(p, q)
    out["n"] = int(p.shape[0])
    return out


def cluster_indices(groups: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_boot, n_rows)`` row indices of a bootstrap that draws groups with replacement, every row of a
    drawn group kept. The groups must be of one size (the rows of each utterance under every seed).

    Example: groups ``[a, a, b, b]`` -> each resample is two drawn groups' rows, e.g. ``[2, 3, 0, 1]``.

    Raises:
        ValueError: groups of different sizes (a seed missing for some utterances), naming the sizes.
    """
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if counts.min() != counts.max():
        raise ValueError(f"bootstrap groups must be of one size, got sizes {sorted(set(counts.tolist()))}")
    members = np.argsort(inverse, kind="stable").reshape(len(counts), counts[0])
    return members[rng.integers(0, len(counts), size=(n_boot, len(counts)))].reshape(n_boot, -1)


def bootstrap_ci(p_gt: np.ndarray, p_hat: np.ndarray, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95, groups: np.ndarray | None = None) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals of every metric in :func:`score`, resampling
    utterances with replacement (deterministic for a seed).

    ``groups`` (one label per row) resamples whole groups instead of rows: the rows of one utterance
    under several training seeds stay together, so seeds narrow the interval only as far as they
    make each utterance's prediction less noisy (:func:`cluster_indices`).

    The inputs are checked once; per-utterance quantities (the five metrics, the entropies) are
    computed once and resampled, so each resample's value equals :func:`score` on that resample.
    """
    p, q = _pair(p_gt, p_hat)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, p.shape[0], size=(n_boot, p.shape[0])) if groups is None else \
        cluster_indices(np.asarray(groups), n_boot, rng)
    per = {name: globals()[name](p, q) for name in PER_UTTERANCE}
    samples: dict[str, np.ndarray] = {name: per[name][idx].mean(axis=1) for name in PER_UTTERANCE}
    h_p, h_q = entropy(p), entropy(q)
    samples["r2_cod"] = np.array([_r2_cod(p[i], q[i]) for i in idx])
    samples["entropy_corr"] = np.array([_corr(h_p[i], h_q[i]) for i in idx])
    samples["collapse_rate"] = _collapse_rates(p, q, idx)
    alpha = (1.0 - level) / 2
    out = {}
    for name, s in samples.items():
        s = s[np.isfinite(s)]
        out[name] = (float(np.quantile(s, alpha)), float(np.quantile(s, 1 - alpha))) if s.size else (
            float("nan"), float("nan"))
    return out
