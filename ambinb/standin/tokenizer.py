"""The stand-in's tokenizer and processor: a byte-level BPE trained on the project's own text with
Qwen's pre-tokeniser and special tokens, wrapped as a ``Qwen2Tokenizer``, and a real
``Qwen2AudioProcessor`` (Whisper features) carrying Qwen2-Audio-7B-Instruct's chat template."""

from __future__ import annotations

import json
import random
from typing import Any

from ambinb import audio as audio_mod
from ambinb import cot, prompt
from ambinb.standin.completions import synthetic_completion
from ambinb.standin.transcripts import cued_transcript
from ambinb.standin.words import ALL_CLASSES, ASPECT_WORDS, synthetic_class_list, transcript_vocabulary

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


def tokenizer_corpus(seed: int, n_examples: int = 300) -> list[str]:
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
        texts.append(cot.render_output(think, answer))  # the completion as the model writes it
    for preset in cot.PRESETS:
        texts.append(prompt.user_text("hello there", list(ALL_CLASSES), preset))
    texts.append("system\nYou are a helpful assistant.\nuser\nAudio 1: \nassistant\n")
    return texts


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A ``Qwen2Tokenizer`` whose byte-level BPE is trained on ``texts`` with Qwen's pre-tokeniser."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers  # heavy
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer  # heavy

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
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor  # heavy

    fe = WhisperFeatureExtractor(feature_size=audio_mod.N_MELS, sampling_rate=audio_mod.SAMPLE_RATE,
                                 hop_length=audio_mod.HOP, chunk_length=30, n_fft=400, padding_value=0.0,
                                 return_attention_mask=True)
    return Qwen2AudioProcessor(feature_extractor=fe, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)

