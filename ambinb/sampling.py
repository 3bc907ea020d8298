"""The next token of each row of a decoding step: greedy, or a temperature / nucleus sample drawn with
one uniform number per row from a seeded ``torch.Generator``."""

from __future__ import annotations

import torch


def sample_next(logits: torch.Tensor, greedy: bool, temperature: float = 1.0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The next token per row from logits (R, V): argmax, or a temperature / nucleus sample.

    Top-p keeps the smallest set of most likely tokens whose mass reaches ``top_p`` (the most
    likely token always stays). The draw is :func:`draw_rows`.
    """
    if greedy or temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(dim=-1) - sorted_p >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return draw_rows(probs, generator)


def draw_rows(weights: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of ``weights`` (R, V), drawn with probability proportional to the row's
    weights: one uniform number per row against the row's cumulative sum (float64), so a weight of
    0 is never drawn.

    ``torch.multinomial`` draws one exponential number per vocabulary entry (Gumbel-max): on a CPU
    that is about 5 ms for 64 rows of 2,048 entries, where this takes about 0.3 ms.

    Example: weights ``[[0.5, 0, 0.3, 0.2]]`` and a uniform number of 0.6 (times the row's total
    1.0) -> index 2 (cumulative sums 0.5, 0.5, 0.8, 1.0: the first above 0.6).
    """
    cdf = weights.double().cumsum(dim=-1)
    u = torch.rand((weights.shape[0], 1), dtype=torch.float64, device=weights.device, generator=generator)
    picked = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1)
    return picked.clamp_(max=weights.shape[-1] - 1)
