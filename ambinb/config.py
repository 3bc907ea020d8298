"""Layered parameters: defaults < dataset < model < strategy < model x strategy < a notebook's parameters.

Every key that exists is declared, with its literal default and a comment, in
``params/defaults.yaml``. The other layers may only override declared keys, and only with a
value of the same type, so a typo or a wrong type fails loudly with the key and the file named:

>>> cfg = resolve(dataset="toy", strategy="sft", fold=2)        # doctest: +SKIP
>>> cfg["fold"], cfg["strategy"], cfg["layers"][-1]             # doctest: +SKIP
(2, 'sft', 'notebook')

A strategy file may name the strategy it ``extends``; it then overrides only what differs.

A model may size a strategy for itself in ``params/models/<model>/<strategy>.yaml`` (the tiny
stand-in's step counts and learning rates, for example); these files follow the strategy's
``extends`` chain too (``models/tiny/grpo.yaml`` also applies to ``grpo_z``). Each comes right after
the strategy file it sizes, so a variant's own keys beat the sizing of what it extends
(``dpo_ce``'s ``dpo_kl_weight: 0`` beats ``models/tiny/dpo.yaml``) and its own sizing beats both.

Beyond its type, each key accepts what :data:`RULES` says: a range for counts, rates and
probabilities, a set of choices for enumerated keys (``device: gpu`` fails here, naming the key and
the file, not later in torch). Relations between keys (a fold the dataset has, attention heads that
divide the width) are checked once every layer is applied, in :func:`check_relations`.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ambinb import cot, parameters, prosody, rewards
from ambinb.paths import fold_count, params_dir

NOTEBOOK = "notebook"
RUN_ROOT_ENV = "AMBINB_RUN_ROOT"
FAST_DEV_ENV = "AMBINB_FAST_DEV"
_META_KEYS = {"extends", "description"}


class ConfigError(ValueError):
    """A parameter file or a notebook parameter that does not fit the declared keys."""


# --- what each key accepts beyond its type ---------------------------------------------------

@dataclass(frozen=True)
class Rule:
    """What one key accepts: a closed or open range, a set of choices, or a pattern.

    ``choices`` may be a registry instead (``rewards.REWARDS``: its keys, sorted), so a list of names
    lives in one place. ``says`` puts a ``pattern`` in words for the error message. With
    ``each`` the rule applies to every item of a list; with ``regex`` the value must compile as a
    regular expression.

    Example: ``Rule(low=0, low_open=True).problem(-1e-4)`` -> ``"must be > 0"``.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | Any = ()
    pattern: str = ""
    says: str = ""
    each: bool = False
    regex: bool = False

    def allowed(self) -> tuple[str, ...]:
        """The choices, the registry's names when ``choices`` is one."""
        if isinstance(self.choices, tuple):
            return self.choices
        return tuple(sorted(self.choices))

    def problem(self, value: Any) -> str | None:
        """Why ``value`` does not fit, or None when it does."""
        if self.each:
            if not isinstance(value, list):
                return None
            whole = Rule(self.low, self.high, self.low_open, self.high_open, self.choices, self.pattern, self.says)
            found = [(i, whole.problem(v)) for i, v in enumerate(value)]
            return next((f"item {i} ({value[i]!r}) {why}" for i, why in found if why), None)
        if self.regex:
            return _regex_problem(value)
        if self.choices:
            return None if value in self.allowed() else f"must be one of {list(self.allowed())}"
        if self.pattern:
            ok = isinstance(value, str) and re.fullmatch(self.pattern, value)
            return None if ok else f"must be {self.says}" if self.says else f"must match {self.pattern!r}"
        return self._range_problem(value)

    def _range_problem(self, value: Any) -> str | None:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return "must be a finite number"
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return f"must be {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return f"must be {'<' if self.high_open else '<='} {self.high:g}"
        return None


def _regex_problem(value: Any) -> str | None:
    try:
        re.compile(str(value))
    except re.error as err:
        return f"must be a regular expression ({err})"
    return None if value else "must be a non-empty regular expression"


def _at_least(low: float) -> Rule:
    return Rule(low=low)


def _positive() -> Rule:
    return Rule(low=0, low_open=True)


