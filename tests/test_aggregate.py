"""06_ablations' numbers from run folders: fold means, missing runs, bold best, paired differences."""

import numpy as np
import pytest
from scipy import stats

from ambinb import aggregate, config, metrics, paper, results
from ambinb.paths import run_folder

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


# --- several seeds per fold: base (seed 0), dpo (seeds 0, 1, 2) and grpo (seed 0) on folds 0 and 1 --------

SEED_CLASSES = ["anger", "sadness"]
SEED_P_GT = {0: [[0.8, 0.2], [0.3, 0.7]], 1: [[0.6, 0.4], [0.1, 0.9]]}
SEED_P_HAT = {("base", 0, 0): [[0.5, 0.5], [0.5, 0.5]], ("base", 1, 0): [[0.5, 0.5], [0.5, 0.5]],
              ("dpo", 0, 0): [[0.7, 0.3], [0.4, 0.6]], ("dpo", 0, 1): [[0.9, 0.1], [0.2, 0.8]],
              ("dpo", 0, 2): [[0.6, 0.4], [0.5, 0.5]], ("dpo", 1, 0): [[0.5, 0.5], [0.2, 0.8]],
              ("dpo", 1, 1): [[0.7, 0.3], [0.1, 0.9]], ("dpo", 1, 2): [[0.6, 0.4], [0.3, 0.7]],
              ("grpo", 0, 0): [[0.8, 0.2], [0.4, 0.6]], ("grpo", 1, 0): [[0.6, 0.4], [0.2, 0.8]]}
# what each on-policy run logged about its own samples: (first fifth, last fifth)
SEED_TRAIN = {("dpo", 0, 0): (0.30, 0.28), ("dpo", 0, 1): (0.30, 0.29), ("dpo", 0, 2): (0.30, 0.27),
              ("dpo", 1, 0): (0.20, 0.21), ("dpo", 1, 1): (0.20, 0.16), ("dpo", 1, 2): (0.20, 0.17),
              ("grpo", 0, 0): (-0.50, -0.30), ("grpo", 1, 0): (-0.40, -0.45)}
SEED_KEY = {"dpo": "rollout_js", "grpo": "reward_mean"}


def seed_js(strategy: str, fold: int, seed: int) -> np.ndarray:
    """Per-utterance JS of one hand-made run."""
    return metrics.js(np.array(SEED_P_GT[fold]), np.array(SEED_P_HAT[(strategy, fold, seed)]))


@pytest.fixture
def seeds_root(tmp_path):
    root = tmp_path / "runs"
    for (strategy, fold, seed), p_hat in SEED_P_HAT.items():
        cfg = config.resolve(dataset="toy", strategy=strategy, fold=fold,
                             overrides={"seed": seed, "run_root": str(root), "bootstrap": 20})
        extra = None
        if (strategy, fold, seed) in SEED_TRAIN:
            first, last = SEED_TRAIN[(strategy, fold, seed)]
            key = SEED_KEY[strategy]
            extra = {"train": {"steps": 10, f"{key}_first_fifth": first, f"{key}_last_fifth": last}}
        results.write_evaluation(run_folder(cfg), [f"f{fold}u0", f"f{fold}u1"], SEED_CLASSES,
                                 np.array(SEED_P_GT[fold]), np.array(p_hat), np.full(2, 0.5), cfg, extra=extra)
    return root


def test_seeded_run_folders_are_where_collect_looks(seeds_root):
    assert sorted(p.name for p in (seeds_root / "toy" / "dpo").iterdir()) == \
        ["fold0", "fold0-seed1", "fold0-seed2", "fold1", "fold1-seed1", "fold1-seed2"]
    assert [(fold, seed) for path, fold, seed in aggregate.run_metrics_files(str(seeds_root))
            if path.parts[-3] == "dpo"] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


def test_collect_has_one_row_per_run_with_its_seed(seeds_root):
    runs = aggregate.collect(str(seeds_root))
    assert "seed" in runs.columns
    assert len(runs) == len(SEED_P_HAT) == 10
    assert sorted(zip(runs.strategy, runs.fold, runs.seed)) == sorted(SEED_P_HAT)
    row = runs[(runs.strategy == "dpo") & (runs.fold == 1) & (runs.seed == 2)].iloc[0]
    assert row["js"] == pytest.approx(seed_js("dpo", 1, 2).mean(), abs=1e-9)
    assert row["folder"] == str(seeds_root / "toy" / "dpo" / "fold1-seed2")


