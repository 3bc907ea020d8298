"""The predicted distribution p_hat, read out at the answer slot.

For a prefix ``x`` = (prompt with audio, CoT, answer tag) and class names ``c_1..c_C`` (each
tokenised on its own, :func:`ambinb.prompt.class_ids`)::

    s_j   = sum_t log p(c_j[t] | x, c_j[:t])          (the whole name, float32)
    p_hat = softmax(s_1, ..., s_C)

When every name is a single token this is exactly the paper's softmax over the class tokens'
logits at the slot, and one row per prefix suffices; otherwise each (prefix, name) pair is one
row, never the first sub-token alone. Either way all rows go through ONE batched forward (or one
per ``batch_size`` chunk of utterances), right-padded so positions need no correction, with the
head applied only where a score is needed. The result is differentiable, so the same function
serves evaluation, the KL loss of SFT/DPO (Eq. 3-4) and the GRPO reward (Eq. 6). Any class list
works: a model trained on CREMA-D's six classes can be read out over IEMOCAP's four.

Worked example (single-token names, two classes): slot logits (anger 2.0, sadness 0.0, others
anything) -> log-softmax over the vocabulary then softmax over the two names gives
p_hat = (e^2, e^0) / (e^2 + e^0) = (0.881, 0.119): the vocabulary normaliser cancels.
"""

from __future__ import annotations

from typing import Any

import torch

from ambinb import lm


def _hidden(model: Any, rows: list[list[int]], audio: list[torch.Tensor], pad_id: int) -> torch.Tensor:
    """Last hidden states (N, T, hidden) of right-padded ``rows``; ``audio[i]`` feeds row i's audio positions."""
    ids, _ = lm.right_pad(rows, pad_id, lm.device_of(model))
    has_audio = (ids == lm.audio_token_id(model)).any(dim=1).tolist()
    row_audio = [a for a, h in zip(audio, has_audio) if h]
    hidden, _ = lm.hidden_states(model, ids, None, row_audio or None)  # causal alone: see lm.right_pad
    return hidden


def class_log_likelihoods(model: Any, prefixes: list[list[int]], audio: list[torch.Tensor],
                          class_token_ids: list[list[int]], pad_id: int, batch_size: int = 0) -> torch.Tensor:
    """Each class name's whole-sequence log-likelihood after each prefix, shape (N, C), float32.

    Args:
        prefixes: N id lists, each ending right after the answer tag (the readout slot).
        audio: the tower output of each prefix's utterance (rows of one utterance may share one).
        class_token_ids: the C names' ids (:func:`ambinb.prompt.class_ids`).
        pad_id: the tokenizer's pad id.
        batch_size: at most this many prefixes per forward (0 = all in one).
    """
    if len(prefixes) != len(audio):
        raise ValueError(f"{len(prefixes)} prefixes but {len(audio)} audio feature tensors")
    if not prefixes:
        return torch.zeros((0, len(class_token_ids)), dtype=torch.float32)
    step = batch_size if batch_size and batch_size > 0 else len(prefixes)
    parts = [_class_ll_chunk(model, prefixes[i: i + step], audio[i: i + step], class_token_ids, pad_id)
             for i in range(0, len(prefixes), step)]
    return torch.cat(parts, dim=0)


def _class_ll_chunk(model: Any, prefixes: list[list[int]], audio: list[torch.Tensor],
                    class_token_ids: list[list[int]], pad_id: int) -> torch.Tensor:
    n, c = len(prefixes), len(class_token_ids)
    if all(len(ids) == 1 for ids in class_token_ids):
        hidden = _hidden(model, prefixes, audio, pad_id)
        last = torch.tensor([len(p) - 1 for p in prefixes], device=hidden.device)
        logits = lm.head_logits(model, hidden[torch.arange(n, device=hidden.device), last], float32=True)
        logp = torch.log_softmax(logits, dim=-1)
        return logp[:, torch.tensor([ids[0] for ids in class_token_ids], device=logp.device)]
    rows = [p + ids for p in prefixes for ids in class_token_ids]
    row_audio = [a for a in audio for _ in class_token_ids]
    hidden = _hidden(model, rows, row_audio, pad_id)
    row_idx, pos_idx, targets, owner = [], [], [], []
    for r, (p, ids) in enumerate((p, ids) for p in prefixes for ids in class_token_ids):
        for t, tok in enumerate(ids):
            row_idx.append(r)
            pos_idx.append(len(p) - 1 + t)
            targets.append(tok)
            owner.append(r)
    dev = hidden.device
    logits = lm.head_logits(model, hidden[torch.tensor(row_idx, device=dev), torch.tensor(pos_idx, device=dev)],
                                   float32=True)
    token_logp = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(targets, device=dev)[:, None])[:, 0]
    sums = torch.zeros(n * c, dtype=torch.float32, device=dev).index_add(0, torch.tensor(owner, device=dev), token_logp)
    return sums.view(n, c)


def read_out(model: Any, prefixes: list[list[int]], audio: list[torch.Tensor], class_token_ids: list[list[int]],
             pad_id: int, batch_size: int = 0) -> torch.Tensor:
    """p_hat (N, C), float32, differentiable: softmax over :func:`class_log_likelihoods`."""
    return torch.softmax(class_log_likelihoods(model, prefixes, audio, class_token_ids, pad_id, batch_size), dim=-1)


def slot_distribution(slot_logits: torch.Tensor, class_token_ids: list[list[int]]) -> torch.Tensor:
    """p_hat from logits already computed at the slot (N, V), for single-token names only.

    Lets a training forward that already holds the slot's logits (teacher-forced CE) get p_hat
    without a second forward. Equal to :func:`read_out` on the same prefixes.

    Raises:
        ValueError: when a class name has more than one token (use :func:`read_out`).
    """
    if any(len(ids) != 1 for ids in class_token_ids):
        raise ValueError("slot_distribution needs single-token class names; some names are split: use read_out")
    logp = torch.log_softmax(slot_logits.float(), dim=-1)
    scores = logp[:, torch.tensor([ids[0] for ids in class_token_ids], device=logp.device)]
    return torch.softmax(scores, dim=-1)
