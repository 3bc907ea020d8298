"""The tower probe: pooling, bins and chance by hand; a probe that must find a planted bin and must
not find one in noise; the pooled tower outputs of real clips through the feature cache."""

from __future__ import annotations

import huggingface_hub.constants
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from conftest_model import tiny_dir, tone  # noqa: F401

from ambinb import config, probe, prosody


def test_pool_is_mean_then_sd_over_frames():
    expected = [[2.0, 2.0, 1.0, 0.0]]  # mean (2, 2), sd ddof 0 (1, 0)
    np.testing.assert_allclose(probe.pool([np.array([[1.0, 2.0], [3.0, 2.0]])]), expected)
    np.testing.assert_allclose(probe.pool([torch.tensor([[1.0, 2.0], [3.0, 2.0]])]), expected)
    assert probe.pool([np.ones((5, 3)), np.ones((1, 3))]).shape == (2, 6)


def test_bins_follow_the_words():
    got = prosody.bins([1.4, -0.7, 0.1, prosody.NEAR, -prosody.NEAR, 0.49, np.nan])
    np.testing.assert_array_equal(got[:6], [1, -1, 0, 1, -1, 0])  # "close to" is |z| < NEAR
    assert np.isnan(got[6])


def test_majority_comes_from_the_training_rows():
    x = np.zeros((5, 1))
    y = np.array([0, 0, 1, 1, 1])
    train = np.array([True, True, True, False, False])
    predicted, majority = probe.held_out_predictions(x, y, train)
    np.testing.assert_array_equal(majority, [0, 0])  # training bins (0, 0, 1): 0, though the held-out rows are 1
    one_class = probe.held_out_predictions(x, np.array([1, 1, 1, 0, 0]), train)
    np.testing.assert_array_equal(one_class[0], [1, 1])


def test_chance_is_the_training_majority_on_each_held_out_group():
    """Group a: bins (1, 1, 1, 0); group b: (0, 0, 0, 1). Holding out a, b's majority 0 is right once;
    holding out b, a's majority 1 is right once: chance 2 / 8 = 0.25 (the held-out majority would give 0.75)."""
    z = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    out = probe.probe_dimension(np.zeros((8, 2)), z, list("aaaabbbb"))
    assert out["chance"] == pytest.approx(0.25) and out["n"] == 8


