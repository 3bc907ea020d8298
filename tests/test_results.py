"""Run-folder files: atomic writes, metrics.json content, finished-run detection."""

import json
import subprocess

import numpy as np
import pytest

from ambinb import metrics, plots, results


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


def _finished_run(cfg, strategy, p_hat, completions=None):
    from ambinb.paths import run_folder

    p_gt = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.5, 0.5], [1.0, 0.0]])
    return results.write_evaluation(run_folder(cfg, strategy), list("abcde"), ["anger", "sadness"], p_gt, p_hat,
                                    np.array([0.5, 0.5]), {**cfg, "strategy": strategy}, completions=completions)


def test_held_out_table_has_the_run_the_prior_and_a_finished_base(tmp_path):
    from ambinb import config

    cfg = config.resolve(strategy="sft", fold=0, run_root=str(tmp_path), overrides={"bootstrap": 20})
    m = _finished_run(cfg, "sft", np.full((5, 2), 0.5))
    table = results.held_out_table(cfg, m)
    assert list(table.index) == ["sft", "prior"] and list(table.columns) == list(results.TABLE_METRICS)
    assert table.loc["sft", "js"] == table.loc["prior", "js"]  # the model answered the prior itself
    _finished_run(cfg, "base", np.tile([0.9, 0.1], (5, 1)))
    table = results.held_out_table(cfg, m)
    assert list(table.index) == ["sft", "prior", "base"] and table.loc["base", "js"] != table.loc["sft", "js"]
    assert results.held_out_note({"ci95": {"js": [0.1234, 0.2]}, "format_rate": 0.5}) == \
        "95% CI of JS: [0.123, 0.200], format pass rate: 0.50"


def test_clearest_and_most_ambiguous_by_hand():
    import pandas as pd

    preds = pd.DataFrame({"utt_id": list("abcde"), "p_gt": [[0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.3, 0.3, 0.4],
                                                              [1.0, 0.0]]})
    assert list(results.clearest_and_most_ambiguous(preds, 2).utt_id) == ["e", "a", "d", "b"]
    assert list(results.clearest_and_most_ambiguous(preds, 1).utt_id) == ["e", "d"]
    assert results.describe_examples(preds.assign(completion=list("vwxyz")).iloc[:2]) == "--- a\nv\n\n--- b\nw\n"


def test_save_examples_draws_four_utterances_into_the_run_folder(tmp_path):
    from ambinb import config
    from ambinb.paths import run_folder

    cfg = config.resolve(strategy="sft", fold=0, run_root=str(tmp_path), overrides={"bootstrap": 20})
    _finished_run(cfg, "sft", np.full((5, 2), 0.5), completions=[f"text {u}" for u in "abcde"])
    fig, text = plots.save_examples(run_folder(cfg))
    assert (run_folder(cfg) / "examples.png").stat().st_size > 0
    assert [ax.get_title() for ax in fig.axes] == ["e", "a", "d", "b"]
    assert text.splitlines()[:2] == ["--- e", "text e"]
