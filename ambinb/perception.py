"""What a think block says it heard: the direction of each prosody dimension its audio step states.

The curator's audio step (:func:`ambinb.curation.template.audio_step`) has one clause per prosody
dimension, grouped by aspect (:data:`ambinb.cues.ASPECT_DIMENSIONS`), in the words of
:data:`ambinb.prosody.WORDS`: a direction word ("much louder than a typical voice") or "close to"
and the dimension's noun ("close to a typical loudness"). :func:`read_directions` reads the stated
direction of each of the six dimensions back (+1, -1, 0, or None when the block does not state
it), on those words alone, so the speaker-relative wording ("... than the speaker's usual") reads
the same. :func:`agreement` compares a model's stated directions with the gold ones (the curated
think block of the same utterance, read the same way): does the model hear what was measured?

Example::

    read_directions("<think>... Step 2 (audio): Volume: much louder than a typical voice. Speed: close to "
                    "a typical speaking rate. Pitch: ... </think>")
    -> {"loudness": 1, "rate": 0, "pitch": ..., ...}
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ambinb import cot
from ambinb.cues import ASPECT_DIMENSIONS
from ambinb.prosody import WORDS

CLOSE = "close to"
# aspect labels, clause ends and cue marks ("(cue for anger)") cut the audio step into clauses
_CLAUSE_BREAK = re.compile("|".join([r"[;.\n]", *(rf"\b{a}:" for a in cot.AUDIO_ASPECTS)]))
_CUE_MARK = re.compile(r"\([^)]*\)")


def _says(phrase: str, text: str) -> bool:
    """Whether ``text`` holds ``phrase`` as whole words (``louder`` is not in ``loudness``)."""
    return re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", text) is not None


def clauses(audio: str) -> list[str]:
    """The clauses of an audio step, lower case, without cue marks or aspect labels.

    Example: ``clauses("Volume: much louder than usual (cue for anger). Pitch: close to usual pitch level;
    flatter in pitch.")`` -> ``["much louder than usual", "close to usual pitch level", "flatter in pitch"]``.
    """
    text = _CUE_MARK.sub("", audio)
    return [c.strip().lower() for c in _CLAUSE_BREAK.split(text) if c and c.strip()]


def stated_direction(clause: str, dim: str) -> int | None:
    """The direction one clause states for dimension ``dim``: 0 for "close to" with the dimension's
    noun, +1 or -1 for its direction word of :data:`ambinb.prosody.WORDS`, None when it says neither
    (or both direction words).

    Examples: ``stated_direction("somewhat slower than a typical voice", "rate")`` -> -1;
    ``stated_direction("close to the speaker's usual pitch level", "pitch")`` -> 0;
    ``stated_direction("close to the speaker's usual pitch level", "pitch_var")`` -> None.
    """
    up, down, noun = WORDS[dim]
    if _says(CLOSE, clause) and _says(noun, clause):
        return 0
    higher, lower = _says(up, clause), _says(down, clause)
    if higher == lower:
        return None
    return 1 if higher else -1


def read_directions(text: str) -> dict[str, int | None]:
    """The direction each of the six dimensions has in a think block's audio step (the first clause
    that states it wins; a dimension stated under another aspect still counts), None where unstated.

    ``text`` may be a think block or a whole completion (what follows the answer tag is ignored).
    """
    think, _ = cot.split_output(text)
    audio = clauses(cot.parse_think(think)["audio"])
    out: dict[str, int | None] = {}
    for dim in WORDS:
        found = (stated_direction(c, dim) for c in audio)
        out[dim] = next((d for d in found if d is not None), None)
    return out


def agreement(stated: Sequence[dict[str, int | None]], gold: Sequence[dict[str, int | None]]) -> pd.DataFrame:
    """Per dimension, how often the stated direction matches the gold one, over the utterances
    whose gold block states that dimension.

    Args:
        stated: :func:`read_directions` of each utterance's generated completion.
        gold: :func:`read_directions` of the same utterances' curated think blocks.

    Returns:
        One row per dimension, indexed ``(aspect, dimension)``: ``agree`` (share of the ``n``
        utterances whose stated direction equals the gold one; an unstated dimension counts as
        not agreeing), ``chance`` (share of the most common gold direction among them: what always
        naming that direction would score), ``n`` and ``unstated`` (share of the ``n`` where the
        generated block does not state the dimension). NaN shares where ``n`` is 0.

    Example: stated loudness ``[1, 0, None]`` against gold ``[1, 1, -1]`` -> agree 1/3, chance 2/3,
    n 3, unstated 1/3.
    """
    if len(stated) != len(gold):
        raise ValueError(f"{len(stated)} generated and {len(gold)} gold readings: one each per utterance")
    rows = []
    for aspect, dims in ASPECT_DIMENSIONS.items():
        for dim in dims:
            pairs = [(s.get(dim), g[dim]) for s, g in zip(stated, gold) if g.get(dim) is not None]
            said = np.array([s for s, _ in pairs], dtype=object)
            truth = np.array([g for _, g in pairs], dtype=object)
            n = len(pairs)
            row = {"aspect": aspect, "dimension": dim, "agree": np.nan, "chance": np.nan, "n": n,
                   "unstated": np.nan}
            if n:
                _, counts = np.unique(truth.astype(int), return_counts=True)
                row.update(agree=float(np.mean(said == truth)), chance=float(counts.max() / n),
                           unstated=float(np.mean([s is None for s in said])))
            rows.append(row)
    return pd.DataFrame(rows).set_index(["aspect", "dimension"])
