"""Held-out evaluation of a model, and the ``base`` strategy (the untrained model's row).

:func:`evaluate` writes a CoT per test utterance (greedy, the rollout code with K = 1), reads
p_hat out at the slot after the answer tag the model wrote (or an appended one, counted as a
format failure), and writes ``predictions.jsonl`` and ``metrics.json`` through
:func:`ambinb.results.write_evaluation`, with the training-prior predictor scored beside it.
:func:`run_base` is the whole ``base`` strategy: load the data and the model, evaluate untouched.

A model trained without a think block (``use_cot: false``) is read out right after the prompt and
the answer tag (:func:`direct_readout`), and separately writes a short greedy completion from the
prompt alone (:func:`generate_answers`), which is what its format check judges.

Extra entries in ``metrics.json``: ``format_rate`` (share of the generated completions passing the
variant's format check, :func:`ambinb.cot.well_formed`: think block then answer, or the answer alone
for ``use_cot: false``; ``format_check`` names which, ``cot`` or ``answer``),
``answer_tag_rate`` (share where the model wrote the answer tag itself; for ``use_cot: false``, a
class name inside the answer tags), ``mean_completion_tokens``,
``seconds`` (generation, readout, total) and ``tower_calls`` (utterances the audio encoder saw).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ambinb import audio, cot, labels, lm, prompt, readout, results, rollout, runlock
from ambinb import model as model_mod
from ambinb.merge import merged_lora
from ambinb.paths import run_dir, run_folder
from ambinb.progress import bar as progress_bar

# use_cot -> the name of the format check metrics.json records beside format_rate
FORMAT_CHECKS = {True: "cot", False: "answer"}
# tokens a use_cot: false completion may write beyond the longest <answer> class</answer><|im_end|>
NOCOT_SLACK_TOKENS = 4


def direct_readout(model: Any, processor: Any, encoded: list[prompt.Encoded], classes: list[str],
                   cfg: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    """p_hat at the answer slot that directly follows the prompt (no think block), and the completion
    ``<answer> top class</answer>`` that greedy decoding of the slot would write."""
    tok = processor.tokenizer
    fmt = cot.get_format(cfg["prompt_preset"])
    slot = prompt.completion_ids(tok, "", classes[0], fmt)
    prefixes = [e.prompt_ids + slot.ids[: slot.slot] for e in encoded]
    p = readout.read_out(model, prefixes, [e.audio for e in encoded], prompt.class_ids(tok, classes, fmt),
                         int(tok.pad_token_id), int(cfg["readout_batch_size"])).detach().cpu().numpy()
    texts = [cot.render_output("", classes[int(i)], fmt) for i in p.argmax(axis=1)]
    return p.astype(np.float64), texts


def nocot_budget(tokenizer: Any, classes: list[str], fmt: cot.OutputFormat) -> int:
    """Tokens a ``use_cot: false`` completion is given: the longest ``<answer> class</answer><|im_end|>``
    over ``classes`` plus :data:`NOCOT_SLACK_TOKENS` (room to show it would write more)."""
    return max(len(prompt.completion_ids(tokenizer, "", c, fmt).ids) for c in classes) + NOCOT_SLACK_TOKENS


def generate_answers(model: Any, processor: Any, encoded: list[prompt.Encoded], classes: list[str],
                     cfg: dict[str, Any]) -> list[tuple[str, list[int]]]:
    """What a ``use_cot: false`` model writes from the prompt alone: one greedy completion per utterance
    through the rollout path (:func:`ambinb.rollout.generate_group`, K = 1, LoRA merged as
    ``rollout_merge_lora`` says), with ``max_new_tokens`` overridden by :func:`nocot_budget`; it stops
    at the answer close tag or ``<|im_end|>``.

    Returns:
        ``[(text, generated ids)]`` per utterance, the text decoded without special tokens.
    """
    tok = processor.tokenizer
    fmt = cot.get_format(cfg["prompt_preset"])
    with rollout.eval_mode(model), merged_lora(model, bool(cfg["rollout_merge_lora"])):
        groups = rollout.generate_group(model, tok, encoded, 1, nocot_budget(tok, classes, fmt), greedy=True,
                                        fmt=fmt, decode=str(cfg["rollout_decode"]))
    out = []
    for e, ((ids, stop),) in zip(encoded, groups):
        out.append((rollout.make_trajectory(tok, e.utt_id, ids, stop, classes, fmt).text, list(ids)))
    return out


def answer_found(completion: str, classes: list[str], fmt: cot.OutputFormat) -> bool:
    """Whether ``completion`` holds a class name (case-insensitive) between the answer tags, wherever
    they sit; :func:`ambinb.cot.answer_ok` also asks that nothing else surrounds them."""
    answer = cot.split_output(completion, fmt)[1]
    return answer is not None and answer.lower() in {c.lower() for c in classes}


def predict(model: Any, processor: Any, df: pd.DataFrame, cfg: dict[str, Any],
            cache: audio.AudioFeatureCache | None = None, progress: bool = True) -> dict[str, Any]:
    """Greedy CoT and p_hat for every row of ``df``.

    A model trained without a think block (``use_cot: false``, the ``sft_nocot`` strategy) is read
    out right after the prompt and the answer tag, as it was trained (p_hat, :func:`direct_readout`).
    Its completion is what it writes itself: a short greedy generation from the prompt alone
    (:func:`generate_answers`, a few tokens beyond the longest ``<answer> class</answer><|im_end|>``),
    judged by :func:`ambinb.cot.answer_ok`; ``answer_found`` says whether it holds a class name in
    the answer tags, ``tokens`` counts its generated ids.

    Returns:
        ``{"p_hat": (N, C) array, "completions": [...], "format_ok": [...], "answer_found": [...],
        "tokens": [...], "seconds": {...}}``.
    """
    classes = labels.class_names(df)
    prompt_classes = list(cfg["eval_prompt_classes"] or classes)
    cache = cache or audio.feature_cache(model, processor, cfg)
    size = max(1, int(cfg["eval_batch_size"]))
    p_hat, texts, ok, found, tokens = [], [], [], [], []
    seconds = {"generate": 0.0, "readout": 0.0, "encode": 0.0}
    bar = progress_bar(total=len(df), desc="evaluate", unit="utt", disable=not progress)
    for start in range(0, len(df), size):
        batch = df.iloc[start: start + size]
        t0 = time.perf_counter()
        encoded = prompt.encode_rows(batch, prompt_classes, processor, cache, cfg)
        seconds["encode"] += time.perf_counter() - t0
        if not cfg["use_cot"]:
            fmt = cot.get_format(cfg["prompt_preset"])
            t0 = time.perf_counter()
            p, _ = direct_readout(model, processor, encoded, classes, cfg)
            t1 = time.perf_counter()
            written = generate_answers(model, processor, encoded, classes, cfg)
            seconds["readout"] += t1 - t0
            seconds["generate"] += time.perf_counter() - t1
            p_hat.append(p)
            for text, ids in written:
                texts.append(text)
                ok.append(cot.well_formed(text, classes, fmt, use_cot=False))
                found.append(answer_found(text, classes, fmt))
                tokens.append(len(ids))
            bar.update(len(batch))
            bar.set_postfix(format=f"{np.mean(ok):.2f}")
            continue
        group = rollout.rollout(model, processor, encoded, classes, cfg, k=1, greedy=True)
        for key in ("generate", "readout"):
            seconds[key] += group.seconds[key]
        p_hat.append(group.p_hat[:, 0].numpy())
        for t in group.flat():
            texts.append(t.text)
            ok.append(t.format_ok)
            found.append(t.answer_found)
            tokens.append(len(t.token_ids))
        bar.update(len(batch))
        bar.set_postfix(format=f"{np.mean(ok):.2f}")
    bar.close()
    return {"p_hat": np.concatenate(p_hat).astype(np.float64), "completions": texts, "format_ok": ok,
            "answer_found": found, "tokens": tokens, "seconds": seconds}


def evaluate(model: Any, processor: Any, test_df: pd.DataFrame, cfg: dict[str, Any], run_dir: str | Path,
             p_prior: np.ndarray, cache: audio.AudioFeatureCache | None = None,
             progress: bool = True, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate ``model`` on ``test_df`` into ``run_dir``; returns the ``metrics.json`` content.

    ``extra`` entries (e.g. the training summary) are added to ``metrics.json``.
    """
    start = time.perf_counter()
    if int(cfg["eval_max_utterances"]) > 0:
        test_df = test_df.iloc[: int(cfg["eval_max_utterances"])]
    cache = cache or audio.feature_cache(model, processor, cfg)
    calls_before = cache.tower_calls
    with torch.no_grad():
        out = predict(model, processor, test_df, cfg, cache, progress)
    p_hat = out["p_hat"] / out["p_hat"].sum(axis=1, keepdims=True)
    device = str(lm.device_of(model))
    extra = {
        "format_rate": float(np.mean(out["format_ok"])),
        "format_check": FORMAT_CHECKS[bool(cfg["use_cot"])],
        "answer_tag_rate": float(np.mean(out["answer_found"])),
        "mean_completion_tokens": float(np.mean(out["tokens"])),
        "seconds": {**out["seconds"], "total": time.perf_counter() - start},
        "tower_calls": cache.tower_calls - calls_before,
        **(extra or {}),
    }
    return results.write_evaluation(run_dir, test_df["utt_id"].astype(str).tolist(), labels.class_names(test_df),
                                    labels.p_matrix(test_df), p_hat, p_prior, cfg, completions=out["completions"],
                                    device=device, extra=extra)


