"""Ambiguity-aware chain-of-thought curation (the paper's Table 1), validated and stored resumably.

For each training utterance a *writer* sees the transcript, the measured prosody (and, for models
that take it, the audio) and the target distribution p_gt, and writes a think block in the format
of :func:`ambinb.cot.render_think`. A *reader* then sees only the transcript and that think block,
and returns the distribution it implies. The think block is accepted when
``JS(p_gt, reader) <= accept_js``; otherwise it is written again, up to ``curation_attempts``
times, and every attempt is kept in the record.

The protocol, in our words (the writer's instructions for every backend):

- **Keywords**: a short list of the salient acoustic and linguistic cues.
- **Step 1, text**: what the words mean in context, read for meaning only, and whether they are
  ambiguous on their own.
- **Step 2, audio**: the delivery in professional terms, one sentence each for Volume, Speed,
  Pitch and Tone, naming the cues that support the majority label and, where listeners
  disagreed, the cues that support the minority label(s).
- **Step 3, synthesis**: weigh the evidence so that a reader who sees only this analysis would
  predict how listeners split, naming the majority and minority labels with hedges that match
  their shares (never numbers).

Backends (``backend`` parameter):

- ``template``: deterministic and offline. It builds the steps from emotion words found in the
  transcript (:data:`LEXICON`) and the speaker-relative prosody of :mod:`ambinb.prosody`, marks
  each cue with the classes it supports (:data:`PROTOTYPES`), and writes a synthesis whose hedges
  follow p_gt (:data:`HEDGES`). Its reader (:func:`read_template_cot`) parses the text back without
  the target: the hedges give one distribution (lossy: six levels), the cited cues another, and the
  reader believes a mixture of both, so a synthesis that the measured evidence contradicts is
  rejected. Attempt 1 cites every measured cue, attempt 2 only cues for classes in the target,
  attempt 3 also states that the remaining cues are outweighed (which the reader honours).
- ``openai``: any OpenAI-compatible chat endpoint through the official client (GPT-4o by default;
  a local vLLM through ``base_url``). The writer returns JSON with the think block's fields
  (:func:`parse_generation` checks the schema); audio goes as ``input_audio`` when ``send_audio``;
  the reader returns ``{"distribution": {...}}`` (:func:`parse_validation`). Rate limits, server
  errors and timeouts are retried with seeded exponential back-off (:func:`call_with_retries`);
  malformed answers use up an attempt and are recorded with the reason.

Store: one JSON line per utterance in ``runs/<dataset>/curation/cot.jsonl`` keyed by
``(utt_id, prompt_version)``; appended with flush and fsync; a rerun skips finished keys; a
truncated last line left by a crash is dropped and redone (:class:`CotStore`).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ambinb import cot, metrics, prosody
from ambinb.cues import (  # noqa: F401  (re-exported for callers of ambinb.curation)
    ASPECT_DIMENSIONS, LEXICON, PROTOTYPES, SHORT_WORDS, describe_prosody, supported_classes, text_cues)
from ambinb.paths import run_dir

log = logging.getLogger(__name__)

STORE_FILE = "cot.jsonl"
SUMMARY_FILE = "summary.json"
BACKENDS = ("template", "openai")
SUBSETS = ("train", "all")
MIN_SHARE = 0.05  # a class with less than this share of p_gt is not named in a synthesis


class CurationError(RuntimeError):
    """A problem that stops the whole curation run (bad configuration, rejected credentials)."""


class AttemptError(Exception):
    """One attempt failed (malformed answer, wrong schema, transport gave up); tokens spent so far."""

    def __init__(self, message: str, tokens: dict[str, int] | None = None):
        super().__init__(message)
        self.tokens = tokens or {"prompt": 0, "completion": 0}


# --- the utterances handed to a backend ----------------------------------------------------------

@dataclass(frozen=True)
class Item:
    """What a writer may see of one utterance: never another utterance's labels."""

    utt_id: str
    transcript: str
    audio_path: str
    classes: tuple[str, ...]
    p_gt: tuple[float, ...]
    prosody: dict[str, float] = field(default_factory=dict)  # dimension -> speaker z (NaN: not measured)

    @property
    def target(self) -> np.ndarray:
        return np.asarray(self.p_gt, dtype=np.float64)


