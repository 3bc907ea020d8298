"""IEMOCAP: the ``IEMOCAP_full_release`` folder (its real layout) read into the label table.

Worked example (the four-class subset of the paper)::

    [6.29 - 8.23]  Ses01F_impro01_M001  exc  [...]
    C-E1:  Excited;                 -> happiness +1
    C-E2:  Happiness; Excited;      -> happiness +2   (each category on a line is one vote)
    C-E3:  Neutral;                 -> neutral   +1
    C-E4:  Other:amused;            -> dropped         (not one of the four classes)
    C-M1:  Excited;                 -> ignored         (the actor's self-rating is not a vote)
    votes (anger, happiness, sadness, neutral) = (0, 3, 0, 1), n_votes = 4
    p = (0, 0.75, 0, 0.25), consensus = happiness (exc), speaker = Ses01M, fold = 0

Nothing vanishes unreported: an empty, unreadable or header-less EmoEvaluation file, a
transcription file without its EmoEvaluation file, and transcribed utterances without a label
block are each a problem named by file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from ambinb.labels.iemocap_files import Transcript, parse_emo_evaluation, parse_transcriptions
from ambinb.labels.table import CLASSES, build_table
from ambinb.labels.tally import LabelError, Tally

IEMOCAP_SUBSET = {"neu": "neutral", "hap": "happiness", "exc": "happiness", "sad": "sadness", "ang": "anger"}
IEMOCAP_OTHER_CODES = ("fru", "fea", "sur", "dis", "oth", "xxx")
MAX_IDS_SHOWN = 5  # utterance ids listed in a problem about a whole file
_UTT_RE = re.compile(r"^(Ses(\d{2})[FM])_.*?([A-Za-z])(\d+)$")
_SESSION_DIR_RE = re.compile(r"^Session(\d+)$")


def _release_root(root: str | os.PathLike) -> Path:
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        state = "is not a folder" if path.exists() else "does not exist"
        raise FileNotFoundError(f"IEMOCAP root {path} {state} (expected an IEMOCAP_full_release folder)")
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


def _visible_txt(folder: Path, tally: Tally) -> list[Path]:
    """The ``*.txt`` files of ``folder`` (none when it is missing), hidden ones (``._x.txt``) counted and left out."""
    files = []
    for p in sorted(folder.glob("*.txt")):
        if p.name.startswith("."):
            tally.skip("file:hidden (e.g. macOS ._ resource forks)")
        elif p.is_file():
            files.append(p)
    return files


def speaker_of(utt_id: str) -> tuple[str, int] | None:
    """``Ses01M_script01_1_F000`` -> ``("Ses01F", 1)``: the letter before the last number is the speaker.

    None for an id that is not a labelled turn (``M_01``, ``Ses01F_impro01_MXX0``).
    """
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


def _ids(ids: list[str]) -> str:
    """``["a", "b", ...]`` -> ``"a, b, c, d, e and 3 more"``."""
    shown = ", ".join(ids[:MAX_IDS_SHOWN])
    return shown + (f" and {len(ids) - MAX_IDS_SHOWN} more" if len(ids) > MAX_IDS_SHOWN else "")


def _labelled_turns(texts: dict[str, Transcript]) -> list[str]:
    """The transcribed utterances that should have a label block: timed lines of an actor's turn."""
    return [utt for utt, t in texts.items() if t.timed and speaker_of(utt) is not None]


def load_iemocap(root: str | os.PathLike, strict: bool = False, require_audio: bool = False) -> pd.DataFrame:
    """Read an ``IEMOCAP_full_release`` folder (its real layout) into the label table.

    Reads ``Session{k}/dialog/EmoEvaluation/*.txt`` (sub-folders such as ``Categorical/`` are not
    read), ``Session{k}/dialog/transcriptions/*.txt`` and ``Session{k}/sentences/wav/<dialog>/<utt>.wav``.
    Rules (the paper's IEMOCAP subset): utterances whose header code is neu, hap, exc, sad or ang;
    votes from ``C-E*`` lines only, each category on a line one vote, Excited counted as happiness,
    other categories dropped and the rest renormalised; an utterance left with no vote in the four
    classes falls back to one-hot of its consensus (``fallback=True``, ``n_votes=0``; counted in
    ``attrs["fallback"]``). ``speaker`` is ``Ses<ss>`` plus the letter before the last number of
    the id (``Ses01M_script01_1_F000`` -> ``Ses01F``); ``session`` comes from the id;
    ``fold = session - 1``. ``n_raters`` counts ``C-E*`` lines.

    Args:
        root: the ``IEMOCAP_full_release`` folder (or a folder holding it).
        strict: raise :class:`LabelError` at the first problem instead of skipping it with a warning.
        require_audio: raise when a wav file (or the whole ``sentences/wav`` tree) is missing; otherwise
            such rows keep ``audio_path=""`` (label-only, with a :class:`LabelNote` when no audio exists).

    Returns:
        The label table (:mod:`ambinb.labels`), rows ordered by session, dialog file and position.

    Raises:
        LabelError: with ``strict``, at the first problem; always, when no utterance could be read.
    """
    root = _release_root(root)
    tally = Tally(strict)
    rows: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    any_audio = False
    for _, sdir in _session_dirs(root):
        any_audio |= _read_session(sdir, require_audio, tally, seen, rows)
    if not any_audio:
        tally.note(f"{root}: no Session<k>/sentences/wav folders; IEMOCAP loaded label-only (audio_path is empty)")
    classes = CLASSES["iemocap"]
    df = build_table(rows, classes, ["n_raters", "fallback"])
    if df.empty:
        raise LabelError(f"{root}: no IEMOCAP utterance could be read ({dict(tally.warnings) or 'no problem seen'}); "
                         f"expected Session<k>/dialog/EmoEvaluation/<dialog>.txt files with utterance blocks")
    fallback = int(df["fallback"].sum())
    if fallback:
        tally.note(f"IEMOCAP: {fallback} utterance(s) had no vote in {classes} and fall back to one-hot of their "
                   f"consensus label (fallback=True)")
    return tally.attach(df, fallback, root)


