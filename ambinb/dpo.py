"""On-policy DPO with JS-picked negatives (Eq. 4-5), and the run it makes.

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

   The CE is SFT's (:class:`ambinb.sft.SFTStrategy`): token mean over the completion, the answer
   slot's target chosen by ``answer_ce`` (``soft``: p_gt itself; ``majority``: the class token).

The reference of Eq. 5 is the starting model: with LoRA, the same model under peft's
``disable_adapter()`` (no second copy of the weights); with a full fine-tune (``lora: false``), and
only then, one frozen copy of the starting weights (:class:`Reference`). Every forward (rollout,
policy, reference) goes through :func:`ambinb.audio.lm_hidden` with the utterance's cached tower
output. A micro-batch without any pair returns a zero loss that still reaches every trainable
parameter (zero gradients, so several processes stay in step), with ``pairs = 0`` and
``no_pair = 1`` in its stats, and NaN for the pair statistics.

Logged per step (besides ``loss``): ``pairs``, ``neg_js`` (mean JS of the negatives), ``rollout_js``
(mean JS of all rollouts), ``rollout_format`` (their format pass rate), ``rollout_s`` (seconds spent
sampling and reading them out), ``margin`` and
``accuracy`` of the implicit reward (:func:`ambinb.losses.dpo_metrics`), ``dpo``, ``kl``, ``ce``.

The helpers at the end (:func:`completion_logprobs`, :class:`Reference`, :func:`step_generator`,
:func:`ambinb.sft.train_and_evaluate`) are shared with :mod:`ambinb.grpo`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from ambinb import audio as audio_mod
from ambinb import engine, losses, metrics, prompt, readout, rollout, sft

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


def rollout_js(p_gt: np.ndarray, p_hat: torch.Tensor) -> np.ndarray:
    """JS (log 2) of each rollout's p_hat (B, R, C) to its utterance's p_gt (B, C); returns (B, R)."""
    b, r, c = p_hat.shape
    q = p_hat.detach().double().cpu().numpy().reshape(b * r, c)
    q = q / q.sum(axis=1, keepdims=True)
    return metrics.js(np.repeat(np.asarray(p_gt, dtype=np.float64), r, axis=0), q).reshape(b, r)


class DPOStrategy:
    """On-policy DPO (Eq. 4-5) for :func:`ambinb.engine.train`.

    Params used: ``beta``, ``tau``, ``dpo_rollouts`` (R), ``dpo_kl_weight`` (lambda1),
    ``dpo_ce_weight`` (lambda2), ``answer_ce``, ``eps``, ``seed`` and the rollout keys
    (``max_new_tokens``, ``temperature``, ``top_p``, ``prompt_preset``, ``readout_batch_size``).
    """

    def __init__(self, model: Any, processor: Any, examples: list[sft.Example], classes: list[str],
                 cfg: dict[str, Any]):
        self.examples = examples
        self.processor = processor
        self.classes = list(classes)
        self.cfg = cfg
        self.class_ids = prompt.class_ids(processor.tokenizer, self.classes)
        self.single_token = all(len(ids) == 1 for ids in self.class_ids)
        self.pad_id = int(processor.tokenizer.pad_token_id)
        self.beta = float(cfg["beta"])
        self.tau = float(cfg["tau"])
        self.r = int(cfg["dpo_rollouts"])
        self.kl_weight = float(cfg["dpo_kl_weight"])
        self.ce_weight = float(cfg["dpo_ce_weight"])
        self.answer_ce = str(cfg["answer_ce"])
        if self.answer_ce not in sft.ANSWER_CE:
            raise ValueError(f"answer_ce={self.answer_ce!r}: choose one of {sft.ANSWER_CE}")
        if self.r < 1:
            raise ValueError(f"dpo_rollouts={self.r}: need at least one rollout per utterance")
        self.eps = float(cfg["eps"])
        self.seed = int(cfg["seed"])
        self.reference = Reference(model)

    def num_examples(self) -> int:
        return len(self.examples)

    def loss(self, model: Any, indices: list[int], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 4 on the micro-batch ``indices`` (rollouts sampled here, from the current policy)."""
        batch = [self.examples[i] for i in indices]
        gen = step_generator(model, self.seed, step, indices)
        group = rollout.rollout(model, self.processor, [ex.encoded for ex in batch], self.classes, self.cfg,
                                k=self.r, generator=gen)
        p_gt_all = np.stack([ex.p_gt for ex in batch])
        js = rollout_js(p_gt_all, group.p_hat)
        pairs = form_pairs(js, self.tau)
        stats = {"pairs": float(len(pairs)), "rollout_js": float(js.mean()),
                 "rollout_format": float(np.mean([t.format_ok for t in group.flat()])),
                 "rollout_s": float(sum(group.seconds.values()))}
        if not pairs:
            return zero_loss(model), {**stats, "no_pair": 1.0, "neg_js": NAN, "margin": NAN, "accuracy": NAN,
                                      "dpo": NAN, "kl": NAN, "ce": NAN}
        chosen = [batch[b] for b, _ in pairs]
        rejected = [group.trajectories[b][j].token_ids for b, j in pairs]
        prompts = [ex.encoded.prompt_ids for ex in chosen] * 2
        completions = [ex.completion.ids for ex in chosen] + rejected
        audio = [ex.encoded.audio for ex in chosen] * 2
        n = len(pairs)
        logps, mask, hidden = completion_logprobs(model, prompts, completions, audio, self.pad_id)
        seq = losses.sequence_logprob(logps, mask)
        with torch.no_grad(), self.reference(model) as ref_model:
            ref_logps, _, _ = completion_logprobs(ref_model, prompts, completions, audio, self.pad_id)
            ref_seq = losses.sequence_logprob(ref_logps, mask)
        per_pair, chosen_r, rejected_r = losses.dpo_loss(seq[:n], seq[n:], ref_seq[:n], ref_seq[n:], self.beta)
        dpo = per_pair.mean()  # Eq. 5
        device = logps.device
        p_gt = torch.tensor(np.stack([ex.p_gt for ex in chosen]), dtype=torch.float32, device=device)
        class_ll = self._slot_class_ll(model, chosen, hidden[:n])
        log_p_hat = losses.class_log_probs(class_ll)
        kl = losses.kl_dist_loss(p_gt, log_p_hat, self.eps)  # Eq. 2 at the positive's slot
        ce = self._ce(chosen, logps[:n], class_ll, p_gt)
        total = dpo + self.kl_weight * kl + self.ce_weight * ce  # Eq. 4
        stats.update({"no_pair": 0.0, "neg_js": float(np.mean([js[b, j] for b, j in pairs])),
                      **losses.dpo_metrics(chosen_r, rejected_r), "dpo": float(dpo.detach()),
                      "kl": float(kl.detach()), "ce": float(ce.detach())})
        return total, stats

    def _slot_class_ll(self, model: Any, chosen: list[sft.Example], hidden: torch.Tensor) -> torch.Tensor:
        """(P, C) class-name log-likelihoods at each positive's answer slot (as SFT reads them)."""
        if self.single_token:
            pos = torch.tensor([len(ex.encoded.prompt_ids) + ex.completion.slot - 1 for ex in chosen],
                               device=hidden.device)
            h = hidden[torch.arange(len(chosen), device=hidden.device), pos]
            logp = torch.log_softmax(audio_mod.head_logits(model, h, float32=True), dim=-1)
            return logp[:, torch.tensor([ids[0] for ids in self.class_ids], device=hidden.device)]
        prefixes = [ex.encoded.prompt_ids + ex.completion.ids[: ex.completion.slot] for ex in chosen]
        return readout.class_log_likelihoods(model, prefixes, [ex.encoded.audio for ex in chosen], self.class_ids,
                                             self.pad_id)

    def _ce(self, chosen: list[sft.Example], logps: torch.Tensor, class_ll: torch.Tensor,
            p_gt: torch.Tensor) -> torch.Tensor:
        """SFT's L_CE on the positives: token mean, the answer slot by ``answer_ce`` (Eq. 4's CE term)."""
        width = logps.shape[1]
        mask = torch.tensor([sft.completion_mask(ex.completion, self.answer_ce) + [0] * (width - len(ex.completion.ids))
                             for ex in chosen], dtype=logps.dtype, device=logps.device)
        nll_sum, count = -(logps * mask).sum(), float(mask.sum())
        if self.answer_ce == "soft":
            nll_sum = nll_sum - (p_gt * class_ll).sum()
            count += len(chosen)
        return nll_sum / max(1.0, count)


