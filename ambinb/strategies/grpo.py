"""GRPO with the distribution reward (Eq. 6-7), and GRPO_z with the gold CoT injected.

Each rollout step, for the B utterances of the micro-batch:

1. the current policy samples K trajectories per utterance (:func:`ambinb.rollout.rollout`: cached
   tower output, one shared prefill, p_hat read out at each trajectory's own answer slot);
2. each gets the reward of the registry names in ``rewards`` (:func:`ambinb.rewards.combined_reward`,
   summed with weight 1; the default ``[grpo]`` is Eq. 6, ``r = -KL(p_gt || p_hat) + lambda3 * format`` with
   lambda3 = ``format_weight``);
3. GRPO_z (``inject_gold: true``): the curated gold CoT with the majority class joins each group as
   member K+1, teacher-forced, with :func:`ambinb.rewards.gold_reward` (KL term 0, format 1: the
   highest Eq. 6 can give, so it always has the top advantage; a configured reward list whose best
   attainable value would beat it is refused when the strategy is built);
4. advantages ``(r - mean) / (std + 1e-4)`` per group (:func:`ambinb.losses.group_advantages`);
5. the token log-probs of the policy, the reference and the old policy, each utterance's prompt run
   once for its whole group (:func:`ambinb.policy.completion_logprobs` with ``group_size``);
6. the clipped ratio objective with per-token averaging and a k3 KL to the reference
   (:func:`ambinb.losses.grpo_loss`, Eq. 7). The reference is the starting model
   (:class:`ambinb.policy.Reference`: LoRA adapter disabled, or one frozen copy for a full fine-tune);
   with ``grpo_kl_coef: 0`` no reference forward runs;
7. with ``readout_grad`` the reward's own gradient through p_hat joins the loss: Eq. 6's
   -KL(p_gt || p_hat) is a function of the weights (p_hat is the policy's read-out), so the gradient
   of the expected reward is E[r grad log pi] + E[grad r], and Eq. 7's ratio estimates only the first.
   The second is KL(p_gt || p_hat) summed over the sampled members (not the gold) at their own slots,
   over the number of sampled members, weight 1 per KL-bearing reward
   (:func:`ambinb.rewards.readout_kl_weight`), logged as ``readout_kl``. ``written`` (the default)
   counts the members that wrote their own answer tag: a read-out after a tag ambinb appended scores a
   malformed sample, and training it teaches the slot to do without the format; ``all`` counts them
   too; ``none`` is Eq. 7 as printed. p_hat comes from the policy forward's states at each slot
   (:func:`ambinb.policy.score_completions`), or from one read-out forward of the prefixes where that
   cannot give it (an appended tag under ``all``, class names of several tokens). The book's method
   chapter has the experiments.

``num_iterations`` > 1 reuses one batch of rollouts for that many consecutive optimizer steps (TRL's
``num_iterations``): at the first step of each block the rollouts are sampled and the policy's
token log-probs are kept as the old policy's (one extra no-grad forward); the following steps
ignore the indices the engine hands them and take the buffered batch of the same micro-batch
index (the ``micro`` the engine passes), so the ratio rho moves away from 1 and the clip acts. With
``num_iterations: 1`` the old policy is the current one (rho = 1, no extra forward). A run resumed
inside a block samples afresh at its first step (the buffer is not checkpointed).

Logged per step: ``reward_mean`` and ``reward_std`` (over the sampled members), ``reward_group_std``
(mean within-group spread), ``js`` (mean JS of the sampled p_hat), ``format_rate``, ``kl`` (mean k3
to the reference), ``clip_fraction``, ``ratio``, ``completion_len`` (mean sampled tokens), and
``resampled`` (1 on a step that sampled new rollouts), ``rollout_s`` (seconds spent sampling and
reading out the batch's rollouts).

Speed: how much faster one GRPO step is with these shared-encoder rollouts than with naive ones
(``model.generate`` K times per utterance, encoder and prefill each time) is ``bench/grpo_step.py``,
on the book's Benchmarks page (``bench/results/grpo_step_*.json``, with the card and the date).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ambinb import cot, learning, lm, losses, policy, prompt, readout, rewards, rollout
from ambinb.examples import Example
from ambinb.strategies.base import ExampleStrategy


@dataclass
class RolloutBatch:
    """One micro-batch of scored trajectories, kept for ``num_iterations`` steps."""

    anchor: int                          # the optimizer step that sampled it
    prompts: list[list[int]]             # per member (B * G rows, G = K or K + 1)
    completions: list[list[int]]
    answer_cols: list[int | None] | None  # per member, its answer slot's column (answer_action any_class)
    audio: list[torch.Tensor]
    advantages: torch.Tensor             # (B * G,)
    old_logps: torch.Tensor | None       # (B * G, W) under the sampling policy, or None (num_iterations 1)
    stats: dict[str, float]
    readout: Readout                     # where the sampled members were read out (``readout_grad``)


@dataclass
class Readout:
    """Where each sampled member of a :class:`RolloutBatch` was read out, to differentiate its p_hat."""

    members: list[int]                   # the sampled members' rows among the B * G (the gold excluded)
    cols: list[int | None]               # per row of B * G: the column after its own answer tag, or None
    prefixes: list[list[int]]            # per sampled member: prompt + the ids its p_hat follows
    p_gt: np.ndarray                     # (B * K, C)
    written: list[bool]                  # per sampled member: it wrote its own answer tag


def with_gold(sampled: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Rewards (B, K) with each group's gold reward appended as member K+1: (B, K + 1).

    Example: ``with_gold([[-0.3, -0.1]], [0.1])`` -> ``[[-0.3, -0.1, 0.1]]``.
    """
    sampled = np.asarray(sampled, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.float64).reshape(-1, 1)
    if gold.shape[0] != sampled.shape[0]:
        raise ValueError(f"with_gold: {sampled.shape[0]} groups but {gold.shape[0]} gold rewards")
    return np.concatenate([sampled, gold], axis=1)


