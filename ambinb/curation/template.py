"""The offline ``template`` backend: a deterministic writer and a reader that never sees the target.

The writer builds the steps from emotion words found in the transcript
(:data:`ambinb.cues.LEXICON`) and the measured prosody of :mod:`ambinb.prosody`, worded against the
item's reference voice (by default a typical voice of the corpus, which one clip carries), marks
each cue with the classes it supports (:data:`ambinb.cues.PROTOTYPES`), and writes a synthesis whose
hedges follow p_gt (:data:`ambinb.curation.hedges.HEDGES`). Attempt 1 cites every measured cue,
attempt 2 only cues for classes in the target, attempt 3 also states that the remaining cues are
outweighed.

The reader (:func:`read_template_cot`) parses the text back: the hedges give one distribution
(lossy: six levels), the cited cues another, and it believes a mixture of both, so a synthesis
that the measured evidence contradicts is rejected.
"""

from __future__ import annotations

import math
import re

import numpy as np

from ambinb import cot, prosody
from ambinb.cues import ASPECT_DIMENSIONS, SHORT_WORDS, supported_classes, text_cues
from ambinb.curation.errors import AttemptError
from ambinb.curation.hedges import MIN_SHARE, join_and, read_hedges, synthesis_sentence
from ambinb.curation.items import Item, Reply

READER_SYNTHESIS_WEIGHT = 0.7  # how much the reader trusts the synthesis over the cited cues
READER_RESOLVED_WEIGHT = 0.8  # ... when the synthesis says the other cues are outweighed
READER_CUE_PRIOR = 0.5  # pseudo-count added to every class's cue count
RESOLVED_SENTENCE = "The cues that point elsewhere are outweighed by this balance."


def _cue_mark(classes: list[str]) -> str:
    return f" (cue for {' or '.join(classes)})" if classes else ""


def _kept(classes: list[str], allowed: set[str] | None) -> list[str]:
    """The classes a cue may be marked for: all of them, or only those in ``allowed``."""
    return classes if allowed is None else [c for c in classes if c in allowed]


def text_step(item: Item, allowed: set[str] | None = None) -> tuple[list[str], str]:
    """Keywords and step 1 from the emotion words of the transcript.

    Words of a class outside ``allowed`` (None: every class) are named without a cue mark.
    Example: "Stop lying to me!" over (anger, ...) -> ``(['"stop"', '"lying"'], 'The words "stop",
    "lying" carry anger (cue for anger). The words alone point one way, ...')``.
    """
    classes = list(item.classes)
    keywords: list[str] = []
    found = text_cues(item.transcript, classes)
    sentences = []
    for c, words in found.items():
        quoted = ", ".join(f'"{w}"' for w in words)
        keywords.extend(f'"{w}"' for w in words[:2])
        if _kept([c], allowed):
            sentences.append(f"The words {quoted} carry {c}{_cue_mark([c])}.")
        else:
            sentences.append(f"The words {quoted} could suggest {c}, though not decisively here.")
    if not found:
        neutral = _kept(["neutral"], allowed) if "neutral" in classes else []
        text = (f"The wording is matter-of-fact with no emotional words{_cue_mark(neutral)}, "
                "so the text alone leaves the emotion open.")
        keywords.append("plain wording")
    elif len(found) == 1:
        text = " ".join(sentences) + " The words alone point one way, but the delivery decides how strongly."
    else:
        text = " ".join(sentences) + " The text alone is ambiguous between these readings."
    return keywords, text


