"""Loading Qwen2-Audio checkpoints, the tiny stand-in with its warm-up, and LoRA.

Loading (:func:`load_model`, :func:`load_checkpoint`): any Qwen2-Audio checkpoint and its processor
from a hub id or a local folder, with ``dtype``, ``device`` and ``attn_implementation`` from the
params. Nothing can be downloaded on the project's machines, so the tests load local folders; a
folder that is not a Qwen2-Audio checkpoint fails with its path and what it holds instead.

The tiny stand-in (:func:`build_tiny`, :func:`ensure_tiny`; ``model_name_or_path: ""``):

* Same classes as the real model: a randomly initialised ``Qwen2AudioForConditionalGeneration``
  (hidden 64, 2 text + 2 audio layers by default, per ``../shared/TOY-NOTES.md``), a
  ``Qwen2Tokenizer`` holding a byte-level BPE trained with ``tokenizers`` on the project's own text
  (the CoT vocabulary, the class names, the prompt, transcript words) with Qwen's pre-tokeniser and
  special tokens (``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``, ``<|AUDIO|>``,
  ``<|audio_bos|>``, ``<|audio_eos|>``), and a real ``Qwen2AudioProcessor`` (Whisper features, 128
  mel bins, 16 kHz, 3,000 frames) carrying Qwen2-Audio-7B-Instruct's chat template. Saved as an
  ordinary checkpoint folder (``from_pretrained`` loads it) under ``models/tiny/`` (gitignored),
  with ``ambinb_tiny.json`` recording the build spec; :func:`ensure_tiny` rebuilds when it differs.
* Warm-up (:func:`warm_up`): a random model writes noise, which would make the ``base`` row, DPO's
  on-policy negatives and GRPO's format reward meaningless; and the real Qwen2-Audio comes from
  pretraining able to quote its prompt and to hear how something is said. The build therefore
  trains the stand-in briefly (deterministic) on *synthetic* chats only: speech-like audio
  (:func:`synthetic_speech`: harmonics under vowel formants, syllables and pauses) whose loudness,
  rate, pitch, pitch variation, tension and roughness are drawn at random as z-scores; random
  transcripts (the toy's *words*, never its sentences) into which words of the curator's emotion
  lexicon are inserted at random (:func:`cued_transcript`); a random class list; and think blocks
  (70 % in the curator's wording, the rest free-form) whose keywords and text step quote the
  lexicon words that occur in the transcript and whose audio step describes the z-scores the
  audio was made with. Their synthesis names a class split drawn at random (Dirichlet) and the
  answer follows it: no emotion label exists for a synthetic item, so the stand-in learns the
  format, to quote and to hear, and self-consistency, never which emotion a cue means. Two aids
  make quoting learnable in a few hundred steps: each word token starts from the embedding of
  its space-prefixed twin (:func:`share_word_embeddings`), and every step adds a batch of short
  text-only quoting exercises (:func:`copy_drill_text`); tokens inside quotes weigh
  :data:`QUOTE_WEIGHT` in the warm-up loss. The audio tower stays at its random initialisation and
  frozen (the paper's setting), everything else trains. Audio features of the synthetic clips are
  computed once (:func:`warmup_pool`, :func:`quick_mel`).
  Measured on one thread of a shared, loaded 2-core CPU: about 165 s for the whole build (600
  steps of 8 chats and 32 drills; 384 clips), some three times the format-only warm-up of
  builder 2; bit-identical across rebuilds with the same seed. 300 steps were measured too: the
  quoting then hardly depends on the transcript and sampled completions (temperature 1) pass the
  format check at most a quarter of the time on speech-like clips, against three quarters after
  600 steps (on pure tones, a quarter to three eighths).

LoRA (:func:`apply_lora`): peft LoRA on the language model's q,k,v,o,gate,up,down only, chosen by
the ``lora_target_regex`` param (the audio tower has q/k/v projections too; the regex excludes
them, and :func:`apply_lora` checks it did); the tower is frozen. ``lora: false`` selects a full
fine-tune of the language model and projector instead (:func:`prepare_trainable`), tower frozen.
Design note for the toy: TOY-NOTES measured LoRA r16 on a *random* tiny model learning slowly
(held-out JS 0.276 against 0.24 for a full fine-tune, and stuck at lr 1e-2), so toy runs may set
``lora: false`` in their params; the warmed-up stand-in is no longer random in its language model,
and the paper's LoRA setting stays the default everywhere else. Adapters (or the full weights)
are saved with the run by :func:`save_trained` and restored by :func:`load_trained`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ambinb import audio as audio_mod
from ambinb import cot, prompt
from ambinb.paths import resolve_path

log = logging.getLogger(__name__)

TINY_SPEC_FILE = "ambinb_tiny.json"
TINY_BUILDER_VERSION = 4  # 2: warm-up and tokenizer also cover the curator's wording;
# 3 (an interim build of the same idea) and 4: warm-up on speech-like audio whose prosody the think
# blocks describe, with transcripts whose emotion words they quote
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *audio_mod.AUDIO_SPECIAL_TOKENS)

# The chat template of Qwen/Qwen2-Audio-7B-Instruct (its processor's ``chat_template``).
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% for message in messages %}{% if loop.first and "
    "message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if 'audio' in content or 'audio_url' "
    "in content %}{% set audio_count.value = audio_count.value + 1 %}Audio {{ audio_count.value }}: "
    "<|audio_bos|><|AUDIO|><|audio_eos|>\n{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% endif %}"
)


class ModelLoadError(ValueError):
    """A checkpoint or processor that cannot be loaded as Qwen2-Audio; the message names the path."""


# --- devices and dtypes ---------------------------------------------------------------------

def resolve_device(name: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; any other name is returned as is."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def resolve_dtype(name: str = "auto", device: str = "cpu") -> torch.dtype:
    """``auto`` -> bfloat16 on a GPU that has it, float32 otherwise; or the named dtype."""
    if name == "auto":
        if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise ValueError(f"dtype={name!r}: choose auto, {', '.join(table)}")
    return table[name]


# --- loading --------------------------------------------------------------------------------

def check_checkpoint_folder(path: Path) -> None:
    """Raise :class:`ModelLoadError` unless ``path`` is a folder holding a Qwen2-Audio ``config.json``."""
    if not path.is_dir():
        raise ModelLoadError(f"{path}: no such checkpoint folder")
    config = path / "config.json"
    if not config.exists():
        raise ModelLoadError(f"{path}: not a checkpoint folder (no config.json; holds "
                             f"{sorted(p.name for p in path.iterdir())[:8]})")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except ValueError as err:
        raise ModelLoadError(f"{config}: not valid JSON: {err}") from err
    if model_type != "qwen2_audio":
        raise ModelLoadError(f"{path}: not a Qwen2-Audio checkpoint (config.json has model_type {model_type!r}, "
                             "expected 'qwen2_audio')")


def load_checkpoint(name_or_path: str | os.PathLike, dtype: str = "auto", device: str = "auto",
                    attn_implementation: str = "sdpa") -> tuple[Any, Any]:
    """Load a Qwen2-Audio model and its processor from a local folder or a hub id.

    Returns:
        ``(model, processor)``, the model in eval mode on ``device``, its audio tower frozen (so
        :class:`ambinb.audio.AudioFeatureCache` reuses the tower's outputs).

    Raises:
        ModelLoadError: the folder is missing or not Qwen2-Audio, or a hub id cannot be fetched
            (these machines are offline: download the checkpoint elsewhere and give its folder).
    """
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

    name = str(name_or_path)
    local = Path(name).expanduser()
    if local.exists() or name.startswith((".", "/", "~")):
        check_checkpoint_folder(local)
        name = str(local)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    try:
        processor = AutoProcessor.from_pretrained(name)
        model = Qwen2AudioForConditionalGeneration.from_pretrained(
            name, dtype=torch_dtype, attn_implementation=attn_implementation)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{name}: cannot load a Qwen2-Audio checkpoint (offline machines: give a local "
                             f"folder; HF_HUB_OFFLINE=1 fails fast): {err}") from err
    if not isinstance(processor, Qwen2AudioProcessor):
        raise ModelLoadError(f"{name}: the processor is {type(processor).__name__}, expected Qwen2AudioProcessor")
    model.to(device)
    model.eval()
    audio_mod.core(model).audio_tower.requires_grad_(False)  # the paper's setting; unfreeze explicitly to train it
    return model, processor


def load_model(cfg: dict[str, Any]) -> tuple[Any, Any]:
    """The run's base model and processor: ``model_name_or_path``, or the tiny stand-in when it is empty."""
    path = cfg.get("model_name_or_path") or ""
    if not path:
        path = str(ensure_tiny(cfg))
    elif not path.startswith(("/", "~")) and (resolve_path(path)).exists():
        path = str(resolve_path(path))
    return load_checkpoint(path, cfg.get("dtype", "auto"), cfg.get("device", "auto"),
                           cfg.get("attn_implementation", "sdpa"))


# --- the tiny stand-in: text ----------------------------------------------------------------

ALL_CLASSES = ("anger", "happiness", "sadness", "neutral", "disgust", "fear")
CLASS_SETS = (("anger", "happiness", "sadness", "neutral"),
              ("anger", "disgust", "fear", "happiness", "neutral", "sadness"))
KEYWORDS = ("raised voice", "soft voice", "fast pace", "slow pace", "trembling", "flat tone", "sharp stress",
            "long pauses", "sigh", "laughter", "clipped words", "rising pitch", "falling pitch", "bright tone",
            "harsh tone", "quiet", "loud", "steady rhythm", "emphatic", "breathy", "tense", "warm", "shaky",
            "monotone", "lively", "hesitant", "abrupt", "drawn out")
ASPECT_WORDS = {
    "Volume": ("loud", "soft", "moderate", "quiet", "rising", "falling", "even", "strong", "weak"),
    "Speed": ("fast", "slow", "steady", "hurried", "measured", "uneven", "quick", "halting"),
    "Pitch": ("high", "low", "rising", "falling", "flat", "varied", "wide", "narrow", "tight"),
    "Tone": ("harsh", "warm", "flat", "tense", "bright", "gentle", "shaky", "calm", "cold", "heavy", "light"),
}
TEXT_WORDS = ("neutral", "positive", "negative", "tense", "plain", "friendly", "hostile", "sad", "hopeful",
              "worried", "calm", "bitter", "cheerful", "matter of fact")
STRENGTH = ("little", "some", "clear", "strong", "mild", "no")
TRANSCRIPT_WORDS = (
    "i", "you", "we", "they", "he", "she", "it", "this", "that", "what", "where", "when", "why", "how", "is",
    "are", "was", "were", "be", "have", "has", "had", "do", "did", "not", "no", "yes", "really", "just",
    "never", "always", "again", "now", "today", "tomorrow", "yesterday", "here", "there", "home", "work",
    "time", "day", "night", "way", "thing", "people", "friend", "money", "car", "door", "phone", "letter",
    "meeting", "train", "dinner", "house", "job", "told", "said", "know", "think", "want", "need", "like",
    "love", "hate", "feel", "believe", "wait", "go", "come", "leave", "stay", "stop", "look", "hear", "see",
    "find", "lost", "won", "got", "give", "take", "make", "call", "again", "all", "everything", "nothing",
    "something", "anything", "very", "so", "too", "much", "more", "little", "good", "bad", "great", "fine",
    "okay", "sorry", "please", "thank", "thanks", "well", "oh", "wow", "right", "sure", "maybe", "can",
    "could", "would", "should", "will", "going", "to", "the", "a", "an", "and", "but", "or", "of", "in", "on",
    "at", "for", "with", "about", "my", "your", "our", "their", "me", "him", "her", "us", "them", "late",
    "early", "new", "old", "long", "happy", "sad", "angry", "afraid", "tired", "late", "again", "believe",
    "seriously", "honestly", "exactly", "happened", "eleven", "o'clock", "airplane", "almost", "full",
    "tomorrow", "cold", "alarm", "clock", "doctor's", "appointment", "forget", "jacket", "seen", "before",
    "surface", "slick", "stop", "couple", "minutes", "wonder", "about", "way", "meeting", "would", "like")


def _quote(rng: random.Random, transcript: str) -> str:
    words = transcript.rstrip(".?!").split()
    n = min(len(words), rng.randint(2, 4))
    start = rng.randint(0, len(words) - n)
    return '"' + " ".join(words[start: start + n]) + '"'


def synthetic_transcript(rng: random.Random, vocabulary: tuple[str, ...] = TRANSCRIPT_WORDS) -> str:
    """A random sequence of 3-10 words from ``vocabulary`` (no corpus sentence, no label)."""
    words = [rng.choice(vocabulary) for _ in range(rng.randint(3, 10))]
    return (" ".join(words).capitalize() + rng.choice((".", ".", "?", "!"))).replace(" i ", " I ")


P_CUED = 0.5  # share of warm-up transcripts with emotion words of the curator's lexicon inserted
P_CUE_IN_LIST = 0.8  # ... drawn from the prompt's classes (else from any class: not a cue there)


def cued_transcript(rng: random.Random, classes: list[str],
                    vocabulary: tuple[str, ...] = TRANSCRIPT_WORDS) -> str:
    """A random transcript (:func:`synthetic_transcript`) that, for :data:`P_CUED` of calls, carries
    1-2 words or phrases of the curator's emotion lexicon (``ambinb.curation.LEXICON``) at random
    places, so that the warm-up's think blocks practise quoting them. No corpus sentence, no label:
    which emotion words appear is random and the think block's answer does not depend on them.
    """
    from ambinb import cues as curation

    words = synthetic_transcript(rng, vocabulary).split()
    if rng.random() >= P_CUED:
        return " ".join(words)
    end = words[-1][-1]
    words[-1] = words[-1][:-1]
    words[0] = words[0].lower()
    listed = [c for c in classes if curation.LEXICON.get(c)]
    others = [c for c, entries in curation.LEXICON.items() if entries]
    for _ in range(rng.choice((1, 1, 2))):
        c = rng.choice(listed if listed and rng.random() < P_CUE_IN_LIST else others)
        words.insert(rng.randint(0, len(words)), rng.choice(curation.LEXICON[c]))
    return (" ".join(words).capitalize() + end).replace(" i ", " I ")


# Free-form aspect words that agree with a dimension's direction (z >= NEAR, z <= -NEAR, in between).
_ASPECT_BY_DIRECTION = {
    "Volume": ("loudness", ("loud", "strong"), ("soft", "quiet", "weak"), ("moderate", "even")),
    "Speed": ("rate", ("fast", "hurried", "quick"), ("slow", "measured", "halting"), ("steady",)),
    "Pitch": ("pitch", ("high",), ("low",), ("varied", "flat")),
}


def _grounded_first_word(rng: random.Random, aspect: str, z: dict[str, float] | None) -> str | None:
    from ambinb import prosody

    if z is None or aspect not in _ASPECT_BY_DIRECTION:
        return None
    dim, up, down, mid = _ASPECT_BY_DIRECTION[aspect]
    v = z.get(dim, 0.0)
    return rng.choice(up if v >= prosody.NEAR else down if v <= -prosody.NEAR else mid)


def _free_completion(rng: random.Random, transcript: str, classes: list[str],
                     z: dict[str, float] | None = None) -> tuple[str, str]:
    """A free-form random think block and its answer drawn from ``classes`` (see :func:`synthetic_completion`)."""
    answer = rng.choice(classes)
    other = rng.choice([c for c in classes if c != answer])
    from ambinb import cues as curation

    keywords = rng.sample(KEYWORDS, rng.randint(2, 4))
    cues = [w for ws in curation.text_cues(transcript, classes).values() for w in ws]
    keywords.insert(0, f'"{cues[0]}"' if cues else "plain wording")
    text = rng.choice((
        "The words {q} are {a} in meaning.",
        "The wording {q} carries {s} emotion.",
        "The sentence {q} reads as {a}.",
        "Taken alone, {q} sounds {a}.",
    )).format(q=_quote(rng, transcript), a=rng.choice(TEXT_WORDS), s=rng.choice(STRENGTH))
    aspects = {}
    for aspect, words in ASPECT_WORDS.items():
        first, second = rng.sample(words, 2)
        grounded = _grounded_first_word(rng, aspect, z)
        if grounded is not None:
            first, second = grounded, rng.choice([w for w in words if w != grounded])
        aspects[aspect] = rng.choice((f"{first}.", f"{first} and {second}.", f"{first}, then {second}."))
    synthesis = rng.choice((
        "The cues point mostly to {a}, with some {o}.",
        "Text and voice together suggest {a}.",
        "The voice suggests {a} while the words stay {w}; overall {a}.",
        "Mostly {a}, though {o} is possible.",
        "The audio weighs more here: {a}.",
    )).format(a=answer, o=other, w=rng.choice(TEXT_WORDS))
    return cot.render_think(keywords, text, aspects, synthesis), answer


def _template_completion(rng: random.Random, transcript: str, classes: list[str],
                         z: dict[str, float] | None = None) -> tuple[str, str]:
    """A think block in the offline curator's wording (:func:`ambinb.curation.template_cot`) for a
    *synthetic* item: the prosody z-scores its audio was made with (random ones when ``z`` is None)
    and a random target split, never a corpus label."""
    from ambinb import curation

    np_rng = np.random.default_rng(rng.getrandbits(32))
    p = np_rng.dirichlet(np.full(len(classes), rng.choice((0.3, 1.0, 3.0))))
    prosody = dict(z) if z is not None else {d: float(np_rng.normal()) for d in curation.SHORT_WORDS}
    item = curation.Item("synthetic", transcript, "", tuple(classes), tuple(float(v) for v in p), prosody)
    return curation.template_cot(item, attempt=rng.randint(1, 3)), classes[int(np.argmax(p))]


P_TEMPLATE = 0.7  # share of warm-up think blocks in the curator's wording (the rest free-form)


def synthetic_completion(rng: random.Random, transcript: str, classes: list[str],
                         z: dict[str, float] | None = None) -> tuple[str, str]:
    """A think block (via :func:`ambinb.cot.render_think`) and its answer for a synthetic item.

    :data:`P_TEMPLATE` are in the offline curator's wording, the rest free-form (so the stand-in's
    tokenizer and fluency cover the text it is later fine-tuned on). What a pretrained model could
    know is grounded: the keywords and text step quote the emotion words that occur in the
    transcript, and the audio step describes the prosody ``z`` the audio was made with
    (:func:`synthetic_speech`). The synthesis and the answer, which follows it, are drawn at random:
    no emotion label exists for a synthetic item, so the warm-up teaches the format, hearing and
    quoting, and self-consistency, never which emotion the cues mean.
    """
    if rng.random() < P_TEMPLATE:
        return _template_completion(rng, transcript, classes, z)
    return _free_completion(rng, transcript, classes, z)


def synthetic_class_list(rng: random.Random) -> list[str]:
    """The class list of a warm-up prompt: one of the datasets' lists, or a random subset."""
    r = rng.random()
    if r < 0.4:
        return list(CLASS_SETS[0])
    if r < 0.8:
        return list(CLASS_SETS[1])
    return rng.sample(ALL_CLASSES, rng.randint(2, 5))


def extra_corpus_words() -> list[str]:
    """The words of the toy corpus's transcript banks (``ambinb.toy.SENTENCES``), lower-cased and sorted.

    Only the words reach the tiny model (its tokenizer and the random warm-up transcripts), never a
    bank's sentence with its class, and never a label.
    """
    try:
        from ambinb import toy  # noqa: PLC0415
    except ImportError:
        return []
    banks = getattr(toy, "SENTENCES", {})
    words = {w.strip('.,!?"').lower() for bank in banks.values() for sentence in bank for w in sentence.split()}
    return sorted(w for w in words if w)


def transcript_vocabulary() -> tuple[str, ...]:
    """The words random warm-up transcripts are drawn from: :data:`TRANSCRIPT_WORDS` and the toy's words."""
    return tuple(sorted(set(TRANSCRIPT_WORDS) | set(extra_corpus_words())))


def tokenizer_corpus(seed: int = 0, n_examples: int = 300) -> list[str]:
    """The text the tiny BPE is trained on: prompts, synthetic CoTs, class names, transcript words."""
    rng = random.Random(seed)
    vocabulary = transcript_vocabulary()
    texts = [" ".join(vocabulary), " ".join(ALL_CLASSES)]
    for aspect, words in ASPECT_WORDS.items():
        texts.append(f"{aspect}: " + " ".join(words))
    for _ in range(n_examples):
        classes = synthetic_class_list(rng)
        transcript = cued_transcript(rng, classes, vocabulary)
        think, answer = synthetic_completion(rng, transcript, classes)
        texts.append(prompt.user_text(transcript, classes))
        texts += [cot.answer_prefix(think), answer, cot.AMBINB.answer_close]  # the segments as tokenised
    for preset in cot.PRESETS:
        texts.append(prompt.user_text("hello there", list(ALL_CLASSES), preset))
    texts.append("system\nYou are a helpful assistant.\nuser\nAudio 1: \nassistant\n")
    return texts


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A ``Qwen2Tokenizer`` whose byte-level BPE is trained on ``texts`` with Qwen's pre-tokeniser."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    spec = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["merges"]]
    tok = Qwen2Tokenizer(vocab=spec["vocab"], merges=merges, unk_token=None, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    ids = tok.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    if ids != list(range(len(SPECIAL_TOKENS))):
        raise RuntimeError(f"special tokens got ids {ids}, expected 0..{len(SPECIAL_TOKENS) - 1}")
    return tok


def make_processor(tokenizer: Any) -> Any:
    """A ``Qwen2AudioProcessor`` like the real one: Whisper features (128 mel, 16 kHz, 30 s) + the chat template."""
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=audio_mod.N_MELS, sampling_rate=audio_mod.SAMPLE_RATE,
                                 hop_length=audio_mod.HOP, chunk_length=30, n_fft=400, padding_value=0.0,
                                 return_attention_mask=True)
    return Qwen2AudioProcessor(feature_extractor=fe, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def tiny_config(tokenizer: Any, hidden_size: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                intermediate_size: int = 128, audio_hidden_size: int = 64, audio_layers: int = 2,
                audio_heads: int = 4, audio_ffn_size: int = 128) -> Any:
    """A ``Qwen2AudioConfig`` of the real architecture at tiny sizes (3,000 mel frames in, as the real one)."""
    from transformers import Qwen2AudioConfig

    ids = dict(zip(SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))))
    audio_config = {"model_type": "qwen2_audio_encoder", "num_mel_bins": audio_mod.N_MELS,
                    "encoder_layers": audio_layers, "encoder_attention_heads": audio_heads,
                    "encoder_ffn_dim": audio_ffn_size, "d_model": audio_hidden_size,
                    "max_source_positions": audio_mod.N_FRAMES // 2}
    text_config = {"model_type": "qwen2", "vocab_size": len(tokenizer), "hidden_size": hidden_size,
                   "intermediate_size": intermediate_size, "num_hidden_layers": layers,
                   "num_attention_heads": heads, "num_key_value_heads": kv_heads, "max_position_embeddings": 4096,
                   "tie_word_embeddings": False, "rms_norm_eps": 1e-6, "bos_token_id": ids["<|endoftext|>"],
                   "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"]}
    return Qwen2AudioConfig(audio_config=audio_config, text_config=text_config,
                            audio_token_index=ids[audio_mod.AUDIO_TOKEN])


