"""Supervised fine-tuning on the curated CoT with the distribution loss (Eq. 3), and the run it makes.

L_SFT = ce_weight * L_CE(completion tokens) + kl_weight * KL(p_gt || p_hat)      (Eq. 3, lambda = 1)

p_hat is read out at the answer slot of the teacher-forced gold completion: the softmax over the
class names' log-likelihoods right after the answer tag (PAPER.md "readout"). The three variants
are strategies in ``params/strategies``:

* ``sft``: CE on the think block, the answer tag and the closing tokens; at the answer slot the CE
  target is the annotators' distribution itself (``answer_ce: soft``: -sum_c p_gt(c) log p(name_c),
  counted as one token of the CE mean), so CE never pulls the slot towards one class, and the slot
  keeps its probability mass on the class names (the KL term alone, taken over the renormalised
  class names, leaves that mass free and the greedy answer drifts off the class list); plus KL.
* ``sft_ce``: CE on everything, the slot's target being the majority class (``answer_ce:
  majority``); no KL.
* ``sft_nocot``: no think block (the completion is ``<answer>class</answer>``); KL only.

All three train on the same utterances (the fold's training rows whose curated CoT passed
validation), so the comparison isolates the objective.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ambinb import audio as audio_mod
from ambinb import engine, losses, prompt, readout


@dataclass
class Example:
    """One training utterance: its encoded prompt (ids + tower output), completion and target."""

    utt_id: str
    encoded: prompt.Encoded
    completion: prompt.CompletionIds
    p_gt: np.ndarray


ANSWER_CE = ("soft", "majority", "none")


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


class SFTStrategy:
    """Teacher-forced CE on the completion plus KL at the answer slot, for :func:`ambinb.engine.train`."""

    def __init__(self, examples: list[Example], classes: list[str], tokenizer: Any, cfg: dict[str, Any]):
        self.examples = examples
        self.class_ids = prompt.class_ids(tokenizer, classes)
        self.single_token = all(len(ids) == 1 for ids in self.class_ids)
        self.pad_id = int(tokenizer.pad_token_id)
        self.ce_weight = float(cfg["ce_weight"])
        self.kl_weight = float(cfg["kl_weight"])
        self.answer_ce = str(cfg["answer_ce"])
        if self.answer_ce not in ANSWER_CE:
            raise ValueError(f"answer_ce={self.answer_ce!r}: choose one of {ANSWER_CE}")
        self.eps = float(cfg["eps"])

    def num_examples(self) -> int:
        return len(self.examples)

    def loss(self, model: Any, indices: list[int], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 3 on the examples ``indices``; stats ``ce``, ``kl`` and the batch's mean ``p_max``."""
        batch = [self.examples[i] for i in indices]
        rows = [ex.encoded.prompt_ids + ex.completion.ids for ex in batch]
        device = audio_mod.device_of(model)
        ids, attn = readout.right_pad(rows, self.pad_id, device)
        hidden, _ = audio_mod.lm_hidden(model, ids, attn, [ex.encoded.audio for ex in batch])

        # positions t-1 predict token t; gather only the completion positions that carry CE, and the slot
        ce_rows, ce_pos, ce_tgt, slot_pos = [], [], [], []
        for b, ex in enumerate(batch):
            start = len(ex.encoded.prompt_ids)
            for t, (tok, keep) in enumerate(zip(ex.completion.ids, completion_mask(ex.completion, self.answer_ce))):
                if keep:
                    ce_rows.append(b)
                    ce_pos.append(start + t - 1)
                    ce_tgt.append(tok)
            slot_pos.append(start + ex.completion.slot - 1)
        p_gt = torch.tensor(np.stack([ex.p_gt for ex in batch]), dtype=torch.float32, device=device)
        if self.single_token:
            slot_hidden = hidden[torch.arange(len(batch), device=device), torch.tensor(slot_pos, device=device)]
            logp = torch.log_softmax(audio_mod.head_logits(model, slot_hidden, float32=True), dim=-1)
            class_ll = logp[:, torch.tensor([ids[0] for ids in self.class_ids], device=device)]
        else:  # multi-token names: scored whole in a second batched forward over the slot prefixes
            prefixes = [ex.encoded.prompt_ids + ex.completion.ids[: ex.completion.slot] for ex in batch]
            class_ll = readout.class_log_likelihoods(model, prefixes, [ex.encoded.audio for ex in batch],
                                                     self.class_ids, self.pad_id)
        stats: dict[str, float] = {}
        total = torch.zeros((), device=device)
        if self.ce_weight > 0:
            h = hidden[torch.tensor(ce_rows, device=device), torch.tensor(ce_pos, device=device)]
            logits = audio_mod.head_logits(model, h, float32=True)
            target = torch.tensor(ce_tgt, device=device)
            token_nll = -losses.token_logprobs(logits[None], target[None])[0]
            nll_sum, count = token_nll.sum(), token_nll.numel()
            if self.answer_ce == "soft":  # the slot's target is p_gt itself, one token of the mean
                nll_sum = nll_sum - (p_gt * class_ll).sum()
                count += len(batch)
            ce = nll_sum / max(1, count)  # L_CE of Eq. 3, token mean
            total = total + self.ce_weight * ce
            stats["ce"] = float(ce.detach())
        log_p_hat = losses.class_log_probs(class_ll)
        kl = losses.kl_dist_loss(p_gt, log_p_hat, self.eps)  # Eq. 2, forward KL at the slot
        if self.kl_weight > 0:
            total = total + self.kl_weight * kl
        stats["kl"] = float(kl.detach())
        stats["p_max"] = float(log_p_hat.detach().exp().max(dim=-1).values.mean())
        return total, stats


