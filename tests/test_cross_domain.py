"""Cross-domain runs in the results (Table 3): run folders ``<train>_to_<test>``, read by ``ambinb.aggregate``."""

import numpy as np
import pytest

from ambinb import aggregate, metrics, results

IEMOCAP = ["anger", "happiness", "sadness", "neutral"]
CREMA_D = ["anger", "disgust", "fear", "happiness", "neutral", "sadness"]


def _write(root, dataset, strategy, fold, classes, noise, params=None):
    rng = np.random.default_rng(sum(map(ord, dataset + strategy)) * 10 + fold)
    p = rng.dirichlet(np.ones(len(classes)), size=8)
    q = (1 - noise) * p + noise * rng.dirichlet(np.ones(len(classes)), size=8)
    cfg = {"dataset": dataset, "strategy": strategy, "fold": fold, "seed": 0, "bootstrap": 10, **(params or {})}
    results.write_evaluation(root / dataset / strategy / f"fold{fold}", [f"u{i}" for i in range(8)], classes, p, q,
                             np.full(len(classes), 1 / len(classes)), cfg)
    return metrics.js(p, q).mean()


def test_names():
    assert aggregate.cross_name("crema_d", "iemocap") == "crema_d_to_iemocap"
    assert aggregate.split_cross("crema_d_to_iemocap") == ("crema_d", "iemocap")
    assert aggregate.split_cross("crema_d") is None
    assert aggregate.setting_label("crema_d_to_iemocap") == "crema_d → iemocap (cross-domain)"
    assert aggregate.setting_label("toy") == "toy (in-domain)"
    for bad in ("_to_iemocap", "crema_d_to_", "a_to_b_to_c"):
        with pytest.raises(ValueError, match="<train>_to_<test>"):
            aggregate.split_cross(bad)


def test_cross_domains_lists_existing_and_expected_pairs(tmp_path):
    assert aggregate.cross_domains(str(tmp_path), ["toy"]) == []
    assert aggregate.cross_domains(str(tmp_path), ["iemocap", "crema_d"]) == ["crema_d_to_iemocap"]
    _write(tmp_path, "toy_to_iemocap", "sft", 0, IEMOCAP, 0.5)
    assert aggregate.cross_domains(str(tmp_path), ["toy"]) == ["toy_to_iemocap"]   # a run is never hidden


def test_collect_reads_both_sides_and_checks_the_test_set(tmp_path):
    _write(tmp_path, "crema_d", "sft", 0, CREMA_D, 0.3)
    _write(tmp_path, "crema_d_to_iemocap", "sft", 0, IEMOCAP, 0.5,
           {"train_dataset": "crema_d", "test_dataset": "iemocap"})
    runs = aggregate.collect(str(tmp_path)).set_index("dataset")
    assert runs.loc["crema_d_to_iemocap", ["train_dataset", "test_dataset"]].tolist() == ["crema_d", "iemocap"]
    assert runs.loc["crema_d", ["train_dataset", "test_dataset"]].tolist() == ["crema_d", "crema_d"]
    _write(tmp_path, "crema_d_to_iemocap", "sft", 1, IEMOCAP, 0.5, {"test_dataset": "toy"})
    with pytest.raises(ValueError, match=r"crema_d_to_iemocap/sft/fold1/metrics.json.*'iemocap'.*'toy'"):
        aggregate.collect(str(tmp_path))


def test_table3_in_domain_and_cross_domain_rows(tmp_path):
    js = {}
    for k in (0, 1):
        for st, noise in (("sft", 0.2), ("sft_nocot", 0.6)):
            js[("crema_d", st, k)] = _write(tmp_path, "crema_d", st, k, CREMA_D, noise)
        js[("cross", "sft", k)] = _write(tmp_path, "crema_d_to_iemocap", "sft", k, IEMOCAP, 0.4,
                                         {"train_dataset": "crema_d", "test_dataset": "iemocap"})
    t3 = aggregate.table3(str(tmp_path), ["iemocap", "crema_d"], [0, 1], n_boot=20)
    cross = "crema_d → iemocap (cross-domain)"
    assert list(t3.index) == [("iemocap (in-domain)", "sft"), ("iemocap (in-domain)", "sft_nocot"),
                              ("crema_d (in-domain)", "sft"), ("crema_d (in-domain)", "sft_nocot"),
                              (cross, "sft"), (cross, "sft_nocot")]
    assert t3.loc[("iemocap (in-domain)", "sft"), "js"] == "missing"
    assert t3.loc[(cross, "sft_nocot"), "js"] == "missing"
    mean = np.mean([js[("cross", "sft", k)] for k in (0, 1)])
    assert t3.loc[(cross, "sft"), "js"].startswith(f"**{mean:.3f} ± ")   # the only cross row: best
    assert t3.loc[("crema_d (in-domain)", "sft"), "js"].startswith("**")  # less noise than sft_nocot
    assert t3.loc[(cross, "sft"), "js (paper)"] == "0.38"
    assert t3.loc[("crema_d (in-domain)", "sft_nocot"), "brier (paper)"] == "0.04"
    assert t3.loc[("iemocap (in-domain)", "sft"), "js (paper)"] == ""


def test_restrict_prior_by_hand():
    from ambinb.evaluate import restrict_prior

    six = ["anger", "disgust", "fear", "happiness", "neutral", "sadness"]
    four = ["anger", "happiness", "sadness", "neutral"]
    # [.4, .1, .1, .2, .1, .1] -> anger .4, happiness .2, sadness .1, neutral .1 over a mass of .8
    np.testing.assert_allclose(restrict_prior(np.array([.4, .1, .1, .2, .1, .1]), six, four),
                               [.5, .25, .125, .125])
    with pytest.raises(ValueError, match="not among the training classes"):
        restrict_prior(np.full(4, .25), four, ["fear"])


def test_cross_domain_run_needs_the_in_domain_run(tmp_path):
    from ambinb import config
    from ambinb.evaluate import run_cross_domain

    cfg = config.resolve(dataset="crema_d_to_iemocap", strategy="sft", fold=0, run_root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="run params/sweeps/crema_d.yaml"):
        run_cross_domain(cfg)
