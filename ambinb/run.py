"""The run every training strategy makes: training CoTs, train, save and evaluate into the run folder.

A notebook (03-05) calls :func:`run` with its resolved params. It looks up the class that trains the
params' ``strategy`` (:func:`ambinb.strategies.strategy_class`: the class of the strategy's family)
and makes :func:`train_and_evaluate`:

1. load the corpus, split the fold (``eval_split: validation`` trains without the validation fold
   and evaluates on it, the test fold unseen), and gather the accepted curated CoTs of the training
   rows (:func:`training_cots`; the offline ``template`` curator fills in missing ones);
2. load the model, make it trainable (LoRA or full), and encode the training rows that have an
   accepted CoT into examples (:func:`ambinb.examples.build_examples`; tower outputs cached once);
3. build the strategy and train it with :func:`ambinb.engine.train` (resumable from the run folder's
   checkpoint);
4. save the adapter (or the full weights) and evaluate the fold's held-out rows
   (:func:`ambinb.evaluate.evaluate`) into ``run_folder(cfg)``, with a ``train`` summary in
   ``metrics.json`` (examples, training rows, steps, seconds, and the strategy's own ``summary``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ambinb import audio, curation, engine, evaluate, labels, results, runlock, strategies
from ambinb import model as model_mod
from ambinb.examples import build_examples
from ambinb.paths import init_run_folder, run_folder


def check_notebook(cfg: dict[str, Any], notebook: str) -> None:
    """Refuse to run ``cfg``'s strategy in a chapter that is not its ``runner``.

    Example: ``check_notebook(resolve(strategy="dpo_ce"), "03_sft")`` raises: ``dpo_ce`` extends ``dpo``,
    whose runner is ``04_dpo``.

    Raises:
        ValueError: naming the strategy, its runner and the notebook.
    """
    if cfg["runner"] != notebook:
        raise ValueError(f"strategy {cfg['strategy']!r} runs in {cfg['runner']!r} (its params' runner), not in "
                         f"{notebook}: open that notebook, or choose a strategy of this chapter")


def training_cots(cfg: dict[str, Any], df: pd.DataFrame, train_df: pd.DataFrame) -> dict[str, str]:
    """Accepted CoTs of the fold's training utterances; curates the missing ones with the offline
    ``template`` backend (resumable, nothing redone), and refuses to spend API calls silently.

    Raises:
        RuntimeError: utterances without a curated CoT while ``backend`` is not ``template``.
    """
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


def init_folder(cfg: dict[str, Any]) -> Path | None:
    """The ``adapter/`` of the run ``init_from`` names (:func:`ambinb.paths.init_run_folder`), or None.

    Raises:
        FileNotFoundError: that run has not finished (run it first; a sweep runs it first).
    """
    folder = init_run_folder(cfg)
    if folder is None:
        return None
    if not results.is_finished(folder) or not (folder / "adapter").exists():
        raise FileNotFoundError(f"init_from={cfg['init_from']!r}: {folder} holds no finished {cfg['init_from']} run "
                                f"with an adapter/; run {cfg['init_from']} for this fold and split first")
    return folder / "adapter"


def trainable_start(cfg: dict[str, Any], model: Any, source: Path | None) -> Any:
    """The policy before training: the loaded model, with the ``init_from`` run's weights (``source``,
    :func:`init_folder`) folded in when the reference is that starting point (``reference: init``), then made
    trainable (LoRA or full)."""
    if source is not None and cfg["reference"] == "init":
        model = model_mod.fold_in(model, source)
    return model_mod.prepare_trainable(model, cfg)


def run(cfg: dict[str, Any], progress: bool = True, stop_at: int | None = None) -> dict[str, Any]:
    """Train ``cfg["strategy"]`` on the fold's training rows and evaluate it, into ``run_folder(cfg)``.

    Args:
        cfg: resolved params (:func:`ambinb.config.resolve`) of a trainable strategy
            (:data:`ambinb.strategies.FAMILIES`).
        progress: show progress bars.
        stop_at: stop after this optimizer step as if killed (for tests).

    Returns:
        What :func:`train_and_evaluate` returns.

    Raises:
        RunningElsewhere: another process holds the run folder (:mod:`ambinb.runlock`).
    """
    with runlock.hold_run(run_folder(cfg)):  # one writer per run folder (a second raises RunningElsewhere)
        return train_and_evaluate(cfg, strategies.strategy_class(str(cfg["strategy"])), progress, stop_at)


def train_and_evaluate(cfg: dict[str, Any], strategy_cls: type[engine.Strategy], progress: bool = True,
                       stop_at: int | None = None) -> dict[str, Any]:
    """Train a ``strategy_cls.build(model, processor, examples, classes, cfg)`` on the fold's training
    rows that have an accepted CoT, save the adapter (or the full weights), and evaluate the fold's
    held-out rows into the run folder; process 0 alone saves and evaluates.

    Returns:
        ``{"metrics": metrics.json content (None when stopped early or not process 0), "history":
        training log, "n_train": examples, "n_train_rows": training rows, "run_dir": path}``.
    """
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
    source = init_folder(cfg)  # the init_from run's adapter/, checked once before anything trains
    model = trainable_start(cfg, model, source)
    cache = audio.feature_cache(model, processor, cfg)
    examples = build_examples(train_df, cots, processor, cache, cfg, progress)
    strategy = strategy_cls.build(model, processor, examples, labels.class_names(train_df), cfg)
    if cfg["reference"] == "base" and source is not None:  # the reference is taken: the base model
        model_mod.load_into(model, source)
    tc = engine.TrainConfig.from_cfg(cfg)
    history = engine.train(model, strategy, tc, out, accelerator, resume=bool(cfg["resume"]),
                           progress=progress and accelerator.is_main_process, stop_at=stop_at)
    info = {"n_train": len(examples), "n_train_rows": len(train_df), "history": history, "run_dir": str(out)}
    stopped = stop_at is not None and len(history) < tc.total_steps(len(examples))
    if stopped or not accelerator.is_main_process:
        return {**info, "metrics": None}
    folded = source if cfg["reference"] == "init" else None
    model_mod.save_trained(model, processor, out / "adapter", folded)
    model.eval()
    prior = results.prior_distribution(labels.p_matrix(train_df))
    train_seconds = time.time() - start
    train = {"examples": len(examples), "training_rows": len(train_df), "steps": len(history),
             "seconds": train_seconds, **strategy.summary(history)}
    metrics_ = evaluate.evaluate(model, processor, test_df, cfg, out, prior, cache=cache, progress=progress,
                                 extra={"train": train, "wall_time_s": train_seconds})
    metrics_["wall_time_s"] = time.time() - start
    results.write_json(out / results.METRICS_FILE, metrics_)
    return {**info, "metrics": metrics_}