def _read_session(sdir: Path, require_audio: bool, tally: Tally, seen: dict[str, str],
                  rows: list[dict[str, Any]]) -> bool:
    """Append the rows of one ``Session<k>`` folder to ``rows``; return whether it has a wav folder."""
    emo_dir = sdir / "dialog" / "EmoEvaluation"
    text_dir = sdir / "dialog" / "transcriptions"
    if not emo_dir.is_dir():
        raise FileNotFoundError(f"{emo_dir}: missing; expected Session<k>/dialog/EmoEvaluation/*.txt")
    wavs = _wav_index(sdir)
    if wavs is None and require_audio:
        raise LabelError(f"{sdir / 'sentences' / 'wav'}: missing (require_audio=True)")
    emo_files = _visible_txt(emo_dir, tally)
    if not emo_files:
        tally.problem("no_label_files", str(emo_dir), "no EmoEvaluation <dialog>.txt file in this folder; the "
                      "session gives no utterance", skipped="session:no_label_files")
    for emo_file in emo_files:
        texts = _transcripts(text_dir / emo_file.name, tally)
        unreadable = tally.warnings["unreadable_file"]
        records = parse_emo_evaluation(emo_file, tally)
        if tally.warnings["unreadable_file"] == unreadable:  # an unreadable file is reported already
            _check_coverage(emo_file, records, texts, tally)
        used: set[str] = set()
        for rec in records:
            row = _iemocap_row(rec, sdir, emo_file.stem, texts, wavs, require_audio, tally, seen)
            if row is not None:
                rows.append(row)
                used.add(rec["utt_id"])
        tally.skip("transcript_line:not_in_table", len(set(texts) - used))
    labelled = {p.name for p in emo_files}
    for text_file in _visible_txt(text_dir, Tally(strict=False)):  # hidden files are counted once, above
        turns = [] if text_file.name in labelled else _labelled_turns(parse_transcriptions(text_file, tally))
        if turns:
            tally.problem("missing_label_file", str(text_file), f"no {emo_dir / text_file.name}; its {len(turns)} "
                          f"transcribed utterance(s) have no labels: {_ids(turns)}", skipped="file:no_label_file")
    return wavs is not None


def _transcripts(text_file: Path, tally: Tally) -> dict[str, Transcript]:
    if text_file.is_file():
        return parse_transcriptions(text_file, tally)
    tally.problem("missing_transcript_file", str(text_file), f"no transcription file for {text_file.stem}; "
                  f"its transcripts are empty")
    return {}


def _check_coverage(emo_file: Path, records: list[dict[str, Any]], texts: dict[str, Transcript],
                    tally: Tally) -> None:
    """Report, by file, an EmoEvaluation file without utterance blocks and transcribed turns without a block."""
    blocks = {r["utt_id"] for r in records}
    missing = [utt for utt in _labelled_turns(texts) if utt not in blocks]
    if not records:
        lost = f"; its {len(missing)} transcribed utterance(s) have no labels: {_ids(missing)}" if missing else ""
        tally.problem("empty_label_file", str(emo_file), f"no utterance block (a '[start - end] <utt_id> <code> "
                      f"[V, A, D]' header) in this EmoEvaluation file{lost}", skipped="file:no_utterance_block")
    elif missing:
        tally.problem("missing_labels", str(emo_file), f"{len(missing)} transcribed utterance(s) of "
                      f"{emo_file.stem} have no block in this EmoEvaluation file: {_ids(missing)}")


def _iemocap_row(rec: dict[str, Any], sdir: Path, dialog: str, texts: dict[str, Transcript],
                 wavs: dict[str, set[str]] | None, require_audio: bool, tally: Tally,
                 seen: dict[str, str]) -> dict[str, Any] | None:
    """The table row of one utterance record, or None when it is left out (counted)."""
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
    spk = speaker_of(utt)
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
    audio_path = _audio_path(utt, where, sdir, wavs, require_audio, tally)
    text = texts.get(utt)
    if text is None:
        tally.problem("missing_transcript", where, f"no transcript line for {utt} in "
                      f"{sdir / 'dialog' / 'transcriptions' / (dialog + '.txt')}; transcript left empty")
    return {
        "utt_id": utt, "dataset": "iemocap", "speaker": speaker, "session": session, "fold": session - 1,
        "transcript": text.text if text else "", "audio_path": audio_path,
        "consensus": IEMOCAP_SUBSET[code], "votes": [rec["votes"][c] for c in CLASSES["iemocap"]],
        "n_raters": rec["n_raters"], "fallback": not any(rec["votes"].values()),
    }


def _audio_path(utt: str, where: str, sdir: Path, wavs: dict[str, set[str]] | None, require_audio: bool,
                tally: Tally) -> str:
    """``sentences/wav/<dialog>/<utt>.wav`` when it exists, else "" (a counted problem, or an error)."""
    if wavs is None:
        return ""
    utt_dialog = utt.rsplit("_", 1)[0]
    wav = sdir / "sentences" / "wav" / utt_dialog / f"{utt}.wav"
    if f"{utt}.wav" in wavs.get(utt_dialog, ()):
        return str(wav)
    if require_audio:
        raise LabelError(f"{where}: audio for {utt} missing: {wav} (require_audio=True)")
    tally.problem("missing_audio", where, f"audio for {utt} missing: {wav}; audio_path left empty")
    return ""