def member_advantages(sampled: np.ndarray, gold: np.ndarray | None, gold_in_baseline: bool = True) -> torch.Tensor:
    """Each member's advantage, group by group (the gold last): (B * G,) with G = K, or K + 1 with a gold.

    Every advantage is ``(r - mean) / (std + 1e-4)`` within its group
    (:func:`ambinb.losses.group_advantages`). With a gold member and ``gold_in_baseline`` (GRPO_z as the
    paper has it) the gold's reward is in the group's mean and std; without, the sampled members are
    centred among themselves and only the gold's own advantage is taken against the whole group.

    Example: ``member_advantages([[0., 1.]], [2.], False)`` -> ``[-0.707, 0.707, 1.0]`` (about; the gold's
    1.0 is (2 - 1) / std([0, 1, 2])).
    """
    sampled = np.asarray(sampled, dtype=np.float64)
    b, k = sampled.shape
    if gold is None:
        return losses.group_advantages(torch.tensor(sampled, dtype=torch.float32), k)
    table = with_gold(sampled, gold)
    advantages = losses.group_advantages(torch.tensor(table, dtype=torch.float32), k + 1)
    if not gold_in_baseline:
        advantages = advantages.view(b, k + 1).clone()
        advantages[:, :k] = losses.group_advantages(torch.tensor(sampled, dtype=torch.float32), k).view(b, k)
        advantages = advantages.view(-1)
    return advantages


