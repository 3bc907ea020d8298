"""CREMA-D: the release's vote tables (its real layout) read into the label table, and its folds.

Reads ``processedResults/tabulatedVotes.csv`` (the crowd's votes), ``SentenceFilenames.csv``
(clip number -> clip name) and ``VideoDemographics.csv`` (actor -> sex); ``AudioWAV/`` is
optional. A file that is missing, empty or not a CSV is an error naming its path; a row that
cannot be used is a counted problem naming the file, row and, for a vote, the column.
"""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ambinb.labels.table import CLASSES, TRAIN_ONLY_FOLD, build_table
from ambinb.labels.tally import LabelError, Tally

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
MAX_COUNT = 2**31 - 1  # the largest vote, clip or row number read; larger values are not counts
_LAYOUT = ("the CREMA-D layout (processedResults/tabulatedVotes.csv, SentenceFilenames.csv, "
           "VideoDemographics.csv, optional AudioWAV/)")
_CLIP_RE = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
_MODALITY = {1: "voice", 2: "face", 3: "audio_visual"}


def read_csv(path: Path, required: list[str]) -> pd.DataFrame:
    """Read a CSV as strings; raise naming the file when it is missing, empty, unreadable or lacks a column."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {'not a file' if path.exists() else 'missing'}; expected {_LAYOUT}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as err:
        raise LabelError(f"{path}: empty file ({path.stat().st_size} bytes, no header); expected {_LAYOUT}") from err
    except (ValueError, OSError) as err:  # ParserError, UnicodeDecodeError, PermissionError, ...
        raise LabelError(f"{path}: not a readable CSV: {err}") from err
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise LabelError(f"{path}: missing columns {missing} (has {list(df.columns)})")
    return df


def whole_numbers(values: pd.Series) -> np.ndarray:
    """Strings -> float64 array of counts, NaN where a value is not a whole number in [0, MAX_COUNT].

    Example: ``["3", " 4 ", "3.0", "3.5", "x", "inf", "nan", "-1", ""]`` -> ``[3, 4, 3, nan, nan, nan, nan, nan, nan]``.
    """
    num = pd.to_numeric(values.str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    ok = np.isfinite(num) & (num == np.round(num)) & (num >= 0) & (num <= MAX_COUNT)
    return np.where(ok, num, np.nan)


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
    sex from ``VideoDemographics.csv``. ``transcript`` is the clip's sentence (:data:`CREMA_D_SENTENCES`);
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

    Raises:
        LabelError: a CSV that is empty or unreadable, or lacks a column; with ``strict``, the first
            problem; always, when no row could be used.

    Example: the row ``"100001",0,0,0,1,10,0,"1001_IEO_NEU_XX",11,...`` gives ``votes_happiness=1``,
    ``votes_neutral=10``, ``n_votes=11``, ``p_neutral=10/11``, transcript ``It's eleven o'clock``.
    """
    if fold_scheme not in CREMA_D_FOLD_SCHEMES:
        raise ValueError(f"fold_scheme={fold_scheme!r}: choose one of {list(CREMA_D_FOLD_SCHEMES)}")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"CREMA-D root {root} {'is not a folder' if root.exists() else 'does not exist'}")
    tally = Tally(strict)
    votes_path = root / "processedResults" / "tabulatedVotes.csv"
    names_path = root / "SentenceFilenames.csv"
    demo_path = root / "VideoDemographics.csv"
    table = read_csv(votes_path, [*CREMA_D_VOTE_COLUMNS, "fileName", "numResponses"])
    names = read_csv(names_path, ["Stimulus_Number", "Filename"])
    demo = read_csv(demo_path, ["ActorID", "Sex"])
    clip_names = _clip_names(names, names_path, tally)
    actor_sex = _actors(demo, demo_path, tally)
    audio = _Audio(root / "AudioWAV", require_audio, tally)
    rows, voice_clips = _rows(table, votes_path, clip_names, actor_sex, audio, tally)
    for clip in sorted(set(clip_names) - voice_clips):
        tally.problem("missing_votes", f"{names_path} clip {clip}", f"{clip_names[clip]} has no voice-only row "
                      f"({100000 + clip}) in {votes_path}", skipped="clip:no_voice_votes")
    df = build_table(rows, CLASSES["crema_d"], ["n_raters", "fallback", "sex", "intended", "level"])
    if df.empty:
        raise LabelError(f"{votes_path}: no usable voice-only row ({dict(tally.warnings) or 'no row at all'})")
    _assign_folds(df, fold_scheme, seed, n_folds, tally)
    return tally.attach(df, 0, root)


