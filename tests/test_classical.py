"""The classical reference: the soft-label fit against hand-derived optimality and sklearn's hard-label
fit, no leakage from the test fold, and the run folder it writes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest_model import toy_corpus

from ambinb import classical, config, metrics, results

FIXTURES = (toy_corpus,)  # the session's 40-utterance toy corpus (conftest_model), used by name below

CLASSES = ["anger", "happiness", "sadness", "neutral"]


def soft_table(n: int = 40, seed: int = 0) -> pd.DataFrame:
    """A schema table without audio whose words carry the label: 'cross' -> anger, 'glad' -> happiness."""
    rng = np.random.default_rng(seed)
    words = {"anger": "cross", "happiness": "glad", "sadness": "down", "neutral": "fine"}
    rows = []
    for i in range(n):
        votes = rng.multinomial(5, [0.55, 0.15, 0.15, 0.15] if i % 4 == 0 else np.roll([0.55, 0.15, 0.15, 0.15], i % 4))
        major = CLASSES[int(np.argmax(votes))]
        row = {"utt_id": f"u{i:03d}", "dataset": "toy", "speaker": f"s{i % 6}", "session": i % 3 + 1,
               "fold": i % 3, "transcript": f"I feel {words[major]} today", "audio_path": "", "consensus": major,
               "n_votes": 5}
        row.update({f"votes_{c}": int(v) for c, v in zip(CLASSES, votes, strict=True)})
        row.update({f"p_{c}": v / 5 for c, v in zip(CLASSES, votes, strict=True)})
        rows.append(row)
    return pd.DataFrame(rows)


def test_bag_of_words_vocabulary_from_training_text_only():
    x_train, x_test, vocab = classical.bag_of_words(["I hate this", "I love this"], ["love it", "zebra"], min_df=1)
    assert vocab == ["hate", "i", "love", "this"]
    np.testing.assert_array_equal(x_test.toarray(), [[0, 0, 1, 0], [0, 0, 0, 0]])
    assert classical.bag_of_words(["a b", "b c"], ["b"], min_df=2)[2] == ["b"]


def test_one_hot_targets_give_sklearns_hard_label_fit():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 5))
    y = rng.integers(0, 3, size=60)
    fitted = classical.fit_soft(x, np.eye(3)[y], c=0.7)
    ref = LogisticRegression(C=0.7, max_iter=2000, tol=1e-8).fit(x, y)
    np.testing.assert_allclose(fitted.model.coef_, ref.coef_, atol=1e-5)
    np.testing.assert_allclose(classical.predict_soft(fitted, x), metrics.smooth(ref.predict_proba(x)), atol=1e-6)


def test_soft_fit_is_the_optimum_of_soft_cross_entropy():
    """At the optimum of sum_n CE(p_n, softmax(W x_n + b)) + ||W||^2 / (2C) the gradient,
    X^T (Q - P) + W^T / C for W and sum_n (q_n - p_n) for b, vanishes (derived by hand)."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(80, 4))
    p = rng.dirichlet([0.5, 0.5, 0.5], size=80)
    c = 2.0
    fitted = classical.fit_soft(x, p, c=c)
    w, b = fitted.model.coef_, fitted.model.intercept_
    logits = x @ w.T + b
    q = np.exp(logits - logits.max(axis=1, keepdims=True))
    q /= q.sum(axis=1, keepdims=True)
    grad_w = x.T @ (q - p) + w.T / c
    grad_b = (q - p).sum(axis=0)
    assert np.abs(grad_w).max() < 1e-4 and np.abs(grad_b).max() < 1e-4
    # and it is not the hard-label fit of the arg-max labels
    hard = classical.fit_soft(x, np.eye(3)[p.argmax(axis=1)], c=c)
    assert np.abs(hard.model.coef_ - w).max() > 1e-2


def test_a_class_without_training_mass_gets_near_zero():
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    p = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0]], dtype=float)
    p_hat = classical.predict_soft(classical.fit_soft(x, p), x)
    assert p_hat.shape == (4, 3) and p_hat[:, 2].max() < 1e-9
    np.testing.assert_allclose(p_hat.sum(axis=1), 1.0)


def test_run_classical_writes_the_run_folder_and_never_reads_test_labels(tmp_path):
    df = soft_table()
    cfg = config.resolve(dataset="toy", strategy="classical", fold=1, run_root=str(tmp_path / "runs"),
                         prosody_cache=str(tmp_path / "cache"), classical_min_df=1, bootstrap=50)
    result = classical.run_classical(cfg, df)
    out = tmp_path / "runs" / "toy" / "classical" / "fold1"
    assert results.is_finished(out) and result["strategy"] == "classical"
    preds = results.read_predictions(out)
    test = df[df["fold"] == 1]
    assert list(preds["utt_id"]) == list(test["utt_id"])
    p_hat = np.array(preds["p_hat"].tolist())
    assert result["metrics"]["js"] == pytest.approx(metrics.js(np.array(preds["p_gt"].tolist()), p_hat).mean(),
                                                    abs=1e-5)
    assert result["metrics"]["js"] < result["prior"]["js"]  # the words carry the label
    assert result["n_audio_features"] == 0 and result["n_words"] > 0

    # scramble the test fold's labels (and add a word only the test fold has): p_hat must not move
    scrambled = df.copy()
    is_test = scrambled["fold"] == 1
    p_cols = [f"p_{c}" for c in CLASSES]
    scrambled.loc[is_test, p_cols] = scrambled.loc[is_test, p_cols].to_numpy()[:, ::-1]
    scrambled.loc[is_test, "transcript"] += " zebra"
    classical.run_classical({**cfg, "run_root": str(tmp_path / "runs2")}, scrambled)
    again = results.read_predictions(tmp_path / "runs2" / "toy" / "classical" / "fold1")
    np.testing.assert_allclose(np.array(again["p_hat"].tolist()), p_hat, atol=1e-6)
    params = json.loads((out / "params.json").read_text())
    assert params["strategy"] == "classical" and params["classical_c"] == 1.0


def test_no_features_is_an_error(tmp_path):
    cfg = config.resolve(dataset="toy", strategy="classical", run_root=str(tmp_path), classical_text=False)
    with pytest.raises(ValueError, match="no features"):
        classical.run_classical(cfg, soft_table())


def test_run_classical_on_a_small_toy_corpus_uses_eGeMAPS(toy_corpus, tmp_path):
    df = toy_corpus[1]
    df = df[df["fold"] < 3].reset_index(drop=True)  # three sessions: six speakers, 24 wavs to measure
    cfg = config.resolve(dataset="toy", strategy="classical", fold=0, run_root=str(tmp_path / "runs"),
                         prosody_cache=str(tmp_path / "cache"), prosody_workers=1, bootstrap=20)
    result = classical.run_classical(cfg, df)
    assert result["n_audio_features"] == 88 and result["n_test"] == int((df["fold"] == 0).sum())
    assert np.isfinite(result["metrics"]["js"])
