"""The tiny stand-in: its build (classes, tokens, template, determinism, cache and lock), its warm-up
data (what the think blocks say is what the audio and transcript hold) and the warmed-up model."""

from __future__ import annotations

import json

import answer_slots
import numpy as np
import pytest
import torch
from conftest_model import CLASSES, audio_logits, encode_waves, tiny, tiny_dir, tone

from ambinb import audio as A
from ambinb import config, cot, prompt, prosody, rollout
from ambinb import model as M
from ambinb import standin as S
from ambinb.standin import (
    batches,
    build,
    chats,
    descriptions,
    drills,
    listening,
    pretrain,
    recordings,
    speech,
    words,
)

FIXTURES = (tiny, tiny_dir)  # pytest fixtures from conftest_model, used by name below
SMALL_RECORDINGS = 12  # the small builds' speech corpus


def tiny_args(**over) -> dict:
    """The build arguments of the default spec (params/defaults.yaml), with ``over`` changed."""
    spec = S.tiny_spec(config.resolve())
    return {**{k: spec[k] for k in S.TINY_KEYS}, **over}



def _refuse(*args, **kwargs):
    raise AssertionError("the tiny build touched corpus data")


@pytest.fixture(scope="module")
def small_build():
    """A tiny stand-in with a 3-step warm-up, in memory, built while every way to corpus data
    (reading a wav file, loading a dataset, building the toy corpus) raises."""
    import soundfile

    from ambinb import labels, toy

    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        for module, name in ((soundfile, "read"), (labels, "load_dataset"), (labels, "make_toy"), (toy, "make_toy"),
                             (toy, "ensure_toy"), (toy.corpus, "make_toy"), (toy.corpus, "ensure_toy")):
            patch.setattr(module, name, _refuse)
        return S.make_tiny(**tiny_args(warmup_steps=3, recordings=SMALL_RECORDINGS, warmup_batch_size=4))


@pytest.fixture(scope="module")
def fresh_build():
    """The default stand-in before its warm-up (0 steps), in memory."""
    torch.set_num_threads(1)
    return S.make_tiny(**tiny_args(warmup_steps=0))


def test_tiny_saves_and_reloads_with_identical_logits(small_build, tmp_path):
    model, processor, stats = small_build
    assert stats["steps"] == 3 and stats["loss_last"] < stats["loss_first"]
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = M.load_checkpoint(tmp_path, dtype="float32", device="cpu")
    wave = tone(1.5, 250)
    assert torch.equal(audio_logits(model, processor, wave), audio_logits(loaded, loaded_processor, wave))
    assert loaded_processor.chat_template == S.CHAT_TEMPLATE
    text = "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nhi<|im_end|>"
    assert processor.tokenizer(text)["input_ids"] == loaded_processor.tokenizer(text)["input_ids"]


def test_tiny_has_the_real_classes_tokens_and_template(small_build):
    from transformers import Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor, WhisperFeatureExtractor

    model, processor, _ = small_build
    assert isinstance(model, Qwen2AudioForConditionalGeneration) and isinstance(processor, Qwen2AudioProcessor)
    fe = processor.feature_extractor
    assert isinstance(fe, WhisperFeatureExtractor)
    assert (fe.feature_size, fe.sampling_rate, fe.nb_max_frames) == (128, 16_000, 3000)
    tok = processor.tokenizer
    assert type(tok).__name__ == "Qwen2Tokenizer"
    for t in S.SPECIAL_TOKENS:
        assert tok.convert_ids_to_tokens(tok(t, add_special_tokens=False)["input_ids"]) == [t]
    assert model.config.audio_token_id == tok.convert_tokens_to_ids("<|AUDIO|>")
    assert model.config.text_config.hidden_size == 64 and model.config.text_config.num_hidden_layers == 2
    assert model.config.audio_config.encoder_layers == 2
    chat = [{"role": "user", "content": [{"type": "audio", "audio": "x"}, {"type": "text", "text": "Hi"}]}]
    assert processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nHi<|im_end|>\n<|im_start|>assistant\n")



@pytest.mark.parametrize("preset", sorted(cot.PRESETS))
def test_the_scored_answer_is_what_the_stand_in_writes_for_every_class(small_build, preset):
    """As on the real vocabulary (test_vocab): every class of the toy, IEMOCAP and CREMA-D, in a complete
    completion tokenised whole by the stand-in's tokenizer, stands right after a clean slot as the ids
    scored there, and is one token after its space."""
    tok = small_build[1].tokenizer
    scored = answer_slots.check_every_dataset(tok, cot.get_format(preset))
    assert all(len(ids) == 1 for names in scored.values() for ids in names), scored