def share_word_embeddings(model: Any, tokenizer: Any) -> int:
    """Start each word token with the embedding and output row of its space-prefixed twin.

    Byte-level BPE spells a word differently after a space (``Ġfurious``) and after a quote mark
    (``furious``); a pretrained model has learnt that the two mean the same, a random one has not,
    and so cannot quote a transcript word it has seen. Copying the rows at initialisation (training
    then tells them apart) gives the stand-in that prior. Returns the number of pairs.
    """
    vocab = tokenizer.get_vocab()
    pairs = [(vocab[t[1:]], i) for t, i in sorted(vocab.items()) if t.startswith("Ġ") and t[1:] in vocab]
    with torch.no_grad():
        for weight in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            for plain, spaced in pairs:
                weight[plain] = weight[spaced]
    return len(pairs)


# --- the tiny stand-in: audio ---------------------------------------------------------------

def synthetic_wave(rng: np.random.Generator) -> np.ndarray:
    """1-3 s of toy-independent audio at 16 kHz: silence, noise, a tone with vibrato, or a chirp."""
    n = int(rng.uniform(1.0, 3.0) * audio_mod.SAMPLE_RATE)
    t = np.arange(n) / audio_mod.SAMPLE_RATE
    kind = rng.integers(0, 4)
    if kind == 0:
        wave = np.zeros(n)
    elif kind == 1:
        wave = rng.normal(0.0, rng.uniform(0.01, 0.3), n)
    elif kind == 2:
        f0 = rng.uniform(80, 400)
        wave = rng.uniform(0.05, 0.5) * np.sin(2 * np.pi * f0 * t + rng.uniform(1, 8) * np.sin(2 * np.pi * 5 * t))
    else:
        f0, f1 = rng.uniform(80, 500, size=2)
        wave = rng.uniform(0.05, 0.5) * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * t[-1])))
    return wave.astype(np.float32)