def _share() -> Rule:
    """A probability or a share: in [0, 1]."""
    return Rule(low=0, high=1)


def _one_of(*choices: str) -> Rule:
    return Rule(choices=choices)


def _text(pattern: str, says: str, each: bool = False) -> Rule:
    return Rule(pattern=pattern, says=says, each=each)


_NAME = _text(r"[a-z0-9_]+", "lower-case snake_case (names become folders)")
_NOT_EMPTY = _text(r"(?s).+", "a non-empty string")
_CLASS = _text(r"[a-z][a-z0-9_ ]*", "a lower-case class name", each=True)
TRACKERS = ("all", "aim", "clearml", "comet_ml", "dvclive", "mlflow", "swanlab", "tensorboard", "trackio", "wandb")
_TRACKER = "|".join(TRACKERS)  # accelerate's LoggerType values

RULES: dict[str, Rule] = {
    # run selection
    "dataset": _NAME, "strategy": _NAME, "model": _NAME, "fold": _at_least(0), "run_root": _NOT_EMPTY,
    "eval_split": _one_of("test", "validation"), "validation_fold": _at_least(-1), "seed": _at_least(0),
    "runner": _text(r"|\d\d_[a-z0-9_]+|[A-Za-z_][\w.]*:[A-Za-z_]\w*", "a notebook name (03_sft) or module:function"),
    # data
    "classes": _CLASS, "n_folds": _at_least(1),
    "fold_scheme": _one_of("speaker", "emobox"), "ambiguous_max_p": Rule(low=0, high=1, low_open=True),
    "toy_n": _at_least(1), "toy_seed": _at_least(0), "toy_sessions": _at_least(3),
    # model
    "dtype": _one_of("auto", "float32", "bfloat16", "float16"),
    "device": _text(r"auto|cpu|mps|cuda(:\d+)?", "auto, cpu, mps, cuda or cuda:<index>"),
    "attn_implementation": _one_of("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"),
    "prompt_preset": Rule(choices=cot.PRESETS), "max_audio_seconds": Rule(low=0, high=30, low_open=True),
    "lora_r": _at_least(1), "lora_alpha": _positive(), "lora_dropout": Rule(low=0, high=1, high_open=True),
    "lora_target_regex": Rule(regex=True), "logprob_chunk": _at_least(0),
    # metrics
    "bootstrap": _at_least(0), "eps": Rule(low=0, high=1, low_open=True, high_open=True),
    # curation
    "backend": _one_of("template", "openai"), "curation_model": _NOT_EMPTY,
    "base_url": _text(r"|https?://\S+", '"" or an http:// or https:// URL'),
    "api_key_env": _text(r"[A-Za-z_][A-Za-z0-9_]*", "the name of an environment variable"),
    "curation_temperature": Rule(low=0, high=2), "curation_max_tokens": _at_least(1),
    "curation_concurrency": _at_least(1), "curation_attempts": _at_least(1), "accept_js": _share(),
    "curation_timeout": _positive(), "curation_retries": _at_least(0), "backoff_base": _at_least(0),
    "curation_give_up_after": _at_least(1), "curation_outage_s": _at_least(0),
    "backoff_max": _at_least(0), "prompt_version": _text(r"[\w.-]+", "letters, digits, _ . or -"),
    "price_prompt_per_1k": _at_least(0), "price_completion_per_1k": _at_least(0),
    "curation_subset": _one_of("train", "all"), "prosody_cache": _NOT_EMPTY,
    "prosody_workers": _at_least(1), "prosody_reference": Rule(choices=prosody.REFERENCES),
    "classical_c": _positive(), "classical_min_df": _at_least(1),
    # prompt, readout, rollouts, evaluation
    "max_new_tokens": _at_least(1), "temperature": _at_least(0), "top_p": Rule(low=0, high=1, low_open=True),
    "rollout_k": _at_least(1), "rollout_batch_size": _at_least(1), "rollout_backend": _one_of("hf", "vllm"),
    "rollout_decode": _one_of("dynamic", "lean", "static", "compiled"),
    "vllm_gpu_memory_utilization": Rule(low=0, high=1, low_open=True), "vllm_max_model_len": _at_least(0),
    "eval_batch_size": _at_least(1), "eval_max_utterances": _at_least(0), "readout_batch_size": _at_least(0),
    "eval_prompt_classes": _CLASS, "tiny_dir": _NOT_EMPTY,
    "tiny_seed": _at_least(0), "tiny_vocab_size": _at_least(64), "tiny_hidden_size": _at_least(1),
    "tiny_layers": _at_least(1), "tiny_heads": _at_least(1), "tiny_kv_heads": _at_least(1),
    "tiny_intermediate_size": _at_least(1), "tiny_audio_hidden_size": _at_least(1),
    "tiny_audio_layers": _at_least(1), "tiny_audio_heads": _at_least(1), "tiny_audio_ffn_size": _at_least(1),
    "tiny_recordings": _at_least(2), "tiny_tower_lr": _positive(),
    "tiny_warmup_steps": _at_least(0), "tiny_warmup_batch_size": _at_least(2), "tiny_warmup_lr": _positive(),
    # training engine
    "lr": _positive(), "lr_scale": _positive(), "weight_decay": _at_least(0), "warmup_ratio": _share(),
    "epochs": _positive(), "max_steps": _at_least(0), "batch_size": _at_least(1), "grad_accum": _at_least(1),
    "max_grad_norm": _positive(), "checkpoint_every": _at_least(1),
    "trackers": _text(rf"\s*|\s*({_TRACKER})\s*(,\s*({_TRACKER})\s*)*", f"comma-separated names of {list(TRACKERS)}"),
    "ce_weight": _at_least(0), "kl_weight": _at_least(0), "answer_ce": _one_of("soft", "majority", "none"),
    # DPO and GRPO
    "answer_action": _one_of("any_class", "written"),
    "readout_grad": _one_of("written", "all", "none"), "dpo_positive": _one_of("gold", "best_rollout"),
    "reference": _one_of("base", "init"), "init_from": _text(r"|[a-z0-9_]+", '"" or a strategy name'),
    "init_root": _text(r".*", "a folder or \"\""),
    "beta": _positive(), "tau": _share(), "dpo_rollouts": _at_least(1), "dpo_kl_weight": _at_least(0),
    "dpo_ce_weight": _at_least(0), "grpo_k": _at_least(1),
    "clip_eps": Rule(low=0, high=1, low_open=True, high_open=True),
    "grpo_kl_coef": _at_least(0), "num_iterations": _at_least(1), "format_weight": _at_least(0),
    "rewards": Rule(choices=rewards.REWARDS, each=True),
}
"""What each declared key accepts beyond its type (keys left out accept any value of their type:
booleans and free paths). Edit this table, not the code that reads the key."""