class GRPOStrategy(ExampleStrategy):
    """GRPO / GRPO_z (Eq. 6-7) for :func:`ambinb.engine.train`.

    Params used: ``grpo_k`` (K), ``clip_eps``, ``grpo_kl_coef``, ``num_iterations``, ``rewards``,
    ``format_weight`` (lambda3), ``inject_gold``, ``gold_in_baseline``, ``readout_grad``, ``answer_action``,
    ``prompt_preset``, ``seed``, ``logprob_chunk`` and the rollout keys (``max_new_tokens``, ``temperature``,
    ``top_p``, ``readout_batch_size``).
    """

    def __init__(self, model: Any, processor: Any, examples: list[Example], classes: list[str],
                 cfg: dict[str, Any]):
        self.hold_run(processor, examples, classes, cfg)
        self.k = int(cfg["grpo_k"])
        self.clip_eps = float(cfg["clip_eps"])
        self.kl_coef = float(cfg["grpo_kl_coef"])
        self.num_iterations = int(cfg["num_iterations"])
        self.reward_names = [str(n) for n in cfg["rewards"]]
        self.format_weight = float(cfg["format_weight"])
        self.inject_gold = bool(cfg["inject_gold"])
        self.fmt = cot.get_format(cfg["prompt_preset"])
        self.seed = int(cfg["seed"])
        self.chunk = int(cfg["logprob_chunk"])
        self.answer_action = str(cfg["answer_action"])
        self.class_ids = prompt.class_ids(processor.tokenizer, self.classes, self.fmt)
        self.readout_members = str(cfg["readout_grad"])
        self.readout_kl = rewards.readout_kl_weight(self.reward_names) if self.readout_members != "none" else 0.0
        self.gold_in_baseline = bool(cfg["gold_in_baseline"])
        if self.num_iterations < 1:
            raise ValueError(f"num_iterations={self.num_iterations}: must be at least 1")
        self.group = self.k + int(self.inject_gold)  # rows per utterance; they share its prompt's forward
        if self.group < 2:
            raise ValueError(f"grpo_k={self.k}: a group needs at least two members for an advantage")
        for name in self.reward_names:
            rewards.get_reward(name)  # unknown names fail here, not at the first step
        if self.inject_gold:
            self._check_gold_on_top()
        self.reference = policy.Reference(model) if self.kl_coef > 0 else None
        self._buffer: dict[int, RolloutBatch] = {}

    def _check_gold_on_top(self) -> None:
        """Refuse a reward list whose best attainable value (p_hat = p_gt, a well-formed text) beats the gold's."""
        if not self.examples:
            return
        ex = self.examples[0]
        best_text = self._gold_text(ex)
        best = rewards.combined_reward(self.reward_names, [best_text],
                                       **self._reward_kw(ex.p_gt[None], ex.p_gt[None]))[0]
        gold = rewards.gold_reward([best_text], format_weight=self.format_weight)[0]
        if best > gold + 1e-12:
            raise ValueError(f"inject_gold: the rewards {self.reward_names} can reach {best:.4g}, above the gold's "
                             f"{gold:.4g} (rewards.gold_reward with format_weight={self.format_weight}): the gold "
                             "would not rank first; use rewards [grpo] or [distribution]")

    def _gold_text(self, ex: Example) -> str:
        return self.processor.tokenizer.decode(ex.completion.ids, skip_special_tokens=True)

    def _reward_kw(self, p_gt: np.ndarray, p_hat: np.ndarray) -> dict[str, Any]:
        return {"p_gt": p_gt, "p_hat": p_hat, "classes": self.classes, "format_weight": self.format_weight,
                "fmt": self.fmt}

    def loss(self, model: Any, indices: list[int], step: int, micro: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 7 on the groups of micro-batch ``micro`` of ``step`` (sampled here at the first step of each
        ``num_iterations`` block, and buffered per micro-batch index for the block's later steps)."""
        anchor = step - step % self.num_iterations
        batch = self._buffer.get(micro)
        resampled = batch is None or batch.anchor != anchor or step == anchor
        if resampled:
            batch = self.sample(model, indices, step)
            batch.anchor = anchor
            if self.num_iterations > 1:
                self._buffer[micro] = batch
        scored = policy.score_completions(model, batch.prompts, batch.completions, batch.audio, self.pad_id,
                                          self.group, self.chunk,
                                          **{**self._answer(batch.answer_cols), **self._readout_cols(batch)})
        logps, mask = scored.logps, scored.mask
        if self.reference is not None:
            with torch.no_grad(), self.reference(model) as ref_model:
                ref_logps, _, _ = policy.completion_logprobs(ref_model, batch.prompts, batch.completions,
                                                             batch.audio, self.pad_id, self.group, self.chunk,
                                                             **self._answer(batch.answer_cols))
        else:
            ref_logps = logps.detach()
        loss, st = losses.grpo_loss(logps, batch.old_logps, ref_logps, batch.advantages.to(logps.device), mask,
                                    self.clip_eps, self.kl_coef)  # Eq. 7
        if self.readout_kl > 0:  # the reward's own gradient through p_hat (readout_grad)
            st["readout_kl"] = self._readout_loss(model, batch, scored.slot_ll)
            loss = loss + self.readout_kl * st["readout_kl"]
        return loss, {**batch.stats, **{k: float(torch.as_tensor(v).detach()) for k, v in st.items()},
                      "resampled": float(resampled),
                      "rollout_s": batch.stats["rollout_s"] if resampled else 0.0}

    def _members(self, chosen: list[Example], group: rollout.GroupRollout
                 ) -> tuple[list[list[int]], list[list[int]], list[int | None], list[torch.Tensor]]:
        """Prompt, completion, answer column (:func:`ambinb.policy.answer_col`) and tower output of every
        group member, group by group (the gold last)."""
        first = {ids[0] for ids in self.class_ids}
        prompts, completions, cols, audio = [], [], [], []
        for ex, trajectories in zip(chosen, group.trajectories):
            members = [(t.token_ids, policy.answer_col(t.token_ids, t.reasoning_len, first)) for t in trajectories]
            members += [(ex.completion.ids, ex.completion.slot)] if self.inject_gold else []
            prompts.extend([ex.encoded.prompt_ids] * len(members))
            completions.extend(ids for ids, _ in members)
            cols.extend(col for _, col in members)
            audio.extend([ex.encoded.audio] * len(members))
        return prompts, completions, cols, audio

    def _readout_cols(self, batch: RolloutBatch) -> dict[str, Any]:
        """The ``readout_cols``/``answer_ids`` keywords of :func:`ambinb.policy.score_completions`, or none."""
        if self.readout_kl <= 0:
            return {}
        return {"readout_cols": batch.readout.cols, "answer_ids": [ids[0] for ids in self.class_ids]}

    def _readout_loss(self, model: Any, batch: RolloutBatch, slot_ll: torch.Tensor | None) -> torch.Tensor:
        """KL(p_gt || p_hat) summed over the sampled members ``readout_grad`` names (``written``: those that
        wrote their own answer tag; ``all``: every one) over the number of sampled members, p_hat
        differentiable: read from the policy forward's states at each member's own slot (``slot_ll``), or by
        one read-out forward for the members without one there (the tag appended, class names of several
        tokens, whose p_hat the slot's first token does not give, or no ``slot_ll``)."""
        ro = batch.readout
        device = lm.device_of(model)
        use = [j for j, w in enumerate(ro.written) if w or self.readout_members == "all"]
        if not use:
            return torch.zeros((), dtype=torch.float32, device=device)
        rows = [ro.members[j] for j in use]
        ll = torch.zeros((len(use), len(self.classes)), dtype=torch.float32, device=device)
        have = [i for i, r in enumerate(rows) if ro.cols[r] is not None and slot_ll is not None]
        if have:
            ll = ll.index_put((torch.tensor(have, device=device),),
                              slot_ll[torch.tensor([rows[i] for i in have], device=device)])
        rest = sorted(set(range(len(use))) - set(have))
        if rest:
            audio = [batch.audio[rows[i]] for i in rest]
            extra = readout.class_log_likelihoods(model, [ro.prefixes[use[i]] for i in rest], audio,
                                                  self.class_ids, self.pad_id)
            ll = ll.index_put((torch.tensor(rest, device=device),), extra.to(device))
        p_gt = torch.as_tensor(ro.p_gt[use], dtype=torch.float32, device=device)
        return losses.kl_dist_loss(p_gt, losses.class_log_probs(ll)) * (len(use) / len(ro.members))

    def _readout(self, chosen: list[Example], group: rollout.GroupRollout, p_gt: np.ndarray) -> Readout:
        """The sampled members' read-out slots: the column right after the answer tag the model wrote, when a
        token follows it and every class name is one token; else None (read by a forward of the prefix)."""
        single = all(len(ids) == 1 for ids in self.class_ids)
        members, cols, prefixes, written = [], [], [], []
        for b, (ex, trajectories) in enumerate(zip(chosen, group.trajectories)):
            for j, t in enumerate(trajectories):
                members.append(b * self.group + j)
                slot = len(t.readout_ids)
                cols.append(slot if single and t.answer_found and slot < len(t.token_ids) else None)
                prefixes.append(ex.encoded.prompt_ids + t.readout_ids)
                written.append(bool(t.answer_found))
            cols.extend([None] * (self.group - len(trajectories)))  # the gold member
        return Readout(members, cols, prefixes, np.repeat(p_gt, self.k, axis=0), written)

    def _answer(self, answer_cols: list[int | None]) -> dict[str, Any]:
        """The ``answer_cols``/``answer_ids`` keywords of :func:`ambinb.policy.completion_logprobs`
        (``answer_action: any_class``), or none (``written``)."""
        if self.answer_action == "written":
            return {}
        return {"answer_cols": answer_cols, "answer_ids": [ids[0] for ids in self.class_ids]}

    def sample(self, model: Any, indices: list[int], step: int) -> RolloutBatch:
        """K scored trajectories per utterance (plus the gold member for GRPO_z), their advantages, and
        the old policy's log-probs when ``num_iterations`` > 1."""
        chosen = [self.examples[i] for i in indices]
        gen = policy.step_generator(model, self.seed, step, indices)
        group = rollout.rollout(model, self.processor, [ex.encoded for ex in chosen], self.classes, self.cfg,
                                k=self.k, generator=gen)
        b, k = len(chosen), self.k
        p_gt = np.stack([ex.p_gt for ex in chosen])
        p_hat = group.p_hat.double().numpy()
        p_hat = (p_hat / p_hat.sum(axis=-1, keepdims=True)).reshape(b * k, -1)
        texts = [t.text for t in group.flat()]
        sampled = np.asarray(rewards.combined_reward(self.reward_names, texts,
                                                     **self._reward_kw(np.repeat(p_gt, k, axis=0), p_hat)))
        sampled = sampled.reshape(b, k)
        prompts, completions, answer_cols, audio = self._members(chosen, group)
        gold = rewards.gold_reward([self._gold_text(ex) for ex in chosen], format_weight=self.format_weight) \
            if self.inject_gold else None
        advantages = member_advantages(sampled, gold, self.gold_in_baseline)
        old_logps = None
        if self.num_iterations > 1:
            with torch.no_grad():
                old_logps, _, _ = policy.completion_logprobs(model, prompts, completions, audio, self.pad_id,
                                                             self.group, self.chunk, **self._answer(answer_cols))
        js = policy.rollout_js(p_gt, group.p_hat)
        stats = {"reward_mean": float(sampled.mean()), "reward_std": float(sampled.std()),
                 "reward_group_std": float(sampled.std(axis=1, ddof=1).mean()) if k > 1 else 0.0,
                 "js": float(js.mean()), "format_rate": float(np.mean([t.format_ok for t in group.flat()])),
                 "p_max": float(group.p_hat.max(dim=-1).values.mean()),
                 "completion_len": float(np.mean([len(t.token_ids) for t in group.flat()])),
                 "rollout_s": float(sum(group.seconds.values()))}
        return RolloutBatch(step, prompts, completions, answer_cols, audio, advantages, old_logps, stats,
                            self._readout(chosen, group, p_gt))

    def summary(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """GRPO's own ``train`` entries of ``metrics.json``: rewards, JS and format at the start and the end."""
        out: dict[str, Any] = {}
        for key in ("reward_mean", "js", "format_rate", "kl", "clip_fraction", "completion_len"):
            series = learning.values(history, key)
            if series.size:
                out[f"{key}_first_fifth"], out[f"{key}_last_fifth"] = learning.fifths(series)
        return out
