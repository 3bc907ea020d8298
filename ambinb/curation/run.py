"""The curation run: which utterances, which backend, curate the missing ones, and the summary.

Two runs on one store (two 02 notebooks, or two sweep workers that need a fold's think blocks): a
run holds the store's folder for its whole length (:func:`ambinb.runlock.hold`). A second run waits
for the first (up to :data:`WAIT_S`), then reads the store again and curates only what is still
missing. No utterance is written twice, and no two runs' lines interleave. A lock around each append
would not be enough: both runs would curate (and pay for) the same utterances before either wrote
one.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ambinb import labels, prosody, runlock
from ambinb.curation.attempts import add_tokens, curate_one
from ambinb.curation.errors import CurationError
from ambinb.curation.items import Item, make_items
from ambinb.curation.openai_backend import OpenAIBackend
from ambinb.curation.store import CotStore, check_same_reference, store_path
from ambinb.curation.template import TemplateBackend
from ambinb.progress import bar as progress_bar
from ambinb.results import write_json

SUMMARY_FILE = "summary.json"
BACKENDS = ("template", "openai")
SUBSETS = ("train", "all")
WAIT_S = 1800.0  # how long a second curation run of one store waits for the first before giving up


def select_utterances(df: pd.DataFrame, fold: int, subset: str = "train") -> pd.DataFrame:
    """The rows to curate: the fold's training rows (``train``; no test label is read) or ``all``."""
    if subset == "all":
        return df
    if subset != "train":
        raise CurationError(f"curation_subset={subset!r}: choose one of {list(SUBSETS)}")

    train, _ = labels.split(df, fold)
    return train


def make_backend(cfg: dict[str, Any]) -> TemplateBackend | OpenAIBackend:
    """The backend named by ``cfg["backend"]``."""
    name = cfg["backend"]
    if name == "template":
        return TemplateBackend()
    if name == "openai":
        return OpenAIBackend(cfg)
    raise CurationError(f"backend={name!r}: choose one of {list(BACKENDS)}")


def cost_usd(tokens: dict[str, int], cfg: dict[str, Any]) -> float:
    """Cost of a token count at ``price_prompt_per_1k`` and ``price_completion_per_1k`` (USD per 1,000).

    Example: 2,000 prompt and 500 completion tokens at 0.0025 and 0.01 -> 0.005 + 0.005 = 0.01.
    """
    return (tokens.get("prompt", 0) * float(cfg["price_prompt_per_1k"])
            + tokens.get("completion", 0) * float(cfg["price_completion_per_1k"])) / 1000.0


def summarize(records: list[dict[str, Any]], cfg: dict[str, Any]) -> dict[str, Any]:
    """Counts, acceptance rate, mean JS of accepted think blocks, tokens and cost of some records."""
    n = len(records)
    count = {s: sum(r["status"] == s for r in records) for s in ("accepted", "rejected", "failed")}
    js_acc = [r["validation_js"] for r in records if r["status"] == "accepted"]
    tokens = {"prompt": 0, "completion": 0}
    for r in records:
        tokens = add_tokens(tokens, r.get("tokens", {}))
    return {"utterances": n, **count, "acceptance_rate": count["accepted"] / n if n else float("nan"),
            "mean_js_accepted": float(np.mean(js_acc)) if js_acc else float("nan"),
            "attempts": sum(len(r["attempts"]) for r in records),
            "tokens_prompt": tokens["prompt"], "tokens_completion": tokens["completion"],
            "cost_usd": round(cost_usd(tokens, cfg), 6)}


def check_same_writer(done: dict[tuple[str, str], dict[str, Any]], backend: Any, version: str, path: Path) -> None:
    """Refuse a backend or model other than the one that wrote ``version``'s records in the store."""
    other = {(r["backend"], r["model"]) for (_, v), r in done.items() if v == version} - {(backend.name, backend.model)}
    if other:
        raise CurationError(f"{path} already holds prompt_version {version!r} records written by "
                            f"{sorted(other)}, not {(backend.name, backend.model)}: set a new prompt_version "
                            "for this backend/model (or another run_root)")


def to_curate(chosen: list[str], done: dict[tuple[str, str], dict[str, Any]], version: str,
              redo_failed: bool) -> tuple[list[str], int]:
    """The utterances of ``chosen`` to curate now, and how many of them are failures redone.

    An utterance is curated when the store has no ``(utt_id, version)`` record, or (``redo_failed``)
    when its record failed. Failures outside ``chosen`` (another fold's, say) are left alone.
    Example: chosen ``[a, b, c]``, ``a`` accepted, ``b`` failed, ``x`` failed -> ``([b, c], 1)``.
    """
    failed = [u for u in chosen if (u, version) in done and done[(u, version)]["status"] == "failed"]
    redo = set(failed) if redo_failed else set()
    todo = [u for u in chosen if (u, version) not in done or u in redo]
    return todo, len(redo)


def _items(cfg: dict[str, Any], df: pd.DataFrame, rows: pd.DataFrame) -> list[Item]:
    """The items of ``rows``, with prosody when the dataset has audio: z-scores against every
    utterance of ``df`` that has audio, or of the same speaker (``prosody_reference``), never a label."""
    pros = None
    if (df["audio_path"].fillna("").astype(str) != "").any():
        pros = prosody.prosody_table(df, cfg)
    return make_items(rows, pros, cfg["prosody_reference"])


