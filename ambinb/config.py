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
``extends`` chain too (``models/tiny/grpo.yaml`` also applies to ``grpo_z``) and come after every
strategy file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from ambinb.paths import params_dir

NOTEBOOK = "notebook"
RUN_ROOT_ENV = "AMBINB_RUN_ROOT"
FAST_DEV_ENV = "AMBINB_FAST_DEV"
_META_KEYS = {"extends", "description"}


class ConfigError(ValueError):
    """A parameter file or a notebook parameter that does not fit the declared keys."""


def load_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML mapping, with an error naming the file when it is not one."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value, got {type(data).__name__}")
    return data


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


def _apply(cfg: dict[str, Any], layer: dict[str, Any], source: str, declared: dict[str, Any]) -> None:
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
        cfg[key] = float(value) if isinstance(declared[key], float) and isinstance(value, int) else value


def resolve(dataset: str = "toy", strategy: str = "base", model: str | None = None,
            overrides: dict[str, Any] | None = None, **params: Any) -> dict[str, Any]:
    """Resolve a run's full configuration from the layers and a notebook's parameters.

    Args:
        dataset: a file in ``params/datasets``.
        strategy: a file in ``params/strategies`` (``base``, ``sft``, ``dpo``, ...).
        model: a file in ``params/models``; None takes the dataset's ``model``.
        overrides: extra ``key: value`` pairs applied last (papermill ``-y`` or sweep files).
        **params: a notebook's other literal parameters; None leaves a key to the layers.
            ``$AMBINB_RUN_ROOT``, when set, replaces the default ``run_root`` (the test suite uses it);
            ``$AMBINB_FAST_DEV`` applies ``params/fast_dev.yaml`` after the strategy (the notebook tests).

    Returns:
        A flat dict of every declared key, plus ``layers`` (the files applied, in order).

    Raises:
        ConfigError: an unknown key, a type change, or an unknown layer name, naming the source.
    """
    declared = defaults()
    cfg = dict(declared)
    layers = ["defaults.yaml"]
    if os.environ.get(RUN_ROOT_ENV):  # tests and CI keep their run folders apart from the user's
        cfg["run_root"] = os.environ[RUN_ROOT_ENV]
        layers.append(f"${RUN_ROOT_ENV}")
    cfg["dataset"], cfg["strategy"] = dataset, strategy

    ds_path = _layer_file("datasets", dataset)
    _apply(cfg, load_yaml(ds_path), str(ds_path), declared)
    layers.append(f"datasets/{dataset}.yaml")

    model = model or cfg["model"]
    model_path = _layer_file("models", model)
    _apply(cfg, load_yaml(model_path), str(model_path), declared)
    cfg["model"] = model
    layers.append(f"models/{model}.yaml")

    chain = _strategy_chain(strategy)
    for path, data in chain:
        _apply(cfg, data, str(path), declared)
        layers.append(f"strategies/{path.stem}.yaml")
    for path in model_strategy_files(model, [p.stem for p, _ in chain]):
        _apply(cfg, load_yaml(path), str(path), declared)
        layers.append(f"models/{model}/{path.stem}.yaml")
    cfg["strategy"] = strategy
    if os.environ.get(FAST_DEV_ENV):
        _apply(cfg, load_yaml(params_dir() / "fast_dev.yaml"), "fast_dev.yaml", declared)
        layers.append("fast_dev.yaml")

    given = {k: v for k, v in params.items() if v is not None}
    _apply(cfg, given, NOTEBOOK, declared)
    if overrides:
        _apply(cfg, dict(overrides), "overrides", declared)
    if given or overrides:
        layers.append(NOTEBOOK)
    cfg["dataset"], cfg["strategy"], cfg["model"] = dataset, strategy, model
    cfg["layers"] = layers
    return cfg