def test_build_is_deterministic_for_a_seed(small_build, fresh_build):
    model, processor, _ = small_build
    again, processor2, _ = S.make_tiny(**tiny_args(warmup_steps=3, recordings=SMALL_RECORDINGS, warmup_batch_size=4))
    assert processor.tokenizer.get_vocab() == processor2.tokenizer.get_vocab()
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other, _, _ = S.make_tiny(**tiny_args(seed=1, warmup_steps=0))
    assert not torch.equal(other.state_dict()["lm_head.weight"], fresh_build[0].state_dict()["lm_head.weight"])


def test_warm_up_sees_no_corpus_audio_and_no_labels(small_build):
    """The build reads no wav file and loads no dataset (``small_build`` is built while those raise):
    only the toy's word banks' words reach it."""
    _, _, stats = small_build
    assert stats["steps"] == 3


def test_the_warmed_up_stand_in_speaks_the_format(tiny):
    """Sampled at temperature 1 on recordings it has not heard (another seed than its own corpus's)."""
    model, processor = tiny
    rec = recordings.record(2, seed=7)
    enc = encode_waves(model, processor, rec.waves, rec.transcripts)
    cfg = config.resolve(overrides={"max_new_tokens": 256, "temperature": 1.0, "top_p": 1.0, "seed": 0})
    group = rollout.rollout(model, processor, enc, CLASSES, cfg, k=4)
    rate = np.mean([t.format_ok for t in group.flat()])
    assert rate >= 0.5, [t.text for t in group.flat()]
    scored = {ids[0] for ids in prompt.class_ids(processor.tokenizer, CLASSES)}
    answered = [t for t in group.flat() if t.answer_found and len(t.readout_ids) < len(t.token_ids)]
    assert answered and all(t.token_ids[len(t.readout_ids)] in scored for t in answered), [t.text for t in answered]


def test_ensure_tiny_builds_once_and_rebuilds_on_a_new_spec(tmp_path, monkeypatch):
    built = []

    def fake_build(out_dir, **spec):
        built.append(spec)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / S.TINY_SPEC_FILE).write_text(json.dumps({"spec": spec}))
        return out_dir

    monkeypatch.setattr(build, "build_tiny", fake_build)  # what ensure_tiny calls
    cfg = config.resolve(overrides={"tiny_dir": str(tmp_path / "tiny")})
    assert S.ensure_tiny(cfg) == tmp_path / "tiny" and len(built) == 1
    S.ensure_tiny(cfg)
    assert len(built) == 1
    S.ensure_tiny({**cfg, "tiny_warmup_steps": 7})
    assert len(built) == 2 and built[-1]["warmup_steps"] == 7


@pytest.mark.slow
def test_default_build_is_reproducible(tiny_dir, tmp_path):
    """Rebuild the default stand-in from scratch and compare it with the one in ``tiny_dir``.

    Same spec, the same first warm-up loss (same data, same initial weights) and a last one within
    1 %; where both were built on the same CPU and torch (``machine`` in ``ambinb_tiny.json``), the
    same weights bit for bit. On another CPU the kernels round differently and 1,200 steps carry
    that into every weight, so there the training record is what can be compared.
    """
    cfg = config.resolve()
    spec = S.tiny_spec(cfg)
    out = S.build_tiny(tmp_path / "tiny", **spec)
    assert S.built_spec(out) == S.built_spec(tiny_dir) == spec
    new, old = build.built_info(out), build.built_info(tiny_dir)
    assert new["warmup"]["loss_first"] == pytest.approx(old["warmup"]["loss_first"], rel=1e-6)
    assert new["warmup"]["loss_last"] == pytest.approx(old["warmup"]["loss_last"], rel=0.01)
    if new["machine"] != old.get("machine"):
        pytest.skip(f"weights not compared: {tiny_dir} was built on {old.get('machine', 'an unrecorded machine')}, "
                    f"this rebuild on {new['machine']} (warm-up losses agree)")
    a, _ = M.load_checkpoint(out, "float32", "cpu")
    b, _ = M.load_checkpoint(tiny_dir, "float32", "cpu")
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_concurrent_build_of_the_same_spec_is_kept_and_another_spec_replaced(tmp_path):
    def folder(name, spec, marker):
        path = tmp_path / name
        path.mkdir()
        (path / S.TINY_SPEC_FILE).write_text(json.dumps({"spec": spec}))
        (path / "marker").write_text(marker)
        return path

    out = folder("tiny", {"seed": 0}, "first")
    build.install_build(folder("build1", {"seed": 0}, "second"), out, {"seed": 0})
    assert (out / "marker").read_text() == "first" and not (tmp_path / "build1").exists()
    build.install_build(folder("build2", {"seed": 1}, "third"), out, {"seed": 1})
    assert (out / "marker").read_text() == "third" and sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