# The reference voice of :func:`synthetic_speech` (z = 0 on every dimension) and what one standard
# deviation of each dimension of :mod:`ambinb.prosody` changes. Absolute values: a clip is heard
# alone, so "louder" here means louder than this reference, not than a speaker's usual.
SPEECH_REFERENCE: dict[str, tuple[float, float]] = {
    "loudness": (-24.0, 5.0),    # RMS of the voiced parts in dB full scale; dB per z
    "rate": (4.0, 1.3),          # syllables per second; factor per z
    "pitch": (150.0, 3.0),       # mean F0 in Hz; semitones per z
    "pitch_var": (3.0, 1.6),     # intonation range in semitones; factor per z
    "tension": (1.3, 0.3),       # harmonic k has amplitude k^-(a - b z) (tense: flatter spectrum)
    "roughness": (0.006, 2.0),   # jitter sd as a fraction of F0 (shimmer 6x that); factor per z
}
SPEECH_Z_LIMIT = 2.5  # drawn z-scores are clipped to +-2.5


def speech_settings(z: dict[str, float]) -> dict[str, float]:
    """Physical settings of :func:`synthetic_speech` for z-scores of the prosody dimensions.

    Example: ``z = {"loudness": 1, "pitch": -1}`` (others 0) -> ``level_db = -19``, ``f0 = 150 *
    2^(-3/12) = 126.1`` Hz, ``rate = 4`` syllables/s, ``range_st = 3``, ``tilt = 1.3``,
    ``jitter = 0.006``, ``breath = 0.08``.
    """
    def zz(d: str) -> float:
        return float(np.clip(z.get(d, 0.0), -SPEECH_Z_LIMIT, SPEECH_Z_LIMIT))

    ref = SPEECH_REFERENCE
    return {"level_db": ref["loudness"][0] + ref["loudness"][1] * zz("loudness"),
            "rate": ref["rate"][0] * ref["rate"][1] ** zz("rate"),
            "f0": ref["pitch"][0] * 2.0 ** (ref["pitch"][1] * zz("pitch") / 12.0),
            "range_st": ref["pitch_var"][0] * ref["pitch_var"][1] ** zz("pitch_var"),
            "tilt": ref["tension"][0] - ref["tension"][1] * zz("tension"),
            "breath": 0.08 * 2.0 ** (-zz("tension")),
            "jitter": ref["roughness"][0] * ref["roughness"][1] ** zz("roughness")}


