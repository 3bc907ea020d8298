"""Prosody: eGeMAPS against acoustics worked out by hand, the cache, speaker z-scores and the words."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from scipy import stats

from ambinb import prosody

SR = 16_000


def voice(f0: float, amp: float, seconds: float = 1.2) -> np.ndarray:
    """A harmonic 'vowel' at ``f0`` Hz (14 harmonics, 1/k amplitudes), peak ``amp``, 50 ms ramps."""
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 15))
    env = np.minimum(1.0, np.minimum(t / 0.05, (t[-1] - t) / 0.05))
    return (amp * x * env / np.abs(x).max()).astype(np.float32)


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wavs")
    specs = {"a220": (220, 0.3), "a110": (110, 0.3), "soft220": (220, 0.05)}
    paths = {}
    for name, (f0, amp) in specs.items():
        paths[name] = folder / f"{name}.wav"
        sf.write(paths[name], voice(f0, amp), SR)
    return paths


def _by_name(values: np.ndarray) -> dict[str, float]:
    return dict(zip(prosody.feature_names(), values, strict=True))


def test_measure_matches_pitch_and_level_worked_by_hand(wavs):
    a220, a110, soft = (_by_name(prosody.measure(wavs[k])) for k in ("a220", "a110", "soft220"))
    assert len(prosody.feature_names()) == 88
    # F0 in semitones above 27.5 Hz: 12 * log2(220 / 27.5) = 36, 12 * log2(110 / 27.5) = 24
    assert a220["F0semitoneFrom27.5Hz_sma3nz_amean"] == pytest.approx(36.0, abs=0.2)
    assert a110["F0semitoneFrom27.5Hz_sma3nz_amean"] == pytest.approx(24.0, abs=0.2)
    # 6x the amplitude is 20 * log10(6) = 15.56 dB more equivalent sound level, and louder
    level = a220["equivalentSoundLevel_dBp"] - soft["equivalentSoundLevel_dBp"]
    assert level == pytest.approx(20 * np.log10(6), abs=0.3)
    assert a220["loudness_sma3_amean"] > soft["loudness_sma3_amean"]


def test_bad_audio_is_named(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match="bad.wav"):
        prosody.measure(bad)
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        prosody.egemaps([tmp_path / "missing.wav"], tmp_path / "cache")
    wave = voice(220, 0.3)
    wave[:4] = np.nan
    sf.write(tmp_path / "nan.wav", wave, SR, subtype="FLOAT")
    with pytest.raises(ValueError, match=r"nan\.wav: 4 samples are NaN or inf"):
        prosody.measure(tmp_path / "nan.wav")


def test_cache_measures_once_and_again_after_a_change(wavs, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    files = [wavs["a220"], wavs["a110"], wavs["a220"]]
    first = prosody.egemaps(files, cache)
    assert list(first.index) == [str(p.resolve()) for p in files] and first.shape == (3, 88)
    np.testing.assert_array_equal(first.iloc[0], first.iloc[2])

    def refuse(path):
        raise AssertionError(f"measured {path} again")

    monkeypatch.setattr(prosody, "measure", refuse)
    again = prosody.egemaps(files, cache)
    pd.testing.assert_frame_equal(first, again)  # exact round trip through the cache file

    changed = tmp_path / "changed.wav"
    sf.write(changed, voice(220, 0.3), SR)
    monkeypatch.undo()
    before = prosody.egemaps([changed], cache)
    sf.write(changed, voice(110, 0.3), SR)  # same size, new content and mtime
    os.utime(changed, ns=(0, os.stat(changed).st_mtime_ns + 10**9))
    measured = []
    real = prosody.measure
    monkeypatch.setattr(prosody, "measure", lambda p: measured.append(p) or real(p))
    after = prosody.egemaps([changed, wavs["a110"]], cache)
    assert measured == [str(changed.resolve())]  # only the changed file
    assert after.iloc[0]["F0semitoneFrom27.5Hz_sma3nz_amean"] == pytest.approx(24.0, abs=0.2)
    assert before.iloc[0]["F0semitoneFrom27.5Hz_sma3nz_amean"] == pytest.approx(36.0, abs=0.2)


def test_speaker_zscores_by_hand_and_against_scipy():
    feats = pd.DataFrame({"a": [1.0, 2.0, 3.0, 10.0, 30.0, np.nan], "b": [5.0, 5.0, 5.0, 1.0, 2.0, 3.0]})
    speakers = ["s", "s", "s", "t", "t", "t"]
    z = prosody.speaker_zscores(feats, speakers)
    np.testing.assert_allclose(z["a"][:3], [-1.224745, 0.0, 1.224745], atol=1e-6)  # (x - 2) / sqrt(2/3)
    np.testing.assert_allclose(z["a"][3:5], [-1.0, 1.0])  # NaN row left out of t's statistics
    assert np.isnan(z["a"][5])
    np.testing.assert_allclose(z["b"][:3], 0.0)  # constant within s -> 0
    np.testing.assert_allclose(z["b"][3:], stats.zscore([1.0, 2.0, 3.0]))


def test_dimensions_are_signed_means_of_zscores_rezscored():
    cols = sorted({c for spec in prosody.DIMENSIONS.values() for c, _ in spec})
    rng = np.random.default_rng(0)
    z = pd.DataFrame(rng.normal(size=(6, len(cols))), columns=cols)
    speakers = ["s"] * 6
    dims = prosody.dimensions(z, speakers)
    tension = (z["alphaRatioV_sma3nz_amean"] + z["HNRdBACF_sma3nz_amean"] - z["hammarbergIndexV_sma3nz_amean"]
               - z["logRelF0-H1-H2_sma3nz_amean"]) / 4
    np.testing.assert_allclose(dims["tension"], stats.zscore(tension))
    np.testing.assert_allclose(dims["pitch"], stats.zscore(z["F0semitoneFrom27.5Hz_sma3nz_amean"]))


@pytest.mark.parametrize("dim, z, words", [
    ("loudness", 1.4, "much louder than a typical voice"),
    ("rate", -0.7, "somewhat slower than a typical voice"),
    ("pitch", 0.1, "close to a typical pitch level"),
    ("pitch_var", -1.25, "much flatter in pitch than a typical voice"),
    ("tension", -0.5, "somewhat breathier than a typical voice"),
    ("roughness", 0.49, "close to a typical voice steadiness"),
    ("roughness", float("nan"), "not measured"),
])
def test_describe_against_the_corpus(dim, z, words):
    assert prosody.describe(dim, z) == prosody.describe(dim, z, "corpus") == words


@pytest.mark.parametrize("dim, z, words", [
    ("loudness", 1.4, "much louder than the speaker's usual"),
    ("rate", -0.7, "somewhat slower than the speaker's usual"),
    ("pitch", 0.1, "close to the speaker's usual pitch level"),
    ("pitch_var", -1.25, "much flatter in pitch than the speaker's usual"),
    ("tension", -0.5, "somewhat breathier than the speaker's usual"),
    ("roughness", float("nan"), "not measured"),
])
def test_describe_against_the_speaker(dim, z, words):
    assert prosody.describe(dim, z, "speaker") == words


def test_reference_groups():
    df = pd.DataFrame({"speaker": ["a", "a", "b"]})
    assert prosody.reference_groups(df, "speaker") == ["a", "a", "b"]
    assert prosody.reference_groups(df, "corpus") == ["corpus"] * 3
    with pytest.raises(ValueError, match="prosody_reference='session'"):
        prosody.reference_groups(df, "session")


def _three_utterances(monkeypatch) -> pd.DataFrame:
    """Three utterances of two speakers whose every eGeMAPS column is [1, 3, 8] (NaN for a fourth without audio)."""
    df = pd.DataFrame({"utt_id": ["u1", "u2", "u3", "u4"], "speaker": ["s", "s", "t", "t"], "audio_path": ""})
    names = prosody.feature_names()
    values = np.repeat(np.array([[1.0], [3.0], [8.0], [np.nan]]), len(names), axis=1)
    feats = pd.DataFrame(values, index=pd.Index(df["utt_id"], name="utt_id"), columns=names)
    monkeypatch.setattr(prosody, "utterance_features", lambda frame, cfg: feats.loc[list(frame["utt_id"])])
    return df


def test_prosody_table_against_the_corpus_by_hand(monkeypatch):
    """Corpus: mean 4, std sqrt(((1-4)^2 + (3-4)^2 + (8-4)^2) / 3) = sqrt(26/3) = 2.94392, so pitch (one
    column, re-z-scored: unchanged) is (-3, -1, 4) / 2.94392 = (-1.01905, -0.33968, 1.35873); the
    speaker reference gives s (-1, 1) and t, alone, 0."""
    df = _three_utterances(monkeypatch)
    cfg = {"prosody_cache": "unused", "prosody_workers": 1}
    corpus = prosody.prosody_table(df, {**cfg, "prosody_reference": "corpus"})
    np.testing.assert_allclose(corpus["pitch"][:3], [-1.01905, -0.33968, 1.35873], atol=1e-5)
    assert list(corpus["pitch_words"]) == ["somewhat lower-pitched than a typical voice",
                                           "close to a typical pitch level",
                                           "much higher-pitched than a typical voice", "not measured"]
    speaker = prosody.prosody_table(df, {**cfg, "prosody_reference": "speaker"})
    np.testing.assert_allclose(speaker["pitch"][:3], [-1.0, 1.0, 0.0])
    assert list(speaker["pitch_words"][:3]) == ["somewhat lower-pitched than the speaker's usual",
                                                "somewhat higher-pitched than the speaker's usual",
                                                "close to the speaker's usual pitch level"]
    # a dimension with a negative sign (rate: minus mean voiced-segment length) still re-z-scores to +-1
    np.testing.assert_allclose(corpus["rate"][:3], [-1.01905, -0.33968, 1.35873], atol=1e-5)


@pytest.mark.parametrize("reference, than", [("speaker", "than the speaker's usual"),
                                             ("corpus", "than a typical voice")])
def test_prosody_table_with_and_without_audio(wavs, tmp_path, reference, than):
    df = pd.DataFrame({"utt_id": ["u1", "u2", "u3", "u4"], "speaker": ["s", "s", "s", "t"],
                       "audio_path": [str(wavs["a220"]), str(wavs["a110"]), str(wavs["soft220"]), ""]})
    cfg = {"prosody_cache": str(tmp_path / "cache"), "prosody_workers": 1, "prosody_reference": reference}
    table = prosody.prosody_table(df, cfg)
    assert list(table.index) == ["u1", "u2", "u3", "u4"]
    assert table.loc["u1", "pitch"] > 0 > table.loc["u2", "pitch"]  # 220 Hz is higher than the reference
    assert table.loc["u3", "loudness"] < 0 and table.loc["u3", "loudness_words"].endswith("softer " + than)
    assert table.loc["u4"].drop([c for c in table.columns if c.endswith("_words")]).isna().all()
    assert table.loc["u4", "loudness_words"] == "not measured"