# --- the pretraining data: what the answers say is what the audio and transcript hold ---------------

def test_the_speech_corpus_uses_no_toy_voice_and_no_toy_sentence():
    from ambinb.toy.design import SENTENCES, SPEAKERS

    voices = recordings.pretraining_voices()
    assert len(voices) > 150 and not {s.voice for s in SPEAKERS} & set(voices)
    rec = recordings.record(6, seed=3)
    bank = {s.lower() for sentences in SENTENCES.values() for s in sentences}
    assert not {t.lower() for t in rec.transcripts} & bank
    assert all(1.0 <= len(w) / 16_000 <= recordings.MAX_SECONDS for w in rec.waves)
    assert rec.functionals.shape == (6, 88) and list(rec.prosody.columns) == list(prosody.DIMENSIONS)


def test_recordings_are_measured_as_the_curator_measures():
    """Louder eSpeak settings are heard louder and higher ones higher: the measured dimensions
    follow the settings (rank correlation over 24 recordings)."""
    from scipy.stats import spearmanr

    rec = recordings.record(24, seed=5)
    assert spearmanr(rec.settings["volume"], rec.prosody["loudness"]).statistic > 0.6
    assert spearmanr(rec.settings["rate"], rec.prosody["rate"]).statistic > 0.3
    assert abs(rec.prosody["loudness"].mean()) < 1e-9 and rec.prosody["loudness"].std(ddof=0) == pytest.approx(1.0)


def test_recordings_are_kept_and_read_back(tmp_path):
    rec = recordings.ensure_recordings(3, seed=11, cache_dir=tmp_path)
    again = recordings.ensure_recordings(3, seed=11, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("recordings-*.npz"))) == 1
    assert all(np.array_equal(a, b) for a, b in zip(rec.waves, again.waves)) and rec.transcripts == again.transcripts
    assert np.array_equal(rec.functionals, again.functionals) and rec.prosody.equals(again.prosody)


def test_description_words_the_measured_prosody():
    z = {"loudness": 1.4, "rate": 0.1, "pitch": -0.7, "pitch_var": 0.0, "tension": 2.0, "roughness": -2.0}
    assert descriptions.description(z) == (
        "Volume: much louder than a typical voice. Speed: close to a typical speaking rate. "
        "Pitch: somewhat lower-pitched than a typical voice; close to a typical pitch variation. "
        "Tone: much tenser than a typical voice; much steadier than a typical voice.")


def test_listening_bins_and_loss():
    assert listening.bins(np.array([-0.7, -0.5, 0.2, 0.49, 0.5])).tolist() == [0, 0, 1, 1, 2]
    torch.manual_seed(0)
    head = listening.ListeningHead(4, 3, 2)
    outputs = [torch.randn(5, 4), torch.randn(7, 4)]
    pooled = listening.pooled(outputs)
    assert pooled.shape == (2, 8) and torch.allclose(pooled[0, :4], outputs[0].mean(0))
    with torch.no_grad():  # a head that predicts the targets exactly leaves the mse term at 0
        head.linear.weight.zero_()
        head.linear.bias.copy_(torch.tensor([1.0, 2.0, 3.0, 0, 0, 0, 0, 0, 0]))
    loss = listening.listening_loss(head, outputs, torch.tensor([[1.0, 2.0, 3.0]] * 2), torch.tensor([[0, 2]] * 2))
    assert loss.item() == pytest.approx(np.log(3.0), abs=1e-6)  # uniform bin logits


def test_stacked_clip_mels_give_the_full_tower_outputs(small_build):
    model, processor, _ = small_build
    rng = np.random.default_rng(0)
    waves = [speech.synthetic_wave(rng) for _ in range(3)]
    feats, masks = A.mel_features(processor.feature_extractor, waves)
    full = A.run_tower(model, feats, masks, windowed=False)
    short = A.run_tower(model, *speech.stack_mels([speech.clip_mels(processor.feature_extractor, w) for w in waves]))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(full, short))


