"""What a backend is handed (:class:`Item`, one utterance) and what it hands back (:class:`Reply`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ambinb import labels, metrics, prosody


@dataclass(frozen=True)
class Item:
    """What a writer may see of one utterance: never another utterance's labels."""

    utt_id: str
    transcript: str
    audio_path: str
    classes: tuple[str, ...]
    p_gt: tuple[float, ...]
    prosody: dict[str, float] = field(default_factory=dict)  # dimension -> z-score (NaN: not measured)
    reference: str = "corpus"  # what the z-scores compare with (ambinb.prosody.REFERENCES)

    @property
    def target(self) -> np.ndarray:
        return np.asarray(self.p_gt, dtype=np.float64)


@dataclass
class Reply:
    """A writer's think block or a reader's distribution, with the tokens it cost."""

    cot: str | None = None
    distribution: np.ndarray | None = None
    tokens: dict[str, int] = field(default_factory=lambda: {"prompt": 0, "completion": 0})


def make_items(df: pd.DataFrame, table: pd.DataFrame | None = None, reference: str = "corpus") -> list[Item]:
    """One :class:`Item` per row of a dataset table, with its prosody dimensions from ``table``
    (:func:`ambinb.prosody.prosody_table`, made with ``prosody_reference`` ``reference``) if given."""
    classes = tuple(labels.class_names(df))
    p = metrics.check_distributions(df[[f"p_{c}" for c in classes]].to_numpy(), "p_gt")
    items = []
    for i, row in enumerate(df.itertuples(index=False)):
        utt = str(row.utt_id)
        pros = {}
        if table is not None and utt in table.index:
            pros = {d: float(table.at[utt, d]) for d in prosody.DIMENSIONS}
        items.append(Item(utt, str(row.transcript), str(row.audio_path or ""), classes,
                          tuple(float(v) for v in p[i]), pros, reference))
    return items
