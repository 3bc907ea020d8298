"""Pretraining task: audio chats. Each item is a prompt in the chat template with a recording of the
stand-in's own corpus (:mod:`ambinb.standin.recordings`), its transcript and a random class list,
answered by a think block that quotes the transcript's emotion words and describes the recording's
measured prosody, then an answer (see :mod:`ambinb.standin.completions`). Tokens inside quotes
weigh :data:`QUOTE_WEIGHT` in the loss."""

from __future__ import annotations

import random
from typing import Any

import torch

from ambinb import prompt
from ambinb.standin.batches import pad_batch, target_logits
from ambinb.standin.completions import synthetic_completion
from ambinb.standin.words import synthetic_class_list

QUOTE_WEIGHT = 5.0  # warm-up loss weight of the tokens inside double quotes (words quoted from the transcript)

ChatBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor]


def quote_weights(tokens: list[str], weight: float = QUOTE_WEIGHT) -> list[float]:
    """Loss weights of completion tokens: ``weight`` inside double quotes, 1 elsewhere (quote marks included).

    Example: tokens ``['Keywords', ':', 'Ġ"', 'furious', '",', 'Ġloud']`` -> ``[1, 1, 1, w, 1, 1]``.
    """
    out, inside = [], False
    for t in tokens:
        marks = t.count('"')
        out.append(weight if inside and not marks else 1.0)
        inside ^= marks % 2 == 1
    return out


def chat_batch(rng: random.Random, processor: Any, audio: list[torch.Tensor], zs: list[dict[str, float]],
               transcripts: list[str], pad_id: int) -> ChatBatch:
    """One chat per clip: the clip's tower output, its transcript, a random class list, and a think
    block that describes the clip's measured prosody ``zs``; the loss covers the completion only.

    Returns:
        ``(input_ids, attention_mask, labels, audio, weights)``: (B, T) tensors, the tower outputs
        of the clips, and (B, T) loss weights (0 on the prompt and padding, :func:`quote_weights` on
        the completion).
    """
    rows, labels, weights = [], [], []
    for feats, z, transcript in zip(audio, zs, transcripts):
        classes = synthetic_class_list(rng)
        think, answer = synthetic_completion(rng, transcript, classes, z)
        p_ids = prompt.prompt_ids(processor.tokenizer, prompt.prompt_text(processor, transcript, classes),
                                  feats.shape[0])
        c_ids = prompt.completion_ids(processor.tokenizer, think, answer).ids
        rows.append(p_ids + c_ids)
        labels.append([-100] * len(p_ids) + c_ids)
        weights.append([0.0] * len(p_ids) + quote_weights(processor.tokenizer.convert_ids_to_tokens(c_ids)))
    ids, mask, lab = pad_batch(rows, labels, pad_id)
    wts = torch.zeros(ids.shape)
    for i, wt in enumerate(weights):
        wts[i, : len(wt)] = torch.tensor(wt)
    return ids, mask, lab, list(audio), wts


def chat_loss(model: Any, batch: ChatBatch) -> torch.Tensor:
    """Weighted next-token cross-entropy on the completions: ``sum(w * ce) / sum(w)`` over target tokens."""
    ids, mask, labels, audio, weights = batch
    logits, target, where = target_logits(model, ids, mask, labels, audio)
    ce = torch.nn.functional.cross_entropy(logits.float(), target, reduction="none")
    w = weights[:, 1:][where]
    return (w * ce).sum() / w.sum()
