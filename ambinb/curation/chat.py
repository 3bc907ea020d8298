"""The chats of an LLM writer and reader: their instructions and messages, and the schemas their
JSON answers must meet (:func:`parse_generation`, :func:`parse_validation`)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from ambinb import cot, prosody
from ambinb.cues import describe_prosody
from ambinb.curation.errors import AttemptError
from ambinb.curation.items import Item

WRITER_INSTRUCTIONS = """\
You write short, structured analyses of how a spoken utterance expresses emotion. They teach a \
model to predict how a group of listeners would split between emotion labels, so the analysis \
must lead a reader to the listeners' split that you are given.

Follow this protocol:
- keywords: a short list of the salient acoustic and linguistic cues.
- text: read the words for meaning and context only; say whether they are ambiguous on their own.
- audio: describe the delivery with professional terms, one sentence each for Volume, Speed, \
Pitch and Tone. Name the cues that support the majority label and, if listeners disagreed, the \
cues that support the minority label(s).
- synthesis: weigh the evidence so that a reader who sees only your analysis would predict the \
listeners' split. Name the majority label and any minority label with hedged wording that matches \
their shares. Never state numbers, percentages, listeners, annotators or votes.

Answer with one JSON object and nothing else:
{"keywords": ["..."], "text": "...", "audio": {"Volume": "...", "Speed": "...", "Pitch": "...", \
"Tone": "..."}, "synthesis": "..."}"""

READER_INSTRUCTIONS = """\
You read an analysis of a spoken utterance and estimate how a group of listeners would split \
between the emotion labels given. Use only the transcript and the analysis.

Answer with one JSON object and nothing else, giving every label a probability, summing to 1:
{"distribution": {"<label>": 0.0, ...}}"""

_NUMERIC_SHARE = re.compile(r"\d+(?:\.\d+)?\s*(?:%|percent)|\b0?\.\d+\b|\b\d+\s*(?:out of|/|in)\s*\d+\b", re.I)


def _fmt_dist(classes: Iterable[str], p: Iterable[float]) -> str:
    return json.dumps({c: round(float(v), 3) for c, v in zip(classes, p, strict=True)})


def generation_messages(item: Item, send_audio: bool = False, feedback: np.ndarray | None = None,
                        audio_b64: str | None = None) -> list[dict[str, Any]]:
    """The writer's chat: instructions, then the classes, transcript, measured prosody, target split
    (and the audio as ``input_audio`` when ``send_audio``)."""
    measured = describe_prosody(item.prosody, item.reference) if item.prosody else {}
    lines = [f"Labels: {', '.join(item.classes)}", f'Transcript: "{item.transcript}"']
    if measured and any(v != "not measured" for v in measured.values()):
        lines.append(f"Measured prosody relative to {prosody.REFERENCES[item.reference][2]} (openSMILE eGeMAPS): "
                     + " ".join(f"{a}: {s}." for a, s in measured.items()))
    lines.append(f"Listeners' split (JSON): {_fmt_dist(item.classes, item.p_gt)}")
    if feedback is not None:
        lines.append(f"An earlier analysis of this utterance was read as {_fmt_dist(item.classes, feedback)}. "
                     "Write a new analysis whose evidence and wording lead a reader to the listeners' split.")
    text = "\n".join(lines)
    if send_audio and audio_b64:
        content: Any = [{"type": "text", "text": text},
                        {"type": "input_audio", "input_audio": {"data": audio_b64, "format": "wav"}}]
    else:
        content = text
    return [{"role": "system", "content": WRITER_INSTRUCTIONS}, {"role": "user", "content": content}]


def validation_messages(item: Item, think: str) -> list[dict[str, Any]]:
    """The reader's chat: the classes, the transcript and the think block; never the target."""
    text = f"Labels: {', '.join(item.classes)}\nTranscript: \"{item.transcript}\"\nAnalysis:\n{think}"
    return [{"role": "system", "content": READER_INSTRUCTIONS}, {"role": "user", "content": text}]


def _json_object(content: str | None) -> dict[str, Any]:
    if not content or not content.strip():
        raise AttemptError("empty answer")
    text = content.strip()
    fence = re.match(r"^```(?:json)?\s*(.*?)\s*```$", text, flags=re.S)
    if fence:
        text = fence.group(1)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise AttemptError(f"answer is not valid JSON ({err.msg} at char {err.pos}): {text[:80]!r}") from err
    if not isinstance(obj, dict):
        raise AttemptError(f"answer is JSON {type(obj).__name__}, not an object")
    return obj


def parse_generation(content: str | None) -> dict[str, Any]:
    """Check a writer's JSON answer against the think-block schema; return its parts.

    Raises:
        AttemptError: not JSON, a missing or empty field, a wrong type, an audio aspect missing,
            or a synthesis that states numeric shares.
    """
    obj = _json_object(content)
    errors = []
    kw = obj.get("keywords")
    if not (isinstance(kw, list) and kw and all(isinstance(k, str) and k.strip() for k in kw)):
        errors.append("keywords must be a non-empty list of strings")
    for key in ("text", "synthesis"):
        if not (isinstance(obj.get(key), str) and obj[key].strip()):
            errors.append(f"{key} must be a non-empty string")
    audio = obj.get("audio")
    if not isinstance(audio, dict):
        errors.append("audio must be an object with " + ", ".join(cot.AUDIO_ASPECTS))
    else:
        bad = [a for a in cot.AUDIO_ASPECTS if not (isinstance(audio.get(a), str) and audio[a].strip())]
        if bad:
            errors.append(f"audio lacks {bad}")
    if errors:
        raise AttemptError("schema: " + "; ".join(errors))
    if _NUMERIC_SHARE.search(obj["synthesis"]):
        raise AttemptError(f"schema: synthesis states numeric shares: {obj['synthesis'][:80]!r}")
    return {"keywords": kw, "text": obj["text"], "audio": {a: audio[a] for a in cot.AUDIO_ASPECTS},
            "synthesis": obj["synthesis"]}


def parse_validation(content: str | None, classes: list[str], tolerance: float = 0.02) -> np.ndarray:
    """Check a reader's JSON answer ``{"distribution": {label: p}}``; return p over ``classes``.

    Labels are matched case-insensitively; a missing label counts 0; the values must be
    non-negative numbers summing to 1 within ``tolerance`` (then renormalised).

    Raises:
        AttemptError: not JSON, no ``distribution`` object, an unknown label, a non-number, or a bad sum.
    """
    obj = _json_object(content)
    dist = obj.get("distribution")
    if not isinstance(dist, dict) or not dist:
        raise AttemptError("schema: expected {\"distribution\": {label: probability}}")
    q = np.zeros(len(classes))
    for key, value in dist.items():
        name = str(key).strip().lower()
        if name not in classes:
            raise AttemptError(f"schema: unknown label {key!r} (labels: {classes})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise AttemptError(f"schema: {key!r} has {value!r}, not a probability")
        q[classes.index(name)] = float(value)
    if abs(q.sum() - 1.0) > tolerance:
        raise AttemptError(f"schema: the distribution sums to {q.sum():.4f}, not 1")
    return q / q.sum()
