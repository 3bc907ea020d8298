"""The two IEMOCAP text formats: EmoEvaluation blocks (the votes) and transcription lines.

Both are read as UTF-8 (a byte-order mark is dropped; a UTF-16 file with its mark is decoded as
such); bytes that are not UTF-8 are replaced and counted. A file that cannot be read is a
problem named by its path (``unreadable_file``), never a crash.
"""

from __future__ import annotations

import codecs
import re
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

from ambinb.labels.tally import Tally

# Categories an evaluator may tick, lower case -> class (None: outside the four classes, dropped).
IEMOCAP_CATEGORIES: dict[str, str | None] = {
    "neutral": "neutral", "neutral state": "neutral", "happiness": "happiness", "excited": "happiness",
    "sadness": "sadness", "anger": "anger", "frustration": None, "surprise": None, "fear": None,
    "disgust": None, "other": None,
}
_HEADER_RE = re.compile(r"^\[\s*(\d+(?:\.\d*)?)\s*-\s*(\d+(?:\.\d*)?)\s*\]\s+(\S+)\s+(\S+)\s+\[([^\]]*)\]\s*$")
_RATING_RE = re.compile(r"^C-([A-Za-z]+)(\d*)\s*:\s*(.*?)\s*(?:\(([^()]*)\))?\s*$")
_TRANSCRIPT_RE = re.compile(r"^([^\s:\[\]]+)\s*(\[[^\]]*\])?\s*:\s?(.*)$")
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


class Transcript(NamedTuple):
    """One transcription line: its text, ``file:line``, and whether it carries a ``[start-end]`` time."""

    text: str
    where: str
    timed: bool


def read_lines(path: Path, tally: Tally) -> list[str] | None:
    """The lines of a text file, or None (an ``unreadable_file`` problem) when it cannot be read.

    A byte-order mark at the start of the file (or of a line, as left by concatenated files) is
    dropped: ``b"\\xef\\xbb\\xbf[6.2 - 8.2]..."`` reads as ``"[6.2 - 8.2]..."``.
    """
    try:
        raw = path.read_bytes()
    except OSError as err:
        tally.problem("unreadable_file", str(path), f"cannot be read ({err.strerror or err})",
                      skipped="file:unreadable")
        return None
    if raw.startswith(_UTF16_BOMS):
        text = raw.decode("utf-16", errors="replace")
    else:
        text = raw.decode("utf-8-sig", errors="replace")
    if "\ufffd" in text:
        tally.problem("undecodable_bytes", str(path), "bytes that are not UTF-8 were replaced by U+FFFD")
    return [line.lstrip("\ufeff") for line in text.splitlines()]


def _parse_categories(text: str) -> list[str]:
    """``"Neutral; Other:curious;"`` -> ``["neutral", "other"]`` (free text after ``:`` dropped)."""
    names = []
    for item in text.split(";"):
        name = item.split(":", 1)[0].strip().lower()
        name = " ".join(name.split())
        if name:
            names.append(name)
    return names


def parse_emo_evaluation(path: Path, tally: Tally | None = None) -> list[dict[str, Any]]:
    """Parse one ``EmoEvaluation/<dialog>.txt`` file into one record per utterance block.

    Each record: ``utt_id``, ``code`` (the header's consensus code), ``where`` (``file:line`` of the
    header), ``votes`` (Counter class -> votes from ``C-E*`` lines), ``n_raters`` (``C-E*`` lines),
    ``dropped`` (Counter of categories outside the four classes), ``self_ratings`` (``C-F*``/``C-M*``
    lines). Bad lines go to ``tally`` (a fresh non-strict one when None); an unreadable file gives
    no record.

    Example: the block ``[6.2901 - 8.2357]\\tSes01F_impro01_F000\\tneu\\t[2.5000, 2.5000, 2.5000]`` then
    ``C-E2:\\tNeutral;\\t()``, ``C-E3:\\tNeutral; Frustration;\\t()``, ``C-F1:\\tAnger;\\t()`` gives
    ``votes={"neutral": 2}``, ``dropped={"frustration": 1}``, ``n_raters=2``, ``self_ratings=1``.
    """
    tally = tally or Tally(strict=False)
    records: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    in_bad_block = False
    for lineno, raw in enumerate(read_lines(path, tally) or [], start=1):
        line = raw.strip()
        where = f"{path}:{lineno}"
        if not line or line.startswith("%") or line.startswith("A-"):
            continue  # blank, comment, or dimensional ratings (valence, activation, dominance): not used
        if line.startswith("["):
            current = _header(line, where, tally)
            in_bad_block = current is None
            if current is not None:
                records.append(current)
        elif not line.startswith("C-"):
            tally.problem("malformed_line", where, f"unrecognised line {line!r}", skipped="line:malformed")
        elif current is not None:
            _add_rating(current, line, where, tally)
        elif in_bad_block:
            tally.skip("line:in_block_with_malformed_header")
        else:
            tally.problem("malformed_line", where, f"rating line before any utterance header {line!r}",
                          skipped="line:outside_block")
    for rec in records:
        del rec["raters"]
    return records


