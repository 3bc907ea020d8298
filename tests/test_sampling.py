"""The sampler of the decode loops: greedy, nucleus, and draws that follow the weights."""

from __future__ import annotations

import torch

from ambinb import sampling


def test_sample_next_top_p_and_greedy():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    draws = {int(sampling.sample_next(logits, False, 1.0, 0.7, gen)) for _ in range(300)}
    assert draws == {0, 1}  # 0.5 < 0.7 <= 0.5 + 0.3: the nucleus is tokens 0 and 1
    assert {int(sampling.sample_next(logits, False, 1.0, 1.0, gen)) for _ in range(500)} == {0, 1, 2, 3}
    assert int(sampling.sample_next(logits, True)) == 0


def test_draw_rows_follows_the_weights_and_never_draws_a_zero():
    weights = torch.tensor([[0.5, 0.0, 0.3, 0.2], [0.0, 0.0, 0.0, 2.0]]).repeat(20_000, 1)
    picked = sampling.draw_rows(weights, torch.Generator().manual_seed(1)).view(20_000, 2)
    assert (picked[:, 1] == 3).all()  # the one nonzero weight of row 2, though it does not sum to 1
    freq = torch.bincount(picked[:, 0], minlength=4).double() / 20_000
    assert freq[1] == 0
    expected = torch.tensor([0.5, 0.0, 0.3, 0.2], dtype=torch.float64)
    sd = (expected * (1 - expected) / 20_000).sqrt()
    assert ((freq - expected).abs() <= 4 * sd + 1e-12).all(), freq  # binomial: 4 standard deviations
    u_row = sampling.draw_rows(torch.tensor([[0.5, 0.0, 0.3, 0.2]]), torch.Generator().manual_seed(3))
    u = torch.rand((1, 1), dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert int(u_row) == int((torch.tensor([0.5, 0.5, 0.8, 1.0], dtype=torch.float64) <= u).sum())
