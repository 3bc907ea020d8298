"""Figures the notebooks show and the book renders. Each returns a matplotlib Figure; saving is
the caller's choice (:func:`save`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ambinb import files, labels, learning, metrics, results  # noqa: E402


def label_overview(df: pd.DataFrame, ambiguous_max_p: float = metrics.AMBIGUOUS_MAX_P) -> plt.Figure:
    """Four panels: votes per class, annotators per utterance, entropy of p_gt, class balance per fold."""
    classes = labels.class_names(df)
    p = df[[f"p_{c}" for c in classes]].to_numpy()
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))

    votes = df[[f"votes_{c}" for c in classes]].sum()
    axes[0].bar(classes, votes.to_numpy(), color="tab:blue")
    axes[0].set_title("votes per class")
    axes[0].tick_params(axis="x", rotation=30)

    counts = df["n_votes"].value_counts().sort_index()
    axes[1].bar(counts.index.astype(str), counts.to_numpy(), color="tab:gray")
    axes[1].set_title("annotators per utterance")
    axes[1].set_xlabel("votes")

    h = metrics.entropy(p)
    ambiguous = p.max(axis=1) < ambiguous_max_p
    axes[2].hist([h[~ambiguous], h[ambiguous]], bins=20, stacked=True, color=["tab:green", "tab:orange"],
                 label=["clear", f"ambiguous (max p < {ambiguous_max_p})"])
    axes[2].set_title(f"entropy of p_gt (bits); {ambiguous.mean():.0%} ambiguous")
    axes[2].legend(fontsize=8)

    balance = df.groupby("fold")[[f"p_{c}" for c in classes]].mean()
    balance.columns = classes
    bottom = np.zeros(len(balance))
    for c in classes:
        axes[3].bar(balance.index.astype(str), balance[c].to_numpy(), bottom=bottom, label=c)
        bottom += balance[c].to_numpy()
    axes[3].set_title("mean p_gt per test fold")
    axes[3].set_xlabel("fold")
    axes[3].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def save(fig: plt.Figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a figure atomically (:func:`ambinb.files.atomic`), creating the folder; the format is the suffix's."""
    path = Path(path)
    with files.atomic(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or None)
    return path


