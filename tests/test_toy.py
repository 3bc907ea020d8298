"""Tests of the toy corpus (ambinb.toy): schema, audio format, determinism, folds, votes, and that
the audio really follows the latent mixture. One small corpus (n=60) is built per module."""

from __future__ import annotations

import json
import os
import time
import wave
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon

from ambinb import toy

N = 60
CLASSES = ["anger", "happiness", "sadness", "neutral"]
EXPECTED_COLUMNS = (["utt_id", "dataset", "speaker", "session", "fold", "transcript", "audio_path", "consensus",
                     "n_votes"] + [f"votes_{c}" for c in CLASSES] + [f"p_{c}" for c in CLASSES])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("toy") / "corpus"
    return out, toy.make_toy(out, n=N, seed=0)


def read_wav(path: str) -> tuple[np.ndarray, int, int, int]:
    with wave.open(path, "rb") as w:
        frames = w.readframes(w.getnframes())
        return np.frombuffer(frames, dtype="<i2").astype(np.float64), w.getframerate(), w.getnchannels(), \
            w.getsampwidth()


def speaker_z(values: np.ndarray, speakers: pd.Series) -> np.ndarray:
    """Z-score a per-utterance measure within each speaker (voices differ in loudness and pitch)."""
    out = np.empty_like(values)
    for s in speakers.unique():
        i = (speakers == s).to_numpy()
        out[i] = (values[i] - values[i].mean()) / (values[i].std() + 1e-12)
    return out


