"""Soft labels: one table per corpus (IEMOCAP, CREMA-D, the toy corpus), built from annotator votes.

Every loader returns a pandas DataFrame with the same schema, one row per utterance:

``utt_id, dataset, speaker, session, fold, transcript, audio_path, consensus, n_votes``,
then ``votes_<class>`` (int) for every class, then ``p_<class>`` (float, each row sums to 1),
then loader-specific extra columns (``n_raters``, ``fallback``; CREMA-D adds ``sex``,
``intended``, ``level``). ``p_<class> = votes_<class> / n_votes``, except for the rows marked
``fallback`` (``n_votes == 0``), whose ``p`` is one-hot at the consensus label. ``fold`` is the
0-based test fold; ``TRAIN_ONLY_FOLD`` (-1) marks rows that are never tested (CREMA-D ``emobox``).

Worked example (IEMOCAP, PAPER.md "IEMOCAP subset")::

    [6.29 - 8.23]  Ses01F_impro01_M001  exc  [...]
    C-E1:  Excited;                 -> happiness +1
    C-E2:  Happiness; Excited;      -> happiness +2   (each category on a line is one vote)
    C-E3:  Neutral;                 -> neutral   +1
    C-E4:  Other:amused;            -> dropped         (not one of the four classes)
    C-M1:  Excited;                 -> ignored         (the actor's self-rating is not a vote)
    votes (anger, happiness, sadness, neutral) = (0, 3, 0, 1), n_votes = 4
    p = (0, 0.75, 0, 0.25), consensus = happiness (exc), speaker = Ses01M, fold = 0

Bad input never vanishes. Problems (malformed lines, unknown categories, duplicate IDs, zero-vote
rows, missing audio or transcripts, ...) are counted: by default the offending line or row is
skipped and one :class:`LabelWarning` per kind names the count and the first places (file and
line, or CSV row); with ``strict=True`` the first one raises :class:`LabelError` instead. Things
left out by design (other consensus codes, votes outside the classes, self-ratings, face-only
CREMA-D rows) are counted too. The counts travel with the table:

- ``df.attrs["skipped"]``: reason -> count of utterances, rows, votes, lines or files not used;
- ``df.attrs["warnings"]``: problem kind -> count (each kind also raised one warning);
- ``df.attrs["notes"]``: plain-language notes (label-only loading, one-hot fallbacks, ...);
- ``df.attrs["fallback"]``: number of one-hot fallback rows; ``df.attrs["source"]``: the root read.
"""

from __future__ import annotations

import csv
import importlib
import json
import math
import os
import re
import sys
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ambinb import metrics
from ambinb.paths import resolve_path, validation_fold
from ambinb.results import write_atomic, write_json

CLASSES: dict[str, list[str]] = {
    "iemocap": ["anger", "happiness", "sadness", "neutral"],
    "crema_d": ["anger", "disgust", "fear", "happiness", "neutral", "sadness"],
    "toy": ["anger", "happiness", "sadness", "neutral"],
}
SCHEMA_COLUMNS = ("utt_id", "dataset", "speaker", "session", "fold", "transcript", "audio_path", "consensus",
                  "n_votes")
TRAIN_ONLY_FOLD = -1  # rows that are never a test fold (the ``emobox`` split's training part)
DEFAULT_ROOTS = {"toy": "data/toy"}
ATTRS_SUFFIX = ".attrs.json"
_MAX_EXAMPLES = 3
_P_TOL = 1e-6

# --- IEMOCAP -------------------------------------------------------------------------------------
IEMOCAP_SUBSET = {"neu": "neutral", "hap": "happiness", "exc": "happiness", "sad": "sadness", "ang": "anger"}
IEMOCAP_OTHER_CODES = ("fru", "fea", "sur", "dis", "oth", "xxx")
# Categories an evaluator may tick, lower case -> class (None: outside the four classes, dropped).
IEMOCAP_CATEGORIES: dict[str, str | None] = {
    "neutral": "neutral", "neutral state": "neutral", "happiness": "happiness", "excited": "happiness",
    "sadness": "sadness", "anger": "anger", "frustration": None, "surprise": None, "fear": None,
    "disgust": None, "other": None,
}
_HEADER_RE = re.compile(r"^\[\s*(\d+(?:\.\d*)?)\s*-\s*(\d+(?:\.\d*)?)\s*\]\s+(\S+)\s+(\S+)\s+\[([^\]]*)\]\s*$")
_RATING_RE = re.compile(r"^C-([A-Za-z]+)(\d*)\s*:\s*(.*?)\s*(?:\(([^()]*)\))?\s*$")
_UTT_RE = re.compile(r"^(Ses(\d{2})[FM])_.*?([A-Za-z])(\d+)$")
_TRANSCRIPT_RE = re.compile(r"^([^\s:\[\]]+)\s*(?:\[[^\]]*\])?\s*:\s?(.*)$")
_SESSION_DIR_RE = re.compile(r"^Session(\d+)$")

# --- CREMA-D -------------------------------------------------------------------------------------
CREMA_D_VOTE_COLUMNS = {"A": "anger", "D": "disgust", "F": "fear", "H": "happiness", "N": "neutral", "S": "sadness"}
CREMA_D_INTENDED = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happiness", "NEU": "neutral",
                    "SAD": "sadness"}
CREMA_D_SENTENCES = {
    "IEO": "It's eleven o'clock", "TIE": "That is exactly what happened", "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about", "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold", "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment", "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before", "TSI": "The surface is slick", "WSI": "We'll stop in a couple of minutes",
}
CREMA_D_FOLD_SCHEMES = ("speaker", "emobox")
EMOBOX_TEST_SHARE = 0.25
_CLIP_RE = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
_MODALITY = {1: "voice", 2: "face", 3: "audio_visual"}


class LabelError(ValueError):
    """Bad label input (or a bad label table); the message names the file and line, or the row."""


class LabelWarning(UserWarning):
    """A counted problem in the input that was skipped (``strict=True`` raises instead)."""


class LabelNote(UserWarning):
    """Information about how a corpus was loaded (e.g. label-only, no audio); not a problem."""


def _caller_level() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside this module."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    return level


