"""06_ablations' numbers from run folders: fold means, missing runs, bold best, paired differences."""

import numpy as np
import pytest

from ambinb import aggregate, config, metrics, paper, results

CLASSES = ["anger", "happiness", "sadness", "neutral"]


def run_cfg(strategy: str, fold: int, **keys) -> dict:
    """The resolved toy config of a run folder written by hand, with ``keys`` changed."""
    return {**config.resolve(dataset="toy", strategy=strategy, fold=fold), **keys}


@pytest.fixture
def run_root(tmp_path):
    rng = np.random.default_rng(0)
    truth = {k: rng.dirichlet(np.ones(4), size=10) for k in range(3)}
    for strategy, noise in (("sft", 0.2), ("dpo", 0.6)):
        for k in range(3):
            p = truth[k]
            q = (1 - noise) * p + noise * rng.dirichlet(np.ones(4), size=10)
            results.write_evaluation(tmp_path / "toy" / strategy / f"fold{k}", [f"f{k}u{i}" for i in range(10)],
                                     CLASSES, p, q, np.full(4, 0.25), run_cfg(strategy, k, bootstrap=20))
    return tmp_path


def test_summary_means_sd_prior_and_missing(run_root):
    runs = aggregate.collect(str(run_root))
    assert len(runs) == 6
    table = aggregate.summary(runs, ["sft", "dpo", "grpo", "prior"], ["toy"], [0, 1, 2])
    per_fold = [results.read_metrics(run_root / "toy" / "sft" / f"fold{k}")["metrics"]["js"] for k in range(3)]
    assert table.loc[("toy", "sft"), "js"] == pytest.approx(np.mean(per_fold))
    assert table.loc[("toy", "sft"), "js_sd"] == pytest.approx(np.std(per_fold, ddof=1))
    assert table.loc[("toy", "grpo"), "n_folds"] == 0
    uniform_js = [metrics.js(np.stack(results.read_predictions(run_root / "toy/sft" / f"fold{k}").p_gt),
                             np.full((10, 4), 0.25)).mean() for k in range(3)]
    assert table.loc[("toy", "prior"), "js"] == pytest.approx(np.mean(uniform_js), abs=1e-6)
    cells = aggregate.format_table(table, paper=paper.table2())
    assert cells.loc[("toy", "grpo"), "js"] == "missing"
    assert cells.loc[("toy", "sft"), "js"].startswith("**")      # less noise, lower JS: best
    assert not cells.loc[("toy", "dpo"), "bc"].startswith("**")


def test_paired_tests_match_a_direct_computation(run_root):
    tests = aggregate.paired_tests(str(run_root), "toy", ["sft", "dpo"], [0, 1, 2])
    a = aggregate.pooled_predictions(str(run_root), "toy", "sft", [0, 1, 2])
    b = aggregate.pooled_predictions(str(run_root), "toy", "dpo", [0, 1, 2])
    direct = (metrics.js(np.stack(a.p_gt), np.stack(a.p_hat)) - metrics.js(np.stack(b.p_gt), np.stack(b.p_hat))).mean()
    row = tests.iloc[0]
    assert row["mean js(a) - js(b)"] == pytest.approx(direct)
    assert row["ci95_low"] <= direct <= row["ci95_high"]
    assert row["utterances"] == 30 and row["folds"] == 3


def test_reliability_and_disagreements(run_root):
    preds = aggregate.pooled_predictions(str(run_root), "toy", "sft", [0, 1, 2])
    rel = aggregate.reliability(preds, bins=5)
    assert rel.n.sum() == 30 * 4
    worst = aggregate.disagreements(str(run_root), "toy", ["sft", "dpo"], [0, 1, 2], k=3)
    assert list(worst.max_pairwise_js) == sorted(worst.max_pairwise_js, reverse=True)
    assert aggregate.existing_strategies(str(run_root), "toy") == ["dpo", "sft"]


def test_budgets_show_what_each_strategy_trained(tmp_path):
    from ambinb import results

    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=5)
    for fold, steps in ((0, 12), (1, 14)):
        for strategy, train, budget in (("sft", {"steps": steps, "seconds": 3.0}, {"epochs": 1.0, "max_steps": 0}),
                                        ("base", None, {"epochs": 1.0, "max_steps": 0})):
            cfg = run_cfg(strategy, fold, classes=["a", "b", "c", "d"], bootstrap=10, batch_size=8, lr=1e-4,
                          lr_scale=10.0, **{**budget, "max_steps": 5 if fold else 0})
            extra = {"train": train} if train else None
            results.write_evaluation(tmp_path / "toy" / strategy / f"fold{fold}", [f"u{i}" for i in range(5)],
                                     cfg["classes"], p, p, p.mean(0), cfg, extra=extra)
    table = aggregate.budgets(str(tmp_path))
    sft = table.loc[("toy", "sft")]
    assert (sft["folds"], sft["steps"], sft["train_wall_s"]) == (2, 13.0, 3.0)
    assert sft["max_steps"] == "0/5" and sft["lr"] == "0.001" and sft["epochs"] == "1"
    assert table.loc[("toy", "base")]["lr"] == "-" and table.loc[("toy", "base")]["steps"] == 0


def test_reasoning_reads_the_think_blocks_back(tmp_path):
    from ambinb import curation, results

    classes = ["anger", "happiness", "sadness", "neutral"]
    p_gt = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.2, 0.6], [0.25, 0.25, 0.25, 0.25]])
    items = [curation.Item(f"u{i}", "I am here.", "", tuple(classes), tuple(p), {}) for i, p in enumerate(p_gt)]
    thinks = [curation.template_cot(item) for item in items]
    q = np.stack([curation.read_template_cot(t, classes) for t in thinks])
    q = q / q.sum(1, keepdims=True)
    completions = [thinks[0] + "\n<answer>anger</answer>", thinks[1] + "\n<answer>neutral</answer>",
                   "<think>\nnonsense\n</think>\n<answer>anger</answer>"]
    p_hat = np.stack([q[0], q[1], p_gt[2]])                 # the read-out follows the first two blocks exactly
    results.write_evaluation(tmp_path / "toy" / "sft" / "fold0", ["u0", "u1", "u2"], classes, p_gt, p_hat,
                             p_gt.mean(0), run_cfg("sft", 0, bootstrap=10), completions=completions)
    nocot = ["<answer>anger</answer>"] * 3                  # what evaluate writes for use_cot false
    results.write_evaluation(tmp_path / "toy" / "sft_nocot" / "fold0", ["u0", "u1", "u2"], classes, p_gt, p_gt,
                             p_gt.mean(0), run_cfg("sft_nocot", 0, bootstrap=10), completions=nocot)
    table = aggregate.reasoning(str(tmp_path), "toy", ["sft", "sft_nocot"], [0])
    assert list(table.index) == ["sft"]                      # no think blocks, no row
    row = table.loc["sft"]
    assert row["n"] == 3 and row["parsed"] == 2 / 3 and row["agree"] == 1.0
    assert row["js_hat_cot"] == pytest.approx(0.0, abs=1e-6)      # predictions.jsonl rounds to 6 places
    assert row["js_cot_gt"] == pytest.approx(row["js_hat_gt"], rel=1e-4)
    # the reader itself is validated by curation; here JS(q, p_gt) is small for template blocks
    assert row["js_cot_gt"] < 0.1
