"""Soft-label loaders: the real CREMA-D tables, a small IEMOCAP fixture in the real layout, bad input.

Expected values are worked out by hand from the raw lines (comments beside each), or, for the
full CREMA-D table, recomputed with the ``csv`` module independently of the loader.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from iemocap_fixture import add_lines, emo_file, line_of, transcript_file, wav_file, write_iemocap

from ambinb import config, labels, parameters
from ambinb.labels import LabelError, LabelNote, LabelWarning

CREMA_D = Path(os.environ.get("AMBINB_CREMA_D", Path(__file__).resolve().parents[2] / "shared" / "data" / "crema-d"))
needs_crema_d = pytest.mark.skipif(not (CREMA_D / "processedResults" / "tabulatedVotes.csv").is_file(),
                                   reason=f"the CREMA-D tables are not at {CREMA_D} (set AMBINB_CREMA_D)")
IEMOCAP_CLASSES = ["anger", "happiness", "sadness", "neutral"]
CREMA_CLASSES = ["anger", "disgust", "fear", "happiness", "neutral", "sadness"]


def quiet(fn, *args, **kwargs):
    """Call a loader with its notes and warnings silenced (for tests about the table itself)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LabelNote)
        warnings.simplefilter("ignore", LabelWarning)
        return fn(*args, **kwargs)


def row(df: pd.DataFrame, utt_id: str) -> pd.Series:
    hit = df[df["utt_id"] == utt_id]
    assert len(hit) == 1, f"{utt_id}: {len(hit)} rows"
    return hit.iloc[0]