def load_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML mapping, with an error naming the file when it is not one.

    The file is read every time; its parsed form is kept per text (a sweep resolves the same few
    files hundreds of times), and the caller gets its own copy.
    """
    try:
        data = copy.deepcopy(_parse_yaml(path.read_text()))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value, got {type(data).__name__}")
    return data


@functools.lru_cache(maxsize=256)
def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml when built with it


def defaults() -> dict[str, Any]:
    """The declared keys and their default values (``params/defaults.yaml``)."""
    return load_yaml(params_dir() / "defaults.yaml")


def available(kind: str) -> list[str]:
    """Names of the parameter files of one kind: ``datasets``, ``models``, ``strategies``, ``sweeps``."""
    return sorted(p.stem for p in (params_dir() / kind).glob("*.yaml"))


def _layer_file(kind: str, name: str) -> Path:
    path = params_dir() / kind / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown {kind[:-1] if kind != 'strategies' else 'strategy'} {name!r}: "
                          f"no {path}; choose one of {available(kind)}")
    return path


def _strategy_chain(name: str) -> list[tuple[Path, dict[str, Any]]]:
    """The strategy file and the files it extends, most general first."""
    chain: list[tuple[Path, dict[str, Any]]] = []
    seen: set[str] = set()
    while name:
        if name in seen:
            raise ConfigError(f"strategy {name!r} extends itself through {sorted(seen)}")
        seen.add(name)
        path = _layer_file("strategies", name)
        data = load_yaml(path)
        chain.insert(0, (path, data))
        name = data.get("extends") or ""
    return chain


def strategy_family(name: str) -> str:
    """The strategy that ``name``'s ``extends`` chain starts from: the family it is a variant of.

    Example: ``strategy_family("dpo_ce")`` -> ``"dpo"`` (``dpo_ce.yaml`` extends ``dpo.yaml``);
    ``strategy_family("sft")`` -> ``"sft"``.
    """
    return _strategy_chain(name)[0][0].stem


def model_strategy_files(model: str, chain: list[str]) -> list[Path]:
    """The files of ``params/models/<model>/`` that size the strategies of ``chain`` (most general
    first) for that model; strategies without one are skipped."""
    folder = params_dir() / "models" / model
    return [folder / f"{name}.yaml" for name in chain if (folder / f"{name}.yaml").exists()]


def _same_type(default: Any, value: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float) and isinstance(value, int):
        return True
    return isinstance(value, type(default))


def _apply(cfg: dict[str, Any], layer: dict[str, Any], source: str, declared: dict[str, Any],
           sources: dict[str, str]) -> None:
    """Set ``layer``'s keys in ``cfg`` after checking each key, type and rule; ``sources`` records who set it."""
    for key, value in layer.items():
        if key in _META_KEYS and source != NOTEBOOK:
            continue
        if "api_key" in key and key != "api_key_env":
            raise ConfigError(f"{source}: key {key!r}: secrets come from the environment only "
                              "(set api_key_env to the variable's name)")
        if key not in declared:
            raise ConfigError(f"{source}: unknown key {key!r} (declared keys are in "
                              f"{params_dir() / 'defaults.yaml'})")
        if not _same_type(declared[key], value):
            raise ConfigError(f"{source}: key {key!r} must be {type(declared[key]).__name__} "
                              f"like its default {declared[key]!r}, got {value!r}")
        check_value(key, value, source)
        cfg[key] = float(value) if isinstance(declared[key], float) and isinstance(value, int) else value
        sources[key] = source


