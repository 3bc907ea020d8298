"""What a model family provides: everything about one backbone that the rest of ambinb must not know.

A family is one file in :mod:`ambinb.families` that defines ``FAMILY = Family(...)``; the registry
(:mod:`ambinb.families`) finds it by the ``model_type`` of a checkpoint's ``config.json``. Every
other module reaches the model through :mod:`ambinb.lm`, which asks the family for the parts:

* the classes: ``model_class`` (what :func:`ambinb.model.load_checkpoint` loads) and
  ``processor_class`` (what the checkpoint's ``AutoProcessor`` must give);
* the parts, as attribute names: ``core`` (the inner model holding towers and language model),
  ``text_model`` (the language model without its head, where the audio enters), ``head`` (the LM
  head), ``towers`` (the encoders that never train and that LoRA must not touch; the audio tower
  first), ``projector`` (what maps the tower's outputs into the language model's embeddings, or
  ``""`` when the tower projects them itself) and ``audio_token`` (the config's ``<|AUDIO|>`` id);
* ``tower_outputs``: the audio tower on a batch of mel features, one output per utterance, cut to
  its ``<|AUDIO|>`` count (:func:`ambinb.audio.run_tower` calls it; the feature cache keeps them).

Example: Qwen2-Audio's family has ``projector="multi_modal_projector"``, so
:func:`ambinb.lm.merge_audio` writes ``projector(tower output)`` at the audio positions;
Qwen2.5-Omni's has ``projector=""`` (its tower ends in its own ``proj``), so the cached output is
written there as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

TowerOutputs = Callable[[Any, torch.Tensor, torch.Tensor, bool], list[torch.Tensor]]


@dataclass(frozen=True)
class Family:
    """One backbone family (see the module docstring for what each field is for).

    Attributes:
        name: the family's name, e.g. ``qwen2_audio``.
        model_types: the ``config.json`` ``model_type`` values it loads.
        model_class: the transformers class loaded (by name, from ``transformers``).
        processor_class: the processor class the checkpoint must come with (by name).
        tower_outputs: ``(audio tower, input_features (B, 128, 3000), feature_attention_mask (B, 3000),
            windowed) -> [(n_i, d_audio)]``.
        towers: the core's frozen encoders, the audio tower first.
        projector: the core's audio projector, or ``""``.
        core: the attribute of the loaded model that holds towers and language model.
        text_model: the core's language model (no head).
        head: the loaded model's LM head.
        audio_token: the config attribute holding the ``<|AUDIO|>`` id.
    """

    name: str
    model_types: tuple[str, ...]
    model_class: str
    processor_class: str
    tower_outputs: TowerOutputs
    towers: tuple[str, ...] = ("audio_tower",)
    projector: str = ""
    core: str = "model"
    text_model: str = "language_model"
    head: str = "lm_head"
    audio_token: str = "audio_token_id"
