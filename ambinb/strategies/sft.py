"""Supervised fine-tuning on the curated CoT with the distribution loss (Eq. 3).

L_SFT = ce_weight * L_CE(completion tokens) + kl_weight * KL(p_gt || p_hat)      (Eq. 3, lambda = 1)

p_hat is read out at the answer slot of the teacher-forced gold completion: the softmax over the
class names' log-likelihoods right after the answer tag (:func:`ambinb.policy.slot_class_log_likelihoods`).
The three variants are strategies in ``params/strategies``:

* ``sft``: CE on the think block, the answer tag and the closing tokens; at the answer slot the CE
  target is the annotators' distribution itself (``answer_ce: soft``: -sum_c p_gt(c) log p(name_c),
  counted as one token of the CE mean, :func:`ambinb.policy.completion_ce`), so CE never pulls the
  slot towards one class, and the slot keeps its probability mass on the class names (the KL term
  alone, taken over the renormalised class names, leaves that mass free and the greedy answer drifts
  off the class list); plus KL.
* ``sft_ce``: CE on everything, the slot's target being the majority class (``answer_ce:
  majority``); no KL.
* ``sft_nocot``: no think block (the completion is ``<answer>class</answer>``); KL only.

All three train on the same utterances (the fold's training rows whose curated CoT passed
validation, :func:`ambinb.examples.build_examples`), so the comparison isolates the objective.
Every strategy takes its token log-probs from :func:`ambinb.policy.completion_logprobs`; SFT reads the
CE from them and the slot from the same forward's hidden states.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ambinb import lm, losses, policy, prompt
from ambinb.examples import Example
from ambinb.strategies.base import ExampleStrategy


class SFTStrategy(ExampleStrategy):
    """Teacher-forced CE on the completion plus KL at the answer slot (Eq. 3), for :func:`ambinb.engine.train`.

    Params used: ``ce_weight``, ``kl_weight``, ``answer_ce``, ``eps``, ``logprob_chunk``, ``prompt_preset``
    (the answer format whose slot the class ids are scored in).
    """

    def __init__(self, examples: list[Example], classes: list[str], tokenizer: Any, cfg: dict[str, Any]):
        self.examples = examples
        self.class_ids = prompt.class_ids(tokenizer, classes, str(cfg["prompt_preset"]))
        self.pad_id = int(tokenizer.pad_token_id)
        self.ce_weight = float(cfg["ce_weight"])
        self.kl_weight = float(cfg["kl_weight"])
        self.answer_ce = policy.check_answer_ce(str(cfg["answer_ce"]))
        self.eps = float(cfg["eps"])
        self.chunk = int(cfg["logprob_chunk"])

    @classmethod
    def build(cls, model: Any, processor: Any, examples: list[Example], classes: list[str],
              cfg: dict[str, Any]) -> SFTStrategy:
        """The strategy of one run (:class:`ambinb.engine.Strategy`); SFT needs no model of its own."""
        return cls(examples, classes, processor.tokenizer, cfg)

    def loss(self, model: Any, indices: list[int], step: int, micro: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 3 on the examples ``indices``; stats ``ce``, ``kl`` and the batch's mean ``p_max``."""
        batch = [self.examples[i] for i in indices]
        scored = [policy.completion_mask(ex.completion, self.answer_ce) for ex in batch]  # the CE's tokens
        logps, mask, hidden = policy.completion_logprobs(model, [ex.encoded.prompt_ids for ex in batch],
                                                         [ex.completion.ids for ex in batch],
                                                         [ex.encoded.audio for ex in batch], self.pad_id,
                                                         chunk=self.chunk, scored=scored)
        device = lm.device_of(model)
        p_gt = torch.tensor(np.stack([ex.p_gt for ex in batch]), dtype=torch.float32, device=device)
        class_ll = policy.slot_class_log_likelihoods(model, hidden, batch, self.class_ids, self.pad_id)
        stats: dict[str, float] = {}
        total = torch.zeros((), device=device)
        if self.ce_weight > 0:
            token_nll = -logps[mask.bool()]  # row by row, in completion order
            ce = policy.completion_ce(token_nll.sum(), token_nll.numel(), class_ll, p_gt, self.answer_ce)  # Eq. 3
            total = total + self.ce_weight * ce
            stats["ce"] = float(ce.detach())
        log_p_hat = losses.class_log_probs(class_ll)
        kl = losses.kl_dist_loss(p_gt, log_p_hat, self.eps)  # Eq. 2, forward KL at the slot
        if self.kl_weight > 0:
            total = total + self.kl_weight * kl
        stats["kl"] = float(kl.detach())
        stats["p_max"] = float(log_p_hat.detach().exp().max(dim=-1).values.mean())
        return total, stats

    def summary(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """SFT adds nothing of its own to ``metrics.json``'s ``train`` summary."""
        return {}
