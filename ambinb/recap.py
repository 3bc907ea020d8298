"""What each chapter's run gave, in a few lines of Markdown read from the files it wrote.

Each notebook's last cell shows one of these, so the book's chapters end with a summary that is
never written by hand and never goes stale::

    recap.show("03_sft", cfg)                          # 01-05: from the resolved config
    recap.show_results(root, datasets, folds)          # 06: over every finished run

- :func:`labels`: the label table (``runs/<dataset>/labels/labels.csv``): utterances, speakers,
  folds, class shares, ambiguity, and the rows skipped or warned about;
- :func:`curation`: the CoT store (``runs/<dataset>/curation/cot.jsonl``): accepted share and JS;
- :func:`training`: a run folder's ``metrics.json``: the budget and the held-out scores against the
  prior;
- :func:`results`: the finished runs of a run root: per dataset, the best strategy by mean JS and
  the strategies that do not beat the prior.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ambinb import aggregate
from ambinb import curation as curation_mod
from ambinb import labels as labels_mod
from ambinb.paths import resolve_path, run_dir, run_folder

HEADING = "**What this run gave.**"
TRAINING_CHAPTERS = ("03_sft", "04_dpo", "05_grpo")


def _counts(counts: dict[str, Any]) -> str:
    """``{"bad vote": 2, "no audio": 1}`` -> ``"bad vote: 2; no audio: 1"``."""
    return "; ".join(f"{k}: {v}" for k, v in counts.items())


def labels(folder: str | os.PathLike, ambiguous_max_p: float) -> str:
    """Summary of the label table in ``folder`` (``labels.csv`` with its attrs, from 01_labels)."""
    df = labels_mod.read_labels(Path(folder) / "labels.csv")
    info = labels_mod.describe(df, ambiguous_max_p)
    per_class = info["votes_per_class"]
    shares = ", ".join(f"{c} {p:.0%}" for c, p in zip(per_class["class"], per_class["mean_p"]))
    votes = df["n_votes"]
    text = (f"{HEADING} {len(df):,} utterances from {df['speaker'].nunique()} speakers in "
            f"{df['fold'].nunique()} folds; mean soft label {shares}. Votes per utterance: median "
            f"{votes.median():g} (from {votes.min():g} to {votes.max():g}). {info['ambiguous_share']:.0%} of the "
            f"utterances are ambiguous (no class reaches {ambiguous_max_p:g}).")
    skipped, warned = df.attrs.get("skipped", {}), df.attrs.get("warnings", {})
    text += f" Skipped: {_counts(skipped)}." if skipped else " Nothing was skipped."
    if warned:
        text += f" Warnings: {_counts(warned)}."
    return text + "\n"


def curation(cfg: dict[str, Any]) -> str:
    """Summary of the curated chains of thought of ``cfg``'s dataset and prompt version (02_curate_cot)."""
    df = curation_mod.load_curated(curation_mod.store_path(cfg), cfg["prompt_version"])
    if not len(df):
        return f"{HEADING} No chain of thought was curated.\n"
    accepted = df[df["accepted"].astype(bool)]
    first = df["attempts"].map(lambda a: bool(a) and bool(a[0]["accepted"])).mean()
    return (f"{HEADING} {len(df):,} utterances curated (`{cfg['backend']}` writer, prompt "
            f"`{cfg['prompt_version']}`): {len(accepted):,} accepted ({len(accepted) / len(df):.0%}), "
            f"{first:.0%} at the first attempt. The reader's JS to the annotators' distribution is "
            f"{accepted['validation_js'].mean():.3f} on average over the accepted ones (the bar is "
            f"{cfg['accept_js']:g}); training uses only those.\n")


def _better(metric: str, ours: float, prior: float) -> bool:
    return ours < prior if aggregate.LOWER_IS_BETTER[metric] else ours > prior