def _curate_items(backend: Any, items: list[Item], store: CotStore, new: list[dict[str, Any]],
                  cfg: dict[str, Any], progress: bool) -> None:
    """Curate ``items`` (concurrently for a remote backend), appending each record to the store and
    to ``new`` as it completes."""
    args = (float(cfg["accept_js"]), int(cfg["curation_attempts"]), str(cfg["prompt_version"]))
    workers = max(1, int(cfg["curation_concurrency"])) if backend.name != "template" else 1
    bar = progress_bar(total=len(items), desc=f"curating ({backend.name})", disable=not progress)

    def keep(record: dict[str, Any]) -> None:
        record["prosody_reference"] = cfg["prosody_reference"]  # the wording of its audio step
        store.append(record)
        new.append(record)
        bar.update(1)

    try:
        if workers == 1:
            for item in items:
                keep(curate_one(backend, item, *args))
            return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(curate_one, backend, item, *args) for item in items]
            try:
                for fut in as_completed(futures):
                    keep(fut.result())
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    finally:
        bar.close()


def closing_line(summary: dict[str, Any]) -> str:
    """The one line a run prints at its end."""
    run = summary["run"]
    return (f"curation: {summary['accepted']} accepted, {summary['rejected']} rejected, {summary['failed']} failed "
            f"of {summary['utterances']} ({summary['skipped']} already done, {summary['retried_failed']} earlier "
            f"failures retried); this run {run['tokens_prompt'] + run['tokens_completion']} tokens, "
            f"${run['cost_usd']:.4f}; {summary['store']}")


def curate(cfg: dict[str, Any], df: pd.DataFrame | None = None, subset: str | None = None,
           backend: Any = None, progress: bool = True) -> dict[str, Any]:
    """Curate think blocks for a dataset's utterances into the store; skip finished ones.

    Args:
        cfg: resolved parameters (``ambinb.config.resolve``).
        df: the dataset table (None: ``ambinb.labels.load_dataset(cfg)``).
        subset: ``train`` (the fold's training rows) or ``all``; None takes ``curation_subset``.
        backend: a writer/reader (None: :func:`make_backend` from ``cfg["backend"]``).
        progress: show a progress bar and print the closing summary.

    Returns:
        The summary (also written to ``summary.json`` beside the store): this run's new records
        (``run``), how many earlier failures it retried (``retried_failed``), and the state of all
        selected utterances (counts, acceptance rate, mean JS of accepted think blocks, tokens, cost).

    Raises:
        CurationError: the run cannot go on (see :class:`ambinb.curation.transport.Outage`); every
            record written before stays in the store, and a rerun resumes from there.
        RunningElsewhere: another run has held the store for :data:`WAIT_S` seconds.
    """
    start = time.perf_counter()
    if df is None:
        df = labels.load_dataset(cfg)
    subset = subset or cfg["curation_subset"]
    chosen = select_utterances(df, int(cfg["fold"]), subset)
    chosen_ids = list(chosen["utt_id"].astype(str))
    backend = backend or make_backend(cfg)
    version = str(cfg["prompt_version"])
    path = store_path(cfg)
    store = CotStore(path)
    new: list[dict[str, Any]] = []
    with runlock.hold(path.parent, wait_s=WAIT_S):  # one writer; a second waits, then re-reads
        store.repair()
        done = store.latest()
        check_same_writer(done, backend, version, path)
        check_same_reference(done.values(), cfg["prosody_reference"], version, path)
        todo, retried = to_curate(chosen_ids, done, version, bool(cfg["redo_failed"]))
        if todo:
            items = _items(cfg, df, chosen[chosen["utt_id"].astype(str).isin(set(todo))])
            try:
                _curate_items(backend, items, store, new, cfg, progress)
            except CurationError as err:
                raise CurationError(f"{err}. The run stopped; the {len(new)} records it wrote and every earlier "
                                    f"one are kept in {path}, and a rerun resumes from there") from err
        latest = store.latest()
    selected = [latest[(u, version)] for u in chosen_ids if (u, version) in latest]
    summary = {"dataset": cfg["dataset"], "fold": cfg["fold"], "subset": subset, "backend": backend.name,
               "model": backend.model, "prompt_version": version, "accept_js": float(cfg["accept_js"]),
               **summarize(selected, cfg), "skipped": len(chosen) - len(todo), "retried_failed": retried,
               "run": summarize(new, cfg), "wall_s": round(time.perf_counter() - start, 2), "store": str(path)}
    write_json(path.with_name(SUMMARY_FILE), summary)
    if progress:
        print(closing_line(summary))
    return summary


def clear_and_ambiguous(curated: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """Two accepted records side by side: the clearest utterance (largest max p_gt) and the most
    ambiguous one (smallest max p_gt), with transcript and think block (columns ``clear``,
    ``ambiguous``)."""
    acc = curated[curated["accepted"].astype(bool)].copy()
    if acc.empty:
        raise ValueError("no accepted think block to show")
    acc["max_p"] = [max(p.values()) for p in acc["p_gt"]]
    acc = acc.sort_values(["validation_js", "utt_id"])  # among equals, the best-read one
    picks = {"clear": acc.loc[acc["max_p"].idxmax()], "ambiguous": acc.loc[acc["max_p"].idxmin()]}
    transcripts = df.set_index(df["utt_id"].astype(str))["transcript"]
    rows = {}
    for name, rec in picks.items():
        rows[name] = {"utt_id": rec["utt_id"], "transcript": transcripts.get(rec["utt_id"], ""),
                      "p_gt": ", ".join(f"{c} {v:.2f}" for c, v in rec["p_gt"].items() if v > 0),
                      "reader": ", ".join(f"{c} {v:.2f}" for c, v in rec["validation"].items() if v >= 0.005),
                      "validation_js": round(rec["validation_js"], 3), "cot": rec["cot"]}
    return pd.DataFrame(rows)