def build_examples(train_df: pd.DataFrame, cots: dict[str, str], processor: Any, cache: audio_mod.AudioFeatureCache,
                   cfg: dict[str, Any], progress: bool = True) -> list[Example]:
    """Encode the training rows that have an accepted CoT (tower outputs cached once here)."""
    from tqdm.auto import tqdm

    classes = [c[2:] for c in train_df.columns if c.startswith("p_")]
    rows = train_df[train_df["utt_id"].astype(str).isin(cots)]
    tok = processor.tokenizer
    use_cot = bool(cfg["use_cot"])
    out: list[Example] = []
    size = max(1, int(cfg.get("eval_batch_size", 8)))
    for start in tqdm(range(0, len(rows), size), desc="encode", unit="batch", disable=not progress):
        chunk = rows.iloc[start: start + size]
        encoded = prompt.encode_rows(chunk, classes, processor, cache, cfg)
        for enc, (_, row) in zip(encoded, chunk.iterrows()):
            think = cots[enc.utt_id] if use_cot else ""
            completion = prompt.completion_ids(tok, think, str(row["consensus"]), cfg["prompt_preset"])
            p_gt = row[[f"p_{c}" for c in classes]].to_numpy(dtype=np.float64)
            out.append(Example(enc.utt_id, enc, completion, p_gt))
    return out


def training_cots(cfg: dict[str, Any], df: pd.DataFrame, train_df: pd.DataFrame) -> dict[str, str]:
    """Accepted CoTs of the fold's training utterances; curates the missing ones with the offline
    ``template`` backend (resumable, nothing redone), and refuses to spend API calls silently."""
    from ambinb import curation

    wanted = set(train_df["utt_id"].astype(str))
    store = curation.load_curated(curation.store_path(cfg), cfg["prompt_version"]) \
        if Path(curation.store_path(cfg)).exists() else pd.DataFrame(columns=["utt_id"])
    missing = wanted - set(store["utt_id"].astype(str))
    if missing:
        if cfg["backend"] != "template":
            raise RuntimeError(f"{len(missing)} training utterances of fold {cfg['fold']} have no curated CoT in "
                               f"{curation.store_path(cfg)}: run notebooks/02_curate_cot.ipynb first")
        curation.curate({**cfg, "curation_subset": "train"}, df=df, progress=False)
    return {u: c for u, c in curation.accepted_cots(cfg).items() if u in wanted}


