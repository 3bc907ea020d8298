"""Qwen2.5-Omni, its Thinker only (``Qwen2_5OmniThinkerForConditionalGeneration``, 3B and 7B).

The Thinker is the text-output half of Qwen2.5-Omni: an audio tower, a vision tower and a Qwen2.5
language model. The Talker (speech output) and token2wav are never loaded: the Thinker class reads
its own weights out of the full checkpoint (transformers drops the ``thinker.`` prefix), so the hub
ids ``Qwen/Qwen2.5-Omni-3B`` / ``-7B`` load as they are.

How its audio differs from Qwen2-Audio's:

* **windows.** The tower cuts each utterance's *valid* mel frames into chunks of ``2 x n_window``
  frames (200: 2 s) and attends within each chunk only (``cu_seqlens``); padding frames never enter.
  Its own forward is therefore already windowed, and exactly so: :func:`tower_outputs` runs it as it
  is (the ``windowed`` switch changes nothing here);
* **projection inside the tower.** The tower ends in ``ln_post`` and its own ``proj`` to the
  language model's width, so there is no projector outside it (``projector=""``): the cached
  output is what the language model reads, and it stays frozen with the tower;
* **length rule.** The same as Qwen2-Audio's: n frames -> ``((n - 1) // 2 + 1 - 2) // 2 + 1``
  ``<|AUDIO|>`` positions (2.0 s: 200 frames -> 50), which the processor writes between
  ``<|audio_bos|>`` and ``<|audio_eos|>`` (its chat template has no ``Audio 1:`` label);
* **positions.** Multimodal RoPE: audio and text positions advance one per token and the three
  rotary sections get the same index, so the 1-D positions ambinb passes (expanded to three by the
  language model) are what ``get_rope_index`` computes for audio-and-text prompts.

Its processor's feature extractor pads to 300 s; the valid frames of a clip of at most 30 s are the
same at either padding (tested), and ambinb keeps the 30 s window of ``max_audio_seconds``.
"""

from __future__ import annotations

from typing import Any

import torch

from ambinb.families.base import Family


def tower_outputs(tower: Any, input_features: torch.Tensor, feature_attention_mask: torch.Tensor,
                  windowed: bool = True) -> list[torch.Tensor]:
    """The tower's output per utterance (after its own ``proj``), as ``get_audio_features`` computes it.

    The valid frames of every row are concatenated (``input_features`` (B, 128, T) masked by
    ``feature_attention_mask`` (B, T)) and go through the tower's own forward with their lengths;
    its 2 s chunks keep each utterance's output a function of its own frames. ``windowed`` is
    accepted for the common signature and changes nothing (module docstring).

    Example: rows of 250 and 100 valid frames -> outputs of 62 and 25 rows of the text width.
    """
    device = tower.conv1.weight.device
    mask = feature_attention_mask.to(device)
    lengths = mask.sum(-1)
    flat = input_features.to(device).permute(0, 2, 1)[mask.bool()].permute(1, 0)  # (128, sum of valid frames)
    hidden = tower(flat, feature_lens=lengths).last_hidden_state
    n_tokens = ((lengths - 1) // 2 + 1 - 2) // 2 + 1
    return list(torch.split(hidden, n_tokens.tolist()))


FAMILY = Family(name="qwen2_5_omni", model_types=("qwen2_5_omni", "qwen2_5_omni_thinker"),
                model_class="Qwen2_5OmniThinkerForConditionalGeneration", processor_class="Qwen2_5OmniProcessor",
                tower_outputs=tower_outputs, towers=("audio_tower", "visual"), projector="")