class _Tally:
    """Collects what a loader skipped and why; raises at the first problem when ``strict``."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.skipped: Counter[str] = Counter()
        self.warnings: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = defaultdict(list)
        self.notes: list[str] = []

    def problem(self, kind: str, where: str, message: str, skipped: str | None = None) -> None:
        """Record one problem at ``where`` (``file:line`` or ``file row k``); raise when strict."""
        text = f"{where}: {message}"
        if self.strict:
            raise LabelError(f"{text} [{kind}; strict=True]")
        self.warnings[kind] += 1
        if len(self.examples[kind]) < _MAX_EXAMPLES:
            self.examples[kind].append(text)
        if skipped:
            self.skipped[skipped] += 1

    def skip(self, reason: str, n: int = 1) -> None:
        if n:
            self.skipped[reason] += n

    def note(self, message: str) -> None:
        self.notes.append(message)
        warnings.warn(message, LabelNote, stacklevel=_caller_level())

    def attach(self, df: pd.DataFrame, fallback: int, source: Path) -> pd.DataFrame:
        """Emit one warning per problem kind and attach the counters to ``df.attrs``."""
        for kind, count in sorted(self.warnings.items()):
            shown = "; ".join(self.examples[kind])
            more = f" (+{count - len(self.examples[kind])} more)" if count > len(self.examples[kind]) else ""
            warnings.warn(f"{count} x {kind}: {shown}{more}. Skipped and counted in df.attrs; strict=True raises.",
                          LabelWarning, stacklevel=_caller_level())
        df.attrs["skipped"] = dict(sorted(self.skipped.items()))
        df.attrs["warnings"] = dict(sorted(self.warnings.items()))
        df.attrs["notes"] = list(self.notes)
        df.attrs["fallback"] = int(fallback)
        df.attrs["source"] = str(source)
        return df


# --- the table ----------------------------------------------------------------------------------

def class_names(df: pd.DataFrame) -> list[str]:
    """The class names, in column order, from the ``p_<class>`` columns.

    Example: columns ``p_anger, p_happiness`` -> ``["anger", "happiness"]``.
    """
    names = [c[2:] for c in df.columns if c.startswith("p_")]
    if not names:
        raise LabelError(f"no p_<class> columns in the table (columns: {list(df.columns)})")
    return names


def p_matrix(df: pd.DataFrame) -> np.ndarray:
    """The soft labels as a float64 array of shape (N, C), columns in :func:`class_names` order."""
    return df[[f"p_{c}" for c in class_names(df)]].to_numpy(dtype=np.float64)


def vote_matrix(df: pd.DataFrame) -> np.ndarray:
    """The vote counts as an int64 array of shape (N, C), columns in :func:`class_names` order."""
    return df[[f"votes_{c}" for c in class_names(df)]].to_numpy(dtype=np.int64)


def _rows(df: pd.DataFrame, mask: np.ndarray, limit: int = 3) -> str:
    idx = np.flatnonzero(mask)
    shown = ", ".join(f"row {i} (utt_id {df['utt_id'].iloc[i]!r})" for i in idx[:limit])
    return shown + (f" and {len(idx) - limit} more" if len(idx) > limit else "")


def validate_table(df: pd.DataFrame, where: str = "label table") -> pd.DataFrame:
    """Check that ``df`` follows the label schema; return it unchanged, or raise :class:`LabelError`.

    Checks: the schema columns exist; ``votes_<c>`` and ``p_<c>`` name the same classes (at least
    two, and ``CLASSES[dataset]`` when the dataset is a known one); no missing values; ``utt_id``
    unique and non-empty; ``fold`` and ``session`` integers, fold >= -1; votes non-negative
    integers summing to ``n_votes``; ``p`` in [0, 1], rows summing to 1; ``p = votes / n_votes``
    where ``n_votes > 0`` and one-hot at the consensus where ``n_votes == 0``; ``consensus`` a class.
    Errors name ``where`` and the offending rows by position and ``utt_id``.
    """
    missing = [c for c in SCHEMA_COLUMNS if c not in df.columns]
    if missing:
        raise LabelError(f"{where}: missing columns {missing}; the schema is {list(SCHEMA_COLUMNS)} "
                         f"+ votes_<class> + p_<class>")
    classes = [c[2:] for c in df.columns if c.startswith("p_")]
    vote_classes = [c[6:] for c in df.columns if c.startswith("votes_")]
    if len(classes) < 2 or classes != vote_classes:
        raise LabelError(f"{where}: p_<class> columns {classes} and votes_<class> columns {vote_classes} must "
                         f"name the same classes (at least two) in the same order")
    cols = list(SCHEMA_COLUMNS) + [f"votes_{c}" for c in classes] + [f"p_{c}" for c in classes]
    nan = df[cols].isna().to_numpy()
    if nan.any():
        bad_cols = [c for c, b in zip(cols, nan.any(axis=0), strict=True) if b]
        raise LabelError(f"{where}: missing values in {bad_cols} at {_rows(df, nan.any(axis=1))}")
    datasets = sorted(set(df["dataset"].astype(str)))
    for name in datasets:
        if name in CLASSES and CLASSES[name] != classes:
            raise LabelError(f"{where}: dataset {name!r} has classes {CLASSES[name]}, the table has {classes}")
    ids = df["utt_id"].astype(str)
    bad = (ids.str.strip() == "").to_numpy()
    if bad.any():
        raise LabelError(f"{where}: empty utt_id at {_rows(df, bad)}")
    bad = ids.duplicated(keep=False).to_numpy()
    if bad.any():
        raise LabelError(f"{where}: duplicate utt_id at {_rows(df, bad)}")
    for col in ("fold", "session", "n_votes", *[f"votes_{c}" for c in classes]):
        if not pd.api.types.is_integer_dtype(df[col]):
            raise LabelError(f"{where}: column {col!r} must hold integers, has dtype {df[col].dtype}")
    bad = (df["fold"] < TRAIN_ONLY_FOLD).to_numpy()
    if bad.any():
        raise LabelError(f"{where}: fold must be >= 0 (or {TRAIN_ONLY_FOLD} for train-only rows) at {_rows(df, bad)}")
    votes, p = vote_matrix(df), p_matrix(df)
    bad = (votes < 0).any(axis=1)
    if bad.any():
        raise LabelError(f"{where}: negative votes at {_rows(df, bad)}")
    n_votes = df["n_votes"].to_numpy()
    bad = votes.sum(axis=1) != n_votes
    if bad.any():
        raise LabelError(f"{where}: n_votes is not the sum of the votes_ columns at {_rows(df, bad)}")
    bad = ~np.isfinite(p).all(axis=1) | (p < 0).any(axis=1) | (p > 1).any(axis=1)
    if bad.any():
        raise LabelError(f"{where}: p_ values outside [0, 1] at {_rows(df, bad)}")
    bad = np.abs(p.sum(axis=1) - 1.0) > _P_TOL
    if bad.any():
        raise LabelError(f"{where}: p_ columns do not sum to 1 (tolerance {_P_TOL}) at {_rows(df, bad)}")
    consensus = df["consensus"].astype(str).to_numpy()
    bad = ~np.isin(consensus, classes)
    if bad.any():
        raise LabelError(f"{where}: consensus is not one of {classes} at {_rows(df, bad)}")
    expected = np.zeros_like(p)
    voted = n_votes > 0
    expected[voted] = votes[voted] / n_votes[voted, None]
    expected[~voted, [classes.index(c) for c in consensus[~voted]]] = 1.0
    bad = (np.abs(p - expected) > _P_TOL).any(axis=1)
    if bad.any():
        raise LabelError(f"{where}: p_ is not votes_/n_votes (or one-hot at the consensus when n_votes is 0) "
                         f"at {_rows(df, bad)}")
    return df


def _finish_table(rows: list[dict[str, Any]], classes: list[str], extra: list[str]) -> pd.DataFrame:
    """Build the schema-ordered DataFrame from row dicts holding ``votes`` (list of int per class)."""
    cols = list(SCHEMA_COLUMNS) + [f"votes_{c}" for c in classes] + [f"p_{c}" for c in classes] + extra
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in cols})
    votes = np.array([r["votes"] for r in rows], dtype=np.int64).reshape(len(rows), len(classes))
    n_votes = votes.sum(axis=1)
    p = np.zeros(votes.shape, dtype=np.float64)
    voted = n_votes > 0
    p[voted] = votes[voted] / n_votes[voted, None]
    for i in np.flatnonzero(~voted):
        p[i, classes.index(rows[i]["consensus"])] = 1.0
    data: dict[str, Any] = {c: [r[c] for r in rows] for c in SCHEMA_COLUMNS if c != "n_votes"}
    data["n_votes"] = n_votes
    for j, c in enumerate(classes):
        data[f"votes_{c}"] = votes[:, j]
    for j, c in enumerate(classes):
        data[f"p_{c}"] = p[:, j]
    for c in extra:
        data[c] = [r[c] for r in rows]
    df = pd.DataFrame(data, columns=cols)
    return df.astype({c: _dtype(c) for c in cols})


def _dtype(col: str) -> str:
    if col in ("session", "fold", "n_votes", "n_raters") or col.startswith("votes_"):
        return "int64"
    if col.startswith("p_"):
        return "float64"
    if col == "fallback":
        return "bool"
    return "str"


# --- IEMOCAP ------------------------------------------------------------------------------------

def _release_root(root: str | os.PathLike) -> Path:
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"IEMOCAP root {path} does not exist (expected an IEMOCAP_full_release folder)")
    if not any(_SESSION_DIR_RE.match(p.name) for p in path.iterdir()) and (path / "IEMOCAP_full_release").is_dir():
        path = path / "IEMOCAP_full_release"
    return path


def _session_dirs(root: Path) -> list[tuple[int, Path]]:
    found = sorted((int(m.group(1)), p) for p in root.iterdir()
                   if p.is_dir() and (m := _SESSION_DIR_RE.match(p.name)))
    if not found:
        raise FileNotFoundError(f"{root}: no Session<k> folders; expected the IEMOCAP_full_release layout "
                                f"(Session1/dialog/EmoEvaluation/*.txt, ...)")
    return found


def _read_text(path: Path, tally: _Tally) -> list[str]:
    text = path.read_bytes().decode("utf-8", errors="replace")
    if "\ufffd" in text:
        tally.problem("undecodable_bytes", str(path), "bytes that are not UTF-8 were replaced by U+FFFD")
    return text.splitlines()


def _visible_txt(folder: Path, tally: _Tally) -> list[Path]:
    files = []
    for p in sorted(folder.glob("*.txt")):
        if p.name.startswith("."):
            tally.skip("file:hidden (e.g. macOS ._ resource forks)")
        elif p.is_file():
            files.append(p)
    return files


def _parse_categories(text: str) -> list[str]:
    """``"Neutral; Other:curious;"`` -> ``["neutral", "other"]`` (free text after ``:`` dropped)."""
    names = []
    for item in text.split(";"):
        name = item.split(":", 1)[0].strip().lower()
        name = " ".join(name.split())
        if name:
            names.append(name)
    return names


def parse_emo_evaluation(path: Path, tally: _Tally | None = None) -> list[dict[str, Any]]:
    """Parse one ``EmoEvaluation/<dialog>.txt`` file into one record per utterance block.

    Each record: ``utt_id``, ``code`` (the header's consensus code), ``where`` (``file:line`` of the
    header), ``votes`` (Counter class -> votes from ``C-E*`` lines), ``n_raters`` (``C-E*`` lines),
    ``dropped`` (Counter of categories outside the four classes), ``self_ratings`` (``C-F*``/``C-M*``
    lines). Bad lines go to ``tally`` (a fresh non-strict one when None).

    Example: the block ``[6.2901 - 8.2357]\\tSes01F_impro01_F000\\tneu\\t[2.5000, 2.5000, 2.5000]`` then
    ``C-E2:\\tNeutral;\\t()``, ``C-E3:\\tNeutral; Frustration;\\t()``, ``C-F1:\\tAnger;\\t()`` gives
    ``votes={"neutral": 2}``, ``dropped={"frustration": 1}``, ``n_raters=2``, ``self_ratings=1``.
    """
    tally = tally or _Tally(strict=False)
    records: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    in_bad_block = False
    for lineno, raw in enumerate(_read_text(path, tally), start=1):
        line = raw.strip()
        where = f"{path}:{lineno}"
        if not line or line.startswith("%"):
            continue
        if line.startswith("["):
            m = _HEADER_RE.match(line)
            if not m:
                tally.problem("malformed_line", where, f"malformed utterance header {line!r}",
                              skipped="utterance:malformed_header")
                current, in_bad_block = None, True
                continue
            current = {"utt_id": m.group(3), "code": m.group(4).lower(), "where": where, "votes": Counter(),
                       "n_raters": 0, "dropped": Counter(), "self_ratings": 0, "raters": set()}
            in_bad_block = False
            records.append(current)
        elif line.startswith("A-"):
            continue  # dimensional ratings (valence, activation, dominance): not used
        elif line.startswith("C-"):
            if current is None:
                if in_bad_block:
                    tally.skip("line:in_block_with_malformed_header")
                else:
                    tally.problem("malformed_line", where, f"rating line before any utterance header {line!r}",
                                  skipped="line:outside_block")
                continue
            _add_rating(current, line, where, tally)
        else:
            tally.problem("malformed_line", where, f"unrecognised line {line!r}", skipped="line:malformed")
    for rec in records:
        del rec["raters"]
    return records


def _add_rating(rec: dict[str, Any], line: str, where: str, tally: _Tally) -> None:
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


def parse_transcriptions(path: Path, tally: _Tally | None = None) -> dict[str, tuple[str, str]]:
    """``transcriptions/<dialog>.txt`` -> ``{utt_id: (text, "file:line")}``.

    ``Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.`` -> ``{"Ses01F_impro01_F000": ("Excuse me.", ...)}``.
    Lines without a timestamp (``Ses01F_impro01_F000: ...``) are read the same way; other ids
    (``M_01`` noise lines, ``..._FXX0`` unlabelled turns) are kept here and ignored by the loader.
    """
    tally = tally or _Tally(strict=False)
    out: dict[str, tuple[str, str]] = {}
    for lineno, raw in enumerate(_read_text(path, tally), start=1):
        line = raw.strip()
        if not line:
            continue
        m = _TRANSCRIPT_RE.match(line)
        if not m:
            tally.skip("transcript_line:unparsed")
            continue
        utt, text = m.group(1), m.group(2).strip()
        if utt in out:
            tally.problem("duplicate_transcript", f"{path}:{lineno}", f"second transcript line for {utt} "
                          f"(first at {out[utt][1]}); first kept", skipped="transcript_line:duplicate")
            continue
        out[utt] = (text, f"{path}:{lineno}")
    return out


def _speaker(utt_id: str) -> tuple[str, int] | None:
    """``Ses01M_script01_1_F000`` -> ``("Ses01F", 1)``: the letter before the last number is the speaker."""
    m = _UTT_RE.match(utt_id)
    if not m or m.group(3).upper() not in ("F", "M"):
        return None
    return f"Ses{m.group(2)}{m.group(3).upper()}", int(m.group(2))


def _wav_index(session_dir: Path) -> dict[str, set[str]] | None:
    wav = session_dir / "sentences" / "wav"
    if not wav.is_dir():
        return None
    return {d.name: {f.name for f in os.scandir(d) if f.name.endswith(".wav") and not f.name.startswith(".")}
            for d in os.scandir(wav) if d.is_dir()}


def load_iemocap(root: str | os.PathLike, strict: bool = False, require_audio: bool = False) -> pd.DataFrame:
    """Read an ``IEMOCAP_full_release`` folder (its real layout) into the label table.

    Reads ``Session{k}/dialog/EmoEvaluation/*.txt`` (sub-folders such as ``Categorical/`` are not
    read), ``Session{k}/dialog/transcriptions/*.txt`` and ``Session{k}/sentences/wav/<dialog>/<utt>.wav``.
    Rules (PAPER.md): utterances whose header code is neu, hap, exc, sad or ang; votes from ``C-E*``
    lines only, each category on a line one vote, Excited counted as happiness, other categories
    dropped and the rest renormalised; an utterance left with no vote in the four classes falls back
    to one-hot of its consensus (``fallback=True``, ``n_votes=0``; counted in ``attrs["fallback"]``).
    ``speaker`` is ``Ses<ss>`` plus the letter before the last number of the id (``Ses01M_script01_1_F000``
    -> ``Ses01F``); ``session`` comes from the id; ``fold = session - 1``. ``n_raters`` counts ``C-E*`` lines.

    Args:
        root: the ``IEMOCAP_full_release`` folder (or a folder holding it).
        strict: raise :class:`LabelError` at the first problem instead of skipping it with a warning.
        require_audio: raise when a wav file (or the whole ``sentences/wav`` tree) is missing; otherwise
            such rows keep ``audio_path=""`` (label-only, with a :class:`LabelNote` when no audio exists).

    Returns:
        The label table (module docstring), rows ordered by session, dialog file and position.
    """
    root = _release_root(root)
    tally = _Tally(strict)
    classes = CLASSES["iemocap"]
    rows: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    any_audio = False
    sessions = _session_dirs(root)
    for _, sdir in sessions:
        emo_dir = sdir / "dialog" / "EmoEvaluation"
        if not emo_dir.is_dir():
            raise FileNotFoundError(f"{emo_dir}: missing; expected Session<k>/dialog/EmoEvaluation/*.txt")
        wavs = _wav_index(sdir)
        if wavs is None:
            if require_audio:
                raise LabelError(f"{sdir / 'sentences' / 'wav'}: missing (require_audio=True)")
        else:
            any_audio = True
        for emo_file in _visible_txt(emo_dir, tally):
            dialog = emo_file.stem
            text_file = sdir / "dialog" / "transcriptions" / emo_file.name
            if text_file.is_file():
                texts = parse_transcriptions(text_file, tally)
            else:
                tally.problem("missing_transcript_file", str(text_file), f"no transcription file for {dialog}; "
                              f"its transcripts are empty")
                texts = {}
            used: set[str] = set()
            for rec in parse_emo_evaluation(emo_file, tally):
                row = _iemocap_row(rec, root, sdir, dialog, texts, wavs, require_audio, tally, seen)
                if row is not None:
                    rows.append(row)
                    used.add(rec["utt_id"])
            tally.skip("transcript_line:not_in_table", len(set(texts) - used))
    if not any_audio:
        tally.note(f"{root}: no Session<k>/sentences/wav folders; IEMOCAP loaded label-only (audio_path is empty)")
    df = _finish_table(rows, classes, ["n_raters", "fallback"])
    fallback = int(df["fallback"].sum())
    if fallback:
        tally.note(f"IEMOCAP: {fallback} utterance(s) had no vote in {classes} and fall back to one-hot of their "
                   f"consensus label (fallback=True)")
    return tally.attach(df, fallback, root)


def _iemocap_row(rec: dict[str, Any], root: Path, sdir: Path, dialog: str, texts: dict[str, tuple[str, str]],
                 wavs: dict[str, set[str]] | None, require_audio: bool, tally: _Tally,
                 seen: dict[str, str]) -> dict[str, Any] | None:
    utt, code, where = rec["utt_id"], rec["code"], rec["where"]
    if code not in IEMOCAP_SUBSET:
        if code in IEMOCAP_OTHER_CODES:
            tally.skip(f"utterance:consensus_{code}")
        else:
            tally.problem("unknown_consensus", where, f"unknown consensus code {code!r} for {utt} (known: "
                          f"{sorted([*IEMOCAP_SUBSET, *IEMOCAP_OTHER_CODES])})", skipped="utterance:unknown_consensus")
        return None
    if utt in seen:
        tally.problem("duplicate_id", where, f"{utt} already read at {seen[utt]}; first kept",
                      skipped="utterance:duplicate_id")
        return None
    spk = _speaker(utt)
    if spk is None:
        tally.problem("malformed_id", where, f"utterance id {utt!r} does not end in F<number> or M<number>",
                      skipped="utterance:malformed_id")
        return None
    seen[utt] = where
    speaker, session = spk
    if not rec["n_raters"]:
        tally.problem("no_votes", where, f"{utt} has no C-E* rating line; one-hot fallback to {code}")
    for name, n in rec["dropped"].items():
        tally.skip(f"vote:{name}", n)
    tally.skip("line:self_rating", rec["self_ratings"])
    utt_dialog = utt.rsplit("_", 1)[0]
    audio_path = ""
    if wavs is not None:
        wav = sdir / "sentences" / "wav" / utt_dialog / f"{utt}.wav"
        if f"{utt}.wav" in wavs.get(utt_dialog, ()):
            audio_path = str(wav)
        elif require_audio:
            raise LabelError(f"{where}: audio for {utt} missing: {wav} (require_audio=True)")
        else:
            tally.problem("missing_audio", where, f"audio for {utt} missing: {wav}; audio_path left empty")
    text = texts.get(utt)
    if text is None:
        tally.problem("missing_transcript", where, f"no transcript line for {utt} in "
                      f"{sdir / 'dialog' / 'transcriptions' / (dialog + '.txt')}; transcript left empty")
    return {
        "utt_id": utt, "dataset": "iemocap", "speaker": speaker, "session": session, "fold": session - 1,
        "transcript": text[0] if text else "", "audio_path": audio_path, "consensus": IEMOCAP_SUBSET[code],
        "votes": [rec["votes"][c] for c in CLASSES["iemocap"]], "n_raters": rec["n_raters"],
        "fallback": not any(rec["votes"].values()),
    }


# --- CREMA-D ------------------------------------------------------------------------------------

def _read_csv(path: Path, required: list[str]) -> pd.DataFrame:
    """Read a CSV as strings; raise naming the file when it or a required column is missing."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; expected the CREMA-D layout (processedResults/tabulatedVotes.csv, "
                                f"SentenceFilenames.csv, VideoDemographics.csv, optional AudioWAV/)")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise LabelError(f"{path}: not a readable CSV: {err}") from err
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise LabelError(f"{path}: missing columns {missing} (has {list(df.columns)})")
    return df


def _whole_numbers(values: pd.Series) -> np.ndarray:
    """Strings -> float64 array of whole numbers, NaN where a value is not one (``"3"`` ok, ``"3.5"``, ``"x"`` not)."""
    num = pd.to_numeric(values.str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    return np.where(num == np.round(num), num, np.nan)


def crema_d_speaker_folds(actor_sex: dict[str, str], n_folds: int = 5, seed: int = 0) -> dict[str, int]:
    """Actor-disjoint folds balanced by sex: ``{actor: fold}``.

    Actors are grouped by sex (groups in sorted order: female, male, then any other value), each
    group shuffled with ``numpy.random.default_rng(seed)``, and dealt round-robin into ``n_folds``
    folds, the deal continuing across groups. Fold sizes then differ by at most one actor, and so do
    the counts of each sex. CREMA-D (43 female, 48 male): folds of 19, 18, 18, 18, 18 actors.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds={n_folds}: need at least 2 folds")
    rng = np.random.default_rng(seed)
    groups: dict[str, list[str]] = defaultdict(list)
    for actor in sorted(actor_sex):
        groups[actor_sex[actor]].append(actor)
    folds: dict[str, int] = {}
    k = 0
    for sex in sorted(groups):
        for actor in rng.permutation(groups[sex]):
            folds[str(actor)] = k % n_folds
            k += 1
    return folds


def crema_d_emobox_split(intended: pd.Series, seed: int = 0, test_share: float = EMOBOX_TEST_SHARE) -> np.ndarray:
    """The EmoBox-style single split: fold 0 = test, ``TRAIN_ONLY_FOLD`` (-1) = train.

    EmoBox (Ma et al., 2024) splits corpora whose speakers do not all record the same emotions,
    CREMA-D among them, without regard to speaker: for every intended emotion (the clip name's
    third field), ``floor(test_share * n)`` of its clips are drawn at random as the test set. This
    reproduces that rule with ``numpy.random.default_rng(seed)`` (not EmoBox's published file lists).
    It is NOT speaker-disjoint: the same actors appear in train and test.
    """
    rng = np.random.default_rng(seed)
    folds = np.full(len(intended), TRAIN_ONLY_FOLD, dtype=np.int64)
    values = intended.to_numpy()
    for emotion in sorted(set(values)):
        idx = np.flatnonzero(values == emotion)
        n_test = int(math.floor(test_share * len(idx)))
        folds[rng.choice(idx, size=n_test, replace=False)] = 0
    return folds


def load_crema_d(root: str | os.PathLike, strict: bool = False, require_audio: bool = False,
                 fold_scheme: str = "speaker", seed: int = 0, n_folds: int = 5) -> pd.DataFrame:
    """Read a CREMA-D folder (its real layout) into the label table; voice-only crowd votes.

    Uses the rows of ``processedResults/tabulatedVotes.csv`` whose first column is
    ``100000 + clip`` (modality 1, voice only; 100001..107442 in the release), their vote counts in
    ``A D F H N S``; checks each ``fileName`` against ``SentenceFilenames.csv`` and takes each actor's
    sex from ``VideoDemographics.csv``. ``transcript`` is the clip's sentence (PAPER.md table);
    ``speaker`` the actor id (``"1001"``); ``session`` the actor id as an int (CREMA-D has no recording
    sessions: each actor was recorded alone, so the actor is the natural grouping); ``consensus``
    the class with most votes, ties broken by the intended emotion when it is among the tied
    classes, else by class order. Extra columns: ``n_raters`` (``numResponses``), ``fallback``
    (always False), ``sex``, ``intended`` (class from the clip name), ``level`` (LO/MD/HI/XX).

    Folds: ``fold_scheme="speaker"``: ``n_folds`` actor-disjoint folds balanced by sex
    (:func:`crema_d_speaker_folds`); ``"emobox"``: one stratified split, fold 0 = test, -1 = train
    (:func:`crema_d_emobox_split`). ``audio_path`` is ``AudioWAV/<clip>.wav`` when that folder holds it;
    with no ``AudioWAV`` folder the table is label-only (``audio_path=""``) and one :class:`LabelNote`
    says so.

    Args:
        root: the CREMA-D folder.
        strict: raise :class:`LabelError` at the first problem instead of skipping it with a warning.
        require_audio: raise when ``AudioWAV`` or one of its clips is missing.
        fold_scheme: ``"speaker"`` or ``"emobox"``.
        seed: the fold assignment's seed.
        n_folds: folds of the speaker scheme.

    Example: the row ``"100001",0,0,0,1,10,0,"1001_IEO_NEU_XX",11,...`` gives ``votes_happiness=1``,
    ``votes_neutral=10``, ``n_votes=11``, ``p_neutral=10/11``, transcript ``It's eleven o'clock``.
    """
    if fold_scheme not in CREMA_D_FOLD_SCHEMES:
        raise ValueError(f"fold_scheme={fold_scheme!r}: choose one of {list(CREMA_D_FOLD_SCHEMES)}")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"CREMA-D root {root} does not exist")
    tally = _Tally(strict)
    classes = CLASSES["crema_d"]
    votes_path = root / "processedResults" / "tabulatedVotes.csv"
    names_path = root / "SentenceFilenames.csv"
    demo_path = root / "VideoDemographics.csv"
    table = _read_csv(votes_path, [*CREMA_D_VOTE_COLUMNS, "fileName", "numResponses"])
    names = _read_csv(names_path, ["Stimulus_Number", "Filename"])
    demo = _read_csv(demo_path, ["ActorID", "Sex"])
    clip_names = _crema_d_clip_names(names, names_path, tally)
    actor_sex = _crema_d_actors(demo, demo_path, tally)
    audio_dir = root / "AudioWAV"
    audio = None
    if audio_dir.is_dir():
        audio = {f.name for f in os.scandir(audio_dir) if f.name.endswith(".wav")}
    elif require_audio:
        raise LabelError(f"{audio_dir}: missing (require_audio=True)")
    else:
        tally.note(f"{root}: no AudioWAV folder; CREMA-D loaded label-only (audio_path is empty). Put the clips "
                   f"in {audio_dir}/ to use audio.")
    rows, voice_clips = _crema_d_rows(table, votes_path, clip_names, actor_sex, audio, audio_dir, require_audio,
                                      tally)
    for clip in sorted(set(clip_names) - voice_clips):
        tally.problem("missing_votes", f"{names_path} clip {clip}", f"{clip_names[clip]} has no voice-only row "
                      f"({100000 + clip}) in {votes_path}", skipped="clip:no_voice_votes")
    df = _finish_table(rows, classes, ["n_raters", "fallback", "sex", "intended", "level"])
    if fold_scheme == "speaker":
        folds = crema_d_speaker_folds(dict(zip(df["speaker"], df["sex"], strict=True)), n_folds=n_folds, seed=seed)
        df["fold"] = df["speaker"].map(folds).astype("int64")
    else:
        df["fold"] = crema_d_emobox_split(df["intended"], seed=seed)
        tally.notes.append("CREMA-D fold_scheme=emobox: fold 0 is the test split (25 % of each intended emotion, "
                           "not speaker-disjoint), fold -1 the training split")
    return tally.attach(df, 0, root)


def _crema_d_clip_names(names: pd.DataFrame, path: Path, tally: _Tally) -> dict[int, str]:
    numbers = _whole_numbers(names["Stimulus_Number"])
    out: dict[int, str] = {}
    for i, (num, name) in enumerate(zip(numbers, names["Filename"].str.strip(), strict=True)):
        where = f"{path} row {i + 2}"
        if np.isnan(num) or not name:
            tally.problem("malformed_row", where, "Stimulus_Number or Filename missing or not a number",
                          skipped="SentenceFilenames_row:malformed")
        elif int(num) in out:
            tally.problem("duplicate_id", where, f"clip number {int(num)} listed twice; first kept",
                          skipped="SentenceFilenames_row:duplicate")
        else:
            out[int(num)] = name
    return out


def _crema_d_actors(demo: pd.DataFrame, path: Path, tally: _Tally) -> dict[str, str]:
    out: dict[str, str] = {}
    actors, sexes = demo["ActorID"].str.strip(), demo["Sex"].str.strip().str.lower()
    for i, (actor, sex) in enumerate(zip(actors, sexes, strict=True)):
        where = f"{path} row {i + 2}"
        if not actor.isdigit():
            tally.problem("malformed_row", where, f"ActorID {actor!r} is not a number",
                          skipped="VideoDemographics_row:malformed")
        elif actor in out:
            tally.problem("duplicate_id", where, f"actor {actor} listed twice; first kept",
                          skipped="VideoDemographics_row:duplicate")
        else:
            out[actor] = sex or "unknown"
    return out


def _crema_d_rows(table: pd.DataFrame, path: Path, clip_names: dict[int, str], actor_sex: dict[str, str],
                  audio: set[str] | None, audio_dir: Path, require_audio: bool,
                  tally: _Tally) -> tuple[list[dict[str, Any]], set[int]]:
    """The table's valid voice-only rows as row dicts, and every voice-only clip number seen."""
    ids = _whole_numbers(table.iloc[:, 0])
    letters = {name: letter for letter, name in CREMA_D_VOTE_COLUMNS.items()}
    vote_cols = [letters[c] for c in CLASSES["crema_d"]]
    votes = np.stack([_whole_numbers(table[c]) for c in vote_cols], axis=1)
    responses = _whole_numbers(table["numResponses"])
    file_names = table["fileName"].str.strip().tolist()
    rows: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    voice_clips: set[int] = set()
    for i, name in enumerate(file_names):
        where = f"{path} row {i + 2}"
        if np.isnan(ids[i]):
            tally.problem("malformed_row", where, f"first column {table.iat[i, 0]!r} is not a number",
                          skipped="row:malformed")
            continue
        modality, clip = divmod(int(ids[i]), 100000)
        if modality != 1:
            tally.skip(f"row:modality_{_MODALITY.get(modality, modality)}")
            continue
        voice_clips.add(clip)
        if np.isnan(votes[i]).any() or (votes[i] < 0).any():
            raw = dict(zip(vote_cols, table.loc[i, vote_cols].tolist(), strict=True))
            tally.problem("malformed_row", where, f"vote counts {raw} are not non-negative integers",
                          skipped="row:malformed")
            continue
        counts = [int(v) for v in votes[i]]
        if sum(counts) == 0:
            tally.problem("zero_votes", where, f"{name} has no votes", skipped="row:zero_votes")
            continue
        if clip not in clip_names:
            tally.problem("unknown_clip", where, f"clip number {clip} is not in SentenceFilenames.csv",
                          skipped="row:unknown_clip")
            continue
        if clip_names[clip] != name:
            tally.problem("filename_mismatch", where, f"fileName {name!r} but SentenceFilenames.csv names clip "
                          f"{clip} {clip_names[clip]!r}", skipped="row:filename_mismatch")
            continue
        m = _CLIP_RE.match(name)
        if not m:
            tally.problem("malformed_id", where, f"clip name {name!r} is not <actor>_<SEN>_<EMO>_<LV>",
                          skipped="row:malformed_id")
            continue
        if name in seen:
            tally.problem("duplicate_id", where, f"{name} already read at {seen[name]}; first kept",
                          skipped="row:duplicate_id")
            continue
        seen[name] = where
        n_raters = sum(counts) if np.isnan(responses[i]) else int(responses[i])
        if n_raters != sum(counts) or np.isnan(responses[i]):
            tally.problem("vote_count_mismatch", where, f"numResponses {table['numResponses'].iat[i]!r} but the "
                          f"votes sum to {sum(counts)}; the votes are used")
        rows.append(_crema_d_row(name, m, counts, n_raters, actor_sex, audio, audio_dir, require_audio, where,
                                 tally))
    return rows, voice_clips


def _crema_d_row(name: str, m: re.Match, counts: list[int], n_raters: int, actor_sex: dict[str, str],
                 audio: set[str] | None, audio_dir: Path, require_audio: bool, where: str,
                 tally: _Tally) -> dict[str, Any]:
    actor, sentence, emo, level = m.groups()
    classes = CLASSES["crema_d"]
    if actor not in actor_sex:
        tally.problem("unknown_actor", where, f"actor {actor} is not in VideoDemographics.csv; sex 'unknown'")
    if sentence not in CREMA_D_SENTENCES:
        tally.problem("unknown_sentence", where, f"sentence code {sentence!r} unknown; transcript left empty")
    intended = CREMA_D_INTENDED.get(emo, "")
    if not intended:
        tally.problem("unknown_category", where, f"intended emotion code {emo!r} unknown (known: "
                      f"{sorted(CREMA_D_INTENDED)})")
    top = max(counts)
    tied = [c for c, n in zip(classes, counts, strict=True) if n == top]
    consensus = intended if intended in tied else tied[0]
    audio_path = ""
    if audio is not None:
        if f"{name}.wav" in audio:
            audio_path = str(audio_dir / f"{name}.wav")
        elif require_audio:
            raise LabelError(f"{where}: audio for {name} missing: {audio_dir / (name + '.wav')} (require_audio=True)")
        else:
            tally.problem("missing_audio", where, f"audio for {name} missing: {audio_dir / (name + '.wav')}; "
                          f"audio_path left empty")
    return {
        "utt_id": name, "dataset": "crema_d", "speaker": actor, "session": int(actor), "fold": 0,
        "transcript": CREMA_D_SENTENCES.get(sentence, ""), "audio_path": audio_path, "consensus": consensus,
        "votes": counts, "n_raters": n_raters, "fallback": False, "sex": actor_sex.get(actor, "unknown"),
        "intended": intended, "level": level,
    }


# --- any dataset ----------------------------------------------------------------------------------

def make_toy(out_dir: str | os.PathLike, n: int = 800, seed: int = 0, sessions: int = 5, **kwargs: Any) -> pd.DataFrame:
    """Write the toy corpus to ``out_dir`` and return its label table (see :mod:`ambinb.toy`)."""
    toy = importlib.import_module("ambinb.toy")
    return toy.make_toy(out_dir, n=n, seed=seed, sessions=sessions, **kwargs)


def load_dataset(cfg: dict[str, Any]) -> pd.DataFrame:
    """The label table named by a resolved config.

    Reads ``dataset`` ("toy", "iemocap", "crema_d"), ``data_root`` (relative paths are resolved
    against the project root; "" means the dataset's default, ``data/toy`` for the toy corpus),
    ``strict``, ``require_audio``, ``fold_scheme``, ``seed``, ``n_folds`` and, for the toy corpus,
    ``toy_n``, ``toy_seed``, ``toy_sessions`` (built once by ``ambinb.toy.ensure_toy``, then reloaded).
    When ``cfg["classes"]`` is non-empty it must equal the table's classes.
    """
    name = cfg.get("dataset")
    if name not in CLASSES:
        raise ValueError(f"dataset={name!r}: choose one of {sorted(CLASSES)}")
    data_root = cfg.get("data_root") or DEFAULT_ROOTS.get(name, "")
    if not data_root:
        raise ValueError(f"dataset={name!r} needs data_root (the corpus folder); none given")
    root = resolve_path(data_root)
    strict, require_audio = bool(cfg.get("strict", False)), bool(cfg.get("require_audio", False))
    if name == "toy":
        toy = importlib.import_module("ambinb.toy")
        df = toy.ensure_toy(root, n=cfg["toy_n"], seed=cfg["toy_seed"], sessions=cfg["toy_sessions"])
    elif name == "iemocap":
        df = load_iemocap(root, strict=strict, require_audio=require_audio)
    else:
        df = load_crema_d(root, strict=strict, require_audio=require_audio,
                          fold_scheme=cfg.get("fold_scheme", "speaker"), seed=int(cfg.get("seed", 0)),
                          n_folds=int(cfg.get("n_folds", 5)))
    expected = list(cfg.get("classes") or [])
    if expected and expected != class_names(df):
        raise LabelError(f"dataset {name!r}: params say classes {expected}, the table has {class_names(df)}")
    return df


def split(df: pd.DataFrame, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(train, test)`` for one test fold: test rows have ``fold == fold``, train rows all others.

    Raises:
        LabelError: when no row has that fold (the message lists the folds there are).
    """
    if isinstance(fold, bool) or int(fold) != fold:
        raise LabelError(f"fold={fold!r}: expected an integer")
    is_test = (df["fold"] == int(fold)).to_numpy()
    if fold < 0 or not is_test.any():
        present = sorted(int(k) for k in set(df["fold"]) if k >= 0)
        raise LabelError(f"fold={fold}: no test rows; the table's test folds are {present}")
    return df[~is_test].reset_index(drop=True), df[is_test].reset_index(drop=True)


def split_for_run(df: pd.DataFrame, cfg: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(train, evaluated)`` for a run: :func:`split` on the test fold, or, with ``eval_split:
    validation``, the test fold dropped and :func:`split` of the rest on the validation fold
    (:func:`ambinb.paths.validation_fold`), so settings are chosen without seeing the test fold."""
    train, test = split(df, int(cfg["fold"]))
    v = validation_fold(cfg)
    if v is None:
        return train, test
    try:
        return split(train, v)
    except LabelError as err:
        raise LabelError(f"validation_fold: {err}") from None


def _attrs_path(path: Path) -> Path:
    return path.with_name(path.name + ATTRS_SUFFIX)


def save_labels(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Validate ``df`` and write it as CSV atomically; ``df.attrs`` go beside it (``<path>.attrs.json``)."""
    path = Path(path)
    validate_table(df, where=str(path))
    write_atomic(path, df.to_csv(index=False, lineterminator="\n"))
    if df.attrs:
        write_json(_attrs_path(path), df.attrs)
    else:
        _attrs_path(path).unlink(missing_ok=True)
    return path


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by :func:`save_labels` (with its ``attrs``), validated."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no label table there")
    with open(path, newline="") as fh:
        header = next(csv.reader(fh), [])
    dtypes = {c: _dtype(c) for c in header if c in SCHEMA_COLUMNS or c.startswith(("votes_", "p_"))
              or c in ("n_raters", "sex", "intended", "level")}
    try:
        df = pd.read_csv(path, dtype=dtypes, keep_default_na=False)
    except ValueError as err:
        raise LabelError(f"{path}: cannot read as a label table: {err}") from err
    validate_table(df, where=str(path))
    attrs = _attrs_path(path)
    if attrs.is_file():
        df.attrs.update(json.loads(attrs.read_text()))
    return df


# --- summary for the notebook -------------------------------------------------------------------

def describe(df: pd.DataFrame, ambiguous_max_p: float = metrics.AMBIGUOUS_MAX_P) -> dict[str, Any]:
    """Tidy summary tables of a label table (for ``01_labels``; each DataFrame plots directly).

    Returns a dict with:
        ``counts``: one-row DataFrame: utterances, speakers, folds, votes, ambiguous share, fallback rows.
        ``votes_per_class``: class, votes, vote_share, consensus (utterances), mean_p.
        ``votes_per_utterance``: n_votes, utterances (``raters_per_utterance`` alike from ``n_raters``).
        ``entropy``: per utterance: utt_id, fold, entropy_bits, max_p, ambiguous.
        ``entropy_summary``: count, mean, std, min, 25%, 50%, 75%, max of the entropy in bits.
        ``ambiguous_share``: float, share of utterances with max p < ``ambiguous_max_p``.
        ``fold_balance``: one row per fold: utterances, speakers, then the consensus count per class.
        ``fallback``: int, rows whose p is the one-hot consensus fallback.
        ``warnings``, ``skipped``: DataFrames kind/reason -> count from ``df.attrs``.
    """
    classes = class_names(df)
    p, votes = p_matrix(df), vote_matrix(df)
    h = metrics.entropy(p)
    max_p = p.max(axis=1)
    ambiguous = max_p < ambiguous_max_p
    fallback = int(df["fallback"].sum()) if "fallback" in df.columns else int((df["n_votes"] == 0).sum())
    per_class = pd.DataFrame({
        "class": classes,
        "votes": votes.sum(axis=0),
        "vote_share": votes.sum(axis=0) / max(int(votes.sum()), 1),
        "consensus": [int((df["consensus"] == c).sum()) for c in classes],
        "mean_p": p.mean(axis=0) if len(df) else np.zeros(len(classes)),
    })
    entropy = pd.DataFrame({"utt_id": df["utt_id"].to_numpy(), "fold": df["fold"].to_numpy(), "entropy_bits": h,
                            "max_p": max_p, "ambiguous": ambiguous})
    consensus = pd.crosstab(df["fold"], df["consensus"]).reindex(columns=classes, fill_value=0)
    balance = pd.concat([df.groupby("fold").agg(utterances=("utt_id", "size"), speakers=("speaker", "nunique")),
                         consensus], axis=1).reset_index()
    out = {
        "counts": pd.DataFrame([{"utterances": len(df), "speakers": df["speaker"].nunique(),
                                 "folds": df["fold"].nunique(), "votes": int(votes.sum()),
                                 "ambiguous_share": float(ambiguous.mean()) if len(df) else float("nan"),
                                 "fallback": fallback}]),
        "votes_per_class": per_class,
        "votes_per_utterance": _value_counts(df["n_votes"], "n_votes"),
        "entropy": entropy,
        "entropy_summary": entropy["entropy_bits"].describe().to_frame().T.reset_index(drop=True),
        "ambiguous_share": float(ambiguous.mean()) if len(df) else float("nan"),
        "fold_balance": balance,
        "fallback": fallback,
        "warnings": _count_table(df.attrs.get("warnings", {}), "kind"),
        "skipped": _count_table(df.attrs.get("skipped", {}), "reason"),
    }
    if "n_raters" in df.columns:
        out["raters_per_utterance"] = _value_counts(df["n_raters"], "n_raters")
    return out


def _value_counts(values: pd.Series, name: str) -> pd.DataFrame:
    counts = values.value_counts().sort_index()
    return pd.DataFrame({name: counts.index.to_numpy(), "utterances": counts.to_numpy()})


def _count_table(counts: dict[str, int], name: str) -> pd.DataFrame:
    return pd.DataFrame({name: list(counts), "count": [int(v) for v in counts.values()]},
                        columns=[name, "count"]).astype({name: "str", "count": "int64"})