def test_summary_pools_every_seed_of_every_fold(seeds_root):
    table = aggregate.summary(aggregate.collect(str(seeds_root)), ["base", "dpo", "sft"], ["toy"], [0, 1])
    per_run = [seed_js("dpo", k, s).mean() for k in (0, 1) for s in (0, 1, 2)]   # the 6 runs' mean JS
    dpo = table.loc[("toy", "dpo")]
    assert dpo["js"] == pytest.approx(np.mean(per_run), abs=1e-9)
    assert dpo["js_sd"] == pytest.approx(np.std(per_run, ddof=1), abs=1e-9)
    assert (dpo["n_folds"], dpo["n_seeds"], dpo["n_runs"], dpo["expected"]) == (2, 3, 6, 2)
    base = table.loc[("toy", "base")]
    assert (base["n_folds"], base["n_seeds"], base["n_runs"]) == (2, 1, 2)
    assert base["js"] == pytest.approx(np.mean([seed_js("base", k, 0).mean() for k in (0, 1)]), abs=1e-9)
    assert table.loc[("toy", "sft"), "n_runs"] == 0
    one_fold = aggregate.summary(aggregate.collect(str(seeds_root)), ["dpo"], ["toy"], [1]).loc[("toy", "dpo")]
    assert (one_fold["n_folds"], one_fold["n_seeds"], one_fold["n_runs"]) == (1, 3, 3)
    assert one_fold["js"] == pytest.approx(np.mean(per_run[3:]), abs=1e-9)


def test_format_table_says_what_each_mean_is_over(seeds_root):
    table = aggregate.summary(aggregate.collect(str(seeds_root)), ["base", "dpo"], ["toy"], [0, 1])
    cells = aggregate.format_table(table)
    assert cells.loc[("toy", "dpo"), "runs"] == "2 folds x 3 seeds"
    assert cells.loc[("toy", "base"), "runs"] == "2 folds"
    only_base = aggregate.format_table(aggregate.summary(aggregate.collect(str(seeds_root)), ["base"], ["toy"],
                                                         [0, 1]))
    assert "runs" not in only_base.columns                    # no row pools seeds: no column


def test_pooled_predictions_carry_fold_and_seed(seeds_root):
    preds = aggregate.pooled_predictions(str(seeds_root), "toy", "dpo", [0, 1])
    assert {"fold", "seed"} <= set(preds.columns) and len(preds) == 12
    assert sorted(set(zip(preds.fold, preds.seed))) == [(k, s) for k in (0, 1) for s in (0, 1, 2)]
    row = preds[(preds.utt_id == "f1u1") & (preds.seed == 2)].iloc[0]
    assert row["fold"] == 1 and list(row["p_hat"]) == pytest.approx(SEED_P_HAT[("dpo", 1, 2)][1])
    seed1 = aggregate.pooled_predictions(str(seeds_root), "toy", "dpo", [0, 1], seeds=[1])
    assert list(zip(seed1.fold, seed1.seed, seed1.utt_id)) == [(0, 1, "f0u0"), (0, 1, "f0u1"), (1, 1, "f1u0"),
                                                               (1, 1, "f1u1")]
    assert len(aggregate.pooled_predictions(str(seeds_root), "toy", "dpo", [1])) == 6


def test_paired_tests_average_each_utterance_over_its_seeds(seeds_root):
    """dpo - base per utterance: the mean of dpo's 3 seeds' JS minus base's JS; 4 utterances, not 12."""
    tests = aggregate.paired_tests(str(seeds_root), "toy", ["dpo", "base"], [0, 1], n_boot=500, seed=0)
    assert len(tests) == 1
    row = tests.iloc[0]
    assert (row["a"], row["b"], row["seeds"], row["folds"], row["utterances"]) == ("dpo", "base", "3/1", 2, 4)
    # utterances in (utt_id, fold) order: f0u0, f0u1, f1u0, f1u1
    dpo_mean = {k: np.mean([seed_js("dpo", k, s) for s in (0, 1, 2)], axis=0) for k in (0, 1)}
    diff = np.concatenate([dpo_mean[k] - seed_js("base", k, 0) for k in (0, 1)])
    assert row["mean js(a) - js(b)"] == pytest.approx(diff.mean(), abs=1e-9)
    assert diff.mean() < 0                                     # dpo is nearer the annotators than uniform
    boot = diff[np.random.default_rng(0).integers(0, 4, size=(500, 4))].mean(axis=1)
    assert (row["ci95_low"], row["ci95_high"]) == pytest.approx(
        (np.quantile(boot, 0.025), np.quantile(boot, 0.975)), abs=1e-9)
    by_fold = [diff[:2].mean(), diff[2:].mean()]              # t-test over the two folds' mean differences
    t = np.mean(by_fold) / (np.std(by_fold, ddof=1) / np.sqrt(2))
    assert row["paired t-test p (folds)"] == pytest.approx(2 * stats.t.sf(abs(t), df=1), rel=1e-6)


