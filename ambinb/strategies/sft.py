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
validation, :func:`ambinb.run.build_examples`), so the comparison isolates the objective.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ambinb import audio as audio_mod
from ambinb import losses, policy, prompt, readout
from ambinb.strategies import ExampleStrategy

if TYPE_CHECKING:
    from ambinb.run import Example


class SFTStrategy(ExampleStrategy):
    """Teacher-forced CE on the completion plus KL at the answer slot (Eq. 3), for :func:`ambinb.engine.train`.

    Params used: ``ce_weight``, ``kl_weight``, ``answer_ce``, ``eps``.
    """

    def __init__(self, examples: list[Example], classes: list[str], tokenizer: Any, cfg: dict[str, Any]):
        self.examples = examples
        self.class_ids = prompt.class_ids(tokenizer, classes)
        self.pad_id = int(tokenizer.pad_token_id)
        self.ce_weight = float(cfg["ce_weight"])
        self.kl_weight = float(cfg["kl_weight"])
        self.answer_ce = policy.check_answer_ce(str(cfg["answer_ce"]))
        self.eps = float(cfg["eps"])

    @classmethod
    def build(cls, model: Any, processor: Any, examples: list[Example], classes: list[str],
              cfg: dict[str, Any]) -> SFTStrategy:
        """The strategy of one run (:class:`ambinb.engine.Strategy`); SFT needs no model of its own."""
        return cls(examples, classes, processor.tokenizer, cfg)

    def loss(self, model: Any, indices: list[int], step: int, micro: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 3 on the examples ``indices``; stats ``ce``, ``kl`` and the batch's mean ``p_max``."""
        batch = [self.examples[i] for i in indices]
        rows = [ex.encoded.prompt_ids + ex.completion.ids for ex in batch]
        device = audio_mod.device_of(model)
        ids, _ = readout.right_pad(rows, self.pad_id, device)
        hidden, _ = audio_mod.lm_hidden(model, ids, None, [ex.encoded.audio for ex in batch])  # see right_pad
        p_gt = torch.tensor(np.stack([ex.p_gt for ex in batch]), dtype=torch.float32, device=device)
        class_ll = policy.slot_class_log_likelihoods(model, hidden, batch, self.class_ids, self.pad_id)
        stats: dict[str, float] = {}
        total = torch.zeros((), device=device)
        if self.ce_weight > 0:
            ce = self._ce(model, hidden, batch, class_ll, p_gt)
            total = total + self.ce_weight * ce
            stats["ce"] = float(ce.detach())
        log_p_hat = losses.class_log_probs(class_ll)
        kl = losses.kl_dist_loss(p_gt, log_p_hat, self.eps)  # Eq. 2, forward KL at the slot
        if self.kl_weight > 0:
            total = total + self.kl_weight * kl
        stats["kl"] = float(kl.detach())
        stats["p_max"] = float(log_p_hat.detach().exp().max(dim=-1).values.mean())
        return total, stats

    def _ce(self, model: Any, hidden: torch.Tensor, batch: list[Example], class_ll: torch.Tensor,
            p_gt: torch.Tensor) -> torch.Tensor:
        """L_CE of Eq. 3 (token mean), the head applied only where a completion token carries CE."""
        device = hidden.device
        ce_rows, ce_pos, ce_tgt = [], [], []
        for b, ex in enumerate(batch):  # position t-1 predicts token t
            start = len(ex.encoded.prompt_ids)
            for t, (tok, keep) in enumerate(zip(ex.completion.ids, policy.completion_mask(ex.completion,
                                                                                          self.answer_ce))):
                if keep:
                    ce_rows.append(b)
                    ce_pos.append(start + t - 1)
                    ce_tgt.append(tok)
        h = hidden[torch.tensor(ce_rows, device=device), torch.tensor(ce_pos, device=device)]
        logits = audio_mod.head_logits(model, h, float32=True)
        token_nll = -losses.token_logprobs(logits[None], torch.tensor(ce_tgt, device=device)[None])[0]
        return policy.completion_ce(token_nll.sum(), token_nll.numel(), class_ll, p_gt, self.answer_ce)

    def summary(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """SFT adds nothing of its own to ``metrics.json``'s ``train`` summary."""
        return {}