def loud_log_rms(x: np.ndarray, frame: int = 400) -> float:
    """Log RMS over the louder half of 25 ms frames (ignores padding and pauses)."""
    frames = x[: len(x) // frame * frame].reshape(-1, frame)
    rms = np.sqrt((frames ** 2).mean(axis=1))
    return float(np.log(np.mean(np.sort(rms)[len(rms) // 2:]) + 1.0))


def median_log_f0(x: np.ndarray, sr: int, frame: int = 640) -> float:
    """Median log F0 of clearly voiced 40 ms frames by autocorrelation (60-400 Hz)."""
    f0 = []
    for start in range(0, len(x) - frame, frame // 2):
        fr = x[start:start + frame] - x[start:start + frame].mean()
        if np.sqrt((fr ** 2).mean()) < 300:
            continue
        ac = np.correlate(fr, fr, mode="full")[frame - 1:]
        lo, hi = sr // 400, sr // 60
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.5 * ac[0]:
            f0.append(sr / lag)
    return float(np.median(np.log(f0)))


# --- schema and files ------------------------------------------------------------------------

def test_schema_is_exactly_the_dataset_table(corpus):
    out, df = corpus
    assert list(df.columns) == EXPECTED_COLUMNS
    assert len(df) == N and df["utt_id"].is_unique
    assert (df["dataset"] == "toy").all()
    for col in ["session", "fold", "n_votes"] + [f"votes_{c}" for c in CLASSES]:
        assert pd.api.types.is_integer_dtype(df[col]), col
    for c in CLASSES:
        assert pd.api.types.is_float_dtype(df[f"p_{c}"]), c
    assert set(df["consensus"]) <= set(CLASSES)
    assert (df["transcript"].str.len() > 0).all()
    for path, utt in zip(df["audio_path"], df["utt_id"], strict=True):
        assert os.path.isabs(path) and Path(path) == out.resolve() / "wav" / f"{utt}.wav"
        assert os.path.isfile(path)
    on_disk = pd.read_csv(out / "labels.csv")
    assert list(on_disk.columns) == EXPECTED_COLUMNS and len(on_disk) == N


def test_meta_and_latent_files(corpus):
    out, df = corpus
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["n"], meta["seed"], meta["sessions"], meta["version"]) == (N, 0, 5, toy.GENERATOR_VERSION)
    assert meta["classes"] == CLASSES
    assert len(meta["voices"]) == 10 and len(set(meta["voices"].values())) == 10
    latent = toy.read_latent(out)
    assert list(latent["utt_id"]) == list(df["utt_id"])
    m = latent[[f"latent_{c}" for c in CLASSES]].to_numpy()
    assert np.allclose(m.sum(axis=1), 1.0) and (m >= 0).all()
    # vote-noise floor: mean JS(p_gt, latent) in base 2, against scipy (which returns the square root)
    p = df[[f"p_{c}" for c in CLASSES]].to_numpy()
    floor = np.mean([jensenshannon(a, b, base=2) ** 2 for a, b in zip(p, m, strict=True)])
    assert meta["vote_noise_floor_js"] == pytest.approx(floor, abs=1e-6)
    assert not list(out.glob(".wav-*")), "staging folders left behind"


def test_wavs_are_16k_mono_pcm16_between_1_and_3_seconds(corpus):
    _, df = corpus
    for path in df["audio_path"]:
        x, sr, channels, width = read_wav(path)
        assert (sr, channels, width) == (16000, 1, 2), path
        assert 1.0 <= len(x) / sr <= 3.0, (path, len(x) / sr)
        assert np.abs(x).max() > 1000, f"{path} is (nearly) silent"


# --- determinism -----------------------------------------------------------------------------

def test_same_seed_same_table_and_wav_bytes_other_seed_differs(corpus, tmp_path):
    """A rebuild of the same seed gives the same rows and wav bytes; a smaller corpus of the same seed
    is a prefix of the larger one, so a prefix of the module's corpus is rebuilt."""
    out, df = corpus
    n = N // 3
    head = df.head(n)
    again = toy.make_toy(tmp_path / "again", n=n, seed=0)
    pd.testing.assert_frame_equal(again.drop(columns="audio_path"), head.drop(columns="audio_path"))
    for a, b in zip(head["audio_path"], again["audio_path"], strict=True):
        assert Path(a).read_bytes() == Path(b).read_bytes(), a
    other = toy.make_toy(tmp_path / "other", n=n, seed=1)
    p_cols = [f"p_{c}" for c in CLASSES]
    assert not np.array_equal(other[p_cols].to_numpy(), head[p_cols].to_numpy())
    pairs = zip(head["audio_path"], other["audio_path"], strict=True)
    differ = sum(Path(a).read_bytes() != Path(b).read_bytes() for a, b in pairs)
    assert differ > n // 2


def test_speech_does_not_depend_on_what_was_spoken_before():
    with toy.Espeak() as tts:
        first, _ = tts.speak("The train leaves at seven.", "en+f3", {"rate": 170})
        tts.speak("Something else entirely, spoken loudly!", "en-us", {"volume": 190, "pitch": 90})
        second, _ = tts.speak("The train leaves at seven.", "en+f3", {"rate": 170})
    assert np.array_equal(first, second)


def test_breath_noise_follows_the_noise_seed_not_the_clock():
    # en+f3 has breath noise, which eSpeak seeds from the clock unless given a seed
    with toy.Espeak() as tts:
        first, _ = tts.speak("I miss her so much.", "en+f3", {}, noise_seed=7)
        time.sleep(1.05)
        again, _ = tts.speak("I miss her so much.", "en+f3", {}, noise_seed=7)
        other, _ = tts.speak("I miss her so much.", "en+f3", {}, noise_seed=8)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_unknown_voice_raises_instead_of_keeping_the_previous_one():
    with toy.Espeak() as tts, pytest.raises(ValueError, match="no-such-voice"):
        tts.speak("Hello.", "no-such-voice", {})


# --- folds, votes, ambiguity ------------------------------------------------------------------

def test_folds_are_speaker_disjoint_sessions_with_enough_training_speakers(corpus):
    _, df = corpus
    assert sorted(df["fold"].unique()) == [0, 1, 2, 3, 4]
    assert (df["fold"] == df["session"] - 1).all()
    assert (df.groupby("speaker")["fold"].nunique() == 1).all()
    assert (df.groupby("fold")["speaker"].nunique() == 2).all()
    for k in range(5):
        assert df.loc[df["fold"] != k, "speaker"].nunique() >= 4


def test_votes_and_soft_labels(corpus):
    _, df = corpus
    votes = df[[f"votes_{c}" for c in CLASSES]].to_numpy()
    p = df[[f"p_{c}" for c in CLASSES]].to_numpy()
    assert df["n_votes"].between(3, 10).all()
    assert (votes.sum(axis=1) == df["n_votes"]).all()
    assert np.allclose(p, votes / df["n_votes"].to_numpy()[:, None])
    assert np.allclose(p.sum(axis=1), 1.0)
    for row_votes, cons in zip(votes, df["consensus"], strict=True):
        top = [c for c, v in zip(CLASSES, row_votes, strict=True) if v == max(row_votes)]
        assert cons == top[0]  # most votes; ties to the first class in order


def test_consensus_tie_break_by_hand():
    assert toy.consensus_of(np.array([2, 0, 2, 1])) == "anger"
    assert toy.consensus_of(np.array([0, 1, 3, 1])) == "sadness"
    assert toy.consensus_of(np.array([0, 2, 0, 2])) == "happiness"


def test_mix_of_clear_and_ambiguous(corpus):
    _, df = corpus
    max_p = df[[f"p_{c}" for c in CLASSES]].max(axis=1)
    n_ambiguous = int((max_p < 0.8).sum())
    assert 0.15 * N <= n_ambiguous <= 0.85 * N
    assert (max_p == 1.0).sum() >= 0.1 * N  # some unanimous
    assert df["consensus"].nunique() == 4


def test_wording_half_plain_half_from_the_mixture(corpus):
    out, df = corpus
    latent = toy.read_latent(out)
    plain = (latent["wording"] == "plain").mean()
    assert 0.3 <= plain <= 0.7
    assert set(latent.loc[latent["wording"] == "plain", "transcript"]) <= set(toy.SENTENCES["plain"])
    worded = latent[latent["wording"] != "plain"]
    assert all(t in toy.SENTENCES[w] for t, w in zip(worded["transcript"], worded["wording"], strict=True))
    # the bank is drawn from the mixture: its class has on average a large latent weight
    weight = [row[f"latent_{row['wording']}"] for _, row in worded.iterrows()]
    assert np.mean(weight) > 0.5


# --- the audio follows the mixture ------------------------------------------------------------

def test_prosody_is_the_mixture_weighted_prototype():
    # hand value: an even anger/sadness mix, speaker with no offsets -> rate (210+125)/2 = 167.5,
    # volume (170+55)/2 = 112.5; the jitter averages out over many draws
    speaker = toy.Speaker("X", 1, "en-us")
    rng = np.random.default_rng(0)
    mix = np.array([0.5, 0.0, 0.5, 0.0])
    draws = pd.DataFrame([toy.draw_prosody(rng, mix, speaker) for _ in range(2000)])
    assert draws["rate"].mean() == pytest.approx(167.5, abs=1.0)
    assert draws["volume"].mean() == pytest.approx(112.5, abs=1.0)
    assert draws["pitch"].mean() == pytest.approx(40.0, abs=0.5)


def test_anger_louder_than_sadness_and_happiness_higher_pitched(corpus):
    out, df = corpus
    latent = toy.read_latent(out)
    m = latent[[f"latent_{c}" for c in CLASSES]].to_numpy()
    dominant = np.array(CLASSES)[m.argmax(axis=1)]
    clear = m.max(axis=1) > 0.6
    audio = [read_wav(p) for p in df["audio_path"]]
    loud = speaker_z(np.array([loud_log_rms(x) for x, *_ in audio]), df["speaker"])
    pitch = speaker_z(np.array([median_log_f0(x, sr) for x, sr, *_ in audio]), df["speaker"])
    seconds_per_word = speaker_z(np.array([len(x) / sr for x, sr, *_ in audio])
                                 / df["transcript"].str.split().str.len().to_numpy(), df["speaker"])
    anger, sad, happy = (clear & (dominant == c) for c in ("anger", "sadness", "happiness"))
    assert anger.sum() >= 5 and sad.sum() >= 5 and happy.sum() >= 5
    assert loud[anger].mean() - loud[sad].mean() > 1.0
    assert pitch[happy].mean() - pitch[sad].mean() > 1.0
    assert seconds_per_word[sad].mean() - seconds_per_word[anger].mean() > 0.5


# --- ensure_toy: reuse, rebuild, interrupted builds -------------------------------------------

def test_ensure_toy_reuses_then_rebuilds_on_changed_seed(tmp_path, capsys):
    out = tmp_path / "corpus"
    built = toy.ensure_toy(out, n=8, seed=0)
    assert "built" in capsys.readouterr().out
    stamp = (out / "meta.json").stat().st_mtime_ns
    reused = toy.ensure_toy(out, n=8, seed=0)
    line = capsys.readouterr().out
    assert "reusing" in line and line.count("\n") == 1
    assert (out / "meta.json").stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(reused, built, check_exact=True)
    rebuilt = toy.ensure_toy(out, n=8, seed=1)
    line = capsys.readouterr().out
    assert "built" in line and "seed" in line
    assert json.loads((out / "meta.json").read_text())["seed"] == 1
    assert not rebuilt.drop(columns="audio_path").equals(built.drop(columns="audio_path"))
    assert sorted(p.name for p in (out / "wav").iterdir()) == sorted(f"{u}.wav" for u in rebuilt["utt_id"])


def test_ensure_toy_rebuilds_when_a_wav_is_missing(tmp_path, capsys):
    out = tmp_path / "corpus"
    table = toy.ensure_toy(out, n=8, seed=0)
    Path(table["audio_path"].iloc[3]).unlink()
    capsys.readouterr()
    toy.ensure_toy(out, n=8, seed=0)
    assert "wav files missing" in capsys.readouterr().out
    assert Path(table["audio_path"].iloc[3]).is_file()


def test_interrupted_build_leaves_no_complete_looking_corpus(tmp_path, monkeypatch, capsys):
    out = tmp_path / "corpus"
    toy.ensure_toy(out, n=8, seed=0)
    calls = {"n": 0}
    real = toy.speech.speak_utterance

    def failing(tts, row):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real(tts, row)

    monkeypatch.setattr(toy.speech, "speak_utterance", failing)  # what make_toy calls
    with pytest.raises(KeyboardInterrupt):
        toy.ensure_toy(out, n=8, seed=1)
    assert not (out / "meta.json").exists()
    assert not list(out.glob(".wav-*"))
    monkeypatch.setattr(toy.speech, "speak_utterance", real)
    capsys.readouterr()
    toy.ensure_toy(out, n=8, seed=0)
    assert "built" in capsys.readouterr().out


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="sessions"):
        toy.speakers_for(2)
    with pytest.raises(ValueError, match="sessions"):
        toy.speakers_for(7)
    with pytest.raises(ValueError, match="n="):
        toy.plan_utterances(0)