def class_names(df: pd.DataFrame) -> list[str]:
    """The class names from a dataset table's ``p_<class>`` columns, in column order."""
    names = [c[2:] for c in df.columns if c.startswith("p_")]
    if len(names) < 2:
        raise ValueError(f"the table has {len(names)} p_<class> columns; expected the dataset schema")
    return names


def make_items(df: pd.DataFrame, table: pd.DataFrame | None = None) -> list[Item]:
    """One :class:`Item` per row of a dataset table, with its prosody dimensions from ``table``
    (:func:`ambinb.prosody.prosody_table`) if given."""
    classes = tuple(class_names(df))
    p = metrics.check_distributions(df[[f"p_{c}" for c in classes]].to_numpy(), "p_gt")
    items = []
    for i, row in enumerate(df.itertuples(index=False)):
        utt = str(row.utt_id)
        pros = {}
        if table is not None and utt in table.index:
            pros = {d: float(table.at[utt, d]) for d in prosody.DIMENSIONS}
        items.append(Item(utt, str(row.transcript), str(row.audio_path or ""), classes,
                          tuple(float(v) for v in p[i]), pros))
    return items


# --- hedges: how a synthesis words a share, and how a reader reads it back ------------------------

# (phrase, lower bound of the share it is used for, the share a reader takes it to mean)
HEDGES: tuple[tuple[str, float, float], ...] = (
    ("almost certain", 0.85, 0.93),
    ("likely", 0.60, 0.72),
    ("about as likely as not", 0.40, 0.50),
    ("a real possibility", 0.25, 0.32),
    ("possible", 0.12, 0.18),
    ("a faint possibility", MIN_SHARE, 0.08),
)
READER_SYNTHESIS_WEIGHT = 0.7  # how much the reader trusts the synthesis over the cited cues
READER_RESOLVED_WEIGHT = 0.8  # ... when the synthesis says the other cues are outweighed
READER_CUE_PRIOR = 0.5  # pseudo-count added to every class's cue count
RESOLVED_SENTENCE = "The cues that point elsewhere are outweighed by this balance."


