"""Layered params: every file resolves, unknown keys and type changes fail with the key named."""

import shutil

import pytest
import yaml

from ambinb import config
from ambinb.paths import params_dir, run_dir, run_folder, validation_fold


@pytest.mark.parametrize("dataset", config.available("datasets"))
@pytest.mark.parametrize("strategy", config.available("strategies"))
def test_every_dataset_and_strategy_resolves(dataset, strategy):
    cfg = config.resolve(dataset=dataset, strategy=strategy)
    assert cfg["dataset"] == dataset and cfg["strategy"] == strategy
    assert set(config.defaults()) <= set(cfg)
    assert cfg["classes"], "every dataset names its classes"


@pytest.mark.parametrize("model", config.available("models"))
def test_every_model_resolves(model):
    assert config.resolve(model=model)["model"] == model


def test_layer_order_and_notebook_override():
    cfg = config.resolve(dataset="crema_d", fold=3, overrides={"seed": 7})
    assert cfg["model"] == "qwen2_audio_7b"            # from datasets/crema_d.yaml
    assert cfg["model_name_or_path"] == "Qwen/Qwen2-Audio-7B-Instruct"   # from models/
    assert cfg["fold"] == 3 and cfg["seed"] == 7
    assert cfg["layers"][-1] == "notebook"
    assert len(cfg["classes"]) == 6


def test_none_leaves_the_key_to_the_layers():
    assert config.resolve(dataset="toy", data_root=None)["data_root"] == "data/toy"


def test_unknown_key_is_named():
    with pytest.raises(config.ConfigError, match="unknown key 'lerning_rate'"):
        config.resolve(lerning_rate=0.1)
    with pytest.raises(config.ConfigError, match="overrides: unknown key 'nope'"):
        config.resolve(overrides={"nope": 1})


def test_type_change_is_named():
    with pytest.raises(config.ConfigError, match="key 'fold' must be int"):
        config.resolve(fold="two")
    with pytest.raises(config.ConfigError, match="key 'strict' must be bool"):
        config.resolve(strict=1)
    assert config.resolve(overrides={"lr_scale": 2})["lr_scale"] == 2.0  # an int where a float is declared is fine


def test_unknown_layer_names_choices():
    with pytest.raises(config.ConfigError, match="unknown dataset 'imocap'"):
        config.resolve(dataset="imocap")
    with pytest.raises(config.ConfigError, match="unknown strategy 'spt'"):
        config.resolve(strategy="spt")


def test_secrets_are_refused_in_params():
    with pytest.raises(config.ConfigError, match="environment only"):
        config.resolve(overrides={"openai_api_key": "sk-x"})


@pytest.fixture
def params_copy(tmp_path, monkeypatch):
    shutil.copytree(params_dir(), tmp_path / "params")
    monkeypatch.setenv("AMBINB_ROOT", str(tmp_path))
    return tmp_path / "params"


def test_strategy_extends_chain_and_bad_file(params_copy):
    (params_copy / "strategies" / "parent.yaml").write_text("seed: 5\nbootstrap: 10\n")
    (params_copy / "strategies" / "child.yaml").write_text("extends: parent\nseed: 6\n")
    cfg = config.resolve(strategy="child")
    assert (cfg["seed"], cfg["bootstrap"]) == (6, 10)
    assert cfg["layers"][-2:] == ["strategies/parent.yaml", "strategies/child.yaml"]
    (params_copy / "strategies" / "loop.yaml").write_text("extends: loop\n")
    with pytest.raises(config.ConfigError, match="extends itself"):
        config.resolve(strategy="loop")
    (params_copy / "strategies" / "typo.yaml").write_text("sed: 1\n")
    with pytest.raises(config.ConfigError, match=r"typo.yaml: unknown key 'sed'"):
        config.resolve(strategy="typo")
    (params_copy / "strategies" / "broken.yaml").write_text("seed: [1\n")
    with pytest.raises(config.ConfigError, match="broken.yaml: not valid YAML"):
        config.resolve(strategy="broken")


