"""Pretraining task: describing a voice. A chat in the chat template whose user turn is a recording and
:data:`DESCRIBE_REQUEST`, answered with one sentence per audio aspect in the curator's words
(:func:`ambinb.cues.describe_prosody` of the recording's measured prosody): the stand-in learns to
say what it hears, as the audio step of a think block says it."""

from __future__ import annotations

from typing import Any

import torch

from ambinb import cues, prompt
from ambinb.standin.batches import pad_batch, target_logits

DESCRIBE_REQUEST = "Describe the voice: its volume, speed, pitch and tone."


def description(z: dict[str, float]) -> str:
    """The answer for measured prosody ``z``: ``"Volume: ... Speed: ... Pitch: ...; ... Tone: ...; ..."``.

    Example: ``description({"loudness": 1.4, "rate": 0.1, ...})`` starts with
    ``"Volume: much louder than a typical voice. Speed: close to a typical speaking rate."``.
    """
    return " ".join(f"{aspect}: {words}." for aspect, words in cues.describe_prosody(z).items())


def request_text(processor: Any) -> str:
    """The rendered chat of a description request, ending with the assistant header."""
    chat = [{"role": "user", "content": [{"type": "audio", "audio": "audio"},
                                         {"type": "text", "text": DESCRIBE_REQUEST}]}]
    return processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)


def description_batch(processor: Any, audio: list[torch.Tensor], zs: list[dict[str, float]], pad_id: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """One description chat per clip: ``(input_ids, attention_mask, labels, audio)``; the loss covers the answer."""
    tok = processor.tokenizer
    head = request_text(processor)
    end = [int(tok.convert_tokens_to_ids(prompt.IM_END))]
    rows, labels = [], []
    for feats, z in zip(audio, zs):
        p_ids = prompt.prompt_ids(tok, head, feats.shape[0])
        a_ids = prompt.segment_ids(tok, description(z)) + end
        rows.append(p_ids + a_ids)
        labels.append([-100] * len(p_ids) + a_ids)
    ids, mask, lab = pad_batch(rows, labels, pad_id)
    return ids, mask, lab, audio


def description_loss(model: Any, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]
                     ) -> torch.Tensor:
    """Mean next-token cross-entropy over the answers' tokens."""
    ids, mask, labels, audio = batch
    logits, target, _ = target_logits(model, ids, mask, labels, audio)
    return torch.nn.functional.cross_entropy(logits.float(), target)
