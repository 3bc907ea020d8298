"""The attempts for one utterance: write, read, judge, up to a limit; the store record they make."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np

from ambinb import metrics
from ambinb.curation.errors import AttemptError
from ambinb.curation.items import Item


def add_tokens(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    """The sum of two token counts: ``{"prompt": 2, "completion": 1}`` + ``{"prompt": 3}`` ->
    ``{"prompt": 5, "completion": 1}``."""
    return {k: int(a.get(k, 0)) + int(b.get(k, 0)) for k in ("prompt", "completion")}


def _attempt(backend: Any, item: Item, k: int, feedback: np.ndarray | None,
             accept_js: float) -> tuple[dict[str, Any], np.ndarray | None]:
    """Attempt ``k``: its record entry, and the reader's distribution (the next attempt's feedback)."""
    entry: dict[str, Any] = {"attempt": k, "cot": None, "distribution": None, "js": None,
                             "accepted": False, "error": None}
    spent = {"prompt": 0, "completion": 0}
    try:
        written = backend.generate(item, k, feedback)
        spent = add_tokens(spent, written.tokens)
        entry["cot"] = written.cot
        read = backend.validate(item, written.cot)
        spent = add_tokens(spent, read.tokens)
        q = read.distribution
        js = float(metrics.js(item.target[None], q[None])[0])
        entry.update(distribution={c: round(float(v), 6) for c, v in zip(item.classes, q, strict=True)},
                     js=round(js, 6), accepted=js <= accept_js)
        feedback = q
    except AttemptError as err:
        spent = add_tokens(spent, err.tokens)
        entry["error"] = str(err)
    entry["tokens"] = spent
    return entry, feedback


def curate_one(backend: Any, item: Item, accept_js: float, max_attempts: int,
               prompt_version: str) -> dict[str, Any]:
    """Write, read and judge one utterance, up to ``max_attempts`` times; return its store record.

    The record's ``status`` is ``accepted`` (an attempt's reader came within ``accept_js``; its
    think block is ``cot``), ``rejected`` (every readable attempt was too far; ``cot`` is the
    closest one) or ``failed`` (no attempt produced a readable think block; ``error`` says why).
    Each later attempt is told how the last readable attempt was read (the writer's feedback).
    """
    attempts: list[dict[str, Any]] = []
    tokens = {"prompt": 0, "completion": 0}
    feedback = None
    for k in range(1, max_attempts + 1):
        entry, feedback = _attempt(backend, item, k, feedback, accept_js)
        tokens = add_tokens(tokens, entry["tokens"])
        attempts.append(entry)
        if entry["accepted"]:
            break
    readable = [a for a in attempts if a["js"] is not None]
    if any(a["accepted"] for a in attempts):
        status, best = "accepted", next(a for a in attempts if a["accepted"])
    elif readable:
        status, best = "rejected", min(readable, key=lambda a: a["js"])
    else:
        status, best = "failed", attempts[-1]
    return {
        "utt_id": item.utt_id, "prompt_version": prompt_version, "status": status,
        "accepted": status == "accepted", "cot": best["cot"] if status != "failed" else None,
        "p_gt": {c: round(float(v), 6) for c, v in zip(item.classes, item.target, strict=True)},
        "validation": best["distribution"], "validation_js": best["js"],
        "attempts": attempts, "backend": backend.name, "model": backend.model, "tokens": tokens,
        "error": attempts[-1]["error"] if status == "failed" else None,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