def _and(words: list[str]) -> str:
    """``["a"]`` -> ``"a"``; ``["a", "b", "c"]`` -> ``"a, b and c"``."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def hedge(share: float) -> str | None:
    """The hedge phrase for a share of listeners (None below :data:`MIN_SHARE`).

    Examples: ``hedge(0.9)`` -> ``"almost certain"``; ``hedge(0.3)`` -> ``"a real possibility"``.
    """
    for phrase, low, _ in HEDGES:
        if share >= low:
            return phrase
    return None


def synthesis_sentence(classes: Iterable[str], p: Iterable[float]) -> str:
    """The hedged statement of a distribution, most likely class first.

    Example: ``synthesis_sentence(["anger", "sadness", "neutral"], [0.7, 0.0, 0.3])`` ->
    ``"Weighing text and voice, anger is likely and neutral is a real possibility."``
    """
    ranked = sorted(zip(classes, p, strict=True), key=lambda cp: -cp[1])
    parts = [f"{c} is {hedge(share)}" for c, share in ranked if hedge(share)]
    return f"Weighing text and voice, {_and(parts)}."


def read_hedges(text: str, classes: list[str]) -> np.ndarray | None:
    """The distribution a synthesis states through :data:`HEDGES` (None when it states none).

    Unnamed classes get 0; the named classes' shares are renormalised.
    Example: ``"anger is likely and neutral is a real possibility"`` over (anger, sadness, neutral)
    -> (0.72, 0, 0.32) / 1.04 = (0.692, 0, 0.308).
    """
    meaning = {phrase: mid for phrase, _, mid in HEDGES}
    alternatives = "|".join(re.escape(ph) for ph in sorted(meaning, key=len, reverse=True))
    q = np.zeros(len(classes))
    for i, c in enumerate(classes):
        m = re.search(rf"\b{re.escape(c)} is ({alternatives})\b", text, flags=re.IGNORECASE)
        if m:
            q[i] = meaning[m.group(1).lower()]
    return q / q.sum() if q.sum() > 0 else None


# --- the template backend ------------------------------------------------------------------------

@dataclass
class Reply:
    """A writer's think block or a reader's distribution, with the tokens it cost."""

    cot: str | None = None
    distribution: np.ndarray | None = None
    tokens: dict[str, int] = field(default_factory=lambda: {"prompt": 0, "completion": 0})


def _cue_mark(classes: list[str]) -> str:
    return f" (cue for {' or '.join(classes)})" if classes else ""


def template_parts(item: Item, attempt: int = 1) -> tuple[list[str], str, dict[str, str], str]:
    """The template writer: (keywords, text analysis, audio analysis, synthesis) for one utterance.

    ``attempt`` 1 cites every measured cue; 2 cites only cues for classes in the target; 3 and
    later also add :data:`RESOLVED_SENTENCE`.
    """
    classes = list(item.classes)
    target = item.target
    present = {c for c, s in zip(classes, target, strict=True) if s >= MIN_SHARE}
    focused = attempt >= 2

    def keep(cs: list[str]) -> list[str]:
        return [c for c in cs if c in present] if focused else cs

    keywords: list[str] = []
    found = text_cues(item.transcript, classes)
    sentences = []
    for c, words in found.items():
        quoted = ", ".join(f'"{w}"' for w in words)
        keywords.extend(f'"{w}"' for w in words[:2])
        if keep([c]):
            sentences.append(f"The words {quoted} carry {c}{_cue_mark([c])}.")
        else:
            sentences.append(f"The words {quoted} could suggest {c}, though not decisively here.")
    if not found:
        neutral = keep(["neutral"]) if "neutral" in classes else []
        text = (f"The wording is matter-of-fact with no emotional words{_cue_mark(neutral)}, "
                "so the text alone leaves the emotion open.")
        keywords.append("plain wording")
    elif len(found) == 1:
        text = " ".join(sentences) + " The words alone point one way, but the delivery decides how strongly."
    else:
        text = " ".join(sentences) + " The text alone is ambiguous between these readings."

    audio = {}
    measured = any(math.isfinite(item.prosody.get(d, float("nan"))) for d in ("loudness", "rate"))
    for aspect, dims in ASPECT_DIMENSIONS.items():
        if not measured:
            audio[aspect] = "not measured (no audio for this utterance)."
            continue
        clauses = []
        for d in dims:
            z = item.prosody.get(d, float("nan"))
            clauses.append(prosody.describe(d, z) + _cue_mark(keep(supported_classes(d, z, classes))))
            if math.isfinite(z) and abs(z) >= prosody.NEAR:
                keywords.append(SHORT_WORDS[d][0 if z > 0 else 1])
        audio[aspect] = "; ".join(clauses) + "."
    if measured and not any(k in keywords for pair in SHORT_WORDS.values() for k in pair):
        keywords.append("even delivery")

    top = float(target.max())
    leaders = [c for c, share in zip(classes, target, strict=True) if share >= top - 1e-6]
    minority = [c for c, _ in sorted(zip(classes, target, strict=True), key=lambda cp: -cp[1])
                if c in present and c not in leaders]
    synthesis = synthesis_sentence(classes, target)
    if len(leaders) == 1:
        synthesis += f" The majority reading is {leaders[0]}"
    else:
        synthesis += f" No single reading dominates: {_and(leaders)} are evenly balanced"
    synthesis += f"; the minority reading is {_and(minority)}." if minority else "."
    if attempt >= 3:
        synthesis += " " + RESOLVED_SENTENCE
    return keywords, text, audio, synthesis


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


# --- the openai backend: prompts, schemas, retries -------------------------------------------------

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


def _fmt_dist(classes: Iterable[str], p: Iterable[float]) -> str:
    return json.dumps({c: round(float(v), 3) for c, v in zip(classes, p, strict=True)})


def generation_messages(item: Item, send_audio: bool = False, feedback: np.ndarray | None = None,
                        audio_b64: str | None = None) -> list[dict[str, Any]]:
    """The writer's chat: instructions, then the classes, transcript, measured prosody, target split
    (and the audio as ``input_audio`` when ``send_audio``)."""
    measured = describe_prosody(item.prosody) if item.prosody else {}
    lines = [f"Labels: {', '.join(item.classes)}", f'Transcript: "{item.transcript}"']
    if measured and any(v != "not measured" for v in measured.values()):
        lines.append("Measured prosody relative to this speaker's usual voice (openSMILE eGeMAPS): "
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


_NUMERIC_SHARE = re.compile(r"\d+(?:\.\d+)?\s*(?:%|percent)|\b0?\.\d+\b|\b\d+\s*(?:out of|/|in)\s*\d+\b", re.I)


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


def backoff_delay(retry: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait before retry ``retry`` (0-based): half of ``min(cap, base * 2**retry)`` plus
    a uniform jitter up to the other half.

    Example: base 1, cap 30 -> retry 0 in [0.5, 1], retry 1 in [1, 2], retry 5 in [15, 30].
    """
    ceiling = min(cap, base * 2.0**retry)
    return ceiling / 2.0 + rng.uniform(0.0, ceiling / 2.0)


