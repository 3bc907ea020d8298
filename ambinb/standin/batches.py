"""What every pretraining task of the stand-in shares: padding token rows into a batch, and the
language model's logits at the positions that predict a target token."""

from __future__ import annotations

from typing import Any

import torch

from ambinb import lm


def pad_batch(rows: list[list[int]], labels: list[list[int]], pad_id: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad token rows and their labels to the longest row.

    Example: ``rows = [[5, 6, 7], [8]]``, ``labels = [[-100, 6, 7], [8]]``, ``pad_id = 0`` ->
    ids ``[[5, 6, 7], [8, 0, 0]]``, mask ``[[1, 1, 1], [1, 0, 0]]``, labels
    ``[[-100, 6, 7], [8, -100, -100]]``.

    Returns:
        ``(input_ids, attention_mask, labels)``, each (B, T) long, labels -100 on padding.
    """
    batch_size, width = len(rows), max(len(r) for r in rows)
    ids = torch.full((batch_size, width), pad_id, dtype=torch.long)
    lab = torch.full((batch_size, width), -100, dtype=torch.long)
    mask = torch.zeros((batch_size, width), dtype=torch.long)
    for i, (r, lb) in enumerate(zip(rows, labels)):
        ids[i, : len(r)] = torch.tensor(r)
        lab[i, : len(lb)] = torch.tensor(lb)
        mask[i, : len(r)] = 1
    return ids, mask, lab


def target_logits(model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                  audio: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (N, V) at the N positions whose next token is a target (label != -100), and those targets (N,).

    Also returns the boolean (B, T-1) map of those positions, to gather per-token weights with.
    """
    hidden, _ = lm.hidden_states(model, ids, mask, audio)
    target = labels[:, 1:]
    where = target != -100
    return lm.head_logits(model, hidden[:, :-1][where]), target[where], where
