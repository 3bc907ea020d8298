"""The run every training strategy makes: examples, training CoTs, train and evaluate, and the registry.

A notebook (03-05) calls :func:`run` with its resolved params. It looks the params' ``strategy`` up
in :data:`STRATEGIES` (name -> class following :class:`ambinb.engine.Strategy`) and makes
:func:`train_and_evaluate`:

1. load the corpus, split the fold (``eval_split: validation`` trains without the validation fold
   and evaluates on it, the test fold unseen), and gather the accepted curated CoTs of the training
   rows (:func:`training_cots`; the offline ``template`` curator fills in missing ones);
2. load the model, make it trainable (LoRA or full), and encode the training rows that have an
   accepted CoT into :class:`Example` s (:func:`build_examples`; tower outputs cached once);
3. build the strategy and train it with :func:`ambinb.engine.train` (resumable from the run folder's
   checkpoint);
4. save the adapter (or the full weights) and evaluate the fold's held-out rows
   (:func:`ambinb.evaluate.evaluate`) into ``run_folder(cfg)``, with a ``train`` summary in
   ``metrics.json`` (examples, training rows, steps, seconds, and the strategy's own ``summary``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ambinb import audio as audio_mod
from ambinb import engine, prompt
from ambinb.strategies.dpo import DPOStrategy
from ambinb.strategies.grpo import GRPOStrategy
from ambinb.strategies.sft import SFTStrategy


@dataclass
class Example:
    """One training utterance: its encoded prompt (ids + tower output), completion and target."""

    utt_id: str
    encoded: prompt.Encoded
    completion: prompt.CompletionIds
    p_gt: np.ndarray


STRATEGIES: dict[str, type[engine.Strategy]] = {
    "sft": SFTStrategy, "sft_ce": SFTStrategy, "sft_nocot": SFTStrategy,
    "dpo": DPOStrategy, "dpo_ce": DPOStrategy,
    "grpo": GRPOStrategy, "grpo_z": GRPOStrategy,
}


def strategy_class(name: str) -> type[engine.Strategy]:
    """The class that trains the strategy ``name`` (a file of ``params/strategies``).

    Raises:
        ValueError: naming the strategy and the trainable ones (``base`` and ``classical`` train nothing).
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy {name!r} has no training class: choose one of {sorted(STRATEGIES)}, or add "
                         "it to ambinb.run.STRATEGIES")
    return STRATEGIES[name]


def build_examples(train_df: pd.DataFrame, cots: dict[str, str], processor: Any, cache: audio_mod.AudioFeatureCache,
                   cfg: dict[str, Any], progress: bool = True) -> list[Example]:
    """Encode the training rows that have an accepted CoT (tower outputs cached once here).

    The completion is the CoT (or none, with ``use_cot: false``) and the majority class as the
    answer (:func:`ambinb.prompt.completion_ids`); the target is the row's ``p_*`` distribution.
    """
    from ambinb.progress import bar as progress_bar

    classes = [c[2:] for c in train_df.columns if c.startswith("p_")]
    rows = train_df[train_df["utt_id"].astype(str).isin(cots)]
    tok = processor.tokenizer
    use_cot = bool(cfg["use_cot"])
    out: list[Example] = []
    size = max(1, int(cfg["eval_batch_size"]))
    for start in progress_bar(range(0, len(rows), size), desc="encode", unit="batch", disable=not progress):
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
    ``template`` backend (resumable, nothing redone), and refuses to spend API calls silently.

    Raises:
        RuntimeError: utterances without a curated CoT while ``backend`` is not ``template``.
    """
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


def run(cfg: dict[str, Any], progress: bool = True, stop_at: int | None = None) -> dict[str, Any]:
    """Train ``cfg["strategy"]`` on the fold's training rows and evaluate it, into ``run_folder(cfg)``.

    Args:
        cfg: resolved params (:func:`ambinb.config.resolve`) of a strategy in :data:`STRATEGIES`.
        progress: show progress bars.
        stop_at: stop after this optimizer step as if killed (for tests).

    Returns:
        What :func:`train_and_evaluate` returns.
    """
    return train_and_evaluate(cfg, strategy_class(str(cfg["strategy"])), progress, stop_at)


def train_and_evaluate(cfg: dict[str, Any], strategy_cls: type[engine.Strategy], progress: bool = True,
                       stop_at: int | None = None) -> dict[str, Any]:
    """Train a ``strategy_cls.build(model, processor, examples, classes, cfg)`` on the fold's training
    rows that have an accepted CoT, save the adapter (or the full weights), and evaluate the fold's
    held-out rows into the run folder; process 0 alone saves and evaluates.

    Returns:
        ``{"metrics": metrics.json content (None when stopped early or not process 0), "history":
        training log, "n_train": examples, "n_train_rows": training rows, "run_dir": path}``.
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
    strategy = strategy_cls.build(model, processor, examples, evaluate.classes_of(train_df), cfg)
    tc = engine.TrainConfig.from_cfg(cfg)
    history = engine.train(model, strategy, tc, out, accelerator, resume=bool(cfg["resume"]),
                           progress=progress and accelerator.is_main_process, stop_at=stop_at)
    info = {"n_train": len(examples), "n_train_rows": len(train_df), "history": history, "run_dir": str(out)}
    stopped = stop_at is not None and len(history) < tc.total_steps(len(examples))
    if stopped or not accelerator.is_main_process:
        return {**info, "metrics": None}
    model_mod.save_trained(model, processor, out / "adapter")
    model.eval()
    prior = results.prior_distribution(evaluate.p_of(train_df))
    train_seconds = time.time() - start
    train = {"examples": len(examples), "training_rows": len(train_df), "steps": len(history),
             "seconds": train_seconds, **strategy.summary(history)}
    metrics_ = evaluate.evaluate(model, processor, test_df, cfg, out, prior, cache=cache, progress=progress,
                                 extra={"train": train, "wall_time_s": train_seconds})
    metrics_["wall_time_s"] = time.time() - start
    results.write_json(out / results.METRICS_FILE, metrics_)
    return {**info, "metrics": metrics_}