def test_model_strategy_layer_follows_the_extends_chain(params_copy):
    (params_copy / "strategies" / "parent.yaml").write_text("seed: 5\nbootstrap: 10\neps: 0.5\n")
    (params_copy / "strategies" / "child.yaml").write_text("extends: parent\nseed: 6\n")
    sized = params_copy / "models" / "tiny"
    sized.mkdir(exist_ok=True)
    (sized / "parent.yaml").write_text("bootstrap: 20\nseed: 7\n")
    cfg = config.resolve(strategy="child", model="tiny")
    # the model's file sizes the strategy and what extends it; the child's own keys beat that sizing
    assert (cfg["seed"], cfg["bootstrap"], cfg["eps"]) == (6, 20, 0.5)
    assert cfg["layers"][-3:] == ["strategies/parent.yaml", "models/tiny/parent.yaml", "strategies/child.yaml"]
    assert config.resolve(strategy="parent", model="tiny")["seed"] == 7
    assert config.resolve(strategy="child", model="tiny", seed=1)["seed"] == 1   # the notebook still wins
    (sized / "child.yaml").write_text("seed: 8\n")   # the child's own sizing beats both
    assert config.resolve(strategy="child", model="tiny")["layers"][-1:] == ["models/tiny/child.yaml"]
    assert config.resolve(strategy="child", model="tiny")["seed"] == 8
    assert "models/qwen2_audio_7b/parent.yaml" not in config.resolve(strategy="child", model="qwen2_audio_7b")["layers"]
    (sized / "child.yaml").write_text("sed: 1\n")
    with pytest.raises(config.ConfigError, match=r"tiny/child.yaml: unknown key 'sed'"):
        config.resolve(strategy="child", model="tiny")


def test_model_strategy_files_name_real_models_and_strategies():
    strategies = set(config.available("strategies"))
    for folder in (params_dir() / "models").iterdir():
        if folder.is_dir():
            assert folder.name in config.available("models"), f"{folder}: no models/{folder.name}.yaml"
            for path in folder.glob("*"):
                assert path.suffix == ".yaml" and path.stem in strategies, f"{path}: not <strategy>.yaml"


def test_defaults_file_declares_every_key_once():
    text = (params_dir() / "defaults.yaml").read_text()
    keys = [line.split(":")[0] for line in text.splitlines() if line and not line[0].isspace() and line[0] != "#"]
    assert len(keys) == len(set(keys)), "a key is declared twice in defaults.yaml"
    assert set(keys) == set(yaml.safe_load(text))


def test_run_dir_layout(tmp_path):
    assert run_dir("toy", "sft", 2, tmp_path) == tmp_path / "toy" / "sft" / "fold2"
    assert run_dir("toy", "labels", None, tmp_path) == tmp_path / "toy" / "labels"
    with pytest.raises(ValueError, match="snake_case"):
        run_dir("Toy", "sft", 0, tmp_path)
    with pytest.raises(ValueError, match="fold"):
        run_dir("toy", "sft", -1, tmp_path)
    assert run_dir("toy", "dpo", 0, tmp_path, validation=1) == tmp_path / "toy" / "dpo" / "validation" / "fold0-val1"
    with pytest.raises(ValueError, match="is the test fold"):
        run_dir("toy", "dpo", 2, tmp_path, validation=2)


def test_validation_fold_and_run_folder(tmp_path):
    cfg = config.resolve(strategy="dpo", fold=4, run_root=str(tmp_path))
    assert validation_fold(cfg) is None and run_folder(cfg) == tmp_path / "toy" / "dpo" / "fold4"
    val = {**cfg, "eval_split": "validation"}
    assert validation_fold(val) == 0  # the next fold, wrapping: (4 + 1) mod 5
    assert validation_fold({**val, "validation_fold": 2}) == 2
    assert run_folder(val, "base") == tmp_path / "toy" / "base" / "validation" / "fold4-val0"
    with pytest.raises(ValueError, match="eval_split='dev'"):
        validation_fold({**cfg, "eval_split": "dev"})


def test_fast_dev_layer_sits_under_the_notebook(monkeypatch):
    monkeypatch.setenv("AMBINB_FAST_DEV", "1")
    cfg = config.resolve(strategy="sft", max_steps=5)
    assert cfg["eval_max_utterances"] == 8 and cfg["max_steps"] == 5
    assert cfg["layers"][-2:] == ["fast_dev.yaml", "notebook"]


# --- values that cannot work fail when resolved, naming the key and who set it -------------------


@pytest.mark.parametrize(("key", "value", "why"), [
    ("lr", -1e-4, "must be > 0"), ("lr", 0, "must be > 0"), ("batch_size", 0, "must be >= 1"),
    ("checkpoint_every", 0, "must be >= 1"), ("device", "gpu", "auto, cpu, mps, cuda or cuda:<index>"),
    ("dtype", "fp16", "one of"), ("eval_split", "dev", "one of"), ("top_p", 1.5, "must be <= 1"),
    ("warmup_ratio", -0.1, "must be >= 0"), ("lora_dropout", 1.0, "must be < 1"), ("epochs", 0.0, "must be > 0"),
    ("eps", float("nan"), "finite"), ("rewards", ["grpo", "grpo_typo"], "item 1 .*one of"),
    ("trackers", "tensorbord", "comma-separated"), ("base_url", "localhost:8000", "http"),
    ("answer_ce", "hard", "one of"), ("classes", ["Anger"], "lower-case"), ("seed", -1, ">= 0"),
    ("lora_target_regex", ".*(q_proj", "regular expression"),
])
def test_values_that_cannot_work_are_refused_with_the_key_and_the_layer(key, value, why):
    with pytest.raises(config.ConfigError, match=rf"^overrides: key '{key}' = .*{why}"):
        config.resolve(overrides={key: value})