def _assign_folds(df: pd.DataFrame, fold_scheme: str, seed: int, n_folds: int, tally: Tally) -> None:
    if fold_scheme == "speaker":
        folds = crema_d_speaker_folds(dict(zip(df["speaker"], df["sex"], strict=True)), n_folds=n_folds, seed=seed)
        df["fold"] = df["speaker"].map(folds).astype("int64")
    else:
        df["fold"] = crema_d_emobox_split(df["intended"], seed=seed)
        tally.notes.append("CREMA-D fold_scheme=emobox: fold 0 is the test split (25 % of each intended emotion, "
                           "not speaker-disjoint), fold -1 the training split")


class _Audio:
    """The clips in ``AudioWAV/`` (None: no such folder, label-only, with one note)."""

    def __init__(self, folder: Path, require_audio: bool, tally: Tally) -> None:
        self.folder, self.require_audio = folder, require_audio
        self.names: set[str] | None = None
        if folder.is_dir():
            self.names = {f.name for f in os.scandir(folder) if f.name.endswith(".wav")}
        elif require_audio:
            raise LabelError(f"{folder}: missing (require_audio=True)")
        else:
            tally.note(f"{folder.parent}: no AudioWAV folder; CREMA-D loaded label-only (audio_path is empty). "
                       f"Put the clips in {folder}/ to use audio.")

    def path(self, name: str, where: str, tally: Tally) -> str:
        """``AudioWAV/<name>.wav`` when it exists, else "" (a counted problem, or an error with require_audio)."""
        if self.names is None:
            return ""
        wav = self.folder / f"{name}.wav"
        if wav.name in self.names:
            return str(wav)
        if self.require_audio:
            raise LabelError(f"{where}: audio for {name} missing: {wav} (require_audio=True)")
        tally.problem("missing_audio", where, f"audio for {name} missing: {wav}; audio_path left empty")
        return ""


def _clip_names(names: pd.DataFrame, path: Path, tally: Tally) -> dict[int, str]:
    numbers = whole_numbers(names["Stimulus_Number"])
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


def _actors(demo: pd.DataFrame, path: Path, tally: Tally) -> dict[str, str]:
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


def _bad_votes(table: pd.DataFrame, i: int, vote_cols: list[str], counts: np.ndarray) -> str:
    """``"column 'D' holds 'inf'"`` (or several columns) for the vote cells of row ``i`` that are not counts."""
    bad = [f"column {c!r} holds {table[c].iat[i]!r}" for c, v in zip(vote_cols, counts, strict=True) if np.isnan(v)]
    return ", ".join(bad)


