"""Pretraining task: audio chats. Each item is a prompt in the chat template with a synthetic
speech clip, a random transcript and a class list, answered by a think block that quotes the
transcript's emotion words and describes the clip's prosody, then an answer (see
:mod:`ambinb.standin.completions`). Tokens inside quotes weigh :data:`QUOTE_WEIGHT` in the loss."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from ambinb import audio as audio_mod
from ambinb import prompt
from ambinb.standin.batches import pad_batch, target_logits
from ambinb.standin.completions import synthetic_completion
from ambinb.standin.speech import draw_prosody, quick_mel, synthetic_speech
from ambinb.standin.transcripts import cued_transcript
from ambinb.standin.words import TRANSCRIPT_WORDS, synthetic_class_list

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


def warmup_pool(model: Any, processor: Any, n_audio: int, np_rng: np.random.Generator
                ) -> list[tuple[torch.Tensor, dict[str, float]]]:
    """``n_audio`` clips of :func:`synthetic_speech` with random prosody: (tower output, z-scores) each."""
    pool = []
    for _ in range(n_audio):
        z = draw_prosody(np_rng)
        feats, mask = quick_mel(processor.feature_extractor, synthetic_speech(np_rng, z))
        with torch.no_grad():
            pool.append((audio_mod.run_tower(model, feats[None], mask[None])[0], z))
    return pool


def chat_batch(rng: random.Random, processor: Any, pool: list[tuple[torch.Tensor, dict[str, float]]],
               batch_size: int, pad_id: int, vocabulary: tuple[str, ...] = TRANSCRIPT_WORDS) -> ChatBatch:
    """``batch_size`` chats, each on a clip drawn from ``pool``; the loss covers the completion only.

    Returns:
        ``(input_ids, attention_mask, labels, audio, weights)``: (B, T) tensors, the tower outputs
        of the clips, and (B, T) loss weights (0 on the prompt and padding, :func:`quote_weights` on
        the completion).
    """
    rows, labels, audio, weights = [], [], [], []
    for _ in range(batch_size):
        feats, z = pool[rng.randrange(len(pool))]
        classes = synthetic_class_list(rng)
        transcript = cued_transcript(rng, classes, vocabulary)
        think, answer = synthetic_completion(rng, transcript, classes, z)
        p_ids = prompt.prompt_ids(processor.tokenizer, prompt.prompt_text(processor, transcript, classes),
                                  feats.shape[0])
        c_ids = prompt.completion_ids(processor.tokenizer, think, answer).ids
        rows.append(p_ids + c_ids)
        labels.append([-100] * len(p_ids) + c_ids)
        weights.append([0.0] * len(p_ids) + quote_weights(processor.tokenizer.convert_ids_to_tokens(c_ids)))
        audio.append(feats)
    ids, mask, lab = pad_batch(rows, labels, pad_id)
    wts = torch.zeros(ids.shape)
    for i, wt in enumerate(weights):
        wts[i, : len(wt)] = torch.tensor(wt)
    return ids, mask, lab, audio, wts


def chat_loss(model: Any, batch: ChatBatch) -> torch.Tensor:
    """Weighted next-token cross-entropy on the completions: ``sum(w * ce) / sum(w)`` over target tokens."""
    ids, mask, labels, audio, weights = batch
    logits, target, where = target_logits(model, ids, mask, labels, audio)
    ce = torch.nn.functional.cross_entropy(logits.float(), target, reduction="none")
    w = weights[:, 1:][where]
    return (w * ce).sum() / w.sum()
