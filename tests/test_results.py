"""Run-folder files: atomic writes, metrics.json content, finished-run detection."""

import json
import subprocess

import numpy as np
import pytest

from ambinb import metrics, results


def test_write_atomic_leaves_no_temporary_and_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "a" / "x.json"
    results.write_json(path, {"a": np.float32(1.5), "b": float("nan"), "c": np.arange(2)})
    assert json.loads(path.read_text()) == {"a": 1.5, "b": None, "c": [0, 1]}

    def boom(*_):
        raise OSError("disk full")
    monkeypatch.setattr(results.os, "replace", boom)
    with pytest.raises(OSError):
        results.write_atomic(path, "new")
    assert json.loads(path.read_text())["a"] == 1.5
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_write_evaluation_and_prior_row(tmp_path):
    rng = np.random.default_rng(0)
    p_train = rng.dirichlet(np.ones(3), size=20)
    p_gt = rng.dirichlet(np.ones(3), size=8)
    p_hat = rng.dirichlet(np.ones(3), size=8)
    prior = results.prior_distribution(p_train)
    np.testing.assert_allclose(prior, p_train.mean(axis=0))
    cfg = {"dataset": "toy", "strategy": "sft", "fold": 1, "seed": 0, "bootstrap": 50}
    assert not results.is_finished(tmp_path)
    out = results.write_evaluation(tmp_path, [f"u{i}" for i in range(8)], ["a", "b", "c"], p_gt, p_hat, prior, cfg,
                                   completions=["x"] * 8, extra={"wall_time_s": 1.0})
    assert results.is_finished(tmp_path)
    assert out["metrics"]["js"] == pytest.approx(metrics.js(p_gt, p_hat).mean())
    assert out["prior"]["js"] == pytest.approx(metrics.js(p_gt, np.tile(prior, (8, 1))).mean())
    assert set(out["env"]) >= {"python", "packages", "git_commit", "device"}
    preds = results.read_predictions(tmp_path)
    assert list(preds.utt_id) == [f"u{i}" for i in range(8)] and preds.completion[0] == "x"
    assert json.loads((tmp_path / "params.json").read_text())["strategy"] == "sft"
    (tmp_path / "metrics.json").write_text('{"metrics": ')   # a torn file is not a finished run
    assert not results.is_finished(tmp_path)


def test_write_evaluation_rejects_mismatched_ids(tmp_path):
    p = np.full((2, 2), 0.5)
    with pytest.raises(ValueError, match="utt_ids"):
        results.write_evaluation(tmp_path, ["only-one"], ["a", "b"], p, p, p[0], {})


def test_git_commit_reads_the_checkout_or_the_environment(monkeypatch):
    monkeypatch.delenv("AMBINB_GIT_COMMIT", raising=False)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=results.project_root(), capture_output=True,
                          text=True, check=True).stdout.strip()
    assert results.git_commit().split("+")[0] == head
    monkeypatch.setenv("AMBINB_GIT_COMMIT", "abc123")  # a copy of the tree on another machine
    assert results.git_commit() == "abc123"
