"""The run every strategy shares: each training strategy of params/strategies is trained by the class of
its family (the file its ``extends`` chain starts from), each class works through the engine's Strategy
protocol on a real tiny run, and a chapter refuses a strategy that is not its own."""

import re

import numpy as np
import pytest
import torch
from conftest_model import CLASSES, tiny, tiny_dir  # noqa: F401
from test_dpo import make_examples

from ambinb import config, engine, run, strategies
from ambinb import model as model_mod
from ambinb.strategies import dpo, grpo, sft

NOTEBOOK_CLASS = {"03_sft": sft.SFTStrategy, "04_dpo": dpo.DPOStrategy, "05_grpo": grpo.GRPOStrategy}


def test_every_training_strategy_is_trained_by_the_class_of_its_chapter():
    runners = {name: config.resolve(strategy=name)["runner"] for name in config.available("strategies")}
    trained = {name: runner for name, runner in runners.items() if runner in NOTEBOOK_CLASS}
    assert {"sft", "sft_ce", "sft_nocot", "dpo", "dpo_ce", "grpo", "grpo_z"} <= set(trained)
    for name, runner in trained.items():
        assert strategies.strategy_class(name) is NOTEBOOK_CLASS[runner], name
    assert config.strategy_family("grpo_z") == "grpo" and config.strategy_family("sft") == "sft"


def test_a_strategy_without_a_class_is_named():
    with pytest.raises(ValueError, match=r"strategy 'base' \(family 'base'\) has no training class"):
        strategies.strategy_class("base")


def test_a_chapter_refuses_a_strategy_of_another_chapter():
    run.check_notebook(config.resolve(strategy="sft_ce"), "03_sft")
    with pytest.raises(ValueError, match=r"strategy 'dpo_ce' runs in '04_dpo' .*not in 03_sft"):
        run.check_notebook(config.resolve(strategy="dpo_ce"), "03_sft")


@pytest.mark.parametrize("strategy", ["sft", "dpo", "grpo_z"])
def test_each_family_class_serves_the_engine_through_the_protocol_alone(tiny, tmp_path, strategy):  # noqa: F811
    """Built as run.train_and_evaluate builds it, the class answers every member of engine.Strategy,
    and engine.train drives it: two steps that move the trainable weights, a log row per step with the
    loss and the strategy's stats, and a summary of that log."""
    model, processor = tiny
    cfg = config.resolve(strategy=strategy, overrides={"max_new_tokens": 24, "dpo_rollouts": 2, "tau": 0.0,
                                                       "grpo_k": 2, "seed": 0, "dpo_positive": "gold"})
    model = model_mod.prepare_trainable(model, cfg)
    examples = make_examples(model, processor)
    built = strategies.strategy_class(strategy).build(model, processor, examples, CLASSES, cfg)
    assert isinstance(built, engine.Strategy)
    assert built.num_examples() == 3 and built.utt_ids([2, 0]) == ["u2", "u0"]
    loss, stats = built.loss(model, [0, 1], 0, 0)
    assert loss.dim() == 0 and loss.requires_grad and np.isfinite(float(loss.detach()))
    assert stats and all(isinstance(v, float) for v in stats.values())
    before = {n: p.detach().clone() for n, p in engine.trainable_parameters(model)}
    tc = engine.TrainConfig.with_defaults(lr=1e-3, max_steps=2, batch_size=2, checkpoint_every=10)
    history = engine.train(model, built, tc, tmp_path, progress=False)
    assert [row["step"] for row in history] == [1, 2] and set(stats) <= set(history[0])
    assert any(not torch.equal(p.detach(), before[n]) for n, p in engine.trainable_parameters(model))
    assert isinstance(built.summary(history), dict)


def init_cfg(tmp_path, **over) -> dict:
    """dpo, fold 1, seed 2, starting from the fold's sft run under ``tmp_path``."""
    return config.resolve(dataset="toy", strategy="dpo", fold=1,
                          overrides={"seed": 2, "run_root": str(tmp_path), "init_from": "sft", **over})


def test_init_folder_is_none_without_init_from(tmp_path):
    assert run.init_folder(init_cfg(tmp_path, init_from="")) is None


def test_init_folder_refuses_an_unfinished_init_run(tmp_path):
    sft = tmp_path / "toy" / "sft" / "fold1"                   # the seed-0 sft run, whatever the dpo seed
    message = re.escape(f"init_from='sft': {sft} holds no finished sft run with an adapter/; "
                        "run sft for this fold and split first")
    with pytest.raises(FileNotFoundError, match=message):      # no folder at all
        run.init_folder(init_cfg(tmp_path))
    (sft / "adapter").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=message):      # trained, not yet evaluated
        run.init_folder(init_cfg(tmp_path))
    (sft / "metrics.json").write_text('{"metrics": {"js": 0.1')  # still being written: not finished
    with pytest.raises(FileNotFoundError, match=message):
        run.init_folder(init_cfg(tmp_path))
    (sft / "adapter").rmdir()
    (sft / "metrics.json").write_text('{"metrics": {"js": 0.1}}')  # evaluated, but no adapter/
    with pytest.raises(FileNotFoundError, match=message):
        run.init_folder(init_cfg(tmp_path))


def test_init_folder_is_the_adapter_of_the_finished_init_run(tmp_path):
    sft = tmp_path / "toy" / "sft" / "fold1"
    (sft / "adapter").mkdir(parents=True)
    (sft / "metrics.json").write_text('{"metrics": {"js": 0.1}}')
    assert run.init_folder(init_cfg(tmp_path)) == sft / "adapter"
    assert run.init_folder(init_cfg(tmp_path, seed=0)) == sft / "adapter"
    with pytest.raises(FileNotFoundError, match=r"toy/sft/fold0 holds no finished sft run"):  # another fold
        run.init_folder(config.resolve(dataset="toy", strategy="dpo", fold=0,
                                       overrides={"run_root": str(tmp_path), "init_from": "sft"}))


def test_init_folder_looks_under_init_root(tmp_path):
    shared = tmp_path / "shared"
    sft = shared / "toy" / "sft" / "fold1"
    (sft / "adapter").mkdir(parents=True)
    (sft / "metrics.json").write_text('{"metrics": {}}')
    cfg = init_cfg(tmp_path / "variant", init_root=str(shared))
    assert run.init_folder(cfg) == sft / "adapter"
    with pytest.raises(FileNotFoundError, match=r"variant/toy/sft/fold1 holds no finished sft run"):
        run.init_folder(init_cfg(tmp_path / "variant"))       # without init_root: the run's own root
