"""Pretraining task: quoting drills, short text-only exercises of the kind pretraining text has many.
A transcript is followed by the keyword line that quotes its emotion words of the curator's lexicon
(:data:`ambinb.cues.LEXICON`); the loss covers the keyword line only."""

from __future__ import annotations

import random
from typing import Any

import torch

from ambinb import cues
from ambinb.standin.batches import pad_batch, target_logits
from ambinb.standin.transcripts import cued_transcript
from ambinb.standin.words import ALL_CLASSES, TRANSCRIPT_WORDS

COPY_DRILL_BATCH = 32  # short text-only chats per warm-up step that practise quoting emotion words

DrillBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def copy_drill_text(rng: random.Random, vocabulary: tuple[str, ...] = TRANSCRIPT_WORDS) -> tuple[str, str]:
    """A short quoting exercise: a transcript (:func:`ambinb.standin.transcripts.cued_transcript`) and
    the keyword line that quotes its emotion words of the curator's lexicon in order of appearance,
    or says "plain wording" when it has none (as the curator's template does).

    Returns ``(context, target)``; the warm-up's loss covers the target only. Example:
    ``('Transcript: "They last straw went."\\nKeywords:', ' "last straw"')``.
    """
    transcript = cued_transcript(rng, list(ALL_CLASSES), vocabulary)
    low = transcript.lower()
    found = sorted((w for ws in cues.text_cues(transcript, ALL_CLASSES).values() for w in ws), key=low.find)
    target = ", ".join(f'"{w}"' for w in found[:3]) if found else "plain wording"
    return f'Transcript: "{transcript}"\nKeywords:', " " + target


def drill_batch(rng: random.Random, tokenizer: Any, batch_size: int, pad_id: int,
                vocabulary: tuple[str, ...] = TRANSCRIPT_WORDS) -> DrillBatch:
    """``batch_size`` drills of :func:`copy_drill_text`: ``(input_ids, attention_mask, labels)``, (B, T) each."""
    rows, labels = [], []
    for _ in range(batch_size):
        context, target = copy_drill_text(rng, vocabulary)
        c = tokenizer(context, add_special_tokens=False)["input_ids"]
        t = tokenizer(target, add_special_tokens=False)["input_ids"]
        rows.append(c + t)
        labels.append([-100] * len(c) + t)
    return pad_batch(rows, labels, pad_id)


def drill_loss(model: Any, batch: DrillBatch) -> torch.Tensor:
    """Mean next-token cross-entropy over the keyword lines' tokens."""
    ids, mask, labels = batch
    logits, target, _ = target_logits(model, ids, mask, labels)
    return torch.nn.functional.cross_entropy(logits.float(), target)
