"""Token log-probabilities through the LM head a chunk of positions at a time, for a 151k vocabulary.

The SFT cross-entropy and the policy's completion log-probs apply the head in float32 at every
completion position at once: ``(positions, V)`` float32 logits, and as much again for their
gradient (a batch of 8 x 200 completion tokens over Qwen2-Audio's 156,032 rows: 1.3 GB each).
:func:`head_token_logprobs` gives the same numbers with ``chunk`` positions at a time: each chunk's
logits are made, reduced to one log-prob per position and dropped; under autograd each chunk runs in
``torch.utils.checkpoint``, so the backward pass recomputes one chunk's logits at a time too. Peak
memory for the logits falls from ``positions x V`` to ``chunk x V`` floats, at the cost of a second
head matmul per chunk in the backward pass.

Example: 1,600 positions, V = 156,032, chunk 256: 1.0 GB of float32 logits at once -> 0.16 GB.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from ambinb import audio as audio_mod
from ambinb import losses


def _chunk_logprobs(model: Any, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = audio_mod.head_logits(model, hidden, float32=True)
    return losses.token_logprobs(logits[None], targets[None])[0]


def head_token_logprobs(model: Any, hidden: torch.Tensor, targets: torch.Tensor, chunk: int = 0) -> torch.Tensor:
    """``log softmax(head(hidden))[target]`` per position, in float32, ``chunk`` positions at a time.

    Args:
        hidden: (P, H) last hidden states of the positions that predict ``targets``.
        targets: (P,) token ids (``-100``: no target, log-prob 0).
        chunk: positions per head application; 0 = all at once (the plain path).

    Returns:
        (P,) float32, differentiable with respect to ``hidden`` (and the head when it is trainable),
        equal to the plain path's values up to float rounding of the per-chunk matmul.
    """
    if chunk <= 0 or hidden.shape[0] <= chunk:
        return _chunk_logprobs(model, hidden, targets)
    parts = []
    for start in range(0, hidden.shape[0], chunk):
        h, t = hidden[start:start + chunk], targets[start:start + chunk]
        if torch.is_grad_enabled() and (h.requires_grad or any(p.requires_grad for p in _head_params(model))):
            parts.append(checkpoint(_chunk_logprobs, model, h, t, use_reentrant=False))
        else:
            parts.append(_chunk_logprobs(model, h, t))
    return torch.cat(parts)


def _head_params(model: Any) -> list[torch.nn.Parameter]:
    return list(audio_mod.base_model(model).lm_head.parameters())