def audio_step(item: Item, allowed: set[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """Keywords and step 2: one clause per prosody dimension, grouped by audio aspect, worded against
    ``item.reference`` and marked with the classes it supports (only those in ``allowed``; None: every class).

    Example: loudness z = +1.4 over (anger, happiness, sadness, neutral), corpus reference ->
    Volume ``"much louder than a typical voice (cue for anger or happiness)."``, keyword ``loud``.
    """
    classes = list(item.classes)
    keywords: list[str] = []
    audio = {}
    measured = any(math.isfinite(item.prosody.get(d, float("nan"))) for d in ("loudness", "rate"))
    for aspect, dims in ASPECT_DIMENSIONS.items():
        if not measured:
            audio[aspect] = "not measured (no audio for this utterance)."
            continue
        clauses = []
        for d in dims:
            z = item.prosody.get(d, float("nan"))
            marked = _cue_mark(_kept(supported_classes(d, z, classes), allowed))
            clauses.append(prosody.describe(d, z, item.reference) + marked)
            if math.isfinite(z) and abs(z) >= prosody.NEAR:
                keywords.append(SHORT_WORDS[d][0 if z > 0 else 1])
        audio[aspect] = "; ".join(clauses) + "."
    if measured and not keywords:
        keywords.append("even delivery")
    return keywords, audio


def synthesis_step(item: Item, attempt: int = 1) -> str:
    """Step 3: the hedged split (:func:`synthesis_sentence`), the majority (or the tied leaders) and
    the minority readings; from attempt 3 on also :data:`RESOLVED_SENTENCE`."""
    classes = list(item.classes)
    target = item.target
    top = float(target.max())
    leaders = [c for c, share in zip(classes, target, strict=True) if share >= top - 1e-6]
    minority = [c for c, share in sorted(zip(classes, target, strict=True), key=lambda cp: -cp[1])
                if share >= MIN_SHARE and c not in leaders]
    synthesis = synthesis_sentence(classes, target)
    if len(leaders) == 1:
        synthesis += f" The majority reading is {leaders[0]}"
    else:
        synthesis += f" No single reading dominates: {join_and(leaders)} are evenly balanced"
    synthesis += f"; the minority reading is {join_and(minority)}." if minority else "."
    if attempt >= 3:
        synthesis += " " + RESOLVED_SENTENCE
    return synthesis


def template_parts(item: Item, attempt: int = 1) -> tuple[list[str], str, dict[str, str], str]:
    """The template writer: (keywords, text analysis, audio analysis, synthesis) for one utterance.

    ``attempt`` 1 cites every measured cue; 2 cites only cues for classes in the target (share at
    least :data:`MIN_SHARE`); 3 and later also add :data:`RESOLVED_SENTENCE`.
    """
    present = {c for c, s in zip(item.classes, item.target, strict=True) if s >= MIN_SHARE}
    allowed = present if attempt >= 2 else None
    text_words, text = text_step(item, allowed)
    audio_words, audio = audio_step(item, allowed)
    return text_words + audio_words, text, audio, synthesis_step(item, attempt)


def template_cot(item: Item, attempt: int = 1) -> str:
    """The template writer's think block (through :func:`ambinb.cot.render_think`)."""
    keywords, text, audio, synthesis = template_parts(item, attempt)
    return cot.render_think(keywords, text, audio, synthesis)


def cited_cues(think: str, classes: list[str]) -> np.ndarray:
    """Cue counts per class from the ``(cue for a or b)`` marks of steps 1 and 2 (each mark adds 1,
    shared among its classes)."""
    parts = cot.parse_think(think)
    counts = np.zeros(len(classes))
    for m in re.finditer(r"\(cue for ([^)]*)\)", parts["text"] + "\n" + parts["audio"]):
        named = [c for c in (s.strip().lower() for s in m.group(1).split(" or ")) if c in classes]
        for c in named:
            counts[classes.index(c)] += 1.0 / len(named)
    return counts


def read_template_cot(think: str, classes: list[str]) -> np.ndarray | None:
    """The template backend's reader: the distribution a think block implies, without the target.

    ``q = w * hedges + (1 - w) * cues``, where ``hedges`` is :func:`read_hedges` of the synthesis,
    ``cues`` is :func:`cited_cues` plus :data:`READER_CUE_PRIOR` per class, normalised, and ``w`` is
    :data:`READER_SYNTHESIS_WEIGHT` (:data:`READER_RESOLVED_WEIGHT` when the synthesis says the other
    cues are outweighed). None when the synthesis states no hedged share.
    """
    parts = cot.parse_think(think)
    stated = read_hedges(parts["synthesis"], classes)
    if stated is None:
        return None
    cues = cited_cues(think, classes) + READER_CUE_PRIOR
    cues = cues / cues.sum()
    w = READER_RESOLVED_WEIGHT if RESOLVED_SENTENCE in parts["synthesis"] else READER_SYNTHESIS_WEIGHT
    return w * stated + (1.0 - w) * cues


class TemplateBackend:
    """Deterministic, offline writer and reader (see the module docstring)."""

    name = "template"
    model = "template"

    def generate(self, item: Item, attempt: int, feedback: np.ndarray | None = None) -> Reply:
        return Reply(cot=template_cot(item, attempt))

    def validate(self, item: Item, think: str) -> Reply:
        q = read_template_cot(think, list(item.classes))
        if q is None:
            raise AttemptError("reader: the synthesis states no hedged share")
        return Reply(distribution=q)
