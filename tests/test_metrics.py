"""ambinb.metrics against scipy / sklearn and hand-worked values."""

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_entropy
from scipy.stats import pearsonr
from sklearn.metrics import r2_score

from ambinb import metrics


@pytest.fixture
def pair():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(4), size=50)
    q = rng.dirichlet(np.ones(4) * 2, size=50)
    return p, q


def test_hand_worked_two_class():
    p, q = np.array([[0.5, 0.5]]), np.array([[1.0, 0.0]])
    assert metrics.bc(p, q)[0] == pytest.approx(math.sqrt(0.5))
    assert metrics.brier(p, q)[0] == pytest.approx(0.25)
    # JS by hand: m = (.75, .25); 0.5*(.5 log2(.5/.75) + .5 log2(.5/.25)) + 0.5*(1 log2(1/.75))
    by_hand = 0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(2)) + 0.5 * math.log2(1 / 0.75)
    assert metrics.js(p, q)[0] == pytest.approx(by_hand, abs=1e-8)
    assert by_hand == pytest.approx(0.3113, abs=1e-4)
    # p and q are perfectly anti-/correlated over two classes: r^2 = 1
    assert metrics.r2(p, q)[0] == pytest.approx(0.0)  # p is constant: no correlation -> 0
    assert metrics.r2(np.array([[0.2, 0.8]]), q)[0] == pytest.approx(1.0)


def test_against_scipy(pair):
    p, q = pair
    ref_js = np.array([jensenshannon(a, b, base=2) ** 2 for a, b in zip(p, q)])
    np.testing.assert_allclose(metrics.js(p, q), ref_js, atol=1e-8)
    ref_kl = np.array([scipy_entropy(a, b) for a, b in zip(p, q)])
    np.testing.assert_allclose(metrics.kl(p, q), ref_kl, atol=1e-7)
    ref_r2 = np.array([pearsonr(a, b)[0] ** 2 for a, b in zip(p, q)])
    np.testing.assert_allclose(metrics.r2(p, q), ref_r2, atol=1e-10)
    assert metrics.r2_cod(p, q) == pytest.approx(r2_score(p.ravel(), q.ravel()))
    h_p = np.array([scipy_entropy(a, base=2) for a in p])
    h_q = np.array([scipy_entropy(b, base=2) for b in q])
    assert metrics.entropy_corr(p, q) == pytest.approx(pearsonr(h_p, h_q)[0], abs=1e-6)


def test_identical_distributions_are_perfect(pair):
    p, _ = pair
    s = metrics.score(p, p)
    assert s["js"] == pytest.approx(0, abs=1e-9) and s["kl"] == pytest.approx(0, abs=1e-7)
    assert s["bc"] == pytest.approx(1) and s["r2"] == pytest.approx(1) and s["brier"] == 0
    assert s["n"] == 50


def test_score_keys_and_means(pair):
    p, q = pair
    s = metrics.score(p, q)
    assert set(s) == {"js", "bc", "r2", "r2_cod", "brier", "kl", "entropy_corr", "collapse_rate", "n"}
    assert s["brier"] == pytest.approx(np.mean((p - q) ** 2))
    assert s["js"] == pytest.approx(np.mean([jensenshannon(a, b, base=2) ** 2 for a, b in zip(p, q)]))


def test_collapse_rate_by_hand():
    p = np.array([[0.6, 0.4], [0.5, 0.5], [0.9, 0.1], [0.7, 0.3]])  # rows 0, 1, 3 ambiguous
    q = np.array([[0.95, 0.05], [0.5, 0.5], [0.99, 0.01], [0.05, 0.95]])  # rows 0 and 3 collapse
    assert metrics.collapse_rate(p, q) == pytest.approx(2 / 3)
    assert math.isnan(metrics.collapse_rate(np.array([[0.9, 0.1]]), np.array([[0.5, 0.5]])))


@pytest.mark.parametrize("bad, message", [
    (np.ones(4) / 4, "shape"),
    (np.array([[1.0]]), "at least 2"),
    (np.array([[0.5, np.nan]]), "NaN"),
    (np.array([[1.2, -0.2]]), "negative"),
    (np.array([[0.5, 0.6]]), "sums to"),
])
def test_bad_input_raises(bad, message):
    with pytest.raises(ValueError, match=f"p_gt: .*{message}"):
        metrics.score(bad, np.array([[0.5, 0.5]]))


def test_shape_mismatch_and_row_named():
    with pytest.raises(ValueError, match="shape"):
        metrics.js(np.array([[0.5, 0.5]]), np.array([[0.2, 0.3, 0.5]]))
    with pytest.raises(ValueError, match="p_hat: row 1"):
        metrics.js(np.array([[0.5, 0.5], [0.5, 0.5]]), np.array([[0.5, 0.5], [0.9, 0.3]]))


def test_bootstrap_ci_brackets_the_estimate_and_is_deterministic(pair):
    p, q = pair
    ci = metrics.bootstrap_ci(p, q, n_boot=300, seed=3)
    s = metrics.score(p, q)
    for name in ("js", "bc", "r2", "brier", "kl", "r2_cod"):
        lo, hi = ci[name]
        assert lo <= s[name] <= hi, name
        assert hi - lo > 0
    assert ci == metrics.bootstrap_ci(p, q, n_boot=300, seed=3)