def run_base(cfg: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    """The ``base`` strategy: evaluate the model as loaded on the fold's test split.

    Writes ``run_folder(cfg, "base")``, holding it (:mod:`ambinb.runlock`), and returns its ``metrics.json`` content.
    """
    cfg = {**cfg, "strategy": "base"}
    with runlock.hold_run(run_folder(cfg, "base")) as out:
        df = labels.load_dataset(cfg)
        train_df, test_df = labels.split_for_run(df, cfg)
        p_prior = results.prior_distribution(labels.p_matrix(train_df))
        model, processor = model_mod.load_model(cfg)
        return evaluate(model, processor, test_df, cfg, out, p_prior, progress=progress)


# --- cross-domain (Table 3) -------------------------------------------------------------------

def restrict_prior(p_prior: np.ndarray, classes: list[str], subset: list[str]) -> np.ndarray:
    """The distribution ``p_prior`` over ``classes`` restricted to ``subset`` and renormalised.

    Example: ``[.4, .1, .1, .2, .1, .1]`` over ``[anger, disgust, fear, happiness, neutral, sadness]``
    restricted to ``[anger, happiness, sadness, neutral]`` -> ``[.4, .2, .1, .1] / .8 = [.5, .25, .125, .125]``.

    Raises:
        ValueError: a class of ``subset`` that ``classes`` lacks, or no mass left on ``subset``.
    """
    missing = [c for c in subset if c not in classes]
    if missing:
        raise ValueError(f"classes {missing} of the test set are not among the training classes {classes}")
    p = np.asarray(p_prior, dtype=np.float64)[[classes.index(c) for c in subset]]
    if p.sum() <= 0:
        raise ValueError(f"the training prior puts no mass on {subset}")
    return p / p.sum()


def run_cross_domain(cfg: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    """Table 3's cross-domain row: the model trained on ``train_dataset`` fold k (the in-domain run
    ``run_dir(train_dataset, strategy, k)`` and its ``adapter/``) evaluated on ``test_dataset``'s fold k
    test rows, into ``run_dir(dataset, strategy, k)`` where ``dataset`` is ``<train>_to_<test>``.

    The prompt lists the test corpus' classes unless ``eval_prompt_classes`` names others, and the
    read-out scores the test corpus' classes (each must be a training class). The prior row is the
    training folds' mean distribution restricted to those classes and renormalised: what a model that
    ignores its input, and never saw the test corpus, would answer. Nothing is trained.

    Raises:
        ValueError: ``train_dataset`` or ``test_dataset`` empty, or a test class the training set lacks.
        FileNotFoundError: the in-domain run has not finished (run its sweep first); the message says which.
        RunningElsewhere: another process holds the run folder (:mod:`ambinb.runlock`).
    """
    train, test, fold = str(cfg["train_dataset"]), str(cfg["test_dataset"]), int(cfg["fold"])
    if not train or not test:
        raise ValueError(f"dataset {cfg['dataset']!r}: a cross-domain run needs train_dataset and test_dataset "
                         f"(params/datasets/{cfg['dataset']}.yaml)")
    if cfg["eval_split"] != "test":
        raise ValueError(f"eval_split={cfg['eval_split']!r}: cross-domain runs evaluate the test corpus' "
                         "test fold only")
    source = run_dir(train, cfg["strategy"], fold, cfg["run_root"])
    if not results.is_finished(source) or not (source / "adapter").exists():
        raise FileNotFoundError(f"{source}: no finished in-domain {cfg['strategy']} run with an adapter/; "
                                f"run params/sweeps/{train}.yaml (or fold {fold} of it) first")
    trained_on = results.read_metrics(source)["params"].get("model_name_or_path", "")
    if trained_on != cfg["model_name_or_path"]:
        raise ValueError(f"{source} was trained from {trained_on!r}, this run loads {cfg['model_name_or_path']!r}")
    train_df, _ = labels.split(labels.load_dataset({**cfg, "dataset": train, "data_root": cfg["train_data_root"],
                                                    "classes": []}), fold)
    _, test_df = labels.split(labels.load_dataset({**cfg, "dataset": test, "data_root": cfg["test_data_root"],
                                                   "classes": []}), fold)
    prior = restrict_prior(results.prior_distribution(labels.p_matrix(train_df)), labels.class_names(train_df),
                           labels.class_names(test_df))
    with runlock.hold_run(run_dir(cfg["dataset"], cfg["strategy"], fold, cfg["run_root"])) as out:
        model, processor = model_mod.load_trained(source / "adapter", cfg)
        return evaluate(model, processor, test_df, cfg, out, prior, progress=progress,
                        extra={"source_run": str(source), "train_dataset": train, "test_dataset": test,
                               "n_train_rows": len(train_df)})