def check_layer(layer: dict[str, Any], source: str) -> None:
    """Check ``key: value`` pairs as a layer's are checked (declared key, type, rule), naming ``source``.

    For overrides read from elsewhere (a sweep file) before they reach :func:`resolve`.
    """
    declared = defaults()
    _apply(dict(declared), dict(layer), source, declared, {})


def check_value(key: str, value: Any, source: str) -> None:
    """Raise naming ``source`` and ``key`` when ``value`` breaks the key's rule in :data:`RULES`.

    Example: ``check_value("batch_size", 0, "sweep.yaml")`` raises
    ``ConfigError("sweep.yaml: key 'batch_size' = 0: must be >= 1")``.
    """
    why = RULES[key].problem(value) if key in RULES else None
    if why:
        raise ConfigError(f"{source}: key {key!r} = {value!r}: {why}")


def check_relations(cfg: dict[str, Any], sources: dict[str, str]) -> None:
    """Raise when keys that are each valid do not fit together, naming the keys and who set them.

    Checked: the fold (and the validation fold of ``eval_split: validation``) exists for the dataset
    (:func:`ambinb.paths.fold_count`), and the tiny stand-in's attention heads divide its widths.
    """
    def said(key: str) -> str:
        return f"key {key!r} = {cfg[key]!r} (set by {sources.get(key, 'defaults.yaml')})"

    count = fold_count(cfg)
    if cfg["fold"] >= count:
        raise ConfigError(f"{said('fold')}: dataset {cfg['dataset']!r} has {count} fold(s), 0 to {count - 1}")
    v = cfg["validation_fold"]
    if cfg["eval_split"] == "validation" and (v >= count or v == cfg["fold"]):
        raise ConfigError(f"{said('validation_fold')}: expected -1 or one of the {count} folds of "
                          f"{cfg['dataset']!r} other than the test fold {cfg['fold']}")
    for width, heads in (("tiny_hidden_size", "tiny_heads"), ("tiny_heads", "tiny_kv_heads"),
                         ("tiny_audio_hidden_size", "tiny_audio_heads")):
        if cfg[width] % cfg[heads]:
            raise ConfigError(f"{said(width)} is not a multiple of {said(heads)}")


