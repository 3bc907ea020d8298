"""The policy's side of training: completion log-probs, the reference, the slot read-out, the soft CE.

Every strategy (:mod:`ambinb.strategies`) scores the model it trains through these functions:

* :func:`completion_logprobs`: the log-prob of every completion token given its prompt (with the
  utterance's cached tower output), one right-padded forward, or for rows in groups that share a
  prompt (GRPO's K samples) one prefill per prompt that the group continues; SFT's CE (Eq. 3), DPO's
  sequence log-probs (Eq. 5) and GRPO's token ratios (Eq. 7) are all built from it;
  :func:`score_completions` is the same forward that also returns the class names' log-probs at given
  slots, differentiable (GRPO's ``readout_grad``).
* :class:`Reference`: pi_ref of Eq. 5 and Eq. 7, the model before training (the LoRA adapter
  switched off, or one frozen copy for a full fine-tune).
* :func:`slot_class_log_likelihoods`: the class names' log-likelihoods at a teacher-forced
  completion's answer slot, from the hidden states of that forward (the KL term of Eq. 3-4).
* :func:`completion_mask` and :func:`completion_ce`: the token CE of Eq. 3-4 (``L_CE``), with the answer
  slot's target chosen by ``answer_ce`` (``soft``: p_gt itself, counted as one token of the mean).
* :func:`step_generator` (the seeded rollout sampler of one micro-batch), :func:`rollout_js` (JS of
  each rollout's read-out to p_gt) and :func:`zero_loss` (a loss that reaches every parameter).

Worked example of :func:`completion_ce` (``soft``, one utterance, two classes): token NLLs summing to
3.0 over 5 tokens, class log-likelihoods (-0.1, -2.3) at the slot and p_gt = (0.5, 0.5) ->
(3.0 + 0.5 * 0.1 + 0.5 * 2.3) / (5 + 1) = 0.7.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np
import torch

from ambinb import config, engine, lm, metrics, prompt, readout
from ambinb.examples import Example

ANSWER_CE = config.RULES["answer_ce"].allowed()  # soft, majority, none
ANSWER_ACTIONS = config.RULES["answer_action"].allowed()  # any_class, written


def check_answer_ce(value: str) -> str:
    """``value`` if it is one of :data:`ANSWER_CE`.

    Raises:
        ValueError: naming the key and the choices.
    """
    if value not in ANSWER_CE:
        raise ValueError(f"answer_ce={value!r}: choose one of {ANSWER_CE}")
    return value


def answer_col(ids: list[int], slot: int, first_ids: set[int]) -> int | None:
    """The column of a completion's answer slot when a class name stands there (its first token is one of
    ``first_ids``), else None (no answer tag, or something else written after it).

    Example: ids ``[.., <answer>, anger, </answer>]`` with the slot at 7 and anger's id in ``first_ids`` -> 7.
    """
    return slot if slot < len(ids) and ids[slot] in first_ids else None


def completion_mask(completion: prompt.CompletionIds, answer_ce: str) -> list[int]:
    """1 for completion tokens that carry token CE; the class-name tokens only with ``answer_ce="majority"``.

    Example: ids ``[<think>.., </think>, <answer>, anger, </answer>, <|im_end|>]`` with slot 3 and
    answer_len 1 -> ``[1, 1, 1, 0, 1, 1]`` (``answer_ce="soft"``: the slot's CE is the soft term).
    """
    mask = [1] * len(completion.ids)
    if answer_ce != "majority":
        for t in range(completion.slot, completion.slot + completion.answer_len):
            mask[t] = 0
    return mask


def completion_ce(nll_sum: torch.Tensor, count: int | float, class_ll: torch.Tensor, p_gt: torch.Tensor,
              answer_ce: str) -> torch.Tensor:
    """L_CE of Eq. 3-4: the token NLL mean over the completion, with the soft answer-slot term.

    With ``answer_ce="soft"`` the slot's target is the annotators' distribution,
    ``-sum_c p_gt(c) log p(name_c)`` per utterance, counted as one token of the mean; otherwise the
    slot is either in ``nll_sum`` already (``majority``) or not trained by CE (``none``).

    Args:
        nll_sum: the summed NLL of the completion tokens that :func:`completion_mask` keeps.
        count: how many tokens ``nll_sum`` sums.
        class_ll: (B, C) class-name log-likelihoods at each utterance's answer slot.
        p_gt: (B, C) gold distributions.
        answer_ce: one of :data:`ANSWER_CE`.
    """
    if answer_ce == "soft":
        nll_sum = nll_sum - (p_gt * class_ll).sum()
        count += len(p_gt)
    return nll_sum / max(1, count)


def slot_class_log_likelihoods(model: Any, hidden: torch.Tensor, examples: Sequence[Example],
                               class_ids: list[list[int]], pad_id: int) -> torch.Tensor:
    """(B, C) class-name log-likelihoods at each example's answer slot, float32, differentiable.

    Row ``b`` of ``hidden`` must be the last hidden states of ``prompt_ids + completion.ids`` of
    ``examples[b]`` (right-padded, teacher-forced). Single-token names are read from those states
    (position ``len(prompt) + slot - 1`` predicts the name); multi-token names are scored whole by
    :func:`ambinb.readout.class_log_likelihoods` in one more batched forward over the slot prefixes.
    """
    if all(len(ids) == 1 for ids in class_ids):
        device = hidden.device
        pos = torch.tensor([len(ex.encoded.prompt_ids) + ex.completion.slot - 1 for ex in examples], device=device)
        h = hidden[torch.arange(len(examples), device=device), pos]
        logp = torch.log_softmax(lm.head_logits(model, h, float32=True), dim=-1)
        return logp[:, torch.tensor([ids[0] for ids in class_ids], device=device)]
    prefixes = [ex.encoded.prompt_ids + ex.completion.ids[: ex.completion.slot] for ex in examples]
    return readout.class_log_likelihoods(model, prefixes, [ex.encoded.audio for ex in examples], class_ids, pad_id)


class Scored(NamedTuple):
    """What :func:`score_completions` returns (see there)."""

    logps: torch.Tensor              # (N, W) log-prob of each scored completion token, 0 elsewhere
    mask: torch.Tensor               # (N, W) 1 on the scored tokens
    hidden: torch.Tensor | None      # (N, T, H) last hidden states of the whole rows, or None (grouped forward)
    slot_ll: torch.Tensor | None     # (N, C) class names' first-token log-probs at ``readout_cols``, or None


def completion_logprobs(model: Any, prompts: list[list[int]], completions: list[list[int]],
                        audio: list[torch.Tensor], pad_id: int, group_size: int = 1, chunk: int = 0,
                        scored: list[list[int]] | None = None, answer_cols: list[int | None] | None = None,
                        answer_ids: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(logps, mask, hidden)`` of :func:`score_completions` (same arguments, no read-out)."""
    out = score_completions(model, prompts, completions, audio, pad_id, group_size, chunk, scored, answer_cols,
                            answer_ids)
    return out.logps, out.mask, out.hidden


def score_completions(model: Any, prompts: list[list[int]], completions: list[list[int]], audio: list[torch.Tensor],
                      pad_id: int, group_size: int = 1, chunk: int = 0, scored: list[list[int]] | None = None,
                      answer_cols: list[int | None] | None = None, answer_ids: list[int] | None = None,
                      readout_cols: list[int | None] | None = None) -> Scored:
    """Log-probability of every completion token given its prompt (with audio) and the tokens before it:
    the one per-token log-prob path of every strategy (SFT's CE, DPO's Eq. 5, GRPO's Eq. 7).

    The forward is :func:`ambinb.lm.completion_states`: one right-padded forward of ``prompt_i +
    completion_i``, or with ``group_size`` G > 1, rows in groups of G that share one prompt and its
    audio (GRPO's K samples of an utterance), the B prompts run once and continued by each group's rows
    (same numbers; for GRPO's groups of 9 on the toy about 40 % fewer tokens per forward). The head is
    applied (in float32) only where a scored completion token is predicted, ``chunk`` positions at a
    time when given (:func:`ambinb.lm.token_logprobs`; the ``logprob_chunk`` param).

    Args:
        prompts: N prompt id lists (``<|AUDIO|>`` expanded); with ``group_size`` G, equal within each group.
        completions: N completion id lists (at least one token each).
        audio: the tower output of each row's utterance.
        group_size: G, the rows per shared prompt (N a multiple of G).
        chunk: completion positions per head application (0 = all at once).
        scored: per completion, 1 for the tokens that need a log-prob (SFT's :func:`completion_mask`);
            None scores every token. The head runs at the scored positions only.
        answer_cols: per completion, the column of the class name at its answer slot (:func:`answer_col`)
            or None; there the log-prob is that of writing *any* of ``answer_ids``,
            ``log sum_c p(c)`` (``answer_action: any_class``), not of the written name.
        answer_ids: the class names' first token ids (for ``answer_cols`` and ``readout_cols``).
        readout_cols: per completion, the column right after its answer tag (a scored token), or None:
            ``slot_ll`` then holds the log-probs of ``answer_ids`` at the state that predicts that column,
            differentiable (the read-out of single-token class names; GRPO's ``readout_grad``).

    Returns:
        :class:`Scored`: W the longest completion, ``logps[i, t]`` the log-prob of ``completions[i][t]``
        where ``mask`` is 1 (a scored token) and 0 elsewhere; ``hidden`` the last hidden states of the
        whole rows (N, T, H) for a read-out at a slot, None from the grouped forward (no whole rows);
        ``slot_ll`` (N, C), zero in the rows without a ``readout_cols`` entry, or None when none was asked.
    """
    _check_rows(prompts, completions, audio, group_size)
    device = lm.device_of(model)
    rows, cols, targets = [], [], []
    for i, c in enumerate(completions):
        keep = range(len(c)) if scored is None else [t for t in range(len(c)) if scored[i][t]]
        rows.extend([i] * len(keep))
        cols.extend(keep)
        targets.extend(c[t] for t in keep)
    h, hidden = lm.completion_states(model, prompts, completions, audio, pad_id, rows, cols, group_size)
    flat = lm.token_logprobs(model, h, torch.tensor(targets, device=device), chunk)
    slot_ll = None
    if answer_cols is not None or readout_cols is not None:
        flat, slot_ll = _at_slots(model, h, flat, rows, cols, len(completions), answer_cols, readout_cols,
                                  answer_ids or [])
    rows_t, cols_t = torch.tensor(rows, device=device), torch.tensor(cols, device=device)
    width = max(len(c) for c in completions)
    logps = torch.zeros((len(completions), width), dtype=flat.dtype, device=device).index_put((rows_t, cols_t), flat)
    mask = torch.zeros((len(completions), width), dtype=torch.float32, device=device)
    mask[rows_t, cols_t] = 1.0
    return Scored(logps, mask, hidden, slot_ll)


def _at_slots(model: Any, h: torch.Tensor, flat: torch.Tensor, rows: list[int], cols: list[int], n: int,
              answer_cols: list[int | None] | None, readout_cols: list[int | None] | None, answer_ids: list[int]
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``flat`` with the log-prob at each row's answer column replaced by ``log sum_c p(c)`` over
    ``answer_ids``, and the (n, C) log-probs of ``answer_ids`` at the ``readout_cols`` (or None)."""
    want = dict(enumerate(answer_cols or []))
    read = dict(enumerate(readout_cols or []))
    is_answer = [want.get(i) == c for i, c in zip(rows, cols)]  # a None entry matches no column
    is_read = [read.get(i) == c for i, c in zip(rows, cols)]
    at = [j for j in range(len(rows)) if is_answer[j] or is_read[j]]
    slot_ll = torch.zeros((n, len(answer_ids)), dtype=torch.float32, device=flat.device) \
        if readout_cols is not None else None
    if not at:
        return flat, slot_ll
    logp = torch.log_softmax(lm.head_logits(model, h[torch.tensor(at, device=flat.device)], float32=True), dim=-1)
    ll = dict(zip(at, logp[:, torch.tensor(answer_ids, device=flat.device)]))
    answers = [j for j in at if is_answer[j]]
    if answers:
        mass = torch.logsumexp(torch.stack([ll[j] for j in answers]), dim=-1).to(flat.dtype)
        flat = flat.index_put((torch.tensor(answers, device=flat.device),), mass)
    reads = [j for j in at if is_read[j]]
    if slot_ll is not None and reads:
        owners = torch.tensor([rows[j] for j in reads], device=flat.device)
        slot_ll = slot_ll.index_put((owners,), torch.stack([ll[j] for j in reads]))
    return flat, slot_ll


def _check_rows(prompts: list[list[int]], completions: list[list[int]], audio: list[torch.Tensor],
                group_size: int) -> None:
    """Refuse rows :func:`completion_logprobs` cannot score, saying why."""
    if not (len(prompts) == len(completions) == len(audio)):
        raise ValueError(f"{len(prompts)} prompts, {len(completions)} completions and {len(audio)} audio tensors")
    if any(not c for c in completions):
        raise ValueError("completion_logprobs: an empty completion")
    if group_size < 1 or len(prompts) % group_size:
        raise ValueError(f"completion_logprobs: {len(prompts)} rows do not split into groups of {group_size}")
    if any(prompts[i] != prompts[i - i % group_size] for i in range(len(prompts))):
        raise ValueError(f"completion_logprobs: the prompts of a group of {group_size} rows differ")


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
            self.copy = copy.deepcopy(lm.base_model(model)).eval()
            self.copy.requires_grad_(False)

    @contextmanager
    def __call__(self, model: Any) -> Iterator[Any]:
        if self.uses_adapter:
            with model.disable_adapter():
                yield model
        else:
            yield self.copy


def rollout_js(p_gt: np.ndarray, p_hat: torch.Tensor) -> np.ndarray:
    """JS (log 2) of each rollout's p_hat (B, R, C) to its utterance's p_gt (B, C); returns (B, R)."""
    b, r, c = p_hat.shape
    q = p_hat.detach().double().cpu().numpy().reshape(b * r, c)
    q = q / q.sum(axis=1, keepdims=True)
    return metrics.js(np.repeat(np.asarray(p_gt, dtype=np.float64), r, axis=0), q).reshape(b, r)


def zero_loss(model: Any) -> torch.Tensor:
    """0 with a graph to every trainable parameter (their gradients become 0, not None)."""
    params = [p for _, p in engine.trainable_parameters(model)]
    return sum(p.sum() for p in params) * 0.0


def step_generator(model: Any, seed: int, step: int, indices: list[int]) -> torch.Generator:
    """The rollout sampler of one micro-batch, seeded from (seed, step, indices): a resumed run
    samples exactly what an uninterrupted one did."""
    state = np.random.SeedSequence([int(seed), int(step), *[int(i) for i in indices]]).generate_state(1)[0]
    gen = torch.Generator(device=lm.device_of(model))
    gen.manual_seed(int(state))
    return gen