# --- CREMA-D, the real tables ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def crema_load() -> tuple[pd.DataFrame, list[warnings.WarningMessage]]:
    """The real tables read once for the module, with every warning the loader raised."""
    if not (CREMA_D / "processedResults" / "tabulatedVotes.csv").is_file():
        pytest.skip(f"the CREMA-D tables are not at {CREMA_D}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = labels.load_crema_d(CREMA_D)
    return df, caught


@pytest.fixture(scope="module")
def crema(crema_load) -> pd.DataFrame:
    return crema_load[0]


@needs_crema_d
def test_crema_d_label_only_emits_one_note(crema_load):
    df, caught = crema_load
    notes = [w for w in caught if issubclass(w.category, LabelNote)]
    assert len(notes) == 1 and "AudioWAV" in str(notes[0].message) and "label-only" in str(notes[0].message)
    assert not [w for w in caught if issubclass(w.category, LabelWarning)]  # the real tables are clean
    assert (df["audio_path"] == "").all()
    assert df.attrs["warnings"] == {} and df.attrs["notes"] == [str(notes[0].message)]


@needs_crema_d
def test_crema_d_counts(crema):
    labels.validate_table(crema)
    assert len(crema) == 7442 and crema["utt_id"].is_unique
    assert labels.class_names(crema) == CREMA_CLASSES
    assert crema["speaker"].nunique() == 91 and set(crema["speaker"].astype(int)) == set(range(1001, 1092))
    assert crema["n_votes"].min() == 4 and crema["n_votes"].max() == 12
    assert (crema["n_votes"] == crema["n_raters"]).all()  # numResponses = sum of the six counts in the release
    np.testing.assert_allclose(labels.p_matrix(crema).sum(axis=1), 1.0, atol=1e-12)
    assert (crema["session"] == crema["speaker"].astype(int)).all()
    # 22,326 rows = 7,442 clips x 3 modalities; the face and audio-visual rows are counted, not used
    assert crema.attrs["skipped"] == {"row:modality_face": 7442, "row:modality_audio_visual": 7442}


@needs_crema_d
def test_crema_d_matches_raw_csv_read_independently(crema):
    with open(CREMA_D / "processedResults" / "tabulatedVotes.csv", newline="") as fh:
        raw = {r["fileName"]: r for r in csv.DictReader(fh) if 100001 <= int(r[""]) <= 107442}
    assert set(raw) == set(crema["utt_id"])
    expected = np.array([[int(raw[u][k]) for k in "ADFHNS"] for u in crema["utt_id"]])
    np.testing.assert_array_equal(labels.vote_matrix(crema), expected)
    np.testing.assert_allclose(labels.p_matrix(crema), expected / expected.sum(axis=1, keepdims=True), atol=1e-12)


@needs_crema_d
def test_crema_d_spot_checks_by_hand(crema):
    # "100001",0,0,0,1,10,0,"1001_IEO_NEU_XX",11 -> H 1, N 10 of 11
    r = row(crema, "1001_IEO_NEU_XX")
    assert r["n_votes"] == 11 and r["votes_neutral"] == 10 and r["votes_happiness"] == 1
    assert r["p_neutral"] == pytest.approx(10 / 11) and r["p_happiness"] == pytest.approx(1 / 11)
    assert r["p_anger"] == 0.0 and r["consensus"] == "neutral" and r["transcript"] == "It's eleven o'clock"
    assert (r["speaker"], r["session"], r["sex"], r["intended"], r["level"]) == ("1001", 1001, "male", "neutral", "XX")
    # "104075",1,3,2,0,1,0,"1050_TSI_DIS_XX",7 -> A 1/7, D 3/7, F 2/7, N 1/7
    r = row(crema, "1050_TSI_DIS_XX")
    np.testing.assert_allclose([r[f"p_{c}"] for c in CREMA_CLASSES], [1 / 7, 3 / 7, 2 / 7, 0, 1 / 7, 0])
    assert r["consensus"] == "disgust" and r["transcript"] == "The surface is slick" and r["sex"] == "male"
    # "107441",0,1,2,0,2,3,"1091_WSI_FEA_XX",8 -> D 1/8, F 2/8, N 2/8, S 3/8; actor 1091 is female
    r = row(crema, "1091_WSI_FEA_XX")
    np.testing.assert_allclose([r[f"p_{c}"] for c in CREMA_CLASSES], [0, 0.125, 0.25, 0, 0.25, 0.375])
    assert r["consensus"] == "sadness" and r["sex"] == "female"
    assert r["transcript"] == "We'll stop in a couple of minutes"
    # "107369",0,0,2,1,1,0,"1091_IEO_ANG_MD",4 -> only 4 raters: F 2/4, H 1/4, N 1/4
    r = row(crema, "1091_IEO_ANG_MD")
    assert r["n_votes"] == 4 and r["p_fear"] == 0.5 and r["consensus"] == "fear" and r["level"] == "MD"
    # ties: "100535",2,2,2,0,2,1,"1007_MTI_ANG_XX" -> A, D, F, N tie; the intended ANG is among them
    assert row(crema, "1007_MTI_ANG_XX")["consensus"] == "anger"
    # "104809",2,2,2,1,2,1,"1059_TSI_HAP_XX" -> A, D, F, N tie; HAP is not tied -> first in class order
    assert row(crema, "1059_TSI_HAP_XX")["consensus"] == "anger"


@needs_crema_d
def test_crema_d_folds_actor_disjoint_and_sex_balanced(crema):
    assert sorted(crema["fold"].unique()) == [0, 1, 2, 3, 4]
    assert (crema.groupby("speaker")["fold"].nunique() == 1).all()  # each actor in exactly one fold
    actors = crema.drop_duplicates("speaker")
    per_fold = pd.crosstab(actors["fold"], actors["sex"])
    assert per_fold.sum().to_dict() == {"female": 43, "male": 48}
    assert (per_fold.max() - per_fold.min() <= 1).all()  # each sex spread within one actor
    sizes = per_fold.sum(axis=1)
    assert sizes.max() - sizes.min() <= 1 and sorted(sizes) == [18, 18, 18, 18, 19]
    for k in range(5):
        train, test = labels.split(crema, k)
        assert len(train) + len(test) == 7442 and not set(train["speaker"]) & set(test["speaker"])


def test_speaker_folds_seeded():
    actors = {str(1000 + i): ("female" if i % 3 else "male") for i in range(1, 30)}
    a = labels.crema_d_speaker_folds(actors, n_folds=5, seed=0)
    assert a == labels.crema_d_speaker_folds(actors, n_folds=5, seed=0)
    assert a != labels.crema_d_speaker_folds(actors, n_folds=5, seed=1)
    assert set(a) == set(actors) and set(a.values()) == set(range(5))
    for sex in ("female", "male"):
        counts = np.bincount([a[x] for x in actors if actors[x] == sex], minlength=5)
        assert counts.max() - counts.min() <= 1


@needs_crema_d
def test_crema_d_emobox_split(crema):
    folds = labels.crema_d_emobox_split(crema["intended"], seed=0)
    assert set(folds) == {0, labels.TRAIN_ONLY_FOLD}
    # floor(25 %) of each intended emotion is test, e.g. 1,271 ANG clips -> 317
    for emotion, group in pd.Series(folds).groupby(crema["intended"].to_numpy()):
        assert (group == 0).sum() == len(group) // 4, emotion
    assert (crema["intended"] == "anger").sum() == 1271 and ((crema["intended"] == "anger") & (folds == 0)).sum() == 317
    assert (labels.crema_d_emobox_split(crema["intended"], seed=0) == folds).all()
    assert not (labels.crema_d_emobox_split(crema["intended"], seed=1) == folds).all()


def test_crema_d_emobox_scheme_through_the_loader(tmp_path):
    clips = [f"1001_{sentence}_NEU_XX" for sentence in ("IEO", "TIE", "IOM", "IWW")] + ["1002_DFA_ANG_XX"]
    root = write_crema(tmp_path, [f'"{100001 + k}",0,0,0,1,10,0,"{c}",11,0.9,"N"\n' for k, c in enumerate(clips)],
                       clips=clips)
    df = quiet(labels.load_crema_d, root, fold_scheme="emobox", seed=0)
    # four NEU clips: floor(0.25 * 4) = 1 test clip; one ANG clip: none
    assert (df["fold"] == 0).sum() == 1 and df.loc[df["fold"] == 0, "intended"].tolist() == ["neutral"]
    np.testing.assert_array_equal(df["fold"], labels.crema_d_emobox_split(df["intended"], seed=0))
    assert "fold_scheme=emobox" in df.attrs["notes"][-1]
    big = pd.Series(["anger"] * 8 + ["fear"] * 4)  # 8 -> 2 test, 4 -> 1 test
    folds = labels.crema_d_emobox_split(big, seed=0)
    assert (folds[:8] == 0).sum() == 2 and (folds[8:] == 0).sum() == 1
    with_test = pd.DataFrame({"utt_id": [f"u{i}" for i in range(12)], "fold": folds})
    train, test = labels.split(with_test, 0)
    assert len(test) == 3 and len(train) == 9
    with pytest.raises(LabelError, match=r"fold=1: no test rows; the table's test folds are \[0\]"):
        labels.split(with_test, 1)
    with pytest.raises(ValueError, match="fold_scheme"):
        labels.load_crema_d(root, fold_scheme="random")


def test_crema_d_require_audio_raises_without_audio(tmp_path):
    with pytest.raises(LabelError, match=r"AudioWAV: missing \(require_audio=True\)"):
        labels.load_crema_d(write_crema(tmp_path), require_audio=True)


@needs_crema_d
def test_crema_d_describe(crema):
    d = labels.describe(crema)
    per_class = d["votes_per_class"].set_index("class")
    assert list(per_class.index) == CREMA_CLASSES
    assert per_class["votes"].sum() == crema["n_votes"].sum() == d["counts"]["votes"].iat[0]
    assert per_class["consensus"].sum() == 7442
    assert d["votes_per_utterance"]["utterances"].sum() == 7442
    assert d["votes_per_utterance"]["n_votes"].tolist() == list(range(4, 13))
    assert d["fold_balance"]["utterances"].sum() == 7442 and d["fold_balance"]["speakers"].sum() == 91
    p = labels.p_matrix(crema)
    assert d["ambiguous_share"] == pytest.approx((p.max(axis=1) < 0.8).mean())
    # 1001_IEO_NEU_XX: p = (10/11, 1/11): H = -(10/11 log2 10/11 + 1/11 log2 1/11) = 0.43950 bits
    h = d["entropy"].set_index("utt_id").loc["1001_IEO_NEU_XX", "entropy_bits"]
    assert h == pytest.approx(-(10 / 11 * np.log2(10 / 11) + 1 / 11 * np.log2(1 / 11)), abs=1e-6)
    assert d["fallback"] == 0 and d["warnings"].empty


def test_load_dataset_crema_d_through_params(monkeypatch):
    from ambinb.labels import dataset

    calls = []
    monkeypatch.setattr(dataset, "load_crema_d", lambda root, **kw: calls.append((root, kw)) or pd.DataFrame(
        {"p_anger": [], "p_disgust": [], "p_fear": [], "p_happiness": [], "p_neutral": [], "p_sadness": []}))
    labels.load_dataset(config.resolve(dataset="crema_d", data_root=str(CREMA_D), overrides={"fold_scheme": "emobox"}))
    assert calls == [(CREMA_D.resolve(), {"strict": False, "require_audio": False, "fold_scheme": "emobox",
                                           "seed": 0, "n_folds": 5})]


# --- CREMA-D, bad input on a three-clip copy of the layout -------------------------------------------

VOTES_HEADER = '"","A","D","F","H","N","S","fileName","numResponses","agreement","emoVote"\n'
GOOD_VOTES = [
    '"100001",0,0,0,1,10,0,"1001_IEO_NEU_XX",11,0.9,"N"\n',
    '"100002",6,2,0,0,1,0,"1002_DFA_ANG_XX",9,0.67,"A"\n',
    '"100003",0,0,1,0,1,2,"1002_TIE_SAD_LO",4,0.5,"S"\n',
    '"200001",0,0,0,0,11,0,"1001_IEO_NEU_XX",11,1,"N"\n',
]


CLIPS = ["1001_IEO_NEU_XX", "1002_DFA_ANG_XX", "1002_TIE_SAD_LO"]


def write_crema(root: Path, votes: list[str] | None = None, header: str = VOTES_HEADER,
                audio: tuple[str, ...] | None = None, clips: list[str] | None = None) -> Path:
    """The CREMA-D layout with ``votes`` (lines of tabulatedVotes.csv) and ``clips`` (SentenceFilenames.csv)."""
    (root / "processedResults").mkdir(parents=True, exist_ok=True)
    (root / "processedResults" / "tabulatedVotes.csv").write_text(header + "".join(votes or GOOD_VOTES))
    (root / "SentenceFilenames.csv").write_text('"Stimulus_Number","Filename"\n' + "".join(
        f'{k},"{name}"\n' for k, name in enumerate(clips or CLIPS, start=1)))
    (root / "VideoDemographics.csv").write_text(
        '"ActorID","Age","Sex","Race","Ethnicity"\n1001,51,"Male","Caucasian","Not Hispanic"\n'
        '1002,21,"Female","Caucasian","Not Hispanic"\n')
    if audio is not None:
        (root / "AudioWAV").mkdir(exist_ok=True)
        for name in audio:
            (root / "AudioWAV" / f"{name}.wav").write_bytes(b"RIFF")
    return root


def test_crema_d_mini_layout(tmp_path):
    df = quiet(labels.load_crema_d, write_crema(tmp_path), n_folds=2)
    labels.validate_table(df)
    assert df["utt_id"].tolist() == ["1001_IEO_NEU_XX", "1002_DFA_ANG_XX", "1002_TIE_SAD_LO"]
    # 1002_TIE_SAD_LO: F 1, N 1, S 2 of 4 -> (0, 0, .25, 0, .25, .5); level LO; "That is exactly what happened"
    r = row(df, "1002_TIE_SAD_LO")
    np.testing.assert_allclose([r[f"p_{c}"] for c in CREMA_CLASSES], [0, 0, 0.25, 0, 0.25, 0.5])
    assert (r["transcript"], r["level"], r["sex"]) == ("That is exactly what happened", "LO", "female")
    assert df.attrs["skipped"] == {"row:modality_face": 1}


def test_crema_d_missing_column_names_file_and_column(tmp_path):
    root = write_crema(tmp_path, header=VOTES_HEADER.replace('"N",', '"Neutral",'))
    with pytest.raises(LabelError, match=r"tabulatedVotes\.csv: missing columns \['N'\]"):
        labels.load_crema_d(root)


def test_crema_d_missing_table_names_the_file(tmp_path):
    root = write_crema(tmp_path)
    (root / "VideoDemographics.csv").unlink()
    with pytest.raises(FileNotFoundError, match="VideoDemographics.csv: missing"):
        labels.load_crema_d(root)


CREMA_BAD = {
    # name: (replacement for GOOD_VOTES[1], problem kind, message fragment)
    "zero_votes": ('"100002",0,0,0,0,0,0,"1002_DFA_ANG_XX",0,0,""\n', "zero_votes", "1002_DFA_ANG_XX has no votes"),
    "malformed": ('"100002",6,x,0,0,1,0,"1002_DFA_ANG_XX",9,0.67,"A"\n', "malformed_row",
                  "column 'D' holds 'x': vote counts must be non-negative integers"),
    "negative": ('"100002",6,-2,0,0,1,0,"1002_DFA_ANG_XX",9,0.67,"A"\n', "malformed_row", "column 'D' holds '-2'"),
    # not counts: each names the row and the column (an inf vote was an OverflowError naming nothing)
    "inf": ('"100002",6,inf,0,0,1,0,"1002_DFA_ANG_XX",9,0.67,"A"\n', "malformed_row", "column 'D' holds 'inf'"),
    "nan": ('"100002",6,2,0,NaN,1,0,"1002_DFA_ANG_XX",9,0.67,"A"\n', "malformed_row", "column 'H' holds 'NaN'"),
    "fraction": ('"100002",6,2,0,0,1.5,0,"1002_DFA_ANG_XX",9,0.67,"A"\n', "malformed_row", "column 'N' holds '1.5'"),
    "huge": ('"100002",1e30,2,0,0,1,-inf,"1002_DFA_ANG_XX",9,0.67,"A"\n', "malformed_row",
             "column 'A' holds '1e30', column 'S' holds '-inf'"),
    "renamed": (GOOD_VOTES[0].replace("100001", "100002"), "filename_mismatch", "SentenceFilenames.csv names"),
    "bad_id": ('"abc",6,2,0,0,1,0,"1002_DFA_ANG_XX",9,0.67,"A"\n', "malformed_row", "first column 'abc'"),
    "inf_id": ('"inf",6,2,0,0,1,0,"1002_DFA_ANG_XX",9,0.67,"A"\n', "malformed_row", "first column 'inf'"),
    "bad_modality": ('"900002",6,2,0,0,1,0,"1002_DFA_ANG_XX",9,0.67,"A"\n', "malformed_row",
                     "first column '900002' is not 100000 * modality"),
}


@pytest.mark.parametrize("case", sorted(CREMA_BAD))
def test_crema_d_bad_row_is_counted_or_raises(tmp_path, case):
    line, kind, fragment = CREMA_BAD[case]
    root = write_crema(tmp_path, [GOOD_VOTES[0], line, *GOOD_VOTES[2:]])
    where = f"{root / 'processedResults' / 'tabulatedVotes.csv'} row 3"  # CSV line 3: header, clip 1, this
    with pytest.warns(LabelWarning, match=re.escape(where) + ".*" + re.escape(fragment)):
        df = quiet_notes(labels.load_crema_d, root, n_folds=2)
    assert "1002_DFA_ANG_XX" not in set(df["utt_id"]) and len(df) == 2
    assert df.attrs["warnings"][kind] == 1
    with pytest.raises(LabelError, match=re.escape(where) + ".*" + re.escape(fragment)):
        quiet_notes(labels.load_crema_d, root, strict=True, n_folds=2)


def quiet_notes(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LabelNote)
        return fn(*args, **kwargs)


def test_crema_d_duplicate_clip_row(tmp_path):
    root = write_crema(tmp_path, [*GOOD_VOTES[:3], GOOD_VOTES[1]])  # clip 2 twice; the copy is CSV line 5
    with pytest.warns(LabelWarning, match=r"tabulatedVotes\.csv row 5: 1002_DFA_ANG_XX already read at .*row 3"):
        df = quiet_notes(labels.load_crema_d, root, n_folds=2)
    assert len(df) == 3 and df.attrs["warnings"] == {"duplicate_id": 1}
    with pytest.raises(LabelError, match=r"row 5: 1002_DFA_ANG_XX already read"):
        quiet_notes(labels.load_crema_d, root, strict=True, n_folds=2)


def test_crema_d_vote_count_mismatch_keeps_the_row(tmp_path):
    root = write_crema(tmp_path, [GOOD_VOTES[0], GOOD_VOTES[1].replace(",9,0.67", ",12,0.67"), *GOOD_VOTES[2:]])
    with pytest.warns(LabelWarning, match=r"row 3: numResponses '12' but the votes sum to 9"):
        df = quiet_notes(labels.load_crema_d, root, n_folds=2)
    r = row(df, "1002_DFA_ANG_XX")
    assert (r["n_votes"], r["n_raters"]) == (9, 12) and r["p_anger"] == pytest.approx(6 / 9)


def test_crema_d_clip_without_voice_row(tmp_path):
    root = write_crema(tmp_path, [GOOD_VOTES[0], GOOD_VOTES[2]])
    with pytest.warns(LabelWarning, match=r"SentenceFilenames\.csv clip 2: 1002_DFA_ANG_XX has no voice-only row"):
        df = quiet_notes(labels.load_crema_d, root, n_folds=2)
    assert df.attrs["skipped"]["clip:no_voice_votes"] == 1


def test_crema_d_audio_paths_and_missing_audio(tmp_path):
    root = write_crema(tmp_path, audio=("1001_IEO_NEU_XX", "1002_TIE_SAD_LO"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = labels.load_crema_d(root, n_folds=2)
    assert not [w for w in caught if issubclass(w.category, LabelNote)]  # AudioWAV exists: no label-only note
    problems = [str(w.message) for w in caught if issubclass(w.category, LabelWarning)]
    assert len(problems) == 1 and "1 x missing_audio" in problems[0] and "1002_DFA_ANG_XX.wav" in problems[0]
    assert row(df, "1001_IEO_NEU_XX")["audio_path"] == str(root / "AudioWAV" / "1001_IEO_NEU_XX.wav")
    assert row(df, "1002_DFA_ANG_XX")["audio_path"] == ""
    with pytest.raises(LabelError, match=r"row 3: audio for 1002_DFA_ANG_XX missing: .*AudioWAV/1002_DFA_ANG_XX\.wav"):
        labels.load_crema_d(root, require_audio=True, n_folds=2)


@pytest.mark.parametrize("name", ["processedResults/tabulatedVotes.csv", "SentenceFilenames.csv",
                                  "VideoDemographics.csv"])
def test_crema_d_empty_csv_names_the_path(tmp_path, name):
    root = write_crema(tmp_path)
    (root / name).write_bytes(b"")  # today: pandas' EmptyDataError, naming no file
    with pytest.raises(LabelError, match=re.escape(str(root / name)) + r": empty file \(0 bytes, no header\)"):
        quiet_notes(labels.load_crema_d, root, n_folds=2)


def test_crema_d_unparseable_csv_names_the_path(tmp_path):
    root = write_crema(tmp_path, [GOOD_VOTES[0], '"100002",6,2,0,0,1,0,"1002_DFA_ANG_XX,9\n'])  # quote never closed
    with pytest.raises(LabelError, match=re.escape(str(root / "processedResults" / "tabulatedVotes.csv"))
                       + ": not a readable CSV"):
        quiet_notes(labels.load_crema_d, root, n_folds=2)


def test_crema_d_header_only_votes_is_an_error(tmp_path):
    root = write_crema(tmp_path, [""])
    with pytest.raises(LabelError, match=r"tabulatedVotes\.csv: no usable voice-only row \(\{'missing_votes': 3\}\)"):
        quiet(labels.load_crema_d, root, n_folds=2)


def cut_off(tmp_path: Path, n_clips: int, n_rows: int, tail: str = "") -> Path:
    """A layout of ``n_clips`` clips whose tabulatedVotes.csv stops after ``n_rows`` rows (then ``tail``)."""
    clips = [f"1001_{sentence}_{emo}_XX" for emo in labels.CREMA_D_INTENDED for sentence in labels.CREMA_D_SENTENCES]
    clips = clips[:n_clips]
    votes = [f'"{100001 + k}",0,0,0,1,3,0,"{c}",4,0.75,"N"\n' for k, c in enumerate(clips)]
    return write_crema(tmp_path, votes[:n_rows] + [tail], clips=clips)


def test_crema_d_cut_off_file_is_summarised_once(tmp_path):
    root = cut_off(tmp_path, 40, 5)
    names = root / "SentenceFilenames.csv"
    with pytest.warns(LabelWarning) as caught:
        df = quiet_notes(labels.load_crema_d, root, n_folds=2)
    assert len(df) == 5 and df.attrs["warnings"] == {"missing_votes": 35}
    (warning,) = caught  # 35 problems of one kind: one warning, one line for the kind
    lines = str(warning.message).splitlines()
    assert lines[0] == f'35 problem(s) in {root}, skipped and counted in df.attrs["warnings"]:'
    assert lines[1].startswith(f"  35 x missing_votes: {names} clip 6: ")
    assert lines[1].endswith("(also clip 7, clip 8; +32 more)")
    assert lines[2].startswith("strict=True") and len(lines) == 3
    assert [where for where, _ in df.attrs["examples"]["missing_votes"]] == [f"{names} clip {k}" for k in (6, 7, 8)]


def test_crema_d_row_cut_in_the_middle_is_named(tmp_path):
    root = cut_off(tmp_path, 6, 5, tail='"100006",0,0,0')  # the last row stops inside the votes
    where = f"{root / 'processedResults' / 'tabulatedVotes.csv'} row 7"
    with pytest.warns(LabelWarning, match=re.escape(where) + r": column 'H' holds '', column 'N' holds '', "):
        df = quiet_notes(labels.load_crema_d, root, n_folds=2)
    assert len(df) == 5 and df.attrs["warnings"] == {"malformed_row": 1}  # clip 6 has its (broken) row


def test_load_and_report_writes_the_summary_where_the_user_looks(tmp_path, monkeypatch):
    from ambinb.progress import RUN_LOG_ENV

    root = cut_off(tmp_path / "corpus", 40, 5)
    log = tmp_path / "run.log"
    monkeypatch.setenv(RUN_LOG_ENV, str(log))
    cfg = config.resolve(dataset="crema_d", data_root=str(root), overrides={"n_folds": 2})
    stream = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the report replaces the warnings
        df = labels.load_and_report(cfg, stream=stream)
    text = stream.getvalue()
    assert text == log.read_text()
    assert text.splitlines()[0] == f'35 problem(s) in {root}, skipped and counted in df.attrs["warnings"]:'
    assert "35 x missing_votes" in text and "strict=True" in text
    assert text.splitlines()[-1].startswith("note: ") and "label-only" in text.splitlines()[-1]
    assert len(df) == 5
    with pytest.raises(LabelError, match=r"clip 6: .* has no voice-only row .*missing_votes; strict=True"):
        labels.load_and_report({**cfg, "strict": True}, stream=stream)


def test_write_report_in_a_kernel_reaches_the_notebook_and_the_launcher(monkeypatch, tmp_path):
    from ambinb.labels.tally import write_report

    read_fd, write_fd = os.pipe()  # stands for the terminal (or log) the kernel was started from

    class KernelStderr(io.StringIO):  # ipykernel's stream: the notebook's output; fileno() is the launcher's copy
        def fileno(self):
            return write_fd

    notebook_out = KernelStderr()
    monkeypatch.setattr(sys, "stderr", notebook_out)
    write_report("2 x zero_votes: ...", log_path=tmp_path / "run.log")
    os.close(write_fd)
    with os.fdopen(read_fd) as launcher:
        assert launcher.read() == "2 x zero_votes: ...\n"
    assert notebook_out.getvalue() == "2 x zero_votes: ...\n" == (tmp_path / "run.log").read_text()
    write_report("", log_path=tmp_path / "run.log")  # nothing to say: nothing written
    assert (tmp_path / "run.log").read_text() == "2 x zero_votes: ...\n"


def test_labels_notebook_takes_overrides_like_the_others():
    import ast

    from ambinb import notebook

    path = notebook.notebook_path("01_labels")
    assert parameters.declared(path)["overrides"] == {}
    calls = [node for cell in json.loads(path.read_text())["cells"] if cell["cell_type"] == "code"
             for node in ast.walk(ast.parse("".join(cell["source"]))) if isinstance(node, ast.Call)
             and ast.unparse(node.func) == "config.resolve"]
    passed = {k.arg: ast.unparse(k.value) for k in calls[0].keywords}
    assert len(calls) == 1 and passed["overrides"] == "overrides"


def test_problem_summary_by_hand():
    assert labels.problem_summary({}) == "" and labels.problem_summary({"warnings": {}}) == ""
    attrs = {"source": "/d", "warnings": {"zero_votes": 5, "bad_file": 1},
             "examples": {"zero_votes": [["/d/v.csv row 3", "a has no votes"], ["/d/v.csv row 9", "b has no votes"]],
                          "bad_file": [["/d/x.txt", "empty"]]}}
    assert labels.problem_summary(attrs).splitlines() == [
        '6 problem(s) in /d, skipped and counted in df.attrs["warnings"]:',
        "  1 x bad_file: /d/x.txt: empty",
        "  5 x zero_votes: /d/v.csv row 3: a has no votes (also row 9; +3 more)",
        "strict=True (the `strict` parameter or config key) stops at the first problem instead."]
    from ambinb.labels.tally import kind_line

    assert kind_line("k", 2, [["/a.txt:4", "m"], ["/b.txt:7", "n"]]) == "2 x k: /a.txt:4: m (also /b.txt:7)"
    assert kind_line("k", 3, [["/a.txt:4", "m"], ["/a.txt:9", "n"]]) == "3 x k: /a.txt:4: m (also line 9; +1 more)"


# --- IEMOCAP, the fixture -------------------------------------------------------------------------

@pytest.fixture
def release(tmp_path) -> Path:
    return write_iemocap(tmp_path)


# Hand-worked expectations, classes (anger, happiness, sadness, neutral); see tests/iemocap_fixture.py.
IEMOCAP_EXPECTED = {
    # C-E2/3/4 Neutral; C-F1 Anger is a self-rating (ignored) -> N 3 of 3
    "Ses01F_impro01_F000": ("Ses01F", "neutral", (0, 0, 0, 3)),
    # C-E1 "Neutral; Frustration;", C-E2 Neutral, C-E3 Sadness -> N 2, S 1 (Frustration dropped): (0, 0, 1/3, 2/3)
    "Ses01F_impro01_F001": ("Ses01F", "neutral", (0, 0, 1, 2)),
    # exc: Excited, "Happiness; Excited;", Neutral, Other:amused -> H 1+2, N 1 (Other dropped): (0, 3/4, 0, 1/4)
    "Ses01F_impro01_M001": ("Ses01M", "happiness", (0, 3, 0, 1)),
    # ang: Frustration, Other:annoyed, Frustration -> no vote in the 4 classes: one-hot anger (fallback)
    "Ses01F_impro01_F002": ("Ses01F", "anger", (0, 0, 0, 0)),
    # sad: Sadness, Sadness, Neutral; C-M1 Happiness ignored -> (0, 0, 2/3, 1/3)
    "Ses01F_impro01_M003": ("Ses01M", "sadness", (0, 0, 2, 1)),
    # dialog Ses01M..., turn _F000: the speaker is the female actor; Surprise dropped -> H 3 of 3
    "Ses01M_script01_1_F000": ("Ses01F", "happiness", (0, 3, 0, 0)),
    # Anger, "Anger; Frustration;", "Neutral; Disgust;", Anger -> A 3, N 1: (3/4, 0, 0, 1/4)
    "Ses01M_script01_1_M000": ("Ses01M", "anger", (3, 0, 0, 1)),
    # Sadness, "Sadness; Neutral;", Sadness -> S 3, N 1: (0, 0, 3/4, 1/4)
    "Ses02F_impro02_F000": ("Ses02F", "sadness", (0, 0, 3, 1)),
    # Neutral, Happiness, Anger -> (1/3, 1/3, 0, 1/3)
    "Ses02F_impro02_M000": ("Ses02M", "neutral", (1, 1, 0, 1)),
}
IEMOCAP_P = {
    "Ses01F_impro01_F000": (0, 0, 0, 1), "Ses01F_impro01_F001": (0, 0, 1 / 3, 2 / 3),
    "Ses01F_impro01_M001": (0, 0.75, 0, 0.25), "Ses01F_impro01_F002": (1, 0, 0, 0),
    "Ses01F_impro01_M003": (0, 0, 2 / 3, 1 / 3), "Ses01M_script01_1_F000": (0, 1, 0, 0),
    "Ses01M_script01_1_M000": (0.75, 0, 0, 0.25), "Ses02F_impro02_F000": (0, 0, 0.75, 0.25),
    "Ses02F_impro02_M000": (1 / 3, 1 / 3, 0, 1 / 3),
}


def test_iemocap_soft_labels_by_hand(release):
    df = quiet(labels.load_iemocap, release)
    labels.validate_table(df)
    assert labels.class_names(df) == IEMOCAP_CLASSES
    assert df["utt_id"].tolist() == list(IEMOCAP_EXPECTED)  # fru, xxx and sur turns excluded
    for utt, (speaker, consensus, votes) in IEMOCAP_EXPECTED.items():
        r = row(df, utt)
        assert (r["speaker"], r["consensus"]) == (speaker, consensus), utt
        assert tuple(r[f"votes_{c}"] for c in IEMOCAP_CLASSES) == votes, utt
        np.testing.assert_allclose([r[f"p_{c}"] for c in IEMOCAP_CLASSES], IEMOCAP_P[utt], err_msg=utt)
    assert row(df, "Ses01F_impro01_M001")["n_raters"] == 4  # four C-E lines, one of them only Other
    assert df["fallback"].tolist() == [u == "Ses01F_impro01_F002" for u in IEMOCAP_EXPECTED]
    assert row(df, "Ses01F_impro01_F002")["n_votes"] == 0 and df.attrs["fallback"] == 1


def test_iemocap_sessions_speakers_folds_transcripts_audio(release):
    df = quiet(labels.load_iemocap, release)
    assert set(df.loc[df["session"] == 1, "speaker"]) == {"Ses01F", "Ses01M"}  # both actors of session 1
    assert set(df.loc[df["session"] == 2, "speaker"]) == {"Ses02F", "Ses02M"}
    assert (df["fold"] == df["session"] - 1).all() and (df["dataset"] == "iemocap").all()
    assert row(df, "Ses01F_impro01_F000")["transcript"] == "Excuse me."
    assert row(df, "Ses02F_impro02_M000")["transcript"] == "It's on the table, next to the keys."
    for utt in df["utt_id"]:
        assert row(df, utt)["audio_path"] == str(wav_file(release, utt).resolve())
    train, test = labels.split(df, 1)
    assert set(test["session"]) == {2} and set(train["session"]) == {1} and len(train) + len(test) == len(df)


def test_iemocap_counts_what_it_leaves_out(release):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = labels.load_iemocap(release)
    assert not [w for w in caught if issubclass(w.category, LabelWarning)]
    notes = [str(w.message) for w in caught if issubclass(w.category, LabelNote)]
    assert len(notes) == 1 and "1 utterance(s)" in notes[0] and "one-hot" in notes[0]
    assert df.attrs["skipped"] == {
        "utterance:consensus_fru": 1, "utterance:consensus_xxx": 1, "utterance:consensus_sur": 1,
        # Frustration: F001 1, F002 2, script M000 1; Other: M001, F002; Surprise, Disgust: script turns
        "vote:frustration": 4, "vote:other": 2, "vote:surprise": 1, "vote:disgust": 1,
        # C-F1/C-M1 lines of the nine kept turns: F000, F001, M001, F002, M003, script M000
        "line:self_rating": 6,
        # M000, M_01, MXX0, M002, F003 (no timestamp) in Ses01F_impro01; F001 (sur) in Ses02F_impro02
        "transcript_line:not_in_table": 6,
        "file:hidden (e.g. macOS ._ resource forks)": 1,
    }


def test_iemocap_reads_a_folder_holding_the_release(tmp_path):
    write_iemocap(tmp_path)
    assert len(quiet(labels.load_iemocap, tmp_path)) == 9


def test_iemocap_without_audio_is_label_only(tmp_path):
    release = write_iemocap(tmp_path, audio=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = labels.load_iemocap(release)
    notes = [str(w.message) for w in caught if issubclass(w.category, LabelNote)]
    assert len([n for n in notes if "label-only" in n]) == 1
    assert (df["audio_path"] == "").all() and df.attrs["warnings"] == {}
    with pytest.raises(LabelError, match=r"Session1/sentences/wav: missing \(require_audio=True\)"):
        labels.load_iemocap(release, require_audio=True)


def test_iemocap_missing_root():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        labels.load_iemocap("/nonexistent/IEMOCAP_full_release")


def _malformed_header(release):
    path = emo_file(release, 2, "Ses02F_impro02")
    first = add_lines(path, "\n[12.0 - ]\tSes02F_impro02_F009\tneu\t[2.5, 2.5, 2.5]\nC-E1:\tNeutral;\t()\n")
    return f"{path}:{first + 1}", "malformed_line", "malformed utterance header"


def _garbage_line(release):
    path = emo_file(release, 1, "Ses01F_impro01")
    line = add_lines(path, "this is not an EmoEvaluation line\n")
    return f"{path}:{line}", "malformed_line", "unrecognised line"


def _unknown_category(release):
    path = emo_file(release, 1, "Ses01M_script01_1")
    text = path.read_text().replace("C-E4:\tAnger;", "C-E4:\tBoredom;")
    path.write_text(text)
    return f"{path}:{line_of(path, 'Boredom')}", "unknown_category", "unknown category 'boredom'"


def _unknown_code(release):
    path = emo_file(release, 2, "Ses02F_impro02")
    path.write_text(path.read_text().replace("Ses02F_impro02_M000\tneu", "Ses02F_impro02_M000\tzzz"))
    return f"{path}:{line_of(path, 'M000')}", "unknown_consensus", "unknown consensus code 'zzz'"


def _duplicate_id(release):
    path = emo_file(release, 2, "Ses02F_impro02")
    first = add_lines(path, "\n[9.5 - 9.9]\tSes02F_impro02_F000\tang\t[2.5, 2.5, 2.5]\nC-E1:\tAnger;\t()\n")
    return f"{path}:{first + 1}", "duplicate_id", "Ses02F_impro02_F000 already read at"


def _no_rating_lines(release):
    path = emo_file(release, 2, "Ses02F_impro02")
    first = add_lines(path, "\n[9.5 - 9.9]\tSes02F_impro02_M001\tang\t[2.5, 2.5, 2.5]\nA-E1:\tval 1;\t()\n")
    add_lines(transcript_file(release, 2, "Ses02F_impro02"), "Ses02F_impro02_M001 [009.5000-009.9000]: No!\n")
    wav_file(release, "Ses02F_impro02_M001").write_bytes(wav_file(release, "Ses02F_impro02_M000").read_bytes())
    return f"{path}:{first + 1}", "no_votes", "Ses02F_impro02_M001 has no C-E* rating line"


def _rating_before_header(release):
    path = emo_file(release, 1, "Ses01F_impro01")
    path.write_text(path.read_text().replace("\n\n[6.2901", "\nC-E9:\tNeutral;\t()\n\n[6.2901", 1))
    return f"{path}:{line_of(path, 'C-E9')}", "malformed_line", "rating line before any utterance header"


def _duplicate_rater(release):
    path = emo_file(release, 2, "Ses02F_impro02")
    path.write_text(path.read_text().replace("C-E3:\tAnger;\t()\n", "C-E3:\tAnger;\t()\nC-E3:\tAnger;\t()\n"))
    line = line_of(path, "C-E3:\tAnger") + 1
    return f"{path}:{line}", "duplicate_rater", "second C-E3 line"


def _missing_audio(release):
    wav = wav_file(release, "Ses01F_impro01_M003")
    wav.unlink()
    path = emo_file(release, 1, "Ses01F_impro01")
    return f"{path}:{line_of(path, 'M003')}", "missing_audio", f"audio for Ses01F_impro01_M003 missing: {wav.resolve()}"


def _missing_transcript(release):
    path = transcript_file(release, 2, "Ses02F_impro02")
    path.write_text("".join(x for x in path.read_text().splitlines(True) if "F000" not in x))
    emo = emo_file(release, 2, "Ses02F_impro02")
    return f"{emo}:{line_of(emo, 'F000')}", "missing_transcript", "no transcript line for Ses02F_impro02_F000"


def _empty_label_file(release):
    path = emo_file(release, 2, "Ses02F_impro02")
    path.write_text("")  # its three timed transcripts (F000, M000, F001) lose their labels
    return str(path), "empty_label_file", ("no utterance block (a '[start - end] <utt_id> <code> [V, A, D]' header) "
                                           "in this EmoEvaluation file; its 3 transcribed utterance(s) have no labels: "
                                           "Ses02F_impro02_F000, Ses02F_impro02_M000, Ses02F_impro02_F001")


def _headerless_label_file(release):
    path = emo_file(release, 2, "Ses02F_impro02")
    path.write_text("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n")
    return str(path), "empty_label_file", "no utterance block"


def _missing_labels(release):
    path = emo_file(release, 2, "Ses02F_impro02")
    text = path.read_text()
    start = text.index("[5.0000 - 7.0000]")
    path.write_text(text[:start] + text[text.index("[8.0000", start):])  # the M000 block cut out
    return str(path), "missing_labels", ("1 transcribed utterance(s) of Ses02F_impro02 have no block in this "
                                         "EmoEvaluation file: Ses02F_impro02_M000")


def _missing_label_file(release):
    emo_file(release, 1, "Ses01M_script01_1").unlink()
    path = transcript_file(release, 1, "Ses01M_script01_1")
    return str(path), "missing_label_file", ("its 2 transcribed utterance(s) have no labels: Ses01M_script01_1_F000, "
                                             "Ses01M_script01_1_M000")


def _dangling_label_link(release):
    path = emo_file(release, 1, "Ses01M_script01_1")
    path.unlink()
    path.symlink_to(path.parent / "nowhere.txt")
    return str(transcript_file(release, 1, "Ses01M_script01_1")), "missing_label_file", "Ses01M_script01_1_F000"


IEMOCAP_BAD = {f.__name__[1:]: f for f in (
    _malformed_header, _garbage_line, _unknown_category, _unknown_code, _duplicate_id, _no_rating_lines,
    _rating_before_header, _duplicate_rater, _missing_audio, _missing_transcript, _empty_label_file,
    _headerless_label_file, _missing_labels, _missing_label_file, _dangling_label_link)}


@pytest.mark.parametrize("case", sorted(IEMOCAP_BAD))
def test_iemocap_bad_input_is_counted_or_raises(release, case):
    where, kind, fragment = IEMOCAP_BAD[case](release)
    pattern = re.escape(where) + ": .*" + re.escape(fragment)
    with pytest.warns(LabelWarning, match=pattern):
        df = quiet_notes(labels.load_iemocap, release)
    assert df.attrs["warnings"] == {kind: 1}
    with pytest.raises(LabelError, match=pattern):
        quiet_notes(labels.load_iemocap, release, strict=True)


def test_iemocap_bad_input_effects(release):
    _unknown_category(release)  # script M000 loses its C-E4 Anger: A 2, N 1 -> (2/3, 0, 0, 1/3)
    _unknown_code(release)  # Ses02F_impro02_M000 skipped
    _no_rating_lines(release)  # Ses02F_impro02_M001 (ang) added as a one-hot fallback
    _missing_audio(release)
    df = quiet(labels.load_iemocap, release)
    np.testing.assert_allclose([row(df, "Ses01M_script01_1_M000")[f"p_{c}"] for c in IEMOCAP_CLASSES],
                               [2 / 3, 0, 0, 1 / 3])
    assert "Ses02F_impro02_M000" not in set(df["utt_id"])
    assert row(df, "Ses02F_impro02_M001")["fallback"] and row(df, "Ses02F_impro02_M001")["p_anger"] == 1.0
    assert row(df, "Ses01F_impro01_M003")["audio_path"] == ""
    assert df.attrs["fallback"] == 2
    assert df.attrs["skipped"]["utterance:unknown_consensus"] == 1
    assert df.attrs["skipped"]["vote:unknown_category"] == 1
    with pytest.raises(LabelError, match=r"audio for Ses01F_impro01_M003 missing: .*require_audio=True"):
        quiet_notes(labels.load_iemocap, release, require_audio=True)


def test_iemocap_line_in_block_with_malformed_header_is_counted(release):
    _malformed_header(release)
    df = quiet(labels.load_iemocap, release)
    assert df.attrs["skipped"]["utterance:malformed_header"] == 1
    assert df.attrs["skipped"]["line:in_block_with_malformed_header"] == 1


def test_iemocap_unreadable_label_file_is_named(release, monkeypatch):
    path = emo_file(release, 2, "Ses02F_impro02")
    read_bytes = Path.read_bytes

    def refuse(self):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.warns(LabelWarning, match=re.escape(f"{path}: cannot be read (Permission denied)")):
        df = quiet_notes(labels.load_iemocap, release)
    assert df.attrs["warnings"] == {"unreadable_file": 1} and df.attrs["skipped"]["file:unreadable"] == 1
    assert set(df["session"]) == {1}
    with pytest.raises(LabelError, match=re.escape(str(path)) + r": cannot be read .*unreadable_file; strict=True"):
        quiet_notes(labels.load_iemocap, release, strict=True)


def test_iemocap_no_label_file_in_a_session(release):
    for path in emo_file(release, 2, "Ses02F_impro02").parent.glob("*.txt"):
        path.unlink()
    with pytest.warns(LabelWarning) as caught:
        df = quiet_notes(labels.load_iemocap, release)
    assert len(caught) == 1  # one summary for both kinds
    assert df.attrs["warnings"] == {"missing_label_file": 1, "no_label_files": 1}
    assert "Session2/dialog/EmoEvaluation: no EmoEvaluation <dialog>.txt file" in str(caught[0].message)


def test_iemocap_nothing_readable_is_an_error(release):
    for session, dialog in (1, "Ses01F_impro01"), (1, "Ses01M_script01_1"), (2, "Ses02F_impro02"):
        emo_file(release, session, dialog).write_text("")
    with pytest.raises(LabelError, match=r"no IEMOCAP utterance could be read \(\{'empty_label_file': 3\}\)"):
        quiet(labels.load_iemocap, release)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_iemocap_byte_order_mark_drops_nothing(release, encoding):
    clean = quiet(labels.load_iemocap, release)
    for session, dialog in (1, "Ses01F_impro01"), (2, "Ses02F_impro02"):
        path = emo_file(release, session, dialog)  # the file starts with its first block, right after the mark
        path.write_bytes(path.read_text().split("\n\n", 1)[1].encode(encoding))
        tpath = transcript_file(release, session, dialog)
        tpath.write_bytes(tpath.read_text().encode(encoding))
    with warnings.catch_warnings():
        warnings.simplefilter("error", LabelWarning)
        df = quiet_notes(labels.load_iemocap, release)
    pd.testing.assert_frame_equal(df, clean)
    assert row(df, "Ses01F_impro01_F000")["transcript"] == "Excuse me."


def test_iemocap_parsers_on_single_lines(tmp_path):
    path = tmp_path / "Ses01F_impro01.txt"
    path.write_text("[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]\n"
                    "C-E2:\tNeutral;\t()\nC-E3:\tNeutral; Frustration;\t()\nC-F1:\tAnger;\t()\n"
                    "C-E4:\tNeutral state; Other:curious, amused;\t(note; with semicolon)\n")
    (rec,) = labels.parse_emo_evaluation(path)
    assert rec["utt_id"] == "Ses01F_impro01_F000" and rec["code"] == "neu"
    assert rec["votes"] == {"neutral": 3} and rec["dropped"] == {"frustration": 1, "other": 1}
    assert (rec["n_raters"], rec["self_ratings"]) == (3, 1)
    tpath = tmp_path / "t.txt"
    tpath.write_text("Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.\nM_01 [1.0-2.0]: [LAUGHTER]\n"
                     "Ses01F_impro01_F001: no timestamp here\n\n")
    texts = labels.parse_transcriptions(tpath)
    assert {k: v[0] for k, v in texts.items()} == {"Ses01F_impro01_F000": "Excuse me.", "M_01": "[LAUGHTER]",
                                                  "Ses01F_impro01_F001": "no timestamp here"}


# --- the table: validate, save, read, split, describe ----------------------------------------------

def test_save_and_read_round_trip(release, tmp_path):
    df = quiet(labels.load_iemocap, release)
    path = labels.save_labels(df, tmp_path / "out" / "labels.csv")
    back = labels.read_labels(path)
    pd.testing.assert_frame_equal(back, df)
    assert back.attrs == df.attrs
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left no temporary file


def test_read_labels_empty_file_or_broken_attrs_names_the_file(release, tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes(b"")
    with pytest.raises(LabelError, match=re.escape(str(path)) + ": cannot read as a label table"):
        labels.read_labels(path)
    labels.save_labels(quiet(labels.load_iemocap, release), path)
    attrs = tmp_path / f"labels.csv{labels.ATTRS_SUFFIX}"
    attrs.write_text('{"skipped": {')  # cut off
    with pytest.raises(LabelError, match=re.escape(str(attrs)) + ": not the JSON that save_labels writes"):
        labels.read_labels(path)


def test_roots_that_are_files_are_named(tmp_path):
    (tmp_path / "corpus").write_text("")
    with pytest.raises(FileNotFoundError, match=r"IEMOCAP root .*corpus is not a folder"):
        labels.load_iemocap(tmp_path / "corpus")
    with pytest.raises(FileNotFoundError, match=r"CREMA-D root .*corpus is not a folder"):
        labels.load_crema_d(tmp_path / "corpus")


def test_read_labels_missing_column_names_the_file(release, tmp_path):
    df = quiet(labels.load_iemocap, release).drop(columns=["speaker"])
    path = tmp_path / "labels.csv"
    path.write_text(df.to_csv(index=False))
    with pytest.raises(LabelError, match=re.escape(str(path)) + r": missing columns \['speaker'\]"):
        labels.read_labels(path)


def _table(release):
    return quiet(labels.load_iemocap, release)


@pytest.mark.parametrize("damage,message", [
    (lambda d: d.drop(columns=["fold"]), r"missing columns \['fold'\]"),
    (lambda d: d.assign(p_anger=d["p_anger"].where(d.index != 0, 0.1)),
     r"do not sum to 1 .* row 0 \(utt_id 'Ses01F_impro01_F000'\)"),
    (lambda d: d.assign(utt_id=["x"] * len(d)), "duplicate utt_id"),
    (lambda d: d.assign(n_votes=d["n_votes"] + 1), "n_votes is not the sum"),
    (lambda d: d.assign(consensus="boredom"), "consensus is not one of"),
    (lambda d: d.assign(fold=d["fold"].astype(float)), "'fold' must hold integers"),
    (lambda d: d.drop(columns=["votes_anger"]), "must name the same classes"),
    (lambda d: d.assign(p_neutral=d["p_sadness"], p_sadness=d["p_neutral"]), "p_ is not votes_/n_votes"),
])
def test_validate_table_names_the_problem(release, damage, message):
    with pytest.raises(LabelError, match=message):
        labels.validate_table(damage(_table(release)))


def test_split_unknown_fold(release):
    df = _table(release)
    with pytest.raises(LabelError, match=r"fold=3: no test rows; the table's test folds are \[0, 1\]"):
        labels.split(df, 3)


def test_describe_by_hand(release):
    d = labels.describe(_table(release))
    # votes per class over the nine rows (IEMOCAP_EXPECTED): A 3+1, H 3+3+1, S 1+2+3, N 3+2+1+1+1+1+1
    assert d["votes_per_class"].set_index("class")["votes"].to_dict() == {
        "anger": 4, "happiness": 7, "sadness": 6, "neutral": 10}
    # ambiguous (max p < 0.8): F001 2/3, M001 3/4, M003 2/3, script M000 3/4, S2 F000 3/4, S2 M000 1/3 -> 6 of 9
    assert d["ambiguous_share"] == pytest.approx(6 / 9)
    h = d["entropy"].set_index("utt_id")["entropy_bits"]
    assert h["Ses01F_impro01_F001"] == pytest.approx(0.918296, abs=1e-6)  # -(2/3 log2 2/3 + 1/3 log2 1/3)
    assert h["Ses01F_impro01_M001"] == pytest.approx(0.811278, abs=1e-6)  # -(3/4 log2 3/4 + 1/4 log2 1/4)
    assert h["Ses02F_impro02_M000"] == pytest.approx(np.log2(3), abs=1e-6)
    assert h["Ses01F_impro01_F000"] == pytest.approx(0.0, abs=1e-6)
    balance = d["fold_balance"].set_index("fold")
    assert balance.loc[0, ["utterances", "speakers", "anger", "happiness", "sadness", "neutral"]].tolist() == [
        7, 2, 2, 2, 1, 2]
    assert balance.loc[1, ["utterances", "speakers", "sadness", "neutral"]].tolist() == [2, 2, 1, 1]
    assert d["votes_per_utterance"].set_index("n_votes")["utterances"].to_dict() == {0: 1, 3: 5, 4: 3}
    assert d["fallback"] == 1 and d["counts"]["fallback"].iat[0] == 1
    assert d["skipped"].set_index("reason")["count"]["vote:frustration"] == 4


# --- dispatch from a config ----------------------------------------------------------------------

def test_load_dataset_iemocap_relative_root(tmp_path, monkeypatch):
    write_iemocap(tmp_path)
    cfg = config.resolve(dataset="iemocap", data_root="IEMOCAP_full_release")
    assert cfg["classes"] == IEMOCAP_CLASSES
    monkeypatch.setenv("AMBINB_ROOT", str(tmp_path))  # relative data roots resolve against it
    df = quiet(labels.load_dataset, cfg)
    assert len(df) == 9 and df.attrs["source"] == str((tmp_path / "IEMOCAP_full_release").resolve())
    with pytest.raises(LabelError, match="params say classes"):
        quiet(labels.load_dataset, {**cfg, "classes": ["anger", "neutral"]})


def test_load_dataset_toy_calls_ensure_toy(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("ambinb.toy")
    fake.ensure_toy = lambda root, n, seed, sessions: calls.append(("ensure", root, n, seed, sessions)) or "table"
    fake.make_toy = lambda out_dir, n, seed, sessions: calls.append(("make", out_dir, n, seed, sessions)) or "made"
    monkeypatch.setattr(labels.dataset, "toy", fake)
    cfg = {**config.defaults(), "dataset": "toy", "data_root": "", "toy_n": 12, "toy_seed": 3, "toy_sessions": 5}
    monkeypatch.setenv("AMBINB_ROOT", str(tmp_path))
    assert labels.load_dataset(cfg) == "table"
    assert calls == [("ensure", tmp_path / "data" / "toy", 12, 3, 5)]
    assert labels.make_toy(tmp_path / "t", n=10, seed=1) == "made" and calls[-1] == ("make", tmp_path / "t", 10, 1, 5)


def test_load_dataset_unknown_or_rootless():
    with pytest.raises(ValueError, match=r"dataset='msp': choose one of \['crema_d', 'iemocap', 'toy'\]"):
        labels.load_dataset({**config.defaults(), "dataset": "msp"})
    with pytest.raises(ValueError, match="needs data_root"):
        labels.load_dataset({**config.defaults(), "dataset": "iemocap", "data_root": ""})


def test_split_for_run_keeps_the_test_fold_out_of_validation_runs():
    df = pd.DataFrame({"utt_id": [f"u{i}" for i in range(10)], "fold": [0, 1, 2, 3, 4] * 2})
    cfg = {**config.defaults(), "dataset": "iemocap", "fold": 1, "n_folds": 5, "eval_split": "test",
           "validation_fold": -1}
    train, test = labels.split_for_run(df, cfg)
    assert set(test["fold"]) == {1} and set(train["fold"]) == {0, 2, 3, 4}
    train, val = labels.split_for_run(df, {**cfg, "eval_split": "validation"})
    assert set(val["fold"]) == {2} and set(train["fold"]) == {0, 3, 4}  # fold 1 (test) in neither
    with pytest.raises(LabelError, match="validation_fold: fold=7"):
        labels.split_for_run(df, {**cfg, "eval_split": "validation", "validation_fold": 7})
