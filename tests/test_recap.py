"""Chapter summaries (ambinb.recap): each number checked against a direct computation from the
files a fake run wrote."""

import json

import numpy as np
import pytest

from ambinb import config, labels, metrics, recap, results
from ambinb.paths import run_dir

CLASSES = ["anger", "happiness", "sadness", "neutral"]


def _arrays(seed: int, noise: float, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.dirichlet(np.ones(len(CLASSES)) * 0.7, size=n)
    return truth, (1 - noise) * truth + noise * rng.dirichlet(np.ones(len(CLASSES)), size=n)


def _write_run(root, strategy: str, fold: int, noise: float, extra: dict | None = None):
    truth, pred = _arrays(fold, noise)
    cfg = {"dataset": "toy", "strategy": strategy, "fold": fold, "seed": 0, "bootstrap": 20}
    folder = run_dir("toy", strategy, fold, root)
    results.write_evaluation(folder, [f"u{i}" for i in range(len(truth))], CLASSES, truth, pred,
                             np.full(len(CLASSES), 0.25), cfg, extra=extra)
    return folder, truth, pred


def test_training_summary_reports_the_budget_and_the_scores_against_the_prior(tmp_path):
    folder, truth, pred = _write_run(tmp_path, "sft", 1, 0.3, {"train": {"steps": 40, "examples": 120},
                                                                "wall_time_s": 61.4})
    text = recap.training(folder)
    flat = np.full_like(truth, 0.25)
    ours = {k: getattr(metrics, k)(truth, pred).mean() for k in ("js", "bc", "r2", "brier")}
    prior = {k: getattr(metrics, k)(truth, flat).mean() for k in ours}
    assert text.startswith(f"{recap.HEADING} `sft` on `toy`, test fold 1: 40 optimizer steps on 120 training "
                           "examples, 61 s in all.")
    row = next(line for line in text.splitlines() if line.startswith("| js |"))
    verdict = "yes" if ours["js"] < prior["js"] else "no"
    assert row.startswith(f"| js | {ours['js']:.3f} [") and row.endswith(f"| {prior['js']:.3f} | {verdict} |")
    wins = sum(ours[k] < prior[k] for k in ("js", "brier")) + sum(ours[k] > prior[k] for k in ("bc", "r2"))
    assert f"beats the prior (the training folds' mean distribution) on {wins} of 4 metrics" in text
    assert "did not finish" in recap.training(tmp_path / "nothing")


def test_results_summary_names_the_best_strategy_and_those_not_below_the_prior(tmp_path):
    noise = {"sft": 0.2, "dpo": 0.5, "base": 1.0}
    js = {s: [] for s in noise}
    prior = []
    for strategy, level in noise.items():
        for fold in (0, 1):
            _, truth, pred = _write_run(tmp_path, strategy, fold, level)
            js[strategy].append(metrics.js(truth, pred).mean())
            prior.append(metrics.js(truth, np.full_like(truth, 0.25)).mean())
    means, prior_js = {s: np.mean(v) for s, v in js.items()}, np.mean(prior)
    best = min(means, key=means.get)
    text = recap.results(tmp_path, ["toy", "iemocap"], [0, 1])
    assert f"- `toy`: 6 finished runs of 3 strategies. Lowest mean JS: `{best}` ({means[best]:.3f}; the prior: " \
           f"{prior_js:.3f})." in text
    worse = sorted(s for s in means if means[s] >= prior_js)
    assert (f"Not below the prior: {', '.join(f'`{s}`' for s in worse)}." if worse
            else "Every strategy is below the prior.") in text
    assert "- `iemocap`: no finished run yet." in text


def test_curation_summary_counts_what_was_accepted(tmp_path):
    cfg = {"dataset": "toy", "run_root": str(tmp_path), "prompt_version": "v1", "backend": "template",
           "accept_js": 0.05}
    store = run_dir("toy", "curation", None, tmp_path) / "cot.jsonl"
    store.parent.mkdir(parents=True)
    records = [("a", True, 0.01, [True]), ("b", True, 0.03, [False, True]), ("c", False, 0.2, [False, False])]
    store.write_text("".join(json.dumps({"utt_id": u, "prompt_version": "v1", "accepted": ok, "validation_js": j,
                                         "attempts": [{"accepted": a} for a in tries]}) + "\n"
                             for u, ok, j, tries in records))
    text = recap.chapter("02_curate_cot", cfg)
    assert "3 utterances curated (`template` writer, prompt `v1`): 2 accepted (67%), 33% at the first attempt" in text
    assert "0.020 on average over the accepted ones (the bar is 0.05)" in text
    assert recap.show("02_curate_cot", cfg).data == text
    with pytest.raises(ValueError, match="06_ablations"):
        recap.chapter("06_ablations", cfg)


def test_labels_summary_reads_the_saved_table(tmp_path):
    df = labels.load_dataset(config.resolve(dataset="toy")).head(40).copy()
    df.attrs = {"skipped": {"no audio": 2}, "warnings": {}}
    folder = run_dir("toy", "labels", None, tmp_path)
    labels.save_labels(df, folder / "labels.csv")
    text = recap.labels(folder, 0.8)
    p = df[[f"p_{c}" for c in CLASSES]].to_numpy()
    assert text.startswith(f"{recap.HEADING} 40 utterances from {df['speaker'].nunique()} speakers in "
                           f"{df['fold'].nunique()} folds; mean soft label anger {p[:, 0].mean():.0%}, ")
    assert f"{(p.max(axis=1) < 0.8).mean():.0%} of the utterances are ambiguous" in text
    assert f"median {df['n_votes'].median():g}" in text and "Skipped: no audio: 2." in text