def _retry_after(err: Exception) -> float | None:
    response = getattr(err, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def call_with_retries(fn: Callable[[], Any], retries: int, base: float, cap: float, rng: random.Random,
                      sleep: Callable[[float], None] = time.sleep) -> Any:
    """Call ``fn``; on a rate limit (429), a server error (5xx), a timeout or a lost connection, wait
    :func:`backoff_delay` (at least the server's ``Retry-After``, at most ``cap``) and try again, up
    to ``retries`` more times.

    Raises:
        AttemptError: the transport still failed after the retries, or the request was refused (4xx).
        CurationError: the credentials, permission or model name were refused (401, 403, 404):
            retrying other utterances cannot help.
    """
    import openai

    for k in range(retries + 1):
        try:
            return fn()
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as err:
            raise CurationError(f"the server refused the request ({type(err).__name__}, "
                                f"status {err.status_code}): {err.message}") from err
        except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError,
                openai.ConflictError) as err:
            reason = f"{type(err).__name__}: {getattr(err, 'message', err)}"
            if k == retries:
                raise AttemptError(f"transport: gave up after {retries} retries ({reason})") from err
            wait = backoff_delay(k, base, cap, rng)
            after = _retry_after(err)
            if after is not None:
                wait = min(cap, max(wait, after))
            log.warning("retry %d/%d in %.2f s after %s", k + 1, retries, wait, reason)
            sleep(wait)
        except openai.APIStatusError as err:
            raise AttemptError(f"request refused (status {err.status_code}): {err.message}") from err
    raise AssertionError("unreachable")


def api_key(cfg: dict[str, Any]) -> str:
    """The key from the environment variable named by ``api_key_env`` (never from a file).

    A local server (``base_url`` set) may need none: a placeholder is used then.
    """
    name = cfg.get("api_key_env") or "OPENAI_API_KEY"
    key = os.environ.get(name, "")
    if key:
        return key
    if cfg.get("base_url"):
        return "no-key"
    raise CurationError(f"backend 'openai' needs an API key in the environment variable {name} "
                        "(api_key_env names it), or base_url pointing to a server that needs none")


