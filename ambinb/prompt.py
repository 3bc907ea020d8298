"""The chat for one utterance, and the token ids every caller builds from it.

One user turn holds the audio (``<|audio_bos|><|AUDIO|><|audio_eos|>`` through the processor's chat
template, exactly as Qwen2-Audio-7B-Instruct renders it), the transcript, the class list and the
instructions; the assistant turn is the completion that :mod:`ambinb.cot` defines. Two presets:

* ``ambinb``: ``<think>`` with a Keywords line and the three steps, then ``<answer> class</answer>``.
* ``audio_reasoner``: Audio-Reasoner's own ``<THINK>``/``<RESPONSE>`` style, so that checkpoint is
  evaluated as a baseline in the format it was trained on; the readout slot follows ``<RESPONSE>``.

Every caller uses the functions here so that training, rollouts and the readout see the same ids:
the prompt (the chat text with ``<|AUDIO|>`` expanded to the utterance's audio-token count, as
``Qwen2AudioProcessor`` does), then the completion ``render_output(think, answer) + <|im_end|>``
tokenised as the one text the model writes. The class name stands after a space
(:func:`ambinb.cot.slot_text`), so the answer tag's ``>`` ends a pre-token and the completion's ids
split at the slot exactly as ``answer_prefix(think)`` and the name tokenised on their own:
:func:`completion_ids` checks it, and :func:`class_ids` scores the names as they stand there.

Example (tiny model, 2 s clip): ``prompt_ids`` -> ``[<|im_start|>, system, ..., <|audio_bos|>,
<|AUDIO|> x 50, <|audio_eos|>, ..., <|im_start|>, assistant, \\n]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ambinb import audio as audio_mod
from ambinb.cot import AMBINB, AUDIO_ASPECTS, OutputFormat, answer_prefix, get_format, render_output, slot_text

IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"

_INSTRUCTIONS = {
    "ambinb": (
        "Which emotion does the speaker express? Reason inside {think_open} {think_close}: Keywords, Step 1 "
        "(text), Step 2 (audio: " + ", ".join(AUDIO_ASPECTS) + "), Step 3 (synthesis). Then answer with one class, "
        "written as {answer}."
    ),
    "audio_reasoner": (
        "What emotion does the speaker express in this audio? Choose one of the listed classes and give "
        "it as the response."
    ),
}


class PromptError(ValueError):
    """An utterance that cannot be turned into a prompt; the message names it."""


def user_text(transcript: str, classes: list[str], preset: str = "ambinb", utt_id: str = "") -> str:
    """The text of the user turn: transcript, class list and the preset's instructions.

    Raises:
        PromptError: an empty transcript or class list, naming the utterance.
    """
    if transcript is None or not str(transcript).strip():
        raise PromptError(f"{utt_id or '?'}: empty transcript")
    if len(classes) < 2:
        raise PromptError(f"{utt_id or '?'}: need at least two class names, got {classes}")
    fmt = get_format(preset)
    instructions = _INSTRUCTIONS[preset].format(think_open=fmt.think_open, think_close=fmt.think_close,
                                                answer=render_output("", "class", fmt))
    return (f'Transcript: "{str(transcript).strip()}"\n'
            f"Classes: {', '.join(classes)}\n"
            f"{instructions}")


def build_chat(transcript: str, classes: list[str], preset: str = "ambinb", utt_id: str = "") -> list[dict[str, Any]]:
    """The conversation for one utterance: one user turn with the audio first, then the text."""
    return [{"role": "user", "content": [
        {"type": "audio", "audio": utt_id or "audio"},
        {"type": "text", "text": user_text(transcript, classes, preset, utt_id)},
    ]}]


def prompt_text(processor: Any, transcript: str, classes: list[str], preset: str = "ambinb",
                utt_id: str = "") -> str:
    """The chat rendered by the processor's template, ending with the assistant header."""
    chat = build_chat(transcript, classes, preset, utt_id)
    text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    if text.count(audio_mod.AUDIO_TOKEN) != 1:
        raise PromptError(f"{utt_id}: the chat template rendered {text.count(audio_mod.AUDIO_TOKEN)} "
                          f"{audio_mod.AUDIO_TOKEN} placeholders, expected 1")
    return text


def segment_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of one text segment, without special tokens added."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_ids(tokenizer: Any, text: str, n_audio: int) -> list[int]:
    """Ids of a rendered prompt with its ``<|AUDIO|>`` expanded to ``n_audio`` copies (the processor's rule)."""
    return segment_ids(tokenizer, text.replace(audio_mod.AUDIO_TOKEN, audio_mod.AUDIO_TOKEN * int(n_audio)))