def test_a_bad_value_in_a_file_names_the_file(params_copy):
    (params_copy / "strategies" / "zero.yaml").write_text("extends: sft\ncheckpoint_every: 0\n")
    with pytest.raises(config.ConfigError, match=r"strategies/zero.yaml: key 'checkpoint_every' = 0: must be >= 1"):
        config.resolve(strategy="zero")
    (params_copy / "defaults.yaml").write_text((params_copy / "defaults.yaml").read_text()
                                               .replace("\nbatch_size: 8 ", "\nbatch_size: -8 "))
    with pytest.raises(config.ConfigError, match=r"defaults.yaml: key 'batch_size' = -8"):
        config.resolve()


def test_values_at_the_edges_of_their_range_are_accepted():
    cfg = config.resolve(overrides={"top_p": 1.0, "warmup_ratio": 0.0, "device": "cuda:1", "trackers": "",
                                    "temperature": 0.0, "base_url": "http://127.0.0.1:8000/v1",
                                    "rewards": ["format", "distribution"], "max_steps": 0})
    assert (cfg["device"], cfg["top_p"]) == ("cuda:1", 1.0)
    assert config.resolve(overrides={"trackers": "tensorboard, wandb"})["trackers"] == "tensorboard, wandb"


def test_a_fold_the_dataset_lacks_is_refused():
    with pytest.raises(config.ConfigError, match=r"key 'fold' = 7 \(set by notebook\): dataset 'toy' has 5 fold"):
        config.resolve(fold=7)
    assert config.resolve(fold=2, overrides={"toy_sessions": 3})["fold"] == 2
    with pytest.raises(config.ConfigError, match="'fold' = 3 .* has 3 fold"):
        config.resolve(fold=3, overrides={"toy_sessions": 3})
    with pytest.raises(config.ConfigError, match=r"'fold' = 1 .*'crema_d' has 1 fold"):
        config.resolve(dataset="crema_d", fold=1, overrides={"fold_scheme": "emobox"})
    with pytest.raises(config.ConfigError, match="'validation_fold' = 2 .* other than the test fold 2"):
        config.resolve(fold=2, overrides={"eval_split": "validation", "validation_fold": 2})
    with pytest.raises(config.ConfigError, match="'validation_fold' = 5"):
        config.resolve(overrides={"eval_split": "validation", "validation_fold": 5})


def test_a_variant_keeps_its_defining_keys_under_the_sizing_of_what_it_extends():
    # params/models/tiny/dpo.yaml sizes dpo (lambda1 among it); dpo_ce is defined by lambda1 = 0
    sized = config.resolve(strategy="dpo", model="tiny")
    variant = config.resolve(strategy="dpo_ce", model="tiny")
    assert sized["dpo_kl_weight"] > 0 and variant["dpo_kl_weight"] == 0.0
    assert (variant["init_from"], variant["dpo_positive"]) == (sized["init_from"], sized["dpo_positive"])
    assert variant["layers"].index("strategies/dpo_ce.yaml") > variant["layers"].index("models/tiny/dpo.yaml")


def test_attention_heads_must_divide_the_tiny_widths():
    with pytest.raises(config.ConfigError, match="'tiny_hidden_size' = 64 .* not a multiple of key 'tiny_heads' = 5"):
        config.resolve(overrides={"tiny_heads": 5})


def test_every_rule_names_a_declared_key_and_every_number_has_a_rule():
    declared = config.defaults()
    assert set(config.RULES) <= set(declared)
    numbers = {k for k, v in declared.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert numbers <= set(config.RULES), f"keys without a range: {sorted(numbers - set(config.RULES))}"


def test_rule_lists_agree_with_their_sources():
    from accelerate.utils import LoggerType

    from ambinb import cot, rewards

    assert set(config.TRACKERS) == {t.value for t in LoggerType}
    assert config.RULES["prompt_preset"].allowed() == tuple(sorted(cot.PRESETS))
    assert config.RULES["rewards"].allowed() == tuple(sorted(rewards.REWARDS))


def test_rule_problem_by_hand():
    assert config.Rule(low=0, low_open=True).problem(-1e-4) == "must be > 0"
    assert config.Rule(low=0, high=1).problem(1) is None
    assert config.Rule(low=0, high=1, high_open=True).problem(1) == "must be < 1"
    assert config.Rule(choices=("a", "b")).problem("c") == "must be one of ['a', 'b']"
    assert config.Rule(choices=("a",), each=True).problem(["a", "x"]) == "item 1 ('x') must be one of ['a']"
    assert config.Rule(low=1).problem(None) == "must be a finite number"