def build_strategy(model: Any, processor: Any, examples: list[Example], classes: list[str],
                   cfg: dict[str, Any]) -> SFTStrategy:
    """The SFT strategy for :func:`train_and_evaluate`."""
    return SFTStrategy(examples, classes, processor.tokenizer, cfg)


def run(cfg: dict[str, Any], progress: bool = True, stop_at: int | None = None) -> dict[str, Any]:
    """Train ``cfg["strategy"]`` (sft, sft_ce, sft_nocot) on the fold's training rows and evaluate on its
    test rows, into ``run_folder(cfg)``; see :func:`train_and_evaluate`."""
    return train_and_evaluate(cfg, build_strategy, progress, stop_at)


def train_and_evaluate(cfg: dict[str, Any], build: Callable[..., engine.Strategy], progress: bool = True,
                       stop_at: int | None = None,
                       summarize: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """The run every training strategy makes (SFT, DPO, GRPO), for a strategy built by
    ``build(model, processor, examples, classes, cfg)``: train on the fold's training rows that have an
    accepted CoT, save the adapter (or the full weights), evaluate the fold's test rows into the run folder
    (``eval_split: validation``: train without the validation fold, evaluate on it; the test fold unseen).

    ``metrics.json`` gets a ``train`` entry (examples, training rows, steps, seconds, and
    ``summarize(history)``).

    Returns:
        ``{"metrics": metrics.json content (None when stopped early), "history": training log,
        "n_train": examples, "n_train_rows": training rows, "run_dir": path}``.
    """
    from ambinb import evaluate, labels, results
    from ambinb import model as model_mod
    from ambinb.paths import run_folder

    start = time.time()
    torch.manual_seed(int(cfg["seed"]))
    out = run_folder(cfg)
    accelerator = engine.make_accelerator(cfg, out)
    cfg = engine.place(cfg, accelerator)  # under several processes, each loads onto its own device
    with accelerator.main_process_first():  # the corpus, the CoT store and the tiny model are built once
        df = labels.load_dataset(cfg)
        train_df, test_df = labels.split_for_run(df, cfg)
        cots = training_cots(cfg, df, train_df)
        model, processor = model_mod.load_model(cfg)
    model = model_mod.prepare_trainable(model, cfg)
    cache = evaluate.feature_cache(model, processor, cfg)
    examples = build_examples(train_df, cots, processor, cache, cfg, progress)
    classes = evaluate.classes_of(train_df)
    strategy = build(model, processor, examples, classes, cfg)
    tc = engine.TrainConfig.from_cfg(cfg)
    history = engine.train(model, strategy, tc, out, accelerator, resume=bool(cfg["resume"]),
                           progress=progress and accelerator.is_main_process, stop_at=stop_at)
    info = {"n_train": len(examples), "n_train_rows": len(train_df), "history": history, "run_dir": str(out)}
    stopped = stop_at is not None and len(history) < tc.total_steps(len(examples))
    if stopped or not accelerator.is_main_process:  # process 0 alone saves and evaluates
        return {**info, "metrics": None}
    model_mod.save_trained(model, processor, out / "adapter")
    model.eval()
    prior = results.prior_distribution(evaluate.p_of(train_df))
    train_seconds = time.time() - start
    train = {"examples": len(examples), "training_rows": len(train_df), "steps": len(history),
             "seconds": train_seconds, **(summarize(history) if summarize else {})}
    metrics_ = evaluate.evaluate(model, processor, test_df, cfg, out, prior, cache=cache, progress=progress,
                                 extra={"train": train, "wall_time_s": train_seconds})
    metrics_["wall_time_s"] = time.time() - start
    results.write_json(out / results.METRICS_FILE, metrics_)
    return {**info, "metrics": metrics_}