class OpenAIBackend:
    """Writer and reader through an OpenAI-compatible chat endpoint (see the module docstring)."""

    name = "openai"

    def __init__(self, cfg: dict[str, Any], client: Any = None, sleep: Callable[[float], None] = time.sleep):
        from openai import OpenAI

        self.model = str(cfg["curation_model"])
        self.cfg = cfg
        self.sleep = sleep
        self.client = client or OpenAI(api_key=api_key(cfg), base_url=cfg.get("base_url") or None,
                                       timeout=float(cfg["curation_timeout"]), max_retries=0)

    def _chat(self, messages: list[dict[str, Any]], rng: random.Random) -> tuple[str | None, dict[str, int]]:
        cfg = self.cfg
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages,
                                  "temperature": float(cfg["curation_temperature"]),
                                  "max_tokens": int(cfg["curation_max_tokens"])}
        if cfg.get("json_mode"):
            kwargs["response_format"] = {"type": "json_object"}
        response = call_with_retries(lambda: self.client.chat.completions.create(**kwargs),
                                     int(cfg["curation_retries"]), float(cfg["backoff_base"]),
                                     float(cfg["backoff_max"]), rng, self.sleep)
        usage = getattr(response, "usage", None)
        tokens = {"prompt": int(getattr(usage, "prompt_tokens", 0) or 0),
                  "completion": int(getattr(usage, "completion_tokens", 0) or 0)}
        choices = getattr(response, "choices", None) or []
        if not choices:
            raise AttemptError("the answer has no choices", tokens)
        return choices[0].message.content, tokens

    def _rng(self, item: Item, attempt: int, stage: str) -> random.Random:
        return random.Random(f"{self.cfg.get('seed', 0)}:{item.utt_id}:{attempt}:{stage}")

    def generate(self, item: Item, attempt: int, feedback: np.ndarray | None = None) -> Reply:
        audio_b64 = None
        if self.cfg.get("send_audio") and item.audio_path:
            audio_b64 = base64.b64encode(Path(item.audio_path).read_bytes()).decode("ascii")
        messages = generation_messages(item, bool(self.cfg.get("send_audio")), feedback, audio_b64)
        content, tokens = self._chat(messages, self._rng(item, attempt, "write"))
        try:
            parts = parse_generation(content)
        except AttemptError as err:
            raise AttemptError(f"writer: {err}", tokens) from err
        return Reply(cot=cot.render_think(parts["keywords"], parts["text"], parts["audio"], parts["synthesis"]),
                     tokens=tokens)

    def validate(self, item: Item, think: str) -> Reply:
        content, tokens = self._chat(validation_messages(item, think), self._rng(item, 0, f"read:{think}"))
        try:
            q = parse_validation(content, list(item.classes))
        except AttemptError as err:
            raise AttemptError(f"reader: {err}", tokens) from err
        return Reply(distribution=q, tokens=tokens)


def make_backend(cfg: dict[str, Any]) -> TemplateBackend | OpenAIBackend:
    """The backend named by ``cfg["backend"]``."""
    name = cfg.get("backend", "template")
    if name == "template":
        return TemplateBackend()
    if name == "openai":
        return OpenAIBackend(cfg)
    raise CurationError(f"backend={name!r}: choose one of {list(BACKENDS)}")


# --- attempts and records --------------------------------------------------------------------------

def _add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: int(a.get(k, 0)) + int(b.get(k, 0)) for k in ("prompt", "completion")}