def ce_vs_kl(table: pd.DataFrame, pairs: dict[str, tuple[str, str]], metric_names: tuple[str, ...] = ("js", "bc"),
             ) -> plt.Figure:
    """Figure 2: CE-only against CE + KL, one panel per metric, bars per (dataset, method) with fold sd.

    Args:
        table: ``ambinb.aggregate.summary`` output (index dataset, strategy).
        pairs: method label -> (CE-only strategy, CE + KL strategy), e.g. ``{"SFT": ("sft_ce", "sft")}``.
    """
    datasets = list(table.index.get_level_values(0).unique())
    fig, axes = plt.subplots(1, len(metric_names), figsize=(5 * len(metric_names), 3.4), squeeze=False)
    groups = [(ds, label) for ds in datasets for label in pairs]
    x = np.arange(len(groups))
    for ax, m in zip(axes[0], metric_names):
        for j, (variant, color) in enumerate((("CE only", "tab:gray"), ("CE + KL", "tab:blue"))):
            means, sds = [], []
            for ds, label in groups:
                key = (ds, pairs[label][j])
                row = table.loc[key] if key in table.index else None
                means.append(np.nan if row is None else row[m])
                sds.append(np.nan if row is None else row[f"{m}_sd"])
            ax.bar(x + (j - 0.5) * 0.38, means, 0.38, yerr=np.nan_to_num(sds), color=color, label=variant, capsize=3)
            for xi, mean in zip(x, means):
                if np.isnan(mean):
                    ax.text(xi + (j - 0.5) * 0.38, 0, "missing", rotation=90, ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, [f"{label}\n{ds}" for ds, label in groups])
        ax.set_title(f"{m.upper()} ({'lower' if m in ('js', 'brier', 'kl') else 'higher'} is better)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def reliability(curves: dict[str, pd.DataFrame]) -> plt.Figure:
    """Predicted against annotated probability per strategy (``ambinb.aggregate.reliability`` frames)."""
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], color="black", lw=0.8, ls="--", label="calibrated")
    for name, curve in curves.items():
        ax.plot(curve.p_hat, curve.p_gt, marker="o", ms=3, label=name)
    ax.set_xlabel("predicted probability (p_hat)")
    ax.set_ylabel("annotated probability (p_gt)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def training_curves(history: list[dict], keys: tuple[str, ...] = ("loss", "ce", "kl", "lr")) -> plt.Figure:
    """One panel per logged quantity against the optimizer step (``ambinb.engine`` log rows)."""
    present = [k for k in keys if any(k in row for row in history)]
    fig, axes = plt.subplots(1, max(1, len(present)), figsize=(3.6 * max(1, len(present)), 2.8), squeeze=False)
    steps = [row["step"] for row in history]
    for ax, key in zip(axes[0], present):
        values = [row.get(key, np.nan) for row in history]
        ax.plot(steps, values, lw=0.8, alpha=0.5, color="tab:blue")
        if len(values) >= 10 and key != "lr":
            window = max(2, len(values) // 20)
            smooth = pd.Series(values).rolling(window, min_periods=1).mean()
            ax.plot(steps, smooth, lw=1.6, color="tab:blue")
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.tight_layout()
    return fig


def sampled_curve(history: list[dict], keys: tuple[tuple[str, bool], ...]) -> plt.Figure:
    """What the policy samples, step by step: one panel per ``(key, higher_is_better)``, the raw values faint,
    a moving average over a tenth of the steps bold, the first and last fifth shaded, and the change between
    their means in the title (:func:`ambinb.learning.trend`), which says whether the samples improved."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.0), squeeze=False)
    for ax, (key, higher) in zip(axes[0], keys):
        rows = [row for row in history if key in row and np.isfinite(row[key])]
        steps = np.array([row["step"] for row in rows])
        series = learning.values(rows, key)
        tr = learning.trend(rows, key, higher)
        if series.size:
            ax.plot(steps, series, lw=0.7, alpha=0.35, color="tab:blue")
            ax.plot(steps, learning.smooth(series, max(2, series.size // 10)), lw=1.8, color="tab:blue")
            n = max(1, series.size // 5)
            for part, value in ((steps[:n], tr.first), (steps[-n:], tr.last)):
                ax.axvspan(part[0], part[-1], color="tab:orange", alpha=0.12)
                ax.hlines(value, part[0], part[-1], color="tab:orange", lw=2)
        ax.set_title(f"{key}: {tr.first:.3f} -> {tr.last:.3f} ({tr.change:+.3f})\n"
                     f"{'higher' if higher else 'lower'} is better; {'improved' if tr.improved else 'not improved'}",
                     fontsize=9)
        ax.set_xlabel("step")
    fig.tight_layout()
    return fig


def distributions(p_gt: np.ndarray, p_hat: np.ndarray, classes: list[str], titles: list[str]) -> plt.Figure:
    """Annotated against predicted distribution for a few utterances, side by side."""
    n = len(titles)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 2.6), squeeze=False)
    x = np.arange(len(classes))
    for ax, gt, hat, title in zip(axes[0], p_gt, p_hat, titles):
        ax.bar(x - 0.2, gt, 0.4, label="annotators", color="tab:gray")
        ax.bar(x + 0.2, hat, 0.4, label="model", color="tab:blue")
        ax.set_xticks(x, classes, rotation=30, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(title, fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def acceptance(curated: pd.DataFrame, accept_js: float) -> plt.Figure:
    """Curation's validation (``ambinb.curation.load_curated`` records). Left: histogram of the
    reader's JS for accepted and rejected think blocks, with the threshold. Right: how many
    attempts each utterance took, by final status."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    js = curated["validation_js"].astype(float)
    top = float(np.nanmax(js)) if js.notna().any() else 0.0
    bins = np.linspace(0.0, max(2 * accept_js, top) * 1.02, 30)
    for status, colour in (("accepted", "tab:green"), ("rejected", "tab:red")):
        values = js[curated["status"] == status].dropna()
        if len(values):
            ax1.hist(values, bins=bins, alpha=0.7, color=colour, label=f"{status} ({len(values)})")
    ax1.axvline(accept_js, color="black", linestyle="--", label=f"accept_js = {accept_js:g}")
    ax1.set(xlabel="JS(p_gt, reader's distribution), log2", ylabel="utterances", title="Validation")
    ax1.legend(frameon=False)
    counts = pd.crosstab(curated["attempts"].map(len), curated["status"])
    counts.plot.bar(ax=ax2, rot=0, color={"accepted": "tab:green", "rejected": "tab:red", "failed": "tab:gray"})
    ax2.set(xlabel="attempts used", ylabel="utterances", title="Attempts per utterance")
    fig.tight_layout()
    return fig


def save_examples(run_dir: str | os.PathLike, n: int = 2) -> tuple[Any, str]:
    """Draw the clearest and the most ambiguous held-out utterances of a finished run
    (:func:`ambinb.results.clearest_and_most_ambiguous`) into ``examples.png`` of its folder.

    Returns:
        The figure (annotators' against the model's distribution) and
        :func:`ambinb.results.describe_examples` of them.
    """
    pick = results.clearest_and_most_ambiguous(results.read_predictions(run_dir), n)
    fig = distributions(np.stack(pick.p_gt), np.stack(pick.p_hat), results.read_metrics(run_dir)["classes"],
                        list(pick.utt_id))
    save(fig, Path(run_dir) / "examples.png")
    return fig, results.describe_examples(pick)