def _header(line: str, where: str, tally: Tally) -> dict[str, Any] | None:
    """A new utterance record from a block header, or None (a counted problem) when it is malformed."""
    m = _HEADER_RE.match(line)
    if not m:
        tally.problem("malformed_line", where, f"malformed utterance header {line!r}",
                      skipped="utterance:malformed_header")
        return None
    return {"utt_id": m.group(3), "code": m.group(4).lower(), "where": where, "votes": Counter(),
            "n_raters": 0, "dropped": Counter(), "self_ratings": 0, "raters": set()}


def _add_rating(rec: dict[str, Any], line: str, where: str, tally: Tally) -> None:
    m = _RATING_RE.match(line)
    if not m:
        tally.problem("malformed_line", where, f"malformed rating line {line!r}", skipped="line:malformed")
        return
    kind, number, cats = m.group(1).upper(), m.group(2), m.group(3)
    if kind in ("F", "M"):
        rec["self_ratings"] += 1
        return
    if kind != "E":
        tally.problem("unknown_rater", where, f"rater C-{kind}{number} is neither an evaluator (C-E*) nor a "
                      f"self-rating (C-F*/C-M*)", skipped="line:unknown_rater")
        return
    if kind + number in rec["raters"]:
        tally.problem("duplicate_rater", where, f"second C-{kind}{number} line for {rec['utt_id']}",
                      skipped="line:duplicate_rater")
        return
    names = _parse_categories(cats)
    if not names:
        tally.problem("empty_rating", where, f"C-{kind}{number} line without a category {line!r}",
                      skipped="line:empty_rating")
        return
    rec["raters"].add(kind + number)
    rec["n_raters"] += 1
    seen: set[str] = set()
    for name in names:
        if name in seen:
            tally.skip("vote:same_category_twice_on_a_line")
            continue
        seen.add(name)
        if name not in IEMOCAP_CATEGORIES:
            tally.problem("unknown_category", where, f"unknown category {name!r} (known: "
                          f"{sorted(IEMOCAP_CATEGORIES)}); vote dropped", skipped="vote:unknown_category")
        elif IEMOCAP_CATEGORIES[name] is None:
            rec["dropped"][name] += 1
        else:
            rec["votes"][IEMOCAP_CATEGORIES[name]] += 1


def parse_transcriptions(path: Path, tally: Tally | None = None) -> dict[str, Transcript]:
    """``transcriptions/<dialog>.txt`` -> ``{utt_id: Transcript(text, "file:line", timed)}``.

    ``Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.`` -> ``{"Ses01F_impro01_F000": ("Excuse me.",
    ..., True)}``. Lines without a timestamp (``Ses01F_impro01_F000: ...``) are read the same way
    (``timed=False``); other ids (``M_01`` noise lines, ``..._FXX0`` unlabelled turns) are kept here
    and ignored by the loader. An unreadable file gives ``{}`` (and a counted problem).
    """
    tally = tally or Tally(strict=False)
    out: dict[str, Transcript] = {}
    for lineno, raw in enumerate(read_lines(path, tally) or [], start=1):
        line = raw.strip()
        if not line:
            continue
        m = _TRANSCRIPT_RE.match(line)
        if not m:
            tally.skip("transcript_line:unparsed")
            continue
        utt, text = m.group(1), m.group(3).strip()
        if utt in out:
            tally.problem("duplicate_transcript", f"{path}:{lineno}", f"second transcript line for {utt} "
                          f"(first at {out[utt].where}); first kept", skipped="transcript_line:duplicate")
            continue
        out[utt] = Transcript(text, f"{path}:{lineno}", m.group(2) is not None)
    return out
