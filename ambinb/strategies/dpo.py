"""On-policy DPO with JS-picked negatives (Eq. 4-5).

Each training step, for the B utterances of the micro-batch:

1. the current policy samples R trajectories per utterance (:func:`ambinb.rollout.rollout`: the
   cached tower output, one shared prefill, p_hat read out at each trajectory's own answer slot);
2. JS(p_hat, p_gt) of each; the negative is the worst one if its JS exceeds ``tau``
   (:func:`ambinb.losses.select_negative`), else the utterance gives no pair this step;
3. the positive is the curated gold CoT with the majority class as its answer, tokenised with
   :func:`ambinb.prompt.completion_ids` exactly as SFT does (``dpo_positive: gold``, the paper's); or,
   with ``dpo_positive: best_rollout``, the utterance's own rollout closest to p_gt among those that
   wrote a class name (:func:`form_best_worst`; both sides of the pair are then the policy's own
   samples, as in online DPO);
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

import dataclasses
from typing import Any

import numpy as np
import torch

from ambinb import learning, losses, policy, prompt, rollout
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


def form_best_worst(js: np.ndarray, tau: float, usable: np.ndarray) -> list[tuple[int, int, int]]:
    """``(utterance, positive rollout, negative rollout)`` for ``dpo_positive: best_rollout``: per utterance
    the usable rollout (one that wrote a class name in the answer slot) closest to p_gt is the positive and
    the rollout furthest from it the negative, when the negative's JS exceeds ``tau`` (as in
    :func:`form_pairs`) and the two differ.

    Example: ``form_best_worst([[0.05, 0.3, 0.2]], 0.1, [[True, True, True]])`` -> ``[(0, 0, 1)]``; with
    rollout 0 unusable -> ``[(0, 2, 1)]``.
    """
    js, usable = np.asarray(js, dtype=np.float64), np.asarray(usable, dtype=bool)
    out = []
    for b, (row, ok) in enumerate(zip(js, usable)):
        neg = losses.select_negative(row, tau)
        if neg is None or not ok.any():
            continue
        pos = int(np.argmin(np.where(ok, row, np.inf)))
        if pos != neg and row[pos] < row[neg]:
            out.append((b, pos, neg))
    return out


def as_positive(ex: Example, t: rollout.Trajectory, class_ids: list[list[int]]) -> Example:
    """The utterance ``ex`` with a sampled trajectory as its completion, its slot where the trajectory's
    answer stands (``best_rollout`` positives go through the same Eq. 4 terms as the gold completion).

    Raises:
        ValueError: the trajectory wrote no class name at its answer slot.
    """
    slot = t.reasoning_len
    written = [ids for ids in class_ids if t.token_ids[slot: slot + len(ids)] == ids]
    if not t.answer_found or not written:
        raise ValueError(f"{ex.utt_id}: a positive must write a class name at its answer slot")
    return dataclasses.replace(ex, completion=prompt.CompletionIds(list(t.token_ids), slot, len(written[0])))


class DPOStrategy(ExampleStrategy):
    """On-policy DPO (Eq. 4-5) for :func:`ambinb.engine.train`.

    Params used: ``beta``, ``tau``, ``dpo_rollouts`` (R), ``dpo_positive``, ``dpo_kl_weight`` (lambda1),
    ``dpo_ce_weight`` (lambda2), ``answer_ce``, ``answer_action``, ``eps``, ``seed``, ``logprob_chunk`` and the
    rollout keys
    (``max_new_tokens``, ``temperature``, ``top_p``, ``prompt_preset``, ``readout_batch_size``).
    """

    def __init__(self, model: Any, processor: Any, examples: list[Example], classes: list[str],
                 cfg: dict[str, Any]):
        self.hold_run(processor, examples, classes, cfg)
        self.class_ids = prompt.class_ids(processor.tokenizer, self.classes, str(cfg["prompt_preset"]))
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
        self.answer_action = str(cfg["answer_action"])
        self.positive = str(cfg["dpo_positive"])
        self.gold = {ex.utt_id: ex.completion for ex in self.examples}  # the consensus answer, whatever the positive
        self.reference = policy.Reference(model)

    def loss(self, model: Any, indices: list[int], step: int, micro: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 4 on the micro-batch ``indices`` (rollouts sampled here, from the current policy)."""
        batch = [self.examples[i] for i in indices]
        gen = policy.step_generator(model, self.seed, step, indices)
        group = rollout.rollout(model, self.processor, [ex.encoded for ex in batch], self.classes, self.cfg,
                                k=self.r, generator=gen)
        js = policy.rollout_js(np.stack([ex.p_gt for ex in batch]), group.p_hat)
        chosen, rejected, neg_js = self._pairs(batch, group, js)
        stats = {"pairs": float(len(chosen)), "rollout_js": float(js.mean()),
                 "rollout_p_max": float(group.p_hat.max(dim=-1).values.mean()),
                 "rollout_format": float(np.mean([t.format_ok for t in group.flat()])),
                 "rollout_s": float(sum(group.seconds.values()))}
        if not chosen:
            return policy.zero_loss(model), {**stats, "no_pair": 1.0, "neg_js": NAN, "margin": NAN,
                                             "accuracy": NAN, "dpo": NAN, "kl": NAN, "ce": NAN}
        total, pair_stats = self._pair_loss(model, chosen, rejected)
        stats.update({"no_pair": 0.0, "neg_js": float(np.mean(neg_js)), **pair_stats})
        return total, stats

    def _pairs(self, batch: list[Example], group: rollout.GroupRollout, js: np.ndarray
               ) -> tuple[list[Example], list[rollout.Trajectory], list[float]]:
        """The positives (``dpo_positive``: the gold completion, or the best usable rollout), the negatives
        and the negatives' JS of the utterances that give a pair this step."""
        if self.positive == "gold":
            pairs = form_pairs(js, self.tau)
            return ([batch[b] for b, _ in pairs], [group.trajectories[b][j] for b, j in pairs],
                    [float(js[b, j]) for b, j in pairs])
        first = {ids[0] for ids in self.class_ids}
        usable = np.array([[policy.answer_col(t.token_ids, t.reasoning_len, first) is not None and t.answer_found
                            for t in row] for row in group.trajectories])
        triples = form_best_worst(js, self.tau, usable)
        return ([as_positive(batch[b], group.trajectories[b][p], self.class_ids) for b, p, _ in triples],
                [group.trajectories[b][n] for b, _, n in triples], [float(js[b, n]) for b, _, n in triples])

    def _pair_loss(self, model: Any, chosen: list[Example],
                   rejected: list[rollout.Trajectory]) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 4 on the pairs (gold completion of ``chosen[i]``, sampled ``rejected[i]``), and its stats."""
        prompts = [ex.encoded.prompt_ids for ex in chosen] * 2
        completions = [ex.completion.ids for ex in chosen] + [t.token_ids for t in rejected]
        audio = [ex.encoded.audio for ex in chosen] * 2
        n = len(chosen)
        answer = self._answer(chosen, rejected)
        logps, mask, hidden = policy.completion_logprobs(model, prompts, completions, audio, self.pad_id,
                                                         chunk=self.chunk, **answer)
        seq = losses.sequence_logprob(logps, mask)
        with torch.no_grad(), self.reference(model) as ref_model:
            ref_logps, _, _ = policy.completion_logprobs(ref_model, prompts, completions, audio, self.pad_id,
                                                         chunk=self.chunk, **answer)
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

    def _answer(self, chosen: list[Example], rejected: list[rollout.Trajectory]) -> dict[str, Any]:
        """The ``answer_cols``/``answer_ids`` keywords of :func:`ambinb.policy.completion_logprobs` for
        ``answer_action: any_class`` (the positives' slots, and the negatives' where they wrote a class
        name), or none for ``written``."""
        if self.answer_action == "written":
            return {}
        first = [ids[0] for ids in self.class_ids]
        cols = [ex.completion.slot for ex in chosen]
        cols += [policy.answer_col(t.token_ids, t.reasoning_len, set(first)) for t in rejected]
        return {"answer_cols": cols, "answer_ids": first}

    def _ce(self, chosen: list[Example], logps: torch.Tensor, class_ll: torch.Tensor,
            p_gt: torch.Tensor) -> torch.Tensor:
        """SFT's L_CE on the positives: token mean, the answer slot by ``answer_ce`` (Eq. 4's CE term).

        The slot's term comes from the class names' log-likelihoods there (``class_ll``): p_gt as the target
        (``soft``), the majority class as a one-hot target (``majority``: its name's log-likelihood, as the
        token CE of a single-token name), or none; so it does not depend on what ``logps`` holds at the slot
        (``answer_action: any_class`` puts the class names' mass there).
        """
        width = logps.shape[1]
        mask = torch.tensor([policy.completion_mask(ex.completion, "soft") + [0] * (width - len(ex.completion.ids))
                             for ex in chosen], dtype=logps.dtype, device=logps.device)
        nll = -(logps * mask).sum()
        if self.answer_ce == "none":
            return policy.completion_ce(nll, float(mask.sum()), class_ll, p_gt, "none")
        target = p_gt if self.answer_ce == "soft" else self._written_class(chosen).to(p_gt)
        return policy.completion_ce(nll, float(mask.sum()), class_ll, target, "soft")

    def _written_class(self, chosen: list[Example]) -> torch.Tensor:
        """(B, C) one-hot of the majority (consensus) class, the name each utterance's gold completion writes at
        its slot: ``answer_ce: majority``'s target, whichever completion is the positive."""
        out = torch.zeros((len(chosen), len(self.class_ids)))
        for b, ex in enumerate(chosen):
            gold = self.gold[ex.utt_id]
            out[b, self.class_ids.index(gold.ids[gold.slot: gold.slot + gold.answer_len])] = 1.0
        return out

    def summary(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """DPO's own ``train`` entries of ``metrics.json``: pairs formed, how the pairs went, and the JS of the
        rollouts in the first and last fifth of the steps (:func:`ambinb.learning.fifths`)."""
        pairs = [row["pairs"] for row in history]
        tail = history[-max(1, len(history) // 5):]
        first, last = learning.fifths(learning.values(history, "rollout_js"))
        return {"pairs_total": float(np.sum(pairs)), "steps_without_pair": int(sum(p == 0 for p in pairs)),
                "rollout_js_first_fifth": first, "rollout_js_last_fifth": last,
                "neg_js_first": _first(history, "neg_js"), "neg_js_last_fifth": _mean(tail, "neg_js"),
                "accuracy_last_fifth": _mean(tail, "accuracy"), "margin_last_fifth": _mean(tail, "margin")}


def _first(history: list[dict[str, Any]], key: str) -> float:
    values = [row[key] for row in history if key in row and np.isfinite(row[key])]
    return float(values[0]) if values else NAN


def _mean(history: list[dict[str, Any]], key: str) -> float:
    values = [row[key] for row in history if key in row and np.isfinite(row[key])]
    return float(np.mean(values)) if values else NAN
