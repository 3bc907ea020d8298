"""A small IEMOCAP_full_release in the real layout, for tests (no real IEMOCAP data in it).

``write_iemocap(tmp_path)`` writes::

    IEMOCAP_full_release/
      Session1/dialog/EmoEvaluation/Ses01F_impro01.txt       (+ Categorical/..., ._Ses01F_impro01.txt)
      Session1/dialog/EmoEvaluation/Ses01M_script01_1.txt
      Session1/dialog/transcriptions/<same names>.txt
      Session1/sentences/wav/<dialog>/<utt>.wav              (10 ms of silence each)
      Session2/...                                            (Ses02F_impro02)

The blocks cover: single votes, multi-category lines (``Neutral; Frustration;``), self-ratings
(``C-F1``/``C-M1``), Excited, Frustration/Other/Surprise/Disgust (dropped), excluded consensus
codes (``fru``, ``xxx``, ``sur``), a block with no vote in the four classes (one-hot fallback),
both speakers of each session, and a script dialog whose name says ``M`` but whose ``_F000`` turn
is the female actor. The expected soft labels are worked out by hand in ``tests/test_labels.py``.
Transcriptions also hold lines the loader must skip (``M_01`` noise, an ``FXX0`` turn, an id
without a timestamp).
"""

from __future__ import annotations

import wave
from pathlib import Path

RELEASE = "IEMOCAP_full_release"
HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"

EMO_EVALUATION = {
    (1, "Ses01F_impro01"): HEADER + """\
[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]
C-E2:\tNeutral;\t()
C-E3:\tNeutral;\t()
C-E4:\tNeutral;\t()
C-F1:\tAnger;\t(curious)
A-E3:\tval 3; act 2; dom  2;\t()
A-E4:\tval 2; act 3; dom  2;\t(mildly aggravated but staying polite, attitude)
A-F1:\tval 3; act 2; dom  1;\t()

[10.0100 - 11.3925]\tSes01F_impro01_M000\tfru\t[2.0000, 3.5000, 3.5000]
C-E1:\tFrustration;\t()
C-E2:\tAnger; Frustration;\t()
C-E4:\tFrustration;\t()
C-M1:\tFrustration;\t()
A-E1:\tval 2; act 3; dom  3;\t()

[14.8872 - 18.0175]\tSes01F_impro01_F001\tneu\t[2.5000, 2.0000, 2.5000]
C-E1:\tNeutral; Frustration;\t()
C-E2:\tNeutral;\t()
C-E3:\tSadness;\t()
C-F1:\tFrustration;\t()
A-E1:\tval 2; act 2; dom  3;\t()

[19.2900 - 20.7875]\tSes01F_impro01_M001\texc\t[4.0000, 4.0000, 3.0000]
C-E1:\tExcited;\t()
C-E2:\tHappiness; Excited;\t()
C-E3:\tNeutral;\t()
C-E4:\tOther:amused;\t(amused)
C-M1:\tExcited;\t()
A-E1:\tval 4; act 4; dom  3;\t()

[21.3212 - 24.1350]\tSes01F_impro01_M002\txxx\t[2.5000, 3.0000, 3.0000]
C-E1:\tAnger;\t()
C-E2:\tNeutral;\t()
C-E3:\tFrustration;\t()
A-E1:\tval 2; act 3; dom  3;\t()

[27.4600 - 31.4900]\tSes01F_impro01_F002\tang\t[1.5000, 4.0000, 4.0000]
C-E1:\tFrustration;\t()
C-E2:\tOther:annoyed;\t()
C-E3:\tFrustration;\t()
C-F1:\tAnger;\t()
A-E1:\tval 1; act 4; dom  4;\t()

[33.1000 - 36.0300]\tSes01F_impro01_M003\tsad\t[2.0000, 2.0000, 2.0000]
C-E1:\tSadness;\t()
C-E2:\tSadness;\t()
C-E3:\tNeutral;\t()
C-M1:\tHappiness;\t()
A-E1:\tval 2; act 2; dom  2;\t()
""",
    (1, "Ses01M_script01_1"): HEADER + """\
[1.2000 - 3.4000]\tSes01M_script01_1_F000\thap\t[4.0000, 3.0000, 3.0000]
C-E1:\tHappiness;\t()
C-E2:\tHappiness; Surprise;\t()
C-E3:\tHappiness;\t()
A-E1:\tval 4; act 3; dom  3;\t()

[4.0000 - 6.5000]\tSes01M_script01_1_M000\tang\t[1.0000, 4.5000, 4.5000]
C-E1:\tAnger;\t()
C-E2:\tAnger; Frustration;\t()
C-E3:\tNeutral; Disgust;\t()
C-E4:\tAnger;\t()
C-M1:\tAnger;\t()
A-E1:\tval 1; act 5; dom  4;\t()
""",
    (2, "Ses02F_impro02"): HEADER + """\
[2.0000 - 4.0000]\tSes02F_impro02_F000\tsad\t[1.5000, 2.0000, 2.0000]
C-E1:\tSadness;\t()
C-E2:\tSadness; Neutral;\t()
C-E3:\tSadness;\t()
A-E1:\tval 1; act 2; dom  2;\t()

[5.0000 - 7.0000]\tSes02F_impro02_M000\tneu\t[3.0000, 3.0000, 3.0000]
C-E1:\tNeutral;\t()
C-E2:\tHappiness;\t()
C-E3:\tAnger;\t()
A-E1:\tval 3; act 3; dom  3;\t()

[8.0000 - 9.0000]\tSes02F_impro02_F001\tsur\t[3.0000, 4.0000, 3.0000]
C-E1:\tSurprise;\t()
C-E2:\tSurprise;\t()
C-E3:\tHappiness;\t()
A-E1:\tval 3; act 4; dom  3;\t()
""",
}