def curate_one(backend: Any, item: Item, accept_js: float, max_attempts: int,
               prompt_version: str) -> dict[str, Any]:
    """Write, read and judge one utterance, up to ``max_attempts`` times; return its store record.

    The record's ``status`` is ``accepted`` (an attempt's reader came within ``accept_js``; its
    think block is ``cot``), ``rejected`` (every readable attempt was too far; ``cot`` is the
    closest one) or ``failed`` (no attempt produced a readable think block; ``error`` says why).
    """
    classes = list(item.classes)
    target = item.target
    attempts: list[dict[str, Any]] = []
    tokens = {"prompt": 0, "completion": 0}
    feedback = None
    for k in range(1, max_attempts + 1):
        entry: dict[str, Any] = {"attempt": k, "cot": None, "distribution": None, "js": None,
                                 "accepted": False, "error": None}
        spent = {"prompt": 0, "completion": 0}
        try:
            written = backend.generate(item, k, feedback)
            spent = _add(spent, written.tokens)
            entry["cot"] = written.cot
            read = backend.validate(item, written.cot)
            spent = _add(spent, read.tokens)
            q = read.distribution
            js = float(metrics.js(target[None], q[None])[0])
            entry.update(distribution={c: round(float(v), 6) for c, v in zip(classes, q, strict=True)},
                         js=round(js, 6), accepted=js <= accept_js)
            feedback = q
        except AttemptError as err:
            spent = _add(spent, err.tokens)
            entry["error"] = str(err)
        entry["tokens"] = spent
        tokens = _add(tokens, spent)
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
        "p_gt": {c: round(float(v), 6) for c, v in zip(classes, target, strict=True)},
        "validation": best["distribution"], "validation_js": best["js"],
        "attempts": attempts, "backend": backend.name, "model": backend.model, "tokens": tokens,
        "error": attempts[-1]["error"] if status == "failed" else None,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# --- the store -------------------------------------------------------------------------------------

