"""LoRA merged into the base weights for a while (a rollout), then the exact base weights back.

Sampling through unmerged LoRA layers runs two extra small matmuls per adapted linear layer and
token (about 200 per decode step on the 7B model). :func:`merged_lora` merges every active adapter
into its base weight (``W += scaling * B @ A``, peft's own ``merge``) for the duration of a ``with``
block. Undoing that by subtraction is not exact in floating point (``(W + d) - d`` rounds), so the
touched base weights are copied first and restored bit for bit afterwards (peft's merge flags
cleared), whatever happens inside the block. The copies cost the adapted weights' bytes once more,
on their own device (about 13 GB for the 7B language model in bfloat16), for the length of the block.

A model without LoRA layers, or with adapters already merged, passes through unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def lora_layers(model: Any) -> list[Any]:
    """The peft LoRA layers of ``model`` that have an active adapter and are not merged."""
    try:
        from peft.tuners.lora import LoraLayer  # heavy
    except ImportError:  # peft missing: no adapters
        return []
    return [m for m in model.modules() if isinstance(m, LoraLayer) and not m.merged and not m.disable_adapters]


@contextmanager
def merged_lora(model: Any, enabled: bool = True) -> Iterator[int]:
    """Merge the LoRA adapters of ``model`` inside the block; restore the exact base weights after it.

    Yields the number of layers merged (0 when ``enabled`` is False or there are none).

    Example::

        with merged_lora(model):
            generate(...)          # one matmul per adapted linear layer
        # every base weight equals its value before the block, bit for bit
    """
    layers = lora_layers(model) if enabled else []
    saved = []
    try:
        with torch.no_grad():
            for layer in layers:
                base = layer.get_base_layer()
                saved.append((layer, base.weight.detach().clone()))
                layer.merge()
        yield len(layers)
    finally:
        with torch.no_grad():
            for layer, weight in saved:
                layer.get_base_layer().weight.copy_(weight)
                layer.merged_adapters.clear()
