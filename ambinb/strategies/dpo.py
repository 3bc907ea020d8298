"""On-policy DPO with JS-picked negatives (Eq. 4-5).

Each training step, for the B utterances of the micro-batch:

1. the current policy samples R trajectories per utterance (:func:`ambinb.rollout.rollout`: the
   cached tower output, one shared prefill, p_hat read out at each trajectory's own answer slot);
2. JS(p_hat, p_gt) of each; the negative is the worst one if its JS exceeds ``tau``
   (:func:`ambinb.losses.select_negative`), else the utterance gives no pair this step;
3. the positive is the curated gold CoT with the majority class as its answer, tokenised with
   :func:`ambinb.prompt.completion_ids` exactly as SFT does;
4. for the pairs::

       L = L_DPO(pos, neg)                                   (Eq. 5, sigmoid, beta)
         + lambda1 * KL(p_gt || p_hat at the positive's slot)  (``dpo_kl_weight``)
         + lambda2 * CE(positive completion)                    (``dpo_ce_weight``, Eq. 4)

   The CE is SFT's (:func:`ambinb.policy.completion_ce`): token mean over the completion, the answer
   slot's target chosen by ``answer_ce`` (``soft``: p_gt itself; ``majority``: the class token).

The reference of Eq. 5 is the starting model (:class:`ambinb.policy.Reference`): with LoRA, the same
model under peft's ``disable_adapter()`` (no second copy of the weights); with a full fine-tune
(``lora: false``), and only then, one frozen copy of the starting weights. Every forward (rollout,
policy, reference) goes through :func:`ambinb.lm.hidden_states` with the utterance's cached tower
output. A micro-batch without any pair returns a zero loss that still reaches every trainable
parameter (zero gradients, so several processes stay in step), with ``pairs = 0`` and
``no_pair = 1`` in its stats, and NaN for the pair statistics.

Logged per step (besides ``loss``): ``pairs``, ``neg_js`` (mean JS of the negatives), ``rollout_js``
(mean JS of all rollouts), ``rollout_format`` (their format pass rate), ``rollout_s`` (seconds spent
sampling and reading them out), ``margin`` and ``accuracy`` of the implicit reward
(:func:`ambinb.losses.dpo_metrics`), ``dpo``, ``kl``, ``ce``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ambinb import losses, policy, prompt, rollout
from ambinb.examples import Example
from ambinb.strategies.base import ExampleStrategy

NAN = float("nan")


def form_pairs(js: np.ndarray, tau: float) -> list[tuple[int, int]]:
    """``(utterance, rollout)`` of each utterance's negative, for utterances that have one.

    Args:
        js: (B, R) JS(p_hat, p_gt) of every rollout.
        tau: a rollout can be a negative only when its JS exceeds this (strictly).

    Example: ``form_pairs([[0.05, 0.3], [0.02, 0.08], [0.4, 0.4]], 0.1)`` -> ``[(0, 1), (2, 0)]``.
    """
    js = np.asarray(js, dtype=np.float64)
    if js.ndim != 2:
        raise ValueError(f"form_pairs: js must be (B, R), got shape {js.shape}")
    out = []
    for b, row in enumerate(js):
        neg = losses.select_negative(row, tau)
        if neg is not None:
            out.append((b, neg))
    return out


class DPOStrategy(ExampleStrategy):
    """On-policy DPO (Eq. 4-5) for :func:`ambinb.engine.train`.

    Params used: ``beta``, ``tau``, ``dpo_rollouts`` (R), ``dpo_kl_weight`` (lambda1),
    ``dpo_ce_weight`` (lambda2), ``answer_ce``, ``eps``, ``seed``, ``logprob_chunk`` and the rollout keys
    (``max_new_tokens``, ``temperature``, ``top_p``, ``prompt_preset``, ``readout_batch_size``).
    """

    def __init__(self, model: Any, processor: Any, examples: list[Example], classes: list[str],
                 cfg: dict[str, Any]):
        self.hold_run(processor, examples, classes, cfg)
        self.class_ids = prompt.class_ids(processor.tokenizer, self.classes)
        self.beta = float(cfg["beta"])
        self.tau = float(cfg["tau"])
        self.r = int(cfg["dpo_rollouts"])
        self.kl_weight = float(cfg["dpo_kl_weight"])
        self.ce_weight = float(cfg["dpo_ce_weight"])
        self.answer_ce = policy.check_answer_ce(str(cfg["answer_ce"]))
        if self.r < 1:
            raise ValueError(f"dpo_rollouts={self.r}: need at least one rollout per utterance")
        self.eps = float(cfg["eps"])
        self.seed = int(cfg["seed"])
        self.chunk = int(cfg["logprob_chunk"])
        self.reference = policy.Reference(model)

    def loss(self, model: Any, indices: list[int], step: int, micro: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 4 on the micro-batch ``indices`` (rollouts sampled here, from the current policy)."""
        batch = [self.examples[i] for i in indices]
        gen = policy.step_generator(model, self.seed, step, indices)
        group = rollout.rollout(model, self.processor, [ex.encoded for ex in batch], self.classes, self.cfg,
                                k=self.r, generator=gen)
        js = policy.rollout_js(np.stack([ex.p_gt for ex in batch]), group.p_hat)
        pairs = form_pairs(js, self.tau)
        stats = {"pairs": float(len(pairs)), "rollout_js": float(js.mean()),
                 "rollout_format": float(np.mean([t.format_ok for t in group.flat()])),
                 "rollout_s": float(sum(group.seconds.values()))}
        if not pairs:
            return policy.zero_loss(model), {**stats, "no_pair": 1.0, "neg_js": NAN, "margin": NAN,
                                             "accuracy": NAN, "dpo": NAN, "kl": NAN, "ce": NAN}
        total, pair_stats = self._pair_loss(model, [batch[b] for b, _ in pairs],
                                            [group.trajectories[b][j].token_ids for b, j in pairs])
        stats.update({"no_pair": 0.0, "neg_js": float(np.mean([js[b, j] for b, j in pairs])), **pair_stats})
        return total, stats

    def _pair_loss(self, model: Any, chosen: list[Example],
                   rejected: list[list[int]]) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 4 on the pairs (gold completion of ``chosen[i]``, sampled ``rejected[i]``), and its stats."""
        prompts = [ex.encoded.prompt_ids for ex in chosen] * 2
        completions = [ex.completion.ids for ex in chosen] + rejected
        audio = [ex.encoded.audio for ex in chosen] * 2
        n = len(chosen)
        logps, mask, hidden = policy.completion_logprobs(model, prompts, completions, audio, self.pad_id,
                                                         chunk=self.chunk)
        seq = losses.sequence_logprob(logps, mask)
        with torch.no_grad(), self.reference(model) as ref_model:
            ref_logps, _, _ = policy.completion_logprobs(ref_model, prompts, completions, audio, self.pad_id,
                                                         chunk=self.chunk)
            ref_seq = losses.sequence_logprob(ref_logps, mask)
        per_pair, chosen_r, rejected_r = losses.dpo_loss(seq[:n], seq[n:], ref_seq[:n], ref_seq[n:], self.beta)
        dpo = per_pair.mean()  # Eq. 5
        p_gt = torch.tensor(np.stack([ex.p_gt for ex in chosen]), dtype=torch.float32, device=logps.device)
        class_ll = policy.slot_class_log_likelihoods(model, hidden[:n], chosen, self.class_ids, self.pad_id)
        kl = losses.kl_dist_loss(p_gt, losses.class_log_probs(class_ll), self.eps)  # Eq. 2 at the positive's slot
        ce = self._ce(chosen, logps[:n], class_ll, p_gt)
        total = dpo + self.kl_weight * kl + self.ce_weight * ce  # Eq. 4
        return total, {**losses.dpo_metrics(chosen_r, rejected_r), "dpo": float(dpo.detach()),
                       "kl": float(kl.detach()), "ce": float(ce.detach())}

    def _ce(self, chosen: list[Example], logps: torch.Tensor, class_ll: torch.Tensor,
            p_gt: torch.Tensor) -> torch.Tensor:
        """SFT's L_CE on the positives: token mean, the answer slot by ``answer_ce`` (Eq. 4's CE term)."""
        width = logps.shape[1]
        mask = torch.tensor([policy.completion_mask(ex.completion, self.answer_ce)
                             + [0] * (width - len(ex.completion.ids)) for ex in chosen],
                            dtype=logps.dtype, device=logps.device)
        return policy.completion_ce(-(logps * mask).sum(), float(mask.sum()), class_ll, p_gt, self.answer_ce)

    def summary(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """DPO's own ``train`` entries of ``metrics.json``: pairs formed, and how the pairs went."""
        pairs = [row["pairs"] for row in history]
        tail = history[-max(1, len(history) // 5):]
        return {"pairs_total": float(np.sum(pairs)), "steps_without_pair": int(sum(p == 0 for p in pairs)),
                "neg_js_first": _first(history, "neg_js"), "neg_js_last_fifth": _mean(tail, "neg_js"),
                "accuracy_last_fifth": _mean(tail, "accuracy"), "margin_last_fifth": _mean(tail, "margin")}


def _first(history: list[dict[str, Any]], key: str) -> float:
    values = [row[key] for row in history if key in row and np.isfinite(row[key])]
    return float(values[0]) if values else NAN


def _mean(history: list[dict[str, Any]], key: str) -> float:
    values = [row[key] for row in history if key in row and np.isfinite(row[key])]
    return float(np.mean(values)) if values else NAN