def _rows(table: pd.DataFrame, path: Path, clip_names: dict[int, str], actor_sex: dict[str, str],
          audio: _Audio, tally: Tally) -> tuple[list[dict[str, Any]], set[int]]:
    """The table's valid voice-only rows as row dicts, and every voice-only clip number seen."""
    ids = whole_numbers(table.iloc[:, 0])
    letters = {name: letter for letter, name in CREMA_D_VOTE_COLUMNS.items()}
    vote_cols = [letters[c] for c in CLASSES["crema_d"]]
    votes = np.stack([whole_numbers(table[c]) for c in vote_cols], axis=1)
    responses = whole_numbers(table["numResponses"])
    file_names = table["fileName"].str.strip().tolist()
    rows: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    voice_clips: set[int] = set()
    for i, name in enumerate(file_names):
        where = f"{path} row {i + 2}"
        if np.isnan(ids[i]):
            tally.problem("malformed_row", where, f"first column {table.iat[i, 0]!r} is not a clip number",
                          skipped="row:malformed")
            continue
        modality, clip = divmod(int(ids[i]), 100000)
        if modality not in _MODALITY:
            tally.problem("malformed_row", where, f"first column {table.iat[i, 0]!r} is not 100000 * modality "
                          f"({_MODALITY}) + clip number", skipped="row:malformed")
            continue
        if modality != 1:
            tally.skip(f"row:modality_{_MODALITY[modality]}")
            continue
        voice_clips.add(clip)
        if np.isnan(votes[i]).any():
            tally.problem("malformed_row", where, f"{_bad_votes(table, i, vote_cols, votes[i])}: vote counts must "
                          f"be non-negative integers", skipped="row:malformed")
            continue
        row = _checked_row(name, clip, [int(v) for v in votes[i]], responses[i], table["numResponses"].iat[i],
                           clip_names, seen, where, tally)
        if row is not None:
            rows.append(_clip_row(row, actor_sex, audio, where, tally))
    return rows, voice_clips


def _checked_row(name: str, clip: int, counts: list[int], responses: float, raw_responses: str,
                 clip_names: dict[int, str], seen: dict[str, str], where: str,
                 tally: Tally) -> dict[str, Any] | None:
    """The checked parts of a voice-only row (``name``, ``match``, ``counts``, ``n_raters``), or None (counted)."""
    if sum(counts) == 0:
        tally.problem("zero_votes", where, f"{name} has no votes", skipped="row:zero_votes")
        return None
    if clip not in clip_names:
        tally.problem("unknown_clip", where, f"clip number {clip} is not in SentenceFilenames.csv",
                      skipped="row:unknown_clip")
        return None
    if clip_names[clip] != name:
        tally.problem("filename_mismatch", where, f"fileName {name!r} but SentenceFilenames.csv names clip "
                      f"{clip} {clip_names[clip]!r}", skipped="row:filename_mismatch")
        return None
    m = _CLIP_RE.match(name)
    if not m:
        tally.problem("malformed_id", where, f"clip name {name!r} is not <actor>_<SEN>_<EMO>_<LV>",
                      skipped="row:malformed_id")
        return None
    if name in seen:
        tally.problem("duplicate_id", where, f"{name} already read at {seen[name]}; first kept",
                      skipped="row:duplicate_id")
        return None
    seen[name] = where
    n_raters = sum(counts) if np.isnan(responses) else int(responses)
    if n_raters != sum(counts) or np.isnan(responses):
        tally.problem("vote_count_mismatch", where, f"numResponses {raw_responses!r} but the "
                      f"votes sum to {sum(counts)}; the votes are used")
    return {"name": name, "match": m, "counts": counts, "n_raters": n_raters}


def _clip_row(checked: dict[str, Any], actor_sex: dict[str, str], audio: _Audio, where: str,
              tally: Tally) -> dict[str, Any]:
    """The table row of one checked clip: speaker, sex, transcript, intended emotion, consensus, audio."""
    name, counts = checked["name"], checked["counts"]
    actor, sentence, emo, level = checked["match"].groups()
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
    return {
        "utt_id": name, "dataset": "crema_d", "speaker": actor, "session": int(actor), "fold": 0,
        "transcript": CREMA_D_SENTENCES.get(sentence, ""), "audio_path": audio.path(name, where, tally),
        "consensus": consensus, "votes": counts, "n_raters": checked["n_raters"], "fallback": False,
        "sex": actor_sex.get(actor, "unknown"), "intended": intended, "level": level,
    }