def build_strategy(model: Any, processor: Any, examples: list[sft.Example], classes: list[str],
                   cfg: dict[str, Any]) -> DPOStrategy:
    return DPOStrategy(model, processor, examples, classes, cfg)


def run(cfg: dict[str, Any], progress: bool = True, stop_at: int | None = None) -> dict[str, Any]:
    """Train ``cfg["strategy"]`` (dpo, dpo_ce) on the fold's training rows and evaluate on its test rows,
    into ``run_dir(dataset, strategy, fold, run_root)``; returns what :func:`ambinb.sft.run` returns."""
    return sft.train_and_evaluate(cfg, build_strategy, progress, stop_at, summarize_dpo)


def summarize_dpo(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``train`` entries of ``metrics.json`` that are DPO's own: pairs formed, and how the pairs went."""
    pairs = [row.get("pairs", 0.0) for row in history]
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


# --- shared with GRPO ----------------------------------------------------------------------

def device_of(model: Any) -> torch.device:
    return audio_mod.device_of(model)


def completion_logprobs(model: Any, prompts: list[list[int]], completions: list[list[int]],
                        audio: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probability of every completion token given its prompt (with audio) and the tokens before it.

    One right-padded forward of ``prompt_i + completion_i`` through :func:`ambinb.audio.lm_hidden`,
    the head applied (in float32) only where a completion token is predicted.

    Args:
        prompts: N prompt id lists (``<|AUDIO|>`` expanded).
        completions: N completion id lists (at least one token each).
        audio: the tower output of each row's utterance.

    Returns:
        ``(logps (N, W), mask (N, W), hidden (N, T, H))``: W the longest completion, ``logps[i, t]``
        the log-prob of ``completions[i][t]`` (0 where ``mask`` is 0), and the last hidden states
        of the whole rows (for a readout at a slot).
    """
    if not (len(prompts) == len(completions) == len(audio)):
        raise ValueError(f"{len(prompts)} prompts, {len(completions)} completions and {len(audio)} audio tensors")
    if any(not c for c in completions):
        raise ValueError("completion_logprobs: an empty completion")
    device = device_of(model)
    ids, attn = readout.right_pad([p + c for p, c in zip(prompts, completions)], pad_id, device)
    hidden, _ = audio_mod.lm_hidden(model, ids, attn, audio)
    rows, pos, cols, targets = [], [], [], []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        rows.extend([i] * len(c))
        pos.extend(range(len(p) - 1, len(p) - 1 + len(c)))  # position t-1 predicts token t
        cols.extend(range(len(c)))
        targets.extend(c)
    rows_t, cols_t = torch.tensor(rows, device=device), torch.tensor(cols, device=device)
    logits = audio_mod.head_logits(model, hidden[rows_t, torch.tensor(pos, device=device)], float32=True)
    flat = losses.token_logprobs(logits[None], torch.tensor(targets, device=device)[None])[0]
    width = max(len(c) for c in completions)
    logps = torch.zeros((len(completions), width), dtype=flat.dtype, device=device).index_put((rows_t, cols_t), flat)
    mask = torch.zeros((len(completions), width), dtype=torch.float32, device=device)
    mask[rows_t, cols_t] = 1.0
    return logps, mask, hidden


class Reference:
    """The reference policy pi_ref of Eq. 5 and Eq. 7: the model as it was before training.

    With a peft (LoRA) model, :meth:`__call__` is peft's ``disable_adapter()`` context on the very
    model being trained: no second copy of the weights. With a full fine-tune it is ONE frozen deep
    copy of the starting weights, taken when the strategy is built (before any step, and before a
    resumed run loads its checkpoint); this costs a second copy of the model and is only for the full
    fine-tune (``lora: false``).

    Usage: ``with reference(model) as ref_model: ...`` (gradients stay off inside, the caller's
    ``torch.no_grad`` is still advisable).
    """

    def __init__(self, model: Any):
        self.uses_adapter = hasattr(model, "disable_adapter") and hasattr(model, "peft_config")
        self.copy = None
        if not self.uses_adapter:
            self.copy = copy.deepcopy(audio_mod.base_model(model)).eval()
            self.copy.requires_grad_(False)

    @contextmanager
    def __call__(self, model: Any) -> Iterator[Any]:
        if self.uses_adapter:
            with model.disable_adapter():
                yield model
        else:
            yield self.copy


def zero_loss(model: Any) -> torch.Tensor:
    """0 with a graph to every trainable parameter (their gradients become 0, not None)."""
    params = [p for _, p in engine.trainable_parameters(model)]
    return sum(p.sum() for p in params) * 0.0


def step_generator(model: Any, seed: int, step: int, indices: list[int]) -> torch.Generator:
    """The rollout sampler of one micro-batch, seeded from (seed, step, indices): a resumed run
    samples exactly what an uninterrupted one did."""
    state = np.random.SeedSequence([int(seed), int(step), *[int(i) for i in indices]]).generate_state(1)[0]
    gen = torch.Generator(device=device_of(model))
    gen.manual_seed(int(state))
    return gen
