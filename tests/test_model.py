"""Loading, the tiny stand-in (build, save, reload, determinism, warm-up), LoRA and saved adapters."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from conftest_model import CLASSES, encode_waves, tiny, tiny_dir, tone

from ambinb import audio as A
from ambinb import config, rollout
from ambinb import model as M

FIXTURES = (tiny, tiny_dir)  # pytest fixtures from conftest_model, used by name below


def _logits(model, processor, wave, text="<|audio_bos|><|AUDIO|><|audio_eos|>How does it sound?"):
    inputs = processor(text=[text], audio=[wave], sampling_rate=16_000, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(scope="module")
def small_build():
    """A tiny stand-in with a 3-step warm-up, in memory."""
    torch.set_num_threads(1)
    return M.make_tiny(warmup_steps=3)


def test_tiny_saves_and_reloads_with_identical_logits(small_build, tmp_path):
    model, processor, stats = small_build
    assert stats["steps"] == 3 and stats["loss_last"] < stats["loss_first"]
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = M.load_checkpoint(tmp_path, dtype="float32", device="cpu")
    wave = tone(1.5, 250)
    assert torch.equal(_logits(model, processor, wave), _logits(loaded, loaded_processor, wave))
    assert loaded_processor.chat_template == M.CHAT_TEMPLATE
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
    for t in M.SPECIAL_TOKENS:
        assert tok.convert_ids_to_tokens(tok(t, add_special_tokens=False)["input_ids"]) == [t]
    assert model.config.audio_token_id == tok.convert_tokens_to_ids("<|AUDIO|>")
    assert model.config.text_config.hidden_size == 64 and model.config.text_config.num_hidden_layers == 2
    assert model.config.audio_config.encoder_layers == 2
    chat = [{"role": "user", "content": [{"type": "audio", "audio": "x"}, {"type": "text", "text": "Hi"}]}]
    assert processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nHi<|im_end|>\n<|im_start|>assistant\n")
    for name in CLASSES:  # the toy's class names are single tokens of the tiny vocabulary
        assert len(tok(name, add_special_tokens=False)["input_ids"]) == 1


def test_build_is_deterministic_for_a_seed(small_build):
    model, processor, _ = small_build
    again, processor2, _ = M.make_tiny(warmup_steps=3)
    assert processor.tokenizer.get_vocab() == processor2.tokenizer.get_vocab()
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other, _, _ = M.make_tiny(seed=1, warmup_steps=0)
    assert not torch.equal(other.state_dict()["lm_head.weight"], a["lm_head.weight"])


def test_warm_up_sees_no_corpus_audio_and_no_labels(monkeypatch):
    """The build reads no wav file and loads no dataset: only the toy's word banks' words."""
    import soundfile

    from ambinb import labels, toy

    def refuse(*args, **kwargs):
        raise AssertionError("the tiny build touched corpus data")

    for module, name in ((soundfile, "read"), (labels, "load_dataset"), (labels, "make_toy"), (toy, "make_toy"),
                         (toy, "ensure_toy")):
        monkeypatch.setattr(module, name, refuse)
    model, _, stats = M.make_tiny(warmup_steps=1)
    assert stats["steps"] == 1


def test_the_warmed_up_stand_in_speaks_the_format(tiny):
    """Sampled at temperature 1 on speech-like clips it has not heard (pure tones, unlike any speech,
    pass about a third of the time: the warm-up hears speech only)."""
    model, processor = tiny
    rng = np.random.default_rng(7)  # not the warm-up's clips (seed 0)
    waves = [M.synthetic_speech(rng, M.draw_prosody(rng)) for _ in range(2)]
    enc = encode_waves(model, processor, waves, ["I told you already.", "Fine."])
    group = rollout.rollout(model, processor, enc, CLASSES, {"max_new_tokens": 256, "seed": 0}, k=4)
    rate = np.mean([t.format_ok for t in group.flat()])
    assert rate >= 0.5, [t.text for t in group.flat()]


def test_ensure_tiny_builds_once_and_rebuilds_on_a_new_spec(tmp_path, monkeypatch):
    built = []

    def fake_build(out_dir, **spec):
        built.append(spec)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / M.TINY_SPEC_FILE).write_text(json.dumps({"spec": spec}))
        return out_dir

    monkeypatch.setattr(M, "build_tiny", fake_build)
    cfg = config.resolve(overrides={"tiny_dir": str(tmp_path / "tiny")})
    assert M.ensure_tiny(cfg) == tmp_path / "tiny" and len(built) == 1
    M.ensure_tiny(cfg)
    assert len(built) == 1
    M.ensure_tiny({**cfg, "tiny_warmup_steps": 7})
    assert len(built) == 2 and built[-1]["warmup_steps"] == 7


def test_load_errors_name_the_path(tmp_path, tiny_dir, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no waiting on a network that is not there
    with pytest.raises(M.ModelLoadError, match=r"nowhere: no such checkpoint folder"):
        M.load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(M.ModelLoadError, match=r"empty: not a checkpoint folder \(no config.json"):
        M.load_checkpoint(tmp_path / "empty")
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(M.ModelLoadError, match=r"gpt2: not a Qwen2-Audio checkpoint .*model_type 'gpt2'"):
        M.load_checkpoint(other)
    with pytest.raises(M.ModelLoadError, match="Qwen/Qwen2-Audio-7B-Instruct: cannot load"):
        M.load_checkpoint("Qwen/Qwen2-Audio-7B-Instruct")  # no network and no local copy here


def test_load_model_from_params(tiny_dir):
    cfg = config.resolve(overrides={"model_name_or_path": str(tiny_dir), "dtype": "bfloat16", "device": "cpu",
                                    "attn_implementation": "eager"})
    model, processor = M.load_model(cfg)
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    assert model.config._attn_implementation == "eager"
    assert not any(p.requires_grad for p in A.core(model).audio_tower.parameters())


def test_resolve_dtype_and_device():
    assert M.resolve_dtype("auto", "cpu") == torch.float32
    assert M.resolve_dtype("bfloat16") == torch.bfloat16
    assert M.resolve_device("cpu") == "cpu"
    assert M.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="dtype='fp8'"):
        M.resolve_dtype("fp8")


def test_lora_targets_the_language_model_only(tiny):
    model, _ = tiny
    cfg = config.resolve()
    peft_model = M.apply_lora(model, cfg)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    wrapped = {n.rsplit(".lora_", 1)[0] for n in trainable}
    n_layers = model.config.text_config.num_hidden_layers
    assert len(wrapped) == 7 * n_layers  # q, k, v, o, gate, up, down in every layer
    assert not any("audio_tower" in n for n, _ in peft_model.named_modules() if "lora_" in n)


def test_lora_regex_that_misses_or_hits_the_tower_is_refused(tiny):
    model, _ = tiny
    cfg = config.resolve()
    with pytest.raises(ValueError, match="matches audio-tower modules"):
        M.apply_lora(model, {**cfg, "lora_target_regex": r".*\.(q_proj|k_proj|v_proj)"})
    with pytest.raises(ValueError, match="matches no module"):
        M.apply_lora(model, {**cfg, "lora_target_regex": r".*nothing_here"})


def test_full_fine_tune_keeps_the_tower_frozen(tiny):
    model, _ = tiny
    model = M.prepare_trainable(model, {**config.resolve(), "lora": False})
    assert all(p.requires_grad for n, p in model.named_parameters() if "audio_tower" not in n)
    assert not any(p.requires_grad for p in A.core(model).audio_tower.parameters())


def test_adapter_saves_and_loads_with_the_run(tiny, tiny_dir, tmp_path):
    model, processor = tiny
    cfg = config.resolve(overrides={"model_name_or_path": str(tiny_dir), "dtype": "float32", "device": "cpu",
                                    "lora": True})  # the tiny model's layer fine-tunes fully; LoRA here
    peft_model = M.prepare_trainable(model, cfg)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)  # a trained adapter: B != 0 changes the output
    wave = tone(1.0, 300)
    before = _logits(peft_model, processor, wave)
    M.save_trained(peft_model, processor, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    loaded, loaded_processor = M.load_trained(tmp_path / "adapter", cfg)
    after = _logits(loaded, loaded_processor, wave)
    assert torch.allclose(before, after, atol=1e-6)
    base, _ = M.load_model(cfg)
    assert not torch.allclose(_logits(base, processor, wave), after, atol=1e-4)


@pytest.mark.slow
def test_default_build_is_reproducible_and_quick(tiny_dir, tmp_path):
    """Rebuild the default stand-in from scratch: the same weights as the one in ``tiny_dir``."""
    cfg = config.resolve()
    spec = M.tiny_spec(cfg)
    out = M.build_tiny(tmp_path / "tiny", **spec)
    info = json.loads((out / M.TINY_SPEC_FILE).read_text())
    assert info["build_seconds"] < 300  # ~165 s on a loaded shared core; slack for a shared CI machine
    a, _ = M.load_checkpoint(out, "float32", "cpu")
    b, _ = M.load_checkpoint(tiny_dir, "float32", "cpu")
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_concurrent_build_of_the_same_spec_is_kept_and_another_spec_replaced(tmp_path):
    def folder(name, spec, marker):
        path = tmp_path / name
        path.mkdir()
        (path / M.TINY_SPEC_FILE).write_text(json.dumps({"spec": spec}))
        (path / "marker").write_text(marker)
        return path

    out = folder("tiny", {"seed": 0}, "first")
    M._install(folder("build1", {"seed": 0}, "second"), out, {"seed": 0})
    assert (out / "marker").read_text() == "first" and not (tmp_path / "build1").exists()
    M._install(folder("build2", {"seed": 1}, "third"), out, {"seed": 1})
    assert (out / "marker").read_text() == "third" and sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


# --- the warm-up's synthetic data: what the think blocks say is what the audio and transcript hold ---

def _frames(wave: np.ndarray, size: int = 640, hop: int = 160) -> np.ndarray:
    n = 1 + max(0, len(wave) - size) // hop
    return np.stack([wave[i * hop: i * hop + size] for i in range(n)])


def _measure(wave: np.ndarray, sr: int = 16_000) -> dict[str, float]:
    """Our own rough measurements: level (dB), median F0 (autocorrelation), F0 spread (semitones),
    voiced segments per second (10 ms envelope above 20 % of its peak)."""
    frames = _frames(wave)
    rms = np.sqrt((frames**2).mean(axis=1))
    voiced = rms > 0.3 * rms.max()
    level = 20 * np.log10(np.sqrt((wave[np.abs(wave) > 1e-3] ** 2).mean()))
    f0s = []
    for f in frames[voiced]:
        f = f - f.mean()
        ac = np.correlate(f, f, "full")[len(f) - 1:]
        lo, hi = sr // 400, sr // 60
        f0s.append(sr / (lo + int(np.argmax(ac[lo:hi]))))
    semis = 12 * np.log2(np.asarray(f0s))
    env = np.sqrt((_frames(wave, 160, 160) ** 2).mean(axis=1)) > 0.2 * rms.max()
    onsets = int(env[0]) + int(np.sum(env[1:] & ~env[:-1]))
    spread = float(np.percentile(semis, 90) - np.percentile(semis, 10))
    return {"level": level, "f0": float(np.median(f0s)), "spread": spread, "rate": onsets / (len(wave) / sr)}


def test_speech_settings_worked_example():
    s = M.speech_settings({"loudness": 1.0, "pitch": -1.0})
    assert s["level_db"] == pytest.approx(-19.0) and s["f0"] == pytest.approx(150 * 2 ** (-3 / 12))
    assert s["rate"] == pytest.approx(4.0) and s["range_st"] == pytest.approx(3.0) and s["tilt"] == pytest.approx(1.3)
    assert M.speech_settings({"rate": 9.0})["rate"] == pytest.approx(4.0 * 1.3**2.5)  # clipped at 2.5


def test_synthetic_speech_is_heard_as_its_prosody():
    """Opposite z-scores give measurably opposite clips, by the amounts the settings promise."""
    rng = np.random.default_rng(0)

    def mean_measure(z):
        return {k: np.mean([_measure(M.synthetic_speech(rng, z))[k] for _ in range(6)])
                for k in ("level", "f0", "spread", "rate")}

    for dim, key, low_high in (("loudness", "level", (-29.0, -19.0)), ("pitch", "f0", (126.1, 178.4))):
        lo, hi = mean_measure({dim: -1.0}), mean_measure({dim: 1.0})
        assert lo[key] == pytest.approx(low_high[0], rel=0.05) and hi[key] == pytest.approx(low_high[1], rel=0.05)
    lo, hi = mean_measure({"pitch_var": -1.5}), mean_measure({"pitch_var": 1.5})
    assert hi["spread"] > 2 * lo["spread"]
    lo, hi = mean_measure({"rate": -1.5}), mean_measure({"rate": 1.5})
    assert hi["rate"] > 1.6 * lo["rate"]


def test_warm_up_prosody_words_match_the_measured_audio():
    """The template think block of a warm-up item names loud/soft, high/low pitch and fast/slow on
    the side of the reference voice where our own measurement of its clip falls."""
    rng, np_rng = __import__("random").Random(0), np.random.default_rng(1)
    ref = {"loud": ("level", -24.0, 1), "soft": ("level", -24.0, -1), "high pitch": ("f0", 150.0, 1),
           "low pitch": ("f0", 150.0, -1)}
    checked = 0
    for _ in range(30):
        z = M.draw_prosody(np_rng)
        measured = _measure(M.synthetic_speech(np_rng, z))
        think, _ = M._template_completion(rng, "Fine.", list(CLASSES), z)
        keywords = [k.strip() for k in think.split("Keywords:")[1].split("\n")[0].split(",")]
        for word, (key, centre, side) in ref.items():
            if word in keywords:
                assert side * (measured[key] - centre) > 0, (word, z, measured)
                checked += 1
    assert checked >= 15


def test_warm_up_keywords_quote_the_emotion_words_of_the_transcript():
    """Cued transcripts carry lexicon words often; every quoted keyword occurs in the transcript and the
    template's keyword line quotes the transcript's cue words."""
    from ambinb import curation

    rng = __import__("random").Random(0)
    vocabulary = M.transcript_vocabulary()
    cued = 0
    for _ in range(200):
        classes = M.synthetic_class_list(rng)
        transcript = M.cued_transcript(rng, classes, vocabulary)
        cues = [w for ws in curation.text_cues(transcript, classes).values() for w in ws]
        cued += bool(cues)
        think, answer = M.synthetic_completion(rng, transcript, classes, M.draw_prosody(np.random.default_rng(0)))
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
    waves = [M.synthetic_speech(rng, M.draw_prosody(rng)) for _ in range(2)]
    feats, masks = A.mel_features(processor.feature_extractor, waves)
    for i, w in enumerate(waves):
        f, m = M.quick_mel(processor.feature_extractor, w)
        assert torch.equal(f, feats[i]) and torch.equal(m, masks[i])


def test_quote_weights_mark_the_quoted_tokens():
    assert M.quote_weights(["Keywords", ":", 'Ġ"', "furious", '",', "Ġloud"], 5.0) == [1, 1, 1, 5, 1, 1]
    assert M.quote_weights(['"', "la", "st", "Ġstraw", '"', "Ġx"], 2.0) == [1, 2, 2, 2, 1, 1]


def test_copy_drill_quotes_the_lexicon_words_in_order_or_says_plain():
    from ambinb import curation

    rng = __import__("random").Random(0)
    plain = 0
    for _ in range(100):
        context, target = M.copy_drill_text(rng, M.transcript_vocabulary())
        transcript = context.split('"', 1)[1].rsplit('"', 1)[0]
        cues = [w for ws in curation.text_cues(transcript, M.ALL_CLASSES).values() for w in ws]
        if target == " plain wording":
            plain += 1
            assert not cues
        else:
            quoted = target.split('"')[1::2]
            assert set(quoted) <= set(cues) and len(quoted) == min(3, len(cues))
            low = transcript.lower()
            assert [low.find(q) for q in quoted] == sorted(low.find(q) for q in quoted)
    assert 10 < plain < 60  # random words hit the lexicon too (e.g. "lost", "love")


def test_word_tokens_start_from_their_spaced_twin(small_build):
    _, processor, _ = small_build
    fresh, _, _ = M.make_tiny(warmup_steps=0)
    vocab = processor.tokenizer.get_vocab()
    pairs = [(vocab[t[1:]], i) for t, i in vocab.items() if t.startswith("Ġ") and t[1:] in vocab]
    assert len(pairs) > 50
    emb, head = fresh.get_input_embeddings().weight, fresh.lm_head.weight
    assert all(torch.equal(emb[a], emb[b]) and torch.equal(head[a], head[b]) for a, b in pairs)
    assert not torch.equal(emb[pairs[0][0]], emb[pairs[1][0]])  # only twins share


def test_activation_checkpointing_recomputes_and_keeps_loss_and_gradients(tiny):
    """With ``activation_checkpointing`` each decoder layer runs again in backward (a forward hook inside
    the layer counts it), and the loss and LoRA gradients are those of the plain run."""
    model, _ = tiny
    cfg = {**config.resolve(), "lora_dropout": 0.0}
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))

    def step(on: bool) -> tuple[float, dict[str, torch.Tensor], int]:
        peft_model = M.prepare_trainable(copy.deepcopy(model), {**cfg, "activation_checkpointing": on}).train()
        calls = []
        first = A.core(peft_model).language_model.layers[0].input_layernorm  # the layer's first module
        first.register_forward_hook(lambda *_: calls.append(1))
        out = peft_model(input_ids=ids, labels=ids)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in peft_model.named_parameters()
                 if p.requires_grad and p.grad is not None}  # text only: the projector gets none
        return out.loss.item(), grads, len(calls)

    loss_off, grads_off, calls_off = step(False)
    loss_on, grads_on, calls_on = step(True)
    assert (calls_off, calls_on) == (1, 2)
    assert loss_on == pytest.approx(loss_off, rel=1e-6)
    assert grads_on.keys() == grads_off.keys() and grads_off
    for n in grads_off:
        torch.testing.assert_close(grads_on[n], grads_off[n], rtol=1e-5, atol=1e-7)