class CotStore:
    """Append-only JSONL of curation records keyed by ``(utt_id, prompt_version)``.

    Each record is one line, written with a single ``write`` then flush and fsync, so a crash can
    only leave the last line without its newline. Reading drops such a tail (with a warning);
    :meth:`repair` cuts it off before appending, so it is redone, never duplicated. Any other
    unreadable line is an error naming the file and line.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def _lines(self) -> tuple[list[dict[str, Any]], int]:
        """(records, byte length of the complete part of the file)."""
        if not self.path.exists():
            return [], 0
        data = self.path.read_bytes()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            log.warning("%s: ignoring a truncated last line (%d bytes) left by an interrupted run; "
                        "that utterance is redone", self.path, len(data) - complete)
        records = []
        for lineno, line in enumerate(data[:complete].split(b"\n")[:-1], start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{self.path}, line {lineno}: not a JSON record ({err.msg})") from err
            if not isinstance(rec, dict) or "utt_id" not in rec or "prompt_version" not in rec:
                raise ValueError(f"{self.path}, line {lineno}: a record needs utt_id and prompt_version")
            records.append(rec)
        return records, complete

    def records(self) -> list[dict[str, Any]]:
        """Every complete record, in file order (a later record for the same key supersedes)."""
        return self._lines()[0]

    def latest(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The last record of each ``(utt_id, prompt_version)`` key."""
        return {(r["utt_id"], r["prompt_version"]): r for r in self.records()}

    def repair(self) -> None:
        """Cut off a truncated last line, so the next append starts on a fresh line."""
        _, complete = self._lines()
        if self.path.exists() and self.path.stat().st_size > complete:
            with open(self.path, "r+b") as fh:
                fh.truncate(complete)
                fh.flush()
                os.fsync(fh.fileno())

    def append(self, record: dict[str, Any]) -> None:
        """Append one record as one line, then flush and fsync."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())


class _RunLock:
    """An exclusive lock next to the store, so two curation runs never append to it at once.

    A second run (two sweep workers that both need a fold's CoTs, say) waits for the first, up to
    ``timeout`` seconds, then reads what it wrote and curates only what is still missing.
    """

    def __init__(self, path: Path, timeout: float = 1800.0):
        self.path = path.with_name(path.name + ".lock")
        self.timeout = timeout
        self.fh: Any = None

    def __enter__(self) -> _RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "w")
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no fcntl on Windows: no lock
            return self
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError as err:
                if time.monotonic() >= deadline:
                    self.fh.close()
                    raise CurationError(f"another curation run has been writing {self.path.with_suffix('')} "
                                        f"for over {self.timeout:.0f} s") from err
                time.sleep(0.5)

    def __exit__(self, *exc: Any) -> None:
        self.fh.close()


def store_path(cfg: dict[str, Any]) -> Path:
    """``<run_root>/<dataset>/curation/cot.jsonl``."""
    return run_dir(cfg["dataset"], "curation", None, cfg["run_root"]) / STORE_FILE


def load_curated(path: str | os.PathLike, prompt_version: str | None = None) -> pd.DataFrame:
    """The store as a DataFrame, one row per ``(utt_id, prompt_version)`` (the latest record),
    optionally for one prompt version. Empty (with the record columns) when there is no store."""
    latest = CotStore(path).latest()
    rows = [r for r in latest.values() if prompt_version is None or r["prompt_version"] == prompt_version]
    columns = ["utt_id", "prompt_version", "status", "accepted", "cot", "p_gt", "validation", "validation_js",
               "attempts", "backend", "model", "tokens", "error", "time"]
    return pd.DataFrame(rows, columns=columns) if rows else pd.DataFrame(columns=columns)


def accepted_cots(cfg: dict[str, Any]) -> dict[str, str]:
    """``utt_id -> think block`` of the accepted records of ``cfg["prompt_version"]`` (for training)."""
    df = load_curated(store_path(cfg), cfg["prompt_version"])
    df = df[df["accepted"].astype(bool)] if len(df) else df
    return dict(zip(df["utt_id"].astype(str), df["cot"].astype(str), strict=True))


# --- the run ---------------------------------------------------------------------------------------

def select_utterances(df: pd.DataFrame, fold: int, subset: str = "train") -> pd.DataFrame:
    """The rows to curate: the fold's training rows (``train``; no test label is read) or ``all``."""
    if subset == "all":
        return df
    if subset != "train":
        raise CurationError(f"curation_subset={subset!r}: choose one of {list(SUBSETS)}")
    from ambinb import labels

    train, _ = labels.split(df, fold)
    return train


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
        tokens = _add(tokens, r.get("tokens", {}))
    return {"utterances": n, **count, "acceptance_rate": count["accepted"] / n if n else float("nan"),
            "mean_js_accepted": float(np.mean(js_acc)) if js_acc else float("nan"),
            "attempts": sum(len(r["attempts"]) for r in records),
            "tokens_prompt": tokens["prompt"], "tokens_completion": tokens["completion"],
            "cost_usd": round(cost_usd(tokens, cfg), 6)}


def _check_same_writer(done: dict[tuple[str, str], dict[str, Any]], backend: Any, version: str, path: Path) -> None:
    other = {(r["backend"], r["model"]) for (_, v), r in done.items() if v == version} - {(backend.name, backend.model)}
    if other:
        raise CurationError(f"{path} already holds prompt_version {version!r} records written by "
                            f"{sorted(other)}, not {(backend.name, backend.model)}: set a new prompt_version "
                            "for this backend/model (or another run_root)")


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
        (``run``) and the state of all selected utterances (counts, acceptance rate, mean JS of
        accepted think blocks, tokens and cost).
    """
    import warnings

    with warnings.catch_warnings():  # tqdm.auto warns in notebooks without ipywidgets, then falls back to text
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm

    from ambinb.results import write_json

    start = time.perf_counter()
    if df is None:
        from ambinb import labels

        df = labels.load_dataset(cfg)
    subset = subset or cfg.get("curation_subset", "train")
    chosen = select_utterances(df, int(cfg["fold"]), subset)
    backend = backend or make_backend(cfg)
    version = str(cfg["prompt_version"])
    path = store_path(cfg)
    store = CotStore(path)
    with _RunLock(path):
        store.repair()
        done = store.latest()
        _check_same_writer(done, backend, version, path)
        redo_failed = bool(cfg.get("redo_failed", True))
        todo_ids = [u for u in chosen["utt_id"].astype(str)
                    if (u, version) not in done or (redo_failed and done[(u, version)]["status"] == "failed")]
        todo_rows = chosen[chosen["utt_id"].astype(str).isin(set(todo_ids))]
        new: list[dict[str, Any]] = []
        if len(todo_rows):
            pros = None
            if (df["audio_path"].fillna("").astype(str) != "").any():
                # each speaker's baseline from all of that speaker's audio (never a label)
                speakers = set(todo_rows["speaker"].astype(str))
                pros = prosody.prosody_table(df[df["speaker"].astype(str).isin(speakers)], cfg)
            items = make_items(todo_rows, pros)
            args = (float(cfg["accept_js"]), int(cfg["curation_attempts"]), version)
            workers = max(1, int(cfg["curation_concurrency"])) if backend.name != "template" else 1
            bar = tqdm(total=len(items), desc=f"curating ({backend.name})", disable=not progress)
            try:
                if workers == 1:
                    for item in items:
                        record = curate_one(backend, item, *args)
                        store.append(record)
                        new.append(record)
                        bar.update(1)
                else:
                    with ThreadPoolExecutor(max_workers=workers) as pool:
                        futures = [pool.submit(curate_one, backend, item, *args) for item in items]
                        try:
                            for fut in as_completed(futures):
                                record = fut.result()
                                store.append(record)
                                new.append(record)
                                bar.update(1)
                        except BaseException:
                            for f in futures:
                                f.cancel()
                            raise
            finally:
                bar.close()
        latest = store.latest()
    selected = [latest[(u, version)] for u in chosen["utt_id"].astype(str) if (u, version) in latest]
    summary = {"dataset": cfg["dataset"], "fold": cfg["fold"], "subset": subset, "backend": backend.name,
               "model": backend.model, "prompt_version": version, "accept_js": float(cfg["accept_js"]),
               **summarize(selected, cfg), "skipped": len(chosen) - len(todo_ids),
               "run": summarize(new, cfg), "wall_s": round(time.perf_counter() - start, 2), "store": str(path)}
    write_json(path.with_name(SUMMARY_FILE), summary)
    if progress:
        print(f"curation: {summary['accepted']} accepted, {summary['rejected']} rejected, {summary['failed']} failed "
              f"of {summary['utterances']} ({summary['skipped']} already done); this run "
              f"{summary['run']['tokens_prompt'] + summary['run']['tokens_completion']} tokens, "
              f"${summary['run']['cost_usd']:.4f}; {path}")
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


def acceptance_figure(curated: pd.DataFrame, accept_js: float) -> Any:
    """Left: histogram of the reader's JS for accepted and rejected think blocks, with the threshold.
    Right: how many attempts each utterance took, by final status."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    js = curated["validation_js"].astype(float)
    top = float(np.nanmax(js)) if js.notna().any() else 0.0
    bins = np.linspace(0.0, max(2 * accept_js, top) * 1.02, 30)
    for status, colour in (("accepted", "tab:green"), ("rejected", "tab:red")):
        values = js[curated["status"] == status].dropna()
        if len(values):
            ax1.hist(values, bins=bins, alpha=0.7, color=colour, label=f"{status} ({len(values)})")
    ax1.axvline(accept_js, color="black", linestyle="--", label=f"accept_js = {accept_js:g}")
    ax1.set(xlabel="JS(p_gt, reader's distribution), log2", ylabel="utterances", title="Validation")
    ax1.legend(frameon=False)
    counts = pd.crosstab(curated["attempts"].map(len), curated["status"])
    counts.plot.bar(ax=ax2, rot=0, color={"accepted": "tab:green", "rejected": "tab:red", "failed": "tab:gray"})
    ax2.set(xlabel="attempts used", ylabel="utterances", title="Attempts per utterance")
    fig.tight_layout()
    return fig
