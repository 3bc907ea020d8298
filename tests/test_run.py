"""The run every strategy shares: the strategy registry covers every training strategy of params/strategies
with the class of its family, and each class follows the engine's Strategy protocol."""

import inspect

import pytest

from ambinb import config, engine, run
from ambinb.strategies import dpo, grpo, sft

FAMILY = {"03_sft": sft.SFTStrategy, "04_dpo": dpo.DPOStrategy, "05_grpo": grpo.GRPOStrategy}


def test_every_training_strategy_has_the_class_of_its_notebook():
    trained = {name: config.resolve(strategy=name)["runner"] for name in config.available("strategies")}
    trained = {name: runner for name, runner in trained.items() if runner in FAMILY}
    assert set(trained) == set(run.STRATEGIES)
    for name, runner in trained.items():
        assert run.strategy_class(name) is FAMILY[runner], name


def test_a_strategy_without_a_class_is_named():
    with pytest.raises(ValueError, match=r"strategy 'base' has no training class: choose one of \['dpo'"):
        run.strategy_class("base")


@pytest.mark.parametrize("cls", sorted(set(FAMILY.values()), key=lambda c: c.__name__))
def test_each_strategy_class_has_every_method_of_the_protocol(cls):
    for name in ("build", "num_examples", "utt_ids", "loss", "summary"):
        assert callable(getattr(cls, name, None)), f"{cls.__name__}.{name}"
    assert list(inspect.signature(cls.loss).parameters) == ["self", "model", "indices", "step", "micro"]
    assert list(inspect.signature(cls.build).parameters) == ["model", "processor", "examples", "classes", "cfg"]
    assert list(inspect.signature(engine.Strategy.loss).parameters) == ["self", "model", "indices", "step", "micro"]


def test_the_strategy_modules_import_no_other_strategy():
    for module in (sft, dpo, grpo):
        source = inspect.getsource(module)
        others = {"sft", "dpo", "grpo"} - {module.__name__.rsplit(".", 1)[1]}
        for other in others:
            assert f"strategies.{other}" not in source and f"import {other}" not in source, (module.__name__, other)
