"""The training examples every strategy draws from: one encoded utterance, its gold completion, its target.

:func:`build_examples` turns the training rows of a fold that have an accepted curated CoT into
:class:`Example` s: the prompt (audio placeholders expanded, the tower output from the feature
cache), the completion the positives and SFT teacher-force (the CoT, or none with ``use_cot:
false``, then the majority class as the answer: :func:`ambinb.prompt.completion_ids`), and p_gt.

Example: a training row ``utt_id u1, consensus anger, p_anger 0.75, p_sadness 0.25`` with an
accepted CoT -> ``Example("u1", <prompt ids + tower output>, <CoT + <answer> anger</answer>>, [0.75, 0.25])``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ambinb import audio, labels, prompt
from ambinb.progress import bar as progress_bar


@dataclass
class Example:
    """One training utterance: its encoded prompt (ids + tower output), completion and target."""

    utt_id: str
    encoded: prompt.Encoded
    completion: prompt.CompletionIds
    p_gt: np.ndarray


def build_examples(train_df: pd.DataFrame, cots: dict[str, str], processor: Any, cache: audio.AudioFeatureCache,
                   cfg: dict[str, Any], progress: bool = True) -> list[Example]:
    """Encode the training rows that have an accepted CoT (tower outputs cached once here).

    The completion is the CoT (or none, with ``use_cot: false``) and the majority class as the
    answer (:func:`ambinb.prompt.completion_ids`); the target is the row's ``p_*`` distribution.
    """
    classes = labels.class_names(train_df)
    rows = train_df[train_df["utt_id"].astype(str).isin(cots)]
    tok = processor.tokenizer
    use_cot = bool(cfg["use_cot"])
    out: list[Example] = []
    size = max(1, int(cfg["eval_batch_size"]))
    for start in progress_bar(range(0, len(rows), size), desc="encode", unit="batch", disable=not progress):
        chunk = rows.iloc[start: start + size]
        encoded = prompt.encode_rows(chunk, classes, processor, cache, cfg)
        for enc, p_gt, (_, row) in zip(encoded, labels.p_matrix(chunk), chunk.iterrows()):
            think = cots[enc.utt_id] if use_cot else ""
            completion = prompt.completion_ids(tok, think, str(row["consensus"]), cfg["prompt_preset"])
            out.append(Example(enc.utt_id, enc, completion, p_gt))
    return out