def training(folder: str | os.PathLike) -> str:
    """Summary of one evaluated run folder (its ``metrics.json``): budget, held-out scores, the prior."""
    path = Path(folder) / "metrics.json"
    if not path.exists():
        return f"{HEADING} The run has no `metrics.json` yet: it did not finish.\n"
    m = json.loads(path.read_text())
    train, ours, prior, ci = m.get("train") or {}, m["metrics"], m["prior"], m["ci95"]
    budget = (f" {train['steps']} optimizer steps on {train['examples']:,} training examples"
              if train.get("steps") else " no training (the strategy does not train)")
    wall = m.get("wall_time_s")
    beats = [k for k in aggregate.MAIN_METRICS if _better(k, ours[k], prior[k])]
    rows = "\n".join(f"| {k} | {ours[k]:.3f} [{ci[k][0]:.3f}, {ci[k][1]:.3f}] | {prior[k]:.3f} | "
                     f"{'yes' if k in beats else 'no'} |" for k in aggregate.MAIN_METRICS)
    return (f"{HEADING} `{m['strategy']}` on `{m['dataset']}`, test fold {m['fold']}:{budget}"
            f"{f', {wall:.0f} s in all' if wall is not None else ''}. On the held-out utterances it beats the "
            f"prior (the training folds' mean distribution) on {len(beats)} of {len(aggregate.MAIN_METRICS)} "
            f"metrics.\n\n| metric | this run [95 % CI] | prior | better |\n|---|---|---|---|\n{rows}\n")


def results(run_root: str | os.PathLike, datasets: list[str], folds: list[int]) -> str:
    """Summary of the finished runs under ``run_root`` for ``datasets`` and ``folds`` (06_ablations):
    per dataset, the lowest mean JS over folds and the strategies whose mean JS is not below the prior's."""
    runs = aggregate.collect(str(resolve_path(run_root)))
    lines = []
    for ds in datasets:
        sel = runs[(runs["dataset"] == ds) & runs["fold"].isin(folds)] if len(runs) else runs
        if not len(sel):
            lines.append(f"- `{ds}`: no finished run yet.")
            continue
        js = sel.groupby("strategy")["js"].mean()
        prior = float(sel.groupby("fold")["prior_js"].first().mean())
        best = js.idxmin()
        worse = sorted(js.index[js >= prior])
        lines.append(f"- `{ds}`: {len(sel)} finished runs of {len(js)} strategies. Lowest mean JS: `{best}` "
                     f"({js[best]:.3f}; the prior: {prior:.3f}). "
                     + (f"Not below the prior: {', '.join(f'`{s}`' for s in worse)}." if worse
                        else "Every strategy is below the prior."))
    return f"{HEADING}\n\n" + "\n".join(lines) + "\n"


def chapter(name: str, cfg: dict[str, Any]) -> str:
    """The summary of chapter ``name`` (``01_labels`` ... ``05_grpo``) for the resolved config ``cfg``."""
    if name == "01_labels":
        return labels(run_dir(cfg["dataset"], "labels", None, cfg["run_root"]), cfg["ambiguous_max_p"])
    if name == "02_curate_cot":
        return curation(cfg)
    if name in TRAINING_CHAPTERS:
        return training(run_folder(cfg))
    raise ValueError(f"chapter {name!r}: expected 01_labels, 02_curate_cot or one of {TRAINING_CHAPTERS} "
                     "(06_ablations: recap.results)")


def show(name: str, cfg: dict[str, Any]) -> Any:
    """:func:`chapter` as Markdown that a notebook displays (the last expression of a cell)."""
    from IPython.display import Markdown  # optional

    return Markdown(chapter(name, cfg))


def show_results(run_root: str | os.PathLike, datasets: list[str], folds: list[int]) -> Any:
    """:func:`results` as Markdown that a notebook displays (the last expression of a cell)."""
    from IPython.display import Markdown  # optional

    return Markdown(results(run_root, datasets, folds))

