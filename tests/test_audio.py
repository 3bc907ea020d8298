"""Audio in: wav loading and its bad inputs, mel features and token counts, the feature cache, and
the one place where audio enters the language model (cached path == transformers' full path), for
each family (the Qwen2-Audio stand-in and a tiny Qwen2.5-Omni Thinker: ``family_model``)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest_model import encode_waves, family_model, omni, omni_dir, omni_processor, tiny, tiny_dir, tone

from ambinb import audio as A
from ambinb import lm
from ambinb.families import qwen2_audio

FIXTURES = (tiny, tiny_dir, family_model, omni, omni_dir, omni_processor)  # conftest_model's, used by name below

# --- waveforms --------------------------------------------------------------------------------


def test_resampled_to_16k_mono_with_one_note(tmp_path, caplog):
    rate = 8_000
    t = np.arange(rate) / rate
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 440 * t)], axis=1) * 0.5
    for name in ("a", "b"):
        sf.write(tmp_path / f"{name}.wav", stereo, rate)
    A._NOTED_RESAMPLING.discard((rate, 2))
    with caplog.at_level(logging.WARNING, logger="ambinb.audio"):
        wave_a = A.load_wav(tmp_path / "a.wav", "utt_a")
        A.load_wav(tmp_path / "b.wav", "utt_b")
    assert wave_a.shape == (16_000,) and wave_a.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(wave_a))
    assert abs(np.argmax(spectrum) * A.SAMPLE_RATE / wave_a.size - 440) <= 1.0  # same pitch after resampling
    assert np.isclose(np.abs(wave_a[2000:14000]).max(), 0.375, atol=0.02)  # mean of the channels (0.5, 0.25)
    notes = [r for r in caplog.records if "16 kHz mono" in r.getMessage()]
    assert len(notes) == 1 and "utt_a" in notes[0].getMessage()


def test_long_audio_raises_or_is_cut_explicitly(tmp_path):
    sf.write(tmp_path / "long.wav", np.zeros(31 * A.SAMPLE_RATE, dtype=np.float32), A.SAMPLE_RATE)
    with pytest.raises(A.AudioError, match=r"long_utt.*31\.00 s.*truncate_audio"):
        A.load_wav(tmp_path / "long.wav", "long_utt")
    cut = A.load_wav(tmp_path / "long.wav", "long_utt", max_seconds=30.0, truncate=True)
    assert cut.shape == (30 * A.SAMPLE_RATE,)


def test_unreadable_missing_and_empty_audio_name_the_utterance(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"this is not a wav file")
    with pytest.raises(A.AudioError, match=r"utt_bad: cannot read audio file .*bad\.wav"):
        A.load_wav(tmp_path / "bad.wav", "utt_bad")
    with pytest.raises(A.AudioError, match=r"utt_gone: cannot read audio file .*gone\.wav"):
        A.load_wav(tmp_path / "gone.wav", "utt_gone")
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), A.SAMPLE_RATE)
    with pytest.raises(A.AudioError, match="utt_empty: empty audio"):
        A.load_wav(tmp_path / "empty.wav", "utt_empty")
    with pytest.raises(A.AudioError, match="utt_x: the table has no audio_path"):
        A.load_row_audio({"utt_id": "utt_x", "audio_path": ""}, {})


# --- mel features and counts ------------------------------------------------------------------


def test_token_count_formula_by_hand():
    # 200 frames: conv stride 2 -> (199 // 2) + 1 = 100; pool 2 -> (98 // 2) + 1 = 50
    assert A.n_audio_tokens(200) == 50
    assert A.n_audio_tokens(3000) == 750
    assert A.n_audio_tokens(1) == 0  # hence the "too short" error below
    with pytest.raises(A.AudioError, match="utt_short: audio of 100 samples is too short"):
        A.check_duration(np.zeros(100, dtype=np.float32), "utt_short")


def test_mel_features_and_counts_match_the_processor(family_model):
    """ambinb's features and placeholder counts are the processor's (Qwen2.5-Omni's pads to 300 s: its
    first 3,000 frames are ambinb's, padding included)."""
    _, processor = family_model
    waves = [tone(1.0, 200), tone(2.5, 300)]
    feats, mask = A.mel_features(processor.feature_extractor, waves)
    assert feats.shape == (2, 128, 3000) and mask.shape == (2, 3000)
    assert mask.sum(-1).tolist() == [100, 250]
    text = "<|audio_bos|><|AUDIO|><|audio_eos|>hello"
    inputs = processor(text=[text, text], audio=waves, sampling_rate=16_000, return_tensors="pt", padding=True)
    audio_id = processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    assert (inputs["input_ids"] == audio_id).sum(-1).tolist() == [A.n_audio_tokens(100), A.n_audio_tokens(250)]
    assert torch.equal(inputs["input_features"][..., : A.N_FRAMES], feats)
    assert torch.equal(inputs["feature_attention_mask"][..., : A.N_FRAMES], mask)


def test_compact_mel_round_trip_is_exact(tiny):
    _, processor = tiny
    feats, mask = A.mel_features(processor.feature_extractor, [tone(1.3, 250)])
    packed = A._Mel.pack(feats[0], int(mask[0].sum()))
    assert packed.body.shape[1] < 400  # the padded tail is one repeated column
    back, back_mask = packed.unpack()
    assert torch.equal(back, feats[0]) and torch.equal(back_mask, mask[0])


# --- the cache and the merge -----------------------------------------------------------------


class _TowerCounter:
    """Counts the utterances (batch rows) that pass through the audio tower."""

    def __init__(self, model):
        self.rows = 0
        # conv1 is the first module of every tower path (the encoder's own forward and the windowed one)
        self.handle = lm.audio_tower(model).conv1.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.rows += int(args[0].shape[0])


def test_cached_features_equal_the_full_path(family_model):
    """The model's own forward on the processor's inputs (its tower, merge and positions; Qwen2.5-Omni's
    processor pads on the left, 300 s of features, a clip of more than one 2 s chunk) == ambinb's path
    (the cached tower outputs, lm.merge_audio, positions counted from each row's first token)."""
    model, processor = family_model
    waves = [tone(1.2, 180), tone(2.3, 330)]
    texts = ["<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nHow does this sound?<|im_end|>\n"] * 2
    inputs = processor(text=texts, audio=waves, sampling_rate=16_000, return_tensors="pt", padding=True)
    mask = inputs["attention_mask"]
    with torch.no_grad():
        full = model(**inputs).logits
        cache = A.AudioFeatureCache(model, processor.feature_extractor)
        feats = cache.features(["a", "b"], waves)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cached = lm.head_logits(model, lm.hidden_states(model, inputs["input_ids"], mask, feats, pos)[0])
    real = inputs["attention_mask"].bool()
    assert torch.allclose(full[real], cached[real], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(feats[0][:5], feats[1][:5])  # two wavs, two different feature sets


def test_tower_runs_once_per_utterance_and_disk_entries_are_reused(tiny, tmp_path):
    model, processor = tiny
    counter = _TowerCounter(model)
    waves = [tone(1.0, 220), tone(1.5, 440), tone(1.0, 220)]
    cache = A.AudioFeatureCache(model, processor.feature_extractor, cache_dir=tmp_path)
    first = cache.features(["a", "b", "c"], waves)
    assert counter.rows == 3 and cache.tower_calls == 3
    again = cache.features(["b", "a"], [waves[1], waves[0]])
    assert counter.rows == 3 and torch.equal(again[0], first[1])
    fresh = A.AudioFeatureCache(model, processor.feature_extractor, cache_dir=tmp_path)
    from_disk = fresh.features(["a"], [waves[0]])
    assert counter.rows == 3 and torch.equal(from_disk[0], first[0])
    # another waveform under the same id is another entry, never a stale hit
    fresh.features(["a"], [tone(1.0, 660)])
    assert counter.rows == 4
    # other tower weights: another hash, another folder
    with torch.no_grad():
        lm.audio_tower(model).layer_norm.bias.add_(0.5)
    changed = A.AudioFeatureCache(model, processor.feature_extractor, cache_dir=tmp_path)
    assert changed.key != cache.key
    changed.features(["a"], [waves[0]])
    assert counter.rows == 5
    counter.handle.remove()


def test_trainable_tower_is_not_cached_and_gets_gradients(family_model):
    model, processor = family_model
    lm.audio_tower(model).requires_grad_(True)
    counter = _TowerCounter(model)
    cache = A.AudioFeatureCache(model, processor.feature_extractor)
    wave = tone(1.0, 300)
    for _ in range(2):
        feats = cache.features(["a"], [wave])
    assert counter.rows == 2 and len(cache._mel) == 1  # mel computed once, tower run each time
    feats[0].sum().backward()
    assert lm.audio_tower(model).conv1.weight.grad.abs().sum() > 0


def test_merge_refuses_audio_tokens_without_features(tiny):
    model, processor = tiny
    audio_id = processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    ids = torch.tensor([[1, audio_id, audio_id, 2]])
    with pytest.raises(ValueError, match="no audio features"):
        lm.merge_audio(model, ids, None)
    with pytest.raises(ValueError, match="row 0: 2 <|AUDIO|> tokens but 3 audio features"):
        lm.merge_audio(model, ids, [torch.zeros(3, lm.audio_tower(model).config.d_model)])


def test_audio_positions_of_the_language_model_input_carry_the_projected_features(family_model):
    model, processor = family_model
    captured = []
    text = lm.text_model(model)
    handle = text.register_forward_pre_hook(lambda m, a, kw: captured.append(kw["inputs_embeds"].detach()),
                                          with_kwargs=True)
    waves = [tone(1.0, 200), tone(1.0, 500)]
    enc = encode_waves(model, processor, waves, ["same words", "same words"])
    ids = torch.tensor([e.prompt_ids for e in enc])
    with torch.no_grad():
        lm.hidden_states(model, ids, torch.ones_like(ids), [e.audio for e in enc])
        proj = [lm.project_audio(model, [e.audio]) for e in enc]
    handle.remove()
    audio_id = processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    embeds = captured[0]
    for row in range(2):
        at = ids[row] == audio_id
        assert torch.allclose(embeds[row][at], proj[row], atol=1e-6)
        placeholder = model.get_input_embeddings().weight[audio_id]
        assert not torch.allclose(embeds[row][at][0], placeholder)
    assert not torch.allclose(embeds[0][ids[0] == audio_id], embeds[1][ids[1] == audio_id])


# --- audio that is not finite, and what the cache stores -----------------------------------------


def test_nan_or_inf_samples_are_refused_naming_the_file(tmp_path):
    wave = tone(1.0, 220)
    wave[100:103] = np.nan  # a silent stretch normalised by its own peak
    sf.write(tmp_path / "nan.wav", wave, A.SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(A.AudioError, match=r"utt_nan: .*nan\.wav: 3 of 16000 samples are NaN or inf \(first at "
                                           r"sample 100"):
        A.load_wav(tmp_path / "nan.wav", "utt_nan")
    wave[100:103] = [np.inf, 0.0, 0.0]
    sf.write(tmp_path / "inf.wav", np.stack([wave, wave], axis=1), 8_000, subtype="FLOAT")  # before resampling
    with pytest.raises(A.AudioError, match=r"utt_inf: .*inf\.wav: 2 of 32000 samples"):
        A.load_wav(tmp_path / "inf.wav", "utt_inf")


def test_nan_audio_stops_encoding_before_the_cache_and_training(tiny, tmp_path):
    from ambinb import config, prompt

    model, processor = tiny
    counter = _TowerCounter(model)
    good, bad = tone(1.0, 220), tone(1.0, 330)
    bad[5] = np.nan
    sf.write(tmp_path / "good.wav", good, A.SAMPLE_RATE, subtype="FLOAT")
    sf.write(tmp_path / "bad.wav", bad, A.SAMPLE_RATE, subtype="FLOAT")
    rows = [{"utt_id": "u_good", "transcript": "fine", "audio_path": str(tmp_path / "good.wav")},
            {"utt_id": "u_bad", "transcript": "broken", "audio_path": str(tmp_path / "bad.wav")}]
    cache = A.AudioFeatureCache(model, processor.feature_extractor, cache_dir=tmp_path / "cache")
    with pytest.raises(A.AudioError, match=r"u_bad: .*bad\.wav: 1 of 16000 samples are NaN"):
        prompt.encode_rows(rows, ["anger", "sadness"], processor, cache, config.resolve())
    with pytest.raises(A.AudioError, match="u_mem: 1 of 16000 samples"):  # waveforms that come from elsewhere
        cache.features(["u_ok", "u_mem"], [good, bad])
    assert counter.rows == 0 and not (tmp_path / "cache").exists()
    counter.handle.remove()


def test_a_cache_file_holds_its_own_utterance_only(tiny, tmp_path):
    model, processor = tiny
    waves = [tone(0.5, 220), tone(3.0, 440), tone(1.5, 330)]  # three lengths
    cache = A.AudioFeatureCache(model, processor.feature_extractor, cache_dir=tmp_path)
    feats = cache.features(["a", "b", "c"], waves)
    for utt_id, f in zip(["a", "b", "c"], feats):
        stored = next(cache.dir.glob(f"{utt_id}.*.pt"))
        nbytes = f.numel() * f.element_size()
        assert stored.stat().st_size <= 2 * nbytes, (utt_id, stored.stat().st_size, nbytes)
        assert torch.equal(torch.load(stored), f)
    fresh = A.AudioFeatureCache(model, processor.feature_extractor, cache_dir=tmp_path)
    assert all(torch.equal(x, y) for x, y in zip(fresh.features(["a", "b", "c"], waves), feats))


def test_windowed_tower_equals_the_encoders_own_forward(tiny):
    """run_tower on the first tower_window frames gives the kept outputs of the encoder's own forward
    over all 3,000 frames, for clips of different lengths in one batch (one of them at full length)."""
    model, processor = tiny
    waves = [tone(1.0, 220), tone(2.7, 440), tone(0.3, 180)]
    feats, masks = A.mel_features(processor.feature_extractor, waves)
    assert qwen2_audio.tower_window(masks) == int(masks.sum(-1).max()) + 4
    with torch.no_grad():
        full = A.run_tower(model, feats, masks, windowed=False)
        short = A.run_tower(model, feats, masks)
    assert [f.shape for f in full] == [s.shape for s in short]
    assert all(torch.allclose(f, s, atol=1e-5) for f, s in zip(full, short))
    whole = torch.ones(1, A.N_FRAMES, dtype=torch.long)
    assert qwen2_audio.tower_window(whole) == A.N_FRAMES


def test_an_utterances_cached_output_does_not_depend_on_what_it_was_computed_with(family_model, tmp_path):
    """Computed alongside longer clips or alone, an utterance's tower output is the same to the bit, so
    what a run reads from a cache does not depend on which run, batch or test filled the cache first
    (batched, the padding window moves its float rounding by about 1e-6, and RL runs amplify that)."""
    model, processor = family_model
    waves = [tone(0.8, 220), tone(3.0, 440), tone(1.5, 330)]
    together = A.AudioFeatureCache(model, processor.feature_extractor).features(["a", "b", "c"], waves)
    for i, utt_id in enumerate(["a", "b", "c"]):
        alone = A.AudioFeatureCache(model, processor.feature_extractor).features([utt_id], [waves[i]])[0]
        assert torch.equal(alone, together[i]), utt_id
    filled_by_another = A.AudioFeatureCache(model, processor.feature_extractor, cache_dir=tmp_path)
    filled_by_another.features(["c", "a"], [waves[2], waves[0]])
    reader = A.AudioFeatureCache(model, processor.feature_extractor, cache_dir=tmp_path)
    assert torch.equal(reader.features(["a"], [waves[0]])[0], together[0])