def test_the_warm_up_trains_the_tower_and_freezes_it_after(small_build, fresh_build):
    model, _, _ = small_build
    assert A.tower_is_frozen(model)
    assert A.tower_hash(model) != A.tower_hash(fresh_build[0])


def test_warm_up_keywords_quote_the_emotion_words_of_the_transcript():
    """Cued transcripts carry lexicon words often; every quoted keyword occurs in the transcript and the
    template's keyword line quotes the transcript's cue words."""
    from ambinb.cues import text_cues

    rng = __import__("random").Random(0)
    vocabulary = words.transcript_vocabulary()
    cued = 0
    for _ in range(200):
        classes = words.synthetic_class_list(rng)
        transcript = S.cued_transcript(rng, classes, vocabulary)
        cues = [w for ws in text_cues(transcript, classes).values() for w in ws]
        cued += bool(cues)
        z = {d: float(v) for d, v in zip(prosody.DIMENSIONS, np.random.default_rng(0).normal(size=6))}
        think, answer = S.synthetic_completion(rng, transcript, classes, z)
        assert answer in classes
        line = think.split("Keywords:")[1].split("\n")[0]
        quoted = [q for q in line.split('"')[1::2]]
        assert all(q.lower() in transcript.lower() for q in quoted), (transcript, line)
        if cues:
            assert f'"{cues[0]}"' in line, (transcript, line)
    assert 0.6 < cued / 200 < 0.95


def test_quick_mel_equals_the_full_feature_extraction(small_build):
    _, processor, _ = small_build
    rng = np.random.default_rng(0)
    waves = [speech.synthetic_wave(rng) for _ in range(2)]
    feats, masks = A.mel_features(processor.feature_extractor, waves)
    for i, w in enumerate(waves):
        f, m = speech.quick_mel(processor.feature_extractor, w)
        assert torch.equal(f, feats[i]) and torch.equal(m, masks[i])


def test_quote_weights_mark_the_quoted_tokens():
    assert chats.quote_weights(["Keywords", ":", 'Ġ"', "furious", '",', "Ġloud"], 5.0) == [1, 1, 1, 5, 1, 1]
    assert chats.quote_weights(['"', "la", "st", "Ġstraw", '"', "Ġx"], 2.0) == [1, 2, 2, 2, 1, 1]


def test_copy_drill_quotes_the_lexicon_words_in_order_or_says_plain():
    from ambinb.cues import text_cues

    rng = __import__("random").Random(0)
    plain = 0
    for _ in range(100):
        context, target = drills.copy_drill_text(rng, words.transcript_vocabulary())
        transcript = context.split('"', 1)[1].rsplit('"', 1)[0]
        cues = [w for ws in text_cues(transcript, words.ALL_CLASSES).values() for w in ws]
        if target == " plain wording":
            plain += 1
            assert not cues
        else:
            quoted = target.split('"')[1::2]
            assert set(quoted) <= set(cues) and len(quoted) == min(3, len(cues))
            low = transcript.lower()
            assert [low.find(q) for q in quoted] == sorted(low.find(q) for q in quoted)
    assert 10 < plain < 60  # random words hit the lexicon too (e.g. "lost", "love")


def test_word_tokens_start_from_their_spaced_twin(fresh_build):
    fresh, processor, _ = fresh_build
    vocab = processor.tokenizer.get_vocab()
    pairs = [(vocab[t[1:]], i) for t, i in vocab.items() if t.startswith("Ġ") and t[1:] in vocab]
    assert len(pairs) > 50
    emb, head = fresh.get_input_embeddings().weight, fresh.lm_head.weight
    assert all(torch.equal(emb[a], emb[b]) and torch.equal(head[a], head[b]) for a, b in pairs)
    assert not torch.equal(emb[pairs[0][0]], emb[pairs[1][0]])  # only twins share


def test_pad_batch_worked_example():
    ids, mask, labels = batches.pad_batch([[5, 6, 7], [8]], [[-100, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert labels.tolist() == [[-100, 6, 7], [8, -100, -100]]


def test_lr_schedule_warms_up_then_decays_to_a_tenth():
    f = pretrain.lr_schedule(100)  # 10 warm-up steps, then cosine over 90
    assert [f(0), f(4), f(9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(55) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 45 / 90)))  # = 0.55, half-way
    assert f(100) == pytest.approx(0.1)
    assert pretrain.lr_schedule(3)(0) == 1.0  # one warm-up step when there are few