def test_bootstrap_ci_equals_scoring_each_resample_on_its_own(pair):
    """Reference: draw the same resamples and score each with :func:`metrics.score` alone."""
    p, q = pair[0], pair[1].copy()
    q[:10] = [0.97, 0.01, 0.01, 0.01]  # confident predictions, so that collapse_rate is not always 0
    idx = np.random.default_rng(5).integers(0, p.shape[0], size=(100, p.shape[0]))
    ci = metrics.bootstrap_ci(p, q, n_boot=100, seed=5)
    for name in ("js", "r2_cod", "entropy_corr", "collapse_rate"):
        s = np.array([metrics.score(p[i], q[i])[name] for i in idx])
        s = s[np.isfinite(s)]
        expected = (float(np.quantile(s, 0.025)), float(np.quantile(s, 0.975))) if s.size else None
        if expected is None:
            assert np.isnan(ci[name]).all(), name
        else:
            assert ci[name] == pytest.approx(expected, abs=1e-12), name


def test_cluster_indices_draws_whole_groups():
    """Groups ``b a b c a c``: a = rows {1, 4}, b = {0, 2}, c = {3, 5}; every resample is three drawn groups'
    rows (in row order within a group), the groups drawn as ``rng.integers(0, 3)`` over the sorted labels."""
    groups = np.array(["b", "a", "b", "c", "a", "c"])
    members = {0: [1, 4], 1: [0, 2], 2: [3, 5]}          # a, b, c: np.unique's sorted order
    idx = metrics.cluster_indices(groups, 50, np.random.default_rng(7))
    assert idx.shape == (50, 6)
    drawn = np.random.default_rng(7).integers(0, 3, size=(50, 3))
    expected = np.array([[i for g in row for i in members[int(g)]] for row in drawn])
    np.testing.assert_array_equal(idx, expected)
    as_groups = {tuple(m) for m in members.values()}
    for row in idx:                                          # and, independently: whole groups, nothing else
        assert all(tuple(pair) in as_groups for pair in row.reshape(3, 2))
    assert len({tuple(row) for row in idx}) > 1              # the resamples differ


def test_cluster_indices_of_singleton_groups_is_the_plain_bootstrap():
    """One row per group: the same draws as the ungrouped bootstrap (labels already in sorted order)."""
    idx = metrics.cluster_indices(np.arange(5), 20, np.random.default_rng(3))
    np.testing.assert_array_equal(idx, np.random.default_rng(3).integers(0, 5, size=(20, 5)))


@pytest.mark.parametrize(("groups", "sizes"), [(["a", "a", "b"], r"\[1, 2\]"),
                                               ([0, 0, 0, 1, 2, 2], r"\[1, 2, 3\]")])
def test_cluster_indices_refuses_groups_of_unequal_size(groups, sizes):
    with pytest.raises(ValueError, match=rf"groups must be of one size, got sizes {sizes}"):
        metrics.cluster_indices(np.array(groups), 10, np.random.default_rng(0))
    p = np.full((len(groups), 2), 0.5)
    with pytest.raises(ValueError, match=rf"got sizes {sizes}"):
        metrics.bootstrap_ci(p, p, n_boot=10, groups=np.array(groups))


def test_grouped_bootstrap_of_identical_copies_equals_the_ungrouped_one_of_the_rows(pair):
    """Three seeds that predicted alike: each utterance's three rows are copies. Drawing whole groups, a
    resample holds every drawn row three times, which changes no mean, no ratio and no correlation; and the
    group draws are the ungrouped draws over the 8 distinct rows, so the CIs are the same numbers."""
    p, q = pair[0][:8], pair[1][:8].copy()
    q[:3] = [0.97, 0.01, 0.01, 0.01]                          # so that collapse_rate varies
    utts = [f"u{i}" for i in range(8)]                        # sorted labels: u0 .. u7 in row order
    p3, q3 = np.concatenate([p] * 3), np.concatenate([q] * 3)  # seed-major rows: u0..u7, u0..u7, u0..u7
    groups = np.array(utts * 3)
    grouped = metrics.bootstrap_ci(p3, q3, n_boot=200, seed=4, groups=groups)
    plain = metrics.bootstrap_ci(p, q, n_boot=200, seed=4)
    assert grouped.keys() == plain.keys()
    for name in plain:
        assert grouped[name] == pytest.approx(plain[name], abs=1e-12, nan_ok=True), name
    # without the groups the 24 copies count as 24 independent utterances: a narrower, different interval
    rows = metrics.bootstrap_ci(p3, q3, n_boot=200, seed=4)
    assert rows["js"][1] - rows["js"][0] < plain["js"][1] - plain["js"][0]


def test_grouped_bootstrap_of_two_groups_by_hand():
    """Two utterances, each twice: a resample is (a, a), (a, b), (b, a) or (b, b), so the mean JS is js_a,
    their midpoint or js_b; with 400 resamples each end is drawn about 100 times, so the 2.5 % and 97.5 %
    quantiles are js_a and js_b exactly. js_a = 0 (p_hat = p_gt); js_b = 0.3113 (the module's worked example)."""
    p = np.array([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    q = np.array([[0.5, 0.5], [1.0, 0.0], [0.5, 0.5], [1.0, 0.0]])
    js_b = 0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(2)) + 0.5 * math.log2(1 / 0.75)
    ci = metrics.bootstrap_ci(p, q, n_boot=400, seed=0, groups=np.array(["a", "b", "a", "b"]))
    assert ci["js"] == pytest.approx((0.0, js_b), abs=1e-8)
    assert ci["brier"] == pytest.approx((0.0, 0.25), abs=1e-12)