TRANSCRIPTIONS = {
    (1, "Ses01F_impro01"): """\
Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.
Ses01F_impro01_M000 [007.5712-010.4750]: Do you have your forms?
M_01 [010.1000-010.2000]: [BREATHING]
Ses01F_impro01_F001 [014.8872-018.0175]: Yeah.
Ses01F_impro01_M001 [019.2900-020.7875]: Let me see them.
Ses01F_impro01_MXX0 [020.8000-021.0000]: Um.
Ses01F_impro01_M002 [021.3212-024.1350]: Is there a problem?
Ses01F_impro01_F002 [027.4600-031.4900]: Who told you to get in this line?
Ses01F_impro01_F003: (laughter)
Ses01F_impro01_M003 [033.1000-036.0300]: You did.
""",
    (1, "Ses01M_script01_1"): """\
Ses01M_script01_1_F000 [001.2000-003.4000]: What a lovely day, isn't it?
Ses01M_script01_1_M000 [004.0000-006.5000]: Don't you dare, not again!
""",
    (2, "Ses02F_impro02"): """\
Ses02F_impro02_F000 [002.0000-004.0000]: I miss him so much.
Ses02F_impro02_M000 [005.0000-007.0000]: It's on the table, next to the keys.
Ses02F_impro02_F001 [008.0000-009.0000]: Oh! You came back!
""",
}

# A file the loader must not read: EmoEvaluation/Categorical/ holds one file per evaluator.
CATEGORICAL = "Ses01F_impro01_F000 :Anger; ()\nSes01F_impro01_M000 :Anger; ()\n"
# A macOS resource fork, as found in some copies of the release.
RESOURCE_FORK = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x02\x00\x00\x00\t\xff\xfe"


def utterance_ids() -> list[str]:
    """Every utterance with an EmoEvaluation block (included or not)."""
    ids = []
    for text in EMO_EVALUATION.values():
        ids += [line.split("\t")[1] for line in text.splitlines() if line.startswith("[")]
    return ids


def emo_file(release: Path, session: int, dialog: str) -> Path:
    return release / f"Session{session}" / "dialog" / "EmoEvaluation" / f"{dialog}.txt"


def transcript_file(release: Path, session: int, dialog: str) -> Path:
    return release / f"Session{session}" / "dialog" / "transcriptions" / f"{dialog}.txt"


def wav_file(release: Path, utt_id: str) -> Path:
    session = int(utt_id[3:5])
    return release / f"Session{session}" / "sentences" / "wav" / utt_id.rsplit("_", 1)[0] / f"{utt_id}.wav"


def _silence(path: Path, seconds: float = 0.01, rate: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * int(seconds * rate))


def write_iemocap(parent: Path, audio: bool = True) -> Path:
    """Write the fixture under ``parent/IEMOCAP_full_release`` and return that folder."""
    release = Path(parent) / RELEASE
    for (session, dialog), text in EMO_EVALUATION.items():
        path = emo_file(release, session, dialog)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        tpath = transcript_file(release, session, dialog)
        tpath.parent.mkdir(parents=True, exist_ok=True)
        tpath.write_text(TRANSCRIPTIONS[(session, dialog)])
    evaluation = emo_file(release, 1, "Ses01F_impro01").parent
    (evaluation / "Categorical").mkdir()
    (evaluation / "Categorical" / "Ses01F_impro01_e1_cat.txt").write_text(CATEGORICAL)
    (evaluation / "._Ses01F_impro01.txt").write_bytes(RESOURCE_FORK)
    if audio:
        for utt in utterance_ids():
            _silence(wav_file(release, utt))
    return release


def add_lines(path: Path, text: str) -> int:
    """Append ``text`` (lines) to a fixture file; return the line number of its first line."""
    existing = path.read_text()
    if not existing.endswith("\n"):
        existing += "\n"
    path.write_text(existing + text)
    return existing.count("\n") + 1


def line_of(path: Path, fragment: str) -> int:
    """The 1-based number of the first line of ``path`` containing ``fragment``."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if fragment in line:
            return number
    raise AssertionError(f"{fragment!r} not in {path}")
