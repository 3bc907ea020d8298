"""The backbone families ambinb trains, keyed by the ``model_type`` of a checkpoint's ``config.json``.

Each file of this package other than ``base.py`` is one family and defines ``FAMILY``
(:class:`ambinb.families.base.Family`); they are found here when the package is imported, so a
new backbone is one new file. Nothing outside :mod:`ambinb.lm` and :mod:`ambinb.model` asks which
family a model is: the strategies, rollouts and read-out reach the model through ``ambinb.lm``.

Example: ``for_model_type("qwen2_5_omni")`` -> the Qwen2.5-Omni family (the Thinker of the full
checkpoint); ``for_model_type("gpt2")`` -> ``ValueError`` naming the known types.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from ambinb.families.base import Family


def _discover() -> dict[str, Family]:
    """model_type -> family, from every module of this package that defines ``FAMILY``."""
    found: dict[str, Family] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        family = getattr(importlib.import_module(f"{__name__}.{info.name}"), "FAMILY", None)
        for model_type in family.model_types if family else ():
            if model_type in found:
                raise ValueError(f"model_type {model_type!r} is claimed by {found[model_type].name} and {family.name}")
            found[model_type] = family
    return found


BY_MODEL_TYPE = _discover()
MODEL_TYPES = tuple(sorted(BY_MODEL_TYPE))


def for_model_type(model_type: str | None) -> Family:
    """The family that loads checkpoints of ``model_type``.

    Raises:
        ValueError: no family claims it, naming the known types.
    """
    if model_type not in BY_MODEL_TYPE:
        raise ValueError(f"model_type {model_type!r} is of no known family (known: {', '.join(MODEL_TYPES)})")
    return BY_MODEL_TYPE[model_type]


def of(config: Any) -> Family:
    """The family of a loaded model, from its config's ``model_type``."""
    return for_model_type(getattr(config, "model_type", None))
