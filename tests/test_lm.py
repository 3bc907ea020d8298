"""The language model's one per-token log-prob path (ambinb.lm.token_logprobs): a chunk of positions
at a time gives the same values and gradients as the plain float32 path, on a head with a 50k vocabulary;
and the padding helpers by hand."""

from __future__ import annotations

import types

import torch

from ambinb import lm, losses


class _Head(torch.nn.Module):
    """What ``lm.head_logits`` reads: the config's ``model_type`` (its family names the head) and ``lm_head``."""

    def __init__(self, hidden: int, vocab: int):
        super().__init__()
        self.config = types.SimpleNamespace(model_type="qwen2_audio")
        self.lm_head = torch.nn.Linear(hidden, vocab, bias=False)


def _plain(model, hidden, targets):
    return losses.token_logprobs(lm.head_logits(model, hidden, float32=True)[None], targets[None])[0]


def test_chunked_equals_plain_values_and_gradients():
    torch.manual_seed(0)
    model = _Head(8, 50_000)
    hidden = torch.randn(21, 8, requires_grad=True)
    targets = torch.randint(0, 50_000, (21,))
    targets[5] = -100  # a position without a target
    plain = _plain(model, hidden, targets)
    (g_plain,) = torch.autograd.grad(plain.sum(), hidden)
    for chunk in (8, 20, 0):
        got = lm.token_logprobs(model, hidden, targets, chunk)
        assert got.dtype == torch.float32 and got.shape == (21,) and float(got.detach()[5]) == 0.0
        torch.testing.assert_close(got, plain, rtol=0, atol=1e-5)
        (g,) = torch.autograd.grad(got.sum(), hidden)
        torch.testing.assert_close(g, g_plain, rtol=1e-5, atol=1e-6)
    assert float(plain[0]) < 0


def test_chunked_log_probs_reach_a_trainable_head():
    torch.manual_seed(1)
    model = _Head(4, 1000)
    hidden = torch.randn(9, 4)
    targets = torch.randint(0, 1000, (9,))
    (g_plain,) = torch.autograd.grad(_plain(model, hidden, targets).mean(), model.lm_head.weight)
    (g,) = torch.autograd.grad(lm.token_logprobs(model, hidden, targets, 4).mean(),
                               model.lm_head.weight)
    torch.testing.assert_close(g, g_plain, rtol=1e-5, atol=1e-7)


def test_right_and_left_padding_by_hand():
    ids, mask = lm.right_pad([[5, 6, 7], [8]], 0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = lm.left_pad([[5, 6, 7], [8]], 0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