def _planted(n_per_group: int = 10, groups: str = "abc", seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per group 5 rows close to the reference (z = 0), 3 above (+1.5), 2 below (-1.5); features one-hot of the bin."""
    rng = np.random.default_rng(seed)
    z = np.tile(np.array([0.0] * 5 + [1.5] * 3 + [-1.5] * 2), len(groups))
    x = np.eye(3)[(np.sign(z) + 1).astype(int)] + 0.01 * rng.normal(size=(len(z), 3))
    return x, z, [g for g in groups for _ in range(n_per_group)]


def test_a_planted_bin_is_found_and_chance_is_the_majority_share():
    x, z, groups = _planted()
    out = probe.probe_dimension(x, z, groups)
    assert out == {"accuracy": 1.0, "chance": 0.5, "n": 30}  # majority 0: 5 of each group's 10


def test_noise_gives_about_chance():
    """50 noise features for 300 rows: a probe scored on its own training rows would be far above
    chance (0.58 here, against 0.40); held out it stays within a few points of it."""
    rng = np.random.default_rng(1)
    x, z = rng.normal(size=(300, 50)), rng.normal(size=300)
    groups = np.repeat(list("abcde"), 60)
    out = probe.probe_dimension(x, z, groups)
    assert out["n"] == 300 and abs(out["chance"] - np.mean(np.abs(z) < prosody.NEAR)) < 0.05
    assert abs(out["accuracy"] - out["chance"]) < 0.08


def test_nan_rows_and_one_group():
    x, z, groups = _planted()
    z[0] = np.nan
    assert probe.probe_dimension(x, z, groups)["n"] == 29
    lone = probe.probe_dimension(x, z, ["a"] * len(z))
    assert lone["n"] == 0 and np.isnan(lone["accuracy"])


def test_probe_table_has_one_row_per_dimension():
    x, z, groups = _planted()
    table = pd.DataFrame({d: z if d == "pitch" else np.zeros_like(z) for d in prosody.DIMENSIONS})
    out = probe.probe(x, table, groups)
    assert list(out.index) == list(prosody.DIMENSIONS) and list(out.columns) == ["accuracy", "chance", "gain", "n"]
    assert out.loc["pitch", "accuracy"] == 1.0 and out.loc["pitch", "gain"] == pytest.approx(0.5)
    assert out.loc["loudness", "accuracy"] == out.loc["loudness", "chance"] == 1.0  # every bin 0


def test_by_reference_sets_corpus_and_speaker_bins_side_by_side(monkeypatch):
    """Speakers s and t, two sessions; every eGeMAPS column is 1, 2, 3 for s and 11, 12, 13 for t in
    each session. Against the speaker the bins are (-1, 0, +1) for both, the middle one 0 (|z| = 0);
    against the corpus s is all -1 and t all +1 (|z| >= 0.9). Features that say the speaker find
    the corpus bins, and chance for the speaker bins."""
    df = pd.DataFrame({"utt_id": [f"u{i}" for i in range(12)], "speaker": (["s"] * 3 + ["t"] * 3) * 2,
                       "session": [1] * 6 + [2] * 6, "audio_path": "x.wav"})
    values = np.tile([1.0, 2.0, 3.0, 11.0, 12.0, 13.0], 2)
    feats = pd.DataFrame(np.repeat(values[:, None], len(prosody.feature_names()), axis=1),
                         index=pd.Index(df["utt_id"], name="utt_id"), columns=prosody.feature_names())
    monkeypatch.setattr(prosody, "utterance_features", lambda frame, cfg: feats.loc[list(frame["utt_id"])])
    x = (df["speaker"] == "t").to_numpy(dtype=float)[:, None]
    out = probe.by_reference(x, df, {"prosody_cache": "unused", "prosody_workers": 1})
    assert list(out.columns.get_level_values(0).unique()) == ["corpus", "speaker"]
    signed = out.drop(index="tension")  # tension's columns (two + and two -) cancel: every bin 0
    assert (out.loc["tension"] == [1.0, 1.0, 0.0, 12] * 2).all()
    # corpus z of (1, 2, 3, 11, 12, 13): (x - 7) / 5.066, |z| >= 0.79; the training majority is a
    # tie (the lowest bin, -1), right on half the held-out rows
    assert (signed[("corpus", "accuracy")] == 1.0).all() and (signed[("corpus", "chance")] == 0.5).all()
    # speaker bins (-1, 0, 1) per speaker: the tie's -1 is right 1 in 3, and so is any prediction
    # that depends on the speaker alone
    np.testing.assert_allclose(signed[("speaker", "chance")], 1 / 3)
    np.testing.assert_allclose(signed[("speaker", "accuracy")], 1 / 3)


def test_probe_groups_prefer_the_session():
    df = pd.DataFrame({"speaker": ["s1", "s2"], "session": [1, 1]})
    np.testing.assert_array_equal(probe.probe_groups(df), ["1", "1"])
    np.testing.assert_array_equal(probe.probe_groups(df.drop(columns="session")), ["s1", "s2"])


def test_tower_features_pool_the_cached_tower_outputs(tiny_dir, tmp_path):  # noqa: F811
    from ambinb import audio
    from ambinb import model as model_mod

    paths = []
    for i, (seconds, freq) in enumerate([(1.0, 220.0), (1.5, 440.0)]):
        paths.append(tmp_path / f"u{i}.wav")
        sf.write(paths[-1], tone(seconds, freq), 16_000)
    df = pd.DataFrame({"utt_id": ["u0", "u1"], "audio_path": [str(p) for p in paths]})
    cfg = config.resolve(overrides={"feature_cache_dir": str(tmp_path / "features"), "device": "cpu"})
    pooled = probe.tower_features(df, cfg, progress=False)
    model, processor = model_mod.load_model(cfg)
    direct = audio.run_tower(model, *audio.mel_features(processor.feature_extractor,
                                                        [audio.load_wav(p) for p in paths]))
    assert pooled.shape == (2, 2 * direct[0].shape[1]) and direct[0].shape[0] == 25  # 1 s: 100 frames -> 25 tokens
    np.testing.assert_allclose(pooled, probe.pool(direct), atol=1e-5)
    assert len(list((tmp_path / "features").rglob("*.pt"))) == 2  # a later chapter reads them back
    again = audio.feature_cache(model, processor, cfg)
    again.features(["u0"], [audio.load_wav(paths[0])])
    assert again.hits == 1 and again.tower_calls == 0


def test_the_probe_is_skipped_without_clips_or_a_model_here_and_loads_nothing(tmp_path, monkeypatch, capsys):
    def no_load(cfg):
        raise AssertionError("the probe loaded a model")

    monkeypatch.setattr(probe.model_mod, "load_model", no_load)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    label_only = pd.DataFrame({"utt_id": ["a", "b"], "audio_path": ["", None]})
    heard = pd.DataFrame({"utt_id": ["a"], "audio_path": ["/clips/a.wav"]})
    hub = config.resolve(overrides={"model_name_or_path": "Qwen/Qwen2-Audio-7B-Instruct"})
    missing = {**hub, "model_name_or_path": str(tmp_path / "nowhere")}
    assert probe.why_skipped(heard, config.resolve()) == ""  # the stand-in is always here
    assert probe.why_skipped(label_only, config.resolve()) == "none of the 2 utterances has audio (a label-only copy)"
    assert probe.why_skipped(heard, missing) == f"{tmp_path / 'nowhere'} is not on this machine (no such folder)"
    assert probe.tower_probe(label_only, hub, tmp_path / "tower_probe.csv") is None
    assert capsys.readouterr().out == (
        "tower probe skipped: none of the 2 utterances has audio (a label-only copy); Qwen/Qwen2-Audio-7B-Instruct "
        "is not on this machine (a hub id, not in the Hugging Face cache). Curation needs neither; the chapter goes "
        "on without the probe\n")
    assert not (tmp_path / "tower_probe.csv").exists()
    repo = tmp_path / "hub" / "models--Qwen--Qwen2-Audio-7B-Instruct"  # once downloaded, the hub id is here
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "snapshots" / "abc" / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    assert probe.why_skipped(heard, hub) == ""
