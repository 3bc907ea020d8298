"""Qwen2-Audio (Qwen2-Audio-7B-Instruct, and the tiny stand-in built on the same classes).

The audio tower is Whisper's encoder: two convolutions (the second of stride 2) over 3,000 mel
frames (30 s, zero-padded), bidirectional attention masked to the valid frames, pairwise average
pooling and a layer norm; ``multi_modal_projector`` (a linear layer outside the tower) maps its
outputs to the language model's width; the language model is Qwen2-7B.

The tower's own forward insists on all 3,000 frames. :func:`tower_outputs` runs its layers on the
first :func:`tower_window` frames instead, with the same kept outputs (see there): ~10x less work
for a 3 s clip. Worked example of the token count: 2.0 s -> 200 valid frames -> conv stride 2 ->
100 -> pooling -> 50 ``<|AUDIO|>`` positions.
"""

from __future__ import annotations

from typing import Any

import torch

from ambinb.families.base import Family


def tower_window(feature_attention_mask: torch.Tensor, n_frames: int = 3_000) -> int:
    """Mel frames the tower must see for a batch: the longest valid length plus 4, made even, at
    most ``n_frames`` (the encoder's full input).

    Every kept output of the tower depends only on valid frames and the one padding frame after
    them (two stride-2 convolutions, attention masked to valid keys, pairwise pooling), so running
    on this window gives the same kept outputs as running on all 3,000 frames, ~10x cheaper for a
    3 s clip. Example: valid lengths 280 and 200 -> 284.
    """
    longest = int(feature_attention_mask.sum(-1).max()) if feature_attention_mask.numel() else 0
    return min(n_frames, longest + 4 + longest % 2)


def _encode(tower: Any, features: torch.Tensor, mask: Any) -> torch.Tensor:
    """The audio encoder's layers on ``features`` of any even frame count (the encoder's own
    forward insists on 3,000 frames): convolutions, positions, layers, pooling, final norm."""
    x = torch.nn.functional.gelu(tower.conv1(features.to(tower.conv1.weight.dtype)))
    x = torch.nn.functional.gelu(tower.conv2(x)).permute(0, 2, 1)
    x = x + tower.embed_positions.weight[: x.shape[1]]
    x = torch.nn.functional.dropout(x, p=tower.dropout, training=tower.training)
    for layer in tower.layers:
        x = layer(x, mask)
    x = tower.avg_pooler(x.permute(0, 2, 1)).permute(0, 2, 1)
    return tower.layer_norm(x)


def tower_outputs(tower: Any, input_features: torch.Tensor, feature_attention_mask: torch.Tensor,
                  windowed: bool = True) -> list[torch.Tensor]:
    """The tower's last hidden state per utterance (before the projector), cut to its audio-token count.

    Builds the same key-padding mask as ``Qwen2AudioModel.forward``, so the result equals what the
    full path merges before its projector. With ``windowed`` the layers run on the first
    :func:`tower_window` frames only (equal results); ``windowed=False`` runs the encoder's own
    forward on all 3,000.

    Returns:
        One tensor (n_audio_tokens_i, d_audio) per row of ``input_features``.
    """
    from transformers.masking_utils import create_bidirectional_mask  # heavy

    device = tower.conv1.weight.device
    feature_attention_mask = feature_attention_mask.to(device)
    full = tower.config.max_source_positions * 2
    width = tower_window(feature_attention_mask, full) if windowed else input_features.shape[-1]
    input_features = input_features[..., :width].to(device)
    frames = feature_attention_mask.sum(-1)
    conv_lengths = (frames - 1) // 2 + 1
    n_tokens = ((conv_lengths - 2) // 2 + 1).tolist()
    max_len = (width - 2) // 2 + 1
    mask_2d = (torch.arange(max_len, device=device)[None, :] < conv_lengths[:, None]).long()
    dummy = torch.zeros((input_features.shape[0], max_len, 1), dtype=tower.conv1.weight.dtype, device=device)
    mask = create_bidirectional_mask(config=tower.config, inputs_embeds=dummy, attention_mask=mask_2d)
    if width == full:  # the full input: the encoder's own forward
        hidden = tower(input_features, attention_mask=mask).last_hidden_state
    else:
        hidden = _encode(tower, input_features, mask)
    return [hidden[i, : int(n)] for i, n in enumerate(n_tokens)]


FAMILY = Family(name="qwen2_audio", model_types=("qwen2_audio",), model_class="Qwen2AudioForConditionalGeneration",
                processor_class="Qwen2AudioProcessor", tower_outputs=tower_outputs, towers=("audio_tower",),
                projector="multi_modal_projector")