def resolve(dataset: str = "toy", strategy: str = "base", model: str | None = None,
            overrides: dict[str, Any] | None = None, **params: Any) -> dict[str, Any]:
    """Resolve a run's full configuration from the layers and a notebook's parameters.

    Args:
        dataset: a file in ``params/datasets``.
        strategy: a file in ``params/strategies`` (``base``, ``sft``, ``dpo``, ...).
        model: a file in ``params/models``; None takes ``overrides["model"]`` when given (how a sweep or a
            notebook without a ``model`` parameter switches the backbone: ``overrides: {model:
            qwen2_5_omni_3b}``), else the dataset's ``model``.
        overrides: extra ``key: value`` pairs applied last (papermill ``-y`` or sweep files).
        **params: a notebook's other literal parameters; None leaves a key to the layers.
            ``$AMBINB_RUN_ROOT``, when set, replaces the default ``run_root`` (the test suite uses it);
            ``$AMBINB_FAST_DEV`` applies ``params/fast_dev.yaml`` after the strategy (the notebook tests).
            In a papermill run, a parameter injected that the notebook does not declare fails here
            (:func:`ambinb.parameters.check_injected`).

    Returns:
        A flat dict of every declared key, plus ``layers`` (the files applied, in order).

    Raises:
        ConfigError: an unknown key, a type change, a value outside its rule (:data:`RULES`), keys
            that do not fit together (:func:`check_relations`), or an unknown layer name, naming the
            key and the file or layer that set it.
    """
    parameters.check_injected()
    declared = defaults()
    cfg, sources = dict(declared), {}
    for key, value in declared.items():
        check_value(key, value, "defaults.yaml")
    layers = ["defaults.yaml"]
    if os.environ.get(RUN_ROOT_ENV):  # tests and CI keep their run folders apart from the user's
        _apply(cfg, {"run_root": os.environ[RUN_ROOT_ENV]}, f"${RUN_ROOT_ENV}", declared, sources)
        layers.append(f"${RUN_ROOT_ENV}")
    cfg["dataset"], cfg["strategy"] = dataset, strategy
    ds_path = _layer_file("datasets", dataset)
    _apply(cfg, load_yaml(ds_path), str(ds_path), declared, sources)
    layers.append(f"datasets/{dataset}.yaml")
    model = model or (overrides or {}).get("model") or cfg["model"]
    for name, path in _model_and_strategy_files(model, strategy):
        _apply(cfg, load_yaml(path), str(path), declared, sources)
        layers.append(name)
    if os.environ.get(FAST_DEV_ENV):
        _apply(cfg, load_yaml(params_dir() / "fast_dev.yaml"), "fast_dev.yaml", declared, sources)
        layers.append("fast_dev.yaml")
    given = {k: v for k, v in params.items() if v is not None}
    _apply(cfg, given, NOTEBOOK, declared, sources)
    if overrides:
        _apply(cfg, dict(overrides), "overrides", declared, sources)
    if given or overrides:
        layers.append(NOTEBOOK)
    cfg["dataset"], cfg["strategy"], cfg["model"] = dataset, strategy, model
    check_relations(cfg, sources)
    cfg["layers"] = layers
    return cfg


def _model_and_strategy_files(model: str, strategy: str) -> list[tuple[str, Path]]:
    """The layers after the dataset's, in order, as (name in ``layers``, file): the model, then for
    each strategy of the ``extends`` chain (most general first) its file and the model's file sizing it.

    Example: ``dpo_ce`` on tiny -> models/tiny.yaml, strategies/dpo.yaml, models/tiny/dpo.yaml,
    strategies/dpo_ce.yaml (its ``dpo_kl_weight: 0`` beats the sizing of dpo), models/tiny/dpo_ce.yaml.
    """
    files = [(f"models/{model}.yaml", _layer_file("models", model))]
    for path, _ in _strategy_chain(strategy):
        files.append((f"strategies/{path.stem}.yaml", path))
        files += [(f"models/{model}/{sized.stem}.yaml", sized) for sized in model_strategy_files(model, [path.stem])]
    return files