def _block_noise(rng: np.random.Generator, n: int, block: int) -> np.ndarray:
    """Unit Gaussian noise held constant over blocks of ``block`` samples (per-cycle perturbation)."""
    return np.repeat(rng.normal(size=n // block + 1), block)[:n]


def synthetic_speech(rng: np.random.Generator, z: dict[str, float]) -> np.ndarray:
    """1-3 s of speech-like audio at 16 kHz whose prosody follows the z-scores ``z``.

    Syllables are voiced segments (harmonics of a gliding F0 shaped by two random vowel formants,
    a smooth envelope, jitter, shimmer and breath noise) separated by short gaps and occasional
    pauses; :func:`speech_settings` maps ``z`` to the level, syllable rate, mean F0, intonation
    range, spectral tilt, breathiness and jitter. No words, no corpus audio.
    """
    s = speech_settings(z)
    sr = audio_mod.SAMPLE_RATE
    seconds = rng.uniform(1.0, 3.0)
    n = int(seconds * sr)
    starts, lengths = [], []
    t = rng.uniform(0.02, 0.1)
    while t < seconds - 0.08:
        period = rng.uniform(0.8, 1.2) / s["rate"]
        starts.append(t)
        lengths.append(min(period * rng.uniform(0.55, 0.75), seconds - t))
        t += period
        if rng.random() < 0.15:  # a pause between words, longer in slow speech
            t += rng.uniform(0.05, 0.2) * 4.0 / s["rate"]
    # F0: one intonation target per syllable within the range, a gentle declination, mean = f0
    targets = rng.uniform(-0.5, 0.5, len(starts)) * s["range_st"]
    targets += np.linspace(0.25, -0.25, len(starts)) * s["range_st"]
    centres = [st + ln / 2 for st, ln in zip(starts, lengths)]
    times = np.arange(n) / sr
    semis = np.interp(times, centres, targets - targets.mean()) if len(starts) > 1 else np.zeros(n)
    f0 = s["f0"] * 2.0 ** (semis / 12.0) * (1.0 + s["jitter"] * _block_noise(rng, n, int(sr / s["f0"])))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    shimmer = 1.0 + 6 * s["jitter"] * _block_noise(rng, n, int(sr / s["f0"]))
    wave = np.zeros(n)
    for start, length in zip(starts, lengths):
        a, b = int(start * sr), min(n, int((start + length) * sr))
        if b - a < 32:
            continue
        formants = ((rng.uniform(300, 850), 90.0), (rng.uniform(900, 2300), 140.0), (rng.uniform(2400, 3100), 220.0))
        k = np.arange(1, int(5000 // (s["f0"] * 1.5)) + 1)
        freq = k * s["f0"]
        gain = 0.05 + sum(1.0 / (1.0 + ((freq - fc) / bw) ** 2) for fc, bw in formants)
        weights = k ** -s["tilt"] * gain
        voiced = np.sin(np.outer(phase[a:b], k)) @ weights
        voiced /= np.sqrt(np.mean(voiced**2)) + 1e-9
        breath = np.diff(rng.normal(size=b - a + 1))  # first difference: a breathy, high-tilted noise
        env = np.sin(np.pi * np.linspace(0, 1, b - a)) ** 0.6
        wave[a:b] += env * shimmer[a:b] * (voiced + s["breath"] * breath)
    voiced_rms = np.sqrt(np.mean(wave[np.abs(wave) > 0] ** 2)) if np.any(wave) else 1.0
    wave *= 10.0 ** (s["level_db"] / 20.0) / voiced_rms
    wave += rng.normal(0.0, 1e-4, n)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def draw_prosody(rng: np.random.Generator) -> dict[str, float]:
    """Random z-scores of the six prosody dimensions (standard normal, clipped to +-2.5)."""
    from ambinb import prosody

    return {d: float(np.clip(rng.normal(), -SPEECH_Z_LIMIT, SPEECH_Z_LIMIT)) for d in prosody.DIMENSIONS}


def quick_mel(feature_extractor: Any, wave: np.ndarray, pad_seconds: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """The Whisper features of :func:`ambinb.audio.mel_features` for one wave, computed on the wave
    plus ``pad_seconds`` of silence and filled out to 3,000 frames with the padding's constant
    column (equal to the full computation, about 10x faster for a 2 s clip)."""
    sr = audio_mod.SAMPLE_RATE
    padded = np.concatenate([wave, np.zeros(int(pad_seconds * sr), dtype=wave.dtype)])
    out = feature_extractor([padded], sampling_rate=sr, return_attention_mask=True, padding="max_length",
                            max_length=len(padded), return_tensors="pt")
    body = out["input_features"][0].float()
    feats = body[:, -1:].expand(audio_mod.N_MELS, audio_mod.N_FRAMES).clone()
    feats[:, : body.shape[1]] = body
    mask = torch.zeros(audio_mod.N_FRAMES, dtype=torch.long)
    mask[: -(-len(wave) // audio_mod.HOP)] = 1  # ceil, as the extractor counts
    return feats, mask


# --- the warm-up ----------------------------------------------------------------------------

QUOTE_WEIGHT = 5.0  # warm-up loss weight of the tokens inside double quotes (words quoted from the transcript)


def quote_weights(tokens: list[str], weight: float = QUOTE_WEIGHT) -> list[float]:
    """Loss weights of completion tokens: ``weight`` inside double quotes, 1 elsewhere (quote marks included).

    Example: tokens ``['Keywords', ':', 'Ġ"', 'furious', '",', 'Ġloud']`` -> ``[1, 1, 1, w, 1, 1]``.
    """
    out, inside = [], False
    for t in tokens:
        marks = t.count('"')
        out.append(weight if inside and not marks else 1.0)
        inside ^= marks % 2 == 1
    return out


def _warmup_batch(rng: random.Random, processor: Any, pool: list[tuple[torch.Tensor, dict[str, float]]],
                  batch_size: int, pad_id: int, vocabulary: tuple[str, ...] = TRANSCRIPT_WORDS
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor]:
    rows, labels, audio, weights = [], [], [], []
    for _ in range(batch_size):
        feats, z = pool[rng.randrange(len(pool))]
        classes = synthetic_class_list(rng)
        transcript = cued_transcript(rng, classes, vocabulary)
        think, answer = synthetic_completion(rng, transcript, classes, z)
        p_ids = prompt.prompt_ids(processor.tokenizer, prompt.prompt_text(processor, transcript, classes),
                                  feats.shape[0])
        c_ids = prompt.completion_ids(processor.tokenizer, think, answer).ids
        rows.append(p_ids + c_ids)
        labels.append([-100] * len(p_ids) + c_ids)
        weights.append([0.0] * len(p_ids) + quote_weights(processor.tokenizer.convert_ids_to_tokens(c_ids)))
        audio.append(feats)
    width = max(len(r) for r in rows)
    ids = torch.full((batch_size, width), pad_id, dtype=torch.long)
    lab = torch.full((batch_size, width), -100, dtype=torch.long)
    mask = torch.zeros((batch_size, width), dtype=torch.long)
    wts = torch.zeros((batch_size, width))
    for i, (r, lb, wt) in enumerate(zip(rows, labels, weights)):
        ids[i, : len(r)] = torch.tensor(r)
        lab[i, : len(lb)] = torch.tensor(lb)
        mask[i, : len(r)] = 1
        wts[i, : len(wt)] = torch.tensor(wt)
    return ids, mask, lab, audio, wts


COPY_DRILL_BATCH = 32  # short text-only chats per warm-up step that practise quoting emotion words


def copy_drill_text(rng: random.Random, vocabulary: tuple[str, ...] = TRANSCRIPT_WORDS) -> tuple[str, str]:
    """A short quoting exercise, as pretraining text has many: a transcript (:func:`cued_transcript`)
    and the keyword line that quotes its emotion words of the curator's lexicon in order of
    appearance, or says "plain wording" when it has none (as the curator's template does).

    Returns ``(context, target)``; the warm-up's loss covers the target only. Example:
    ``('Transcript: "They last straw went."\nKeywords:', ' "last straw"')``.
    """
    from ambinb import cues as curation

    transcript = cued_transcript(rng, list(ALL_CLASSES), vocabulary)
    low = transcript.lower()
    cues = sorted((w for ws in curation.text_cues(transcript, ALL_CLASSES).values() for w in ws), key=low.find)
    target = ", ".join(f'"{w}"' for w in cues[:3]) if cues else "plain wording"
    return f'Transcript: "{transcript}"\nKeywords:', " " + target


def _drill_batch(rng: random.Random, tokenizer: Any, batch_size: int, pad_id: int,
                 vocabulary: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows, labels = [], []
    for _ in range(batch_size):
        context, target = copy_drill_text(rng, vocabulary)
        c = tokenizer(context, add_special_tokens=False)["input_ids"]
        t = tokenizer(target, add_special_tokens=False)["input_ids"]
        rows.append(c + t)
        labels.append([-100] * len(c) + t)
    width = max(len(r) for r in rows)
    ids = torch.full((batch_size, width), pad_id, dtype=torch.long)
    lab = torch.full((batch_size, width), -100, dtype=torch.long)
    mask = torch.zeros((batch_size, width), dtype=torch.long)
    for i, (r, lb) in enumerate(zip(rows, labels)):
        ids[i, : len(r)] = torch.tensor(r)
        lab[i, : len(lb)] = torch.tensor(lb)
        mask[i, : len(r)] = 1
    return ids, mask, lab


def warmup_pool(model: Any, processor: Any, n_audio: int, np_rng: np.random.Generator
                ) -> list[tuple[torch.Tensor, dict[str, float]]]:
    """``n_audio`` clips of :func:`synthetic_speech` with random prosody: (tower output, z-scores) each."""
    pool = []
    for _ in range(n_audio):
        z = draw_prosody(np_rng)
        feats, mask = quick_mel(processor.feature_extractor, synthetic_speech(np_rng, z))
        with torch.no_grad():
            pool.append((audio_mod.run_tower(model, feats[None], mask[None])[0], z))
    return pool


def warm_up(model: Any, processor: Any, steps: int = 600, batch_size: int = 8, lr: float = 1e-2,
            seed: int = 0, n_audio: int = 384) -> dict[str, float]:
    """Teach a fresh model the output format on synthetic chats (see the module docstring).

    The audio tower is frozen and its outputs for ``n_audio`` synthetic speech clips (at most one
    per warm-up chat) are computed once.
    AdamW, 10 linear warm-up steps then cosine decay to 10 % of ``lr``; CE on the completion only.

    Returns:
        ``{"steps", "loss_first", "loss_last", "seconds"}``.
    """
    start = time.perf_counter()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    core = audio_mod.core(model)
    core.audio_tower.requires_grad_(False)
    pool = warmup_pool(model, processor, max(1, min(n_audio, steps * batch_size)), np_rng)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm = min(10, max(1, steps // 10))

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    pad_id = int(processor.tokenizer.pad_token_id)
    vocabulary = transcript_vocabulary()
    model.train()
    losses = []
    for _ in range(steps):
        ids, mask, labels, audio, weights = _warmup_batch(rng, processor, pool, batch_size, pad_id, vocabulary)
        hidden, _ = audio_mod.lm_hidden(model, ids, mask, audio)
        target = labels[:, 1:]
        where = target != -100
        logits = audio_mod.head_logits(model, hidden[:, :-1][where])
        ce = torch.nn.functional.cross_entropy(logits.float(), target[where], reduction="none")
        w = weights[:, 1:][where]
        loss = (w * ce).sum() / w.sum()
        if COPY_DRILL_BATCH:
            d_ids, d_mask, d_labels = _drill_batch(rng, processor.tokenizer, COPY_DRILL_BATCH, pad_id, vocabulary)
            d_hidden, _ = audio_mod.lm_hidden(model, d_ids, d_mask)
            d_target = d_labels[:, 1:]
            d_where = d_target != -100
            d_logits = audio_mod.head_logits(model, d_hidden[:, :-1][d_where])
            loss = loss + torch.nn.functional.cross_entropy(d_logits.float(), d_target[d_where])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    return {"steps": steps, "loss_first": losses[0] if losses else float("nan"),
            "loss_last": float(np.mean(losses[-10:])) if losses else float("nan"),
            "seconds": time.perf_counter() - start}


# --- building and finding the tiny stand-in -------------------------------------------------

TINY_DEFAULTS: dict[str, Any] = {
    "seed": 0, "vocab_size": 1024, "hidden_size": 64, "layers": 2, "heads": 4, "kv_heads": 2,
    "intermediate_size": 128, "audio_hidden_size": 64, "audio_layers": 2, "audio_heads": 4,
    "audio_ffn_size": 128, "warmup_steps": 600, "warmup_batch_size": 8, "warmup_lr": 1e-2,
}


def tiny_spec(cfg: dict[str, Any]) -> dict[str, Any]:
    """The build spec of the tiny stand-in from resolved params (``tiny_*`` keys)."""
    spec = {k: cfg.get(f"tiny_{k}", v) for k, v in TINY_DEFAULTS.items()}
    spec["builder_version"] = TINY_BUILDER_VERSION
    spec["corpus_words"] = hashlib.sha1(" ".join(extra_corpus_words()).encode()).hexdigest()[:12]
    return spec


def make_tiny(seed: int = 0, vocab_size: int = 1024, hidden_size: int = 64, layers: int = 2, heads: int = 4,
              kv_heads: int = 2, intermediate_size: int = 128, audio_hidden_size: int = 64, audio_layers: int = 2,
              audio_heads: int = 4, audio_ffn_size: int = 128, warmup_steps: int = 600,
              warmup_batch_size: int = 8, warmup_lr: float = 1e-2) -> tuple[Any, Any, dict[str, float]]:
    """Build the tiny stand-in in memory: tokenizer, processor, random model, warm-up.

    Returns:
        ``(model, processor, warm-up stats)``; deterministic for a seed on a given machine.
    """
    from transformers import Qwen2AudioForConditionalGeneration

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # identical float sums whatever the core count
    try:
        tok = train_tokenizer(tokenizer_corpus(seed), vocab_size)
        processor = make_processor(tok)
        config = tiny_config(tok, hidden_size, layers, heads, kv_heads, intermediate_size, audio_hidden_size,
                             audio_layers, audio_heads, audio_ffn_size)
        torch.manual_seed(seed)
        model = Qwen2AudioForConditionalGeneration(config).float()
        share_word_embeddings(model, tok)
        model.generation_config.eos_token_id = prompt.eos_ids(tok)
        model.generation_config.pad_token_id = tok.pad_token_id
        stats = warm_up(model, processor, warmup_steps, warmup_batch_size, warmup_lr, seed) if warmup_steps else {}
    finally:
        torch.set_num_threads(threads)
    return model, processor, stats


def build_tiny(out_dir: str | os.PathLike, **spec: Any) -> Path:
    """Build the tiny stand-in (:func:`make_tiny` with ``spec``) and save it as a checkpoint folder.

    The folder is written under a temporary name and renamed, so concurrent builders never leave
    half a model; it holds the model, the processor and ``ambinb_tiny.json`` (spec, warm-up stats).
    """
    out_dir = Path(out_dir)
    args = {k: v for k, v in spec.items() if k in TINY_DEFAULTS}
    start = time.perf_counter()
    model, processor, stats = make_tiny(**args)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        info = {"spec": spec, "warmup": stats, "build_seconds": time.perf_counter() - start}
        (tmp / TINY_SPEC_FILE).write_text(json.dumps(info, indent=2) + "\n")
        _install(tmp, out_dir, spec)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("built the tiny stand-in in %s (%.1f s)", out_dir, time.perf_counter() - start)
    return out_dir


def _install(tmp: Path, out_dir: Path, spec: dict[str, Any]) -> None:
    """Move a finished build into place; if a concurrent builder already put the same spec there, keep that."""
    try:
        os.replace(tmp, out_dir)  # atomic when out_dir is absent (or an empty folder)
        return
    except OSError:
        pass
    if _built_spec(out_dir) == spec:
        shutil.rmtree(tmp, ignore_errors=True)
        return
    stale = out_dir.with_name(f".{out_dir.name}.stale{os.getpid()}")
    os.replace(out_dir, stale)
    os.replace(tmp, out_dir)
    shutil.rmtree(stale, ignore_errors=True)


def _built_spec(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / TINY_SPEC_FILE).read_text()).get("spec")
    except (OSError, ValueError):
        return None


def ensure_tiny(cfg: dict[str, Any]) -> Path:
    """The tiny stand-in's folder (``tiny_dir``), built first when missing or built from another spec.

    Several processes (sweep workers) may ask at once: one builds, under a lock file beside the
    folder, and the others wait for it and then find it built.
    """
    out = resolve_path(cfg.get("tiny_dir", "models/tiny"))
    spec = tiny_spec(cfg)
    if _built_spec(out) == spec:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)  # waits for a build in progress
        except ImportError:  # pragma: no cover - no fcntl on Windows: no lock
            pass
        built = _built_spec(out)
        if built == spec:
            return out
        if built is not None:
            log.warning("%s was built from another spec; rebuilding", out)
        return build_tiny(out, **spec)


# --- LoRA and what trains -------------------------------------------------------------------

def apply_lora(model: Any, cfg: dict[str, Any]) -> Any:
    """Wrap ``model`` with peft LoRA on the modules matched by ``lora_target_regex``; tower frozen.

    Raises:
        ValueError: the regex matches no module, or matches a module of the audio tower.
    """
    from peft import LoraConfig, get_peft_model

    regex = cfg["lora_target_regex"]
    matched = [n for n, _ in model.named_modules() if re.fullmatch(regex, n)]
    if not matched:
        raise ValueError(f"lora_target_regex={regex!r} matches no module of the model")
    tower = [n for n in matched if "audio_tower" in n]
    if tower:
        raise ValueError(f"lora_target_regex={regex!r} matches audio-tower modules such as {tower[0]!r}")
    audio_mod.core(model).audio_tower.requires_grad_(False)
    conf = LoraConfig(r=int(cfg["lora_r"]), lora_alpha=int(cfg["lora_alpha"]),
                      lora_dropout=float(cfg["lora_dropout"]), target_modules=regex, bias="none")
    training = model.training
    wrapped = get_peft_model(model, conf)
    return wrapped.train(training)  # the new dropout modules start in train mode; keep the model's mode


def set_activation_checkpointing(model: Any, on: bool) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them
    (transformers' non-reentrant checkpointing; works under LoRA with frozen inputs). Only training-mode
    forwards are affected: rollouts and no-grad forwards run as before."""
    base = audio_mod.base_model(model)
    if on:
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.activation_checkpointing_disable()


def prepare_trainable(model: Any, cfg: dict[str, Any]) -> Any:
    """LoRA (``lora: true``) or a full fine-tune of the language model and projector; the tower frozen;
    activation checkpointing as ``activation_checkpointing`` says."""
    if cfg.get("lora", True):
        model = apply_lora(model, cfg)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
        audio_mod.core(model).audio_tower.requires_grad_(False)
    set_activation_checkpointing(model, bool(cfg.get("activation_checkpointing", False)))
    return model


def save_trained(model: Any, processor: Any, out_dir: str | os.PathLike) -> Path:
    """Save what training changed: the LoRA adapter (peft model) or the full model and processor."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    if not hasattr(model, "peft_config"):
        processor.save_pretrained(out_dir)
    return out_dir


def load_trained(path: str | os.PathLike, cfg: dict[str, Any], is_trainable: bool = False) -> tuple[Any, Any]:
    """Load what :func:`save_trained` wrote: the base model (from ``cfg``) plus the adapter, or a full model."""
    path = Path(path)
    if (path / "adapter_config.json").exists():
        from peft import PeftModel

        model, processor = load_model(cfg)
        return PeftModel.from_pretrained(model, str(path), is_trainable=is_trainable), processor
    return load_checkpoint(path, cfg.get("dtype", "auto"), cfg.get("device", "auto"),
                           cfg.get("attn_implementation", "sdpa"))