def test_sampled_trends_read_each_runs_train_entries(seeds_root):
    trends = aggregate.sampled_trends(str(seeds_root), ["toy"], [0, 1])
    assert len(trends) == len(SEED_TRAIN) == 8                 # base logs no samples: no row
    assert set(trends.columns) >= {"dataset", "strategy", "fold", "seed", "key", "first_fifth", "last_fifth",
                                   "change", "improved"}
    for (strategy, fold, seed), (first, last) in SEED_TRAIN.items():
        row = trends[(trends.strategy == strategy) & (trends.fold == fold) & (trends.seed == seed)]
        assert len(row) == 1, (strategy, fold, seed)
        row = row.iloc[0]
        assert row["key"] == SEED_KEY[strategy]
        assert (row["first_fifth"], row["last_fifth"]) == (first, last)
        assert row["change"] == pytest.approx(last - first)
    dpo = trends[trends.strategy == "dpo"].set_index(["fold", "seed"])
    assert dpo.improved.to_dict() == {(0, 0): True, (0, 1): True, (0, 2): True, (1, 0): False, (1, 1): True,
                                      (1, 2): True}             # lower rollout JS is better
    grpo = trends[trends.strategy == "grpo"].set_index("fold")
    assert grpo.improved.to_dict() == {0: True, 1: False}      # higher reward is better
    assert len(aggregate.sampled_trends(str(seeds_root), ["toy"], [1])) == 4
    assert aggregate.sampled_trends(str(seeds_root), ["iemocap"], [0, 1]).empty


def test_sampled_verdicts_count_the_runs_that_improved(seeds_root):
    verdicts = aggregate.sampled_verdicts(aggregate.sampled_trends(str(seeds_root), ["toy"], [0, 1]))
    # dpo changes -0.02, -0.01, -0.03, +0.01, -0.04, -0.03: mean -0.02; grpo +0.20, -0.05: mean +0.075
    assert sorted(verdicts) == ["toy/dpo: rollout_js improved in 5 of 6 runs (mean change -0.020)",
                                "toy/grpo: reward_mean improved in 1 of 2 runs (mean change +0.075)"]
    assert aggregate.sampled_verdicts(aggregate.sampled_trends(str(seeds_root), ["toy"], [])) == []


def test_pooled_ci_keeps_as_many_seeds_per_fold_as_every_fold_has(seeds_root):
    """Fold 1 lost seeds 1 and 2: the CI is that of seed 0 on both folds, each utterance one group, and with
    every seed present it is the clustered bootstrap of all six runs."""
    import shutil

    full = aggregate.pooled_ci(str(seeds_root), "toy", "dpo", [0, 1], n_boot=200)
    preds = aggregate.pooled_predictions(str(seeds_root), "toy", "dpo", [0, 1])
    groups = (preds.fold.astype(str) + "/" + preds.utt_id.astype(str)).to_numpy()
    assert full == metrics.bootstrap_ci(np.stack(preds.p_gt), np.stack(preds.p_hat), n_boot=200, groups=groups)
    for seed in (1, 2):
        shutil.rmtree(seeds_root / "toy" / "dpo" / f"fold1-seed{seed}")
    cut = aggregate.pooled_ci(str(seeds_root), "toy", "dpo", [0, 1], n_boot=200)
    zero = preds[preds.seed == 0]
    groups = (zero.fold.astype(str) + "/" + zero.utt_id.astype(str)).to_numpy()
    assert cut == metrics.bootstrap_ci(np.stack(zero.p_gt), np.stack(zero.p_hat), n_boot=200, groups=groups)