def class_ids(tokenizer: Any, classes: list[str], fmt: OutputFormat | str = AMBINB) -> list[list[int]]:
    """Each class name's ids as it is scored at the answer slot: the ids the name has in a complete
    answer (:func:`completion_ids` without a think block, which checks that they are the ids of
    ``slot_text(name)`` on its own). A name of several tokens keeps them all: the read-out scores it whole.

    Example (the real vocabulary): ``class_ids(tok, ["sadness", "Disgust"])`` -> ``[[50878], [4093, 70, 590]]``
    (``Ġsadness``; ``ĠDis``, ``g``, ``ust``).

    Raises:
        PromptError: an empty name, or one whose ids cross the slot's boundaries.
    """
    empty = [c for c in classes if not c.strip()]
    if empty:
        raise PromptError(f"class names {empty} are empty")
    out = []
    for c in classes:
        answer = completion_ids(tokenizer, "", c, fmt)
        out.append(answer.ids[answer.slot: answer.slot + answer.answer_len])
    return out


def suppressed_ids(tokenizer: Any, head_rows: int) -> list[int]:
    """The ids a completion never holds, masked out of every sampling step: ``<|AUDIO|>``,
    ``<|audio_bos|>``, ``<|audio_eos|>`` (a sampled audio token would break the next forward), and the
    head's rows past the tokenizer, ``len(tokenizer)`` to ``head_rows - 1``, which are no token at all.

    Example: Qwen2-Audio-7B's head has 156,032 rows and its tokenizer 151,649 ids -> the three audio
    ids (151646..151648) and 151649..156031.
    """
    audio = [int(i) for i in tokenizer.convert_tokens_to_ids(list(audio_mod.AUDIO_SPECIAL_TOKENS))]
    return audio + list(range(len(tokenizer), int(head_rows)))


def eos_ids(tokenizer: Any) -> list[int]:
    """Ids that end an assistant turn: ``<|im_end|>`` and ``<|endoftext|>``."""
    return [int(i) for i in (tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(ENDOFTEXT))
            if i is not None]


@dataclass(frozen=True)
class CompletionIds:
    """A tokenised completion; ``slot`` indexes the first class-name token (right after the answer tag)."""

    ids: list[int]
    slot: int
    answer_len: int


def completion_ids(tokenizer: Any, think: str, answer: str, fmt: OutputFormat | str = "ambinb",
                   close: bool = True) -> CompletionIds:
    """Ids of the completion ``render_output(think, answer) + <|im_end|>`` (without the close tag and
    ``<|im_end|>`` when not ``close``), tokenised as the one text the model writes.

    Its first ``slot`` ids are those of ``answer_prefix(think)`` alone and the next ``answer_len``
    those of ``slot_text(answer)`` alone, so the read-out after the prefix scores the name as the
    model writes it.

    Example: ``completion_ids(tok, "<think>...</think>", "anger")`` -> ids ``[.., </, think, >\\n, <, answer,
    >, Ġanger, </, answer, >, <|im_end|>]`` (real vocabulary) with ``slot`` at ``Ġanger``, ``answer_len`` 1.

    Raises:
        PromptError: the whole text's ids do not split there (a name whose last character merges with
            the close tag, e.g. ``"other."``: ``.</`` is one pre-token).
    """
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    prefix = segment_ids(tokenizer, answer_prefix(think, fmt))
    name = segment_ids(tokenizer, slot_text(answer))
    text = render_output(think, answer, fmt) + IM_END if close else answer_prefix(think, fmt) + slot_text(answer)
    ids = segment_ids(tokenizer, text)
    if ids[: len(prefix)] != prefix or ids[len(prefix): len(prefix) + len(name)] != name:
        raise PromptError(f"class name {answer!r}: the completion {text[-60:]!r} does not tokenise into the "
                          f"answer prefix, then {slot_text(answer)!r} on its own; choose a name that ends in "
                          "a letter or digit")
    return CompletionIds(ids, len(prefix), len(name))


@dataclass
class Encoded:
    """One utterance ready for the model: prompt ids (audio expanded) and its tower output."""

    utt_id: str
    prompt_ids: list[int]
    audio: torch.Tensor   # (n_audio_tokens, d_audio), the tower's output before the projector


def encode_rows(rows: Any, classes: list[str], processor: Any, cache: audio_mod.AudioFeatureCache,
                cfg: dict[str, Any]) -> list[Encoded]:
    """Load the audio of dataset-table rows, get their tower outputs from ``cache``, build their prompts.

    Args:
        rows: a DataFrame (or list of dict-like rows) with ``utt_id``, ``transcript``, ``audio_path``.
        classes: the class names listed in the prompt (and read out later).
        cfg: resolved params (``prompt_preset``, ``max_audio_seconds``, ``truncate_audio``).
    """
    records = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
    waves = [audio_mod.load_row_audio(r, cfg) for r in records]
    utt_ids = [str(r["utt_id"]) for r in records]
    feats = cache.features(utt_ids, waves)
    preset = cfg["prompt_preset"]
    out = []
    for r, f in zip(records, feats):
        text = prompt_text(processor, r["transcript"], classes, preset, str(r["utt_id"]))
        out.append(Encoded(str(r["utt_id"]), prompt_ids(processor.tokenizer, text, f.shape[0]), f))
    return out
