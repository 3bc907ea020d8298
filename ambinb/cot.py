"""The output format: a structured think block, then an answer slot holding one class name.

What the model writes (preset ``ambinb``, the paper's Table 1 structure)::

    <think>
    Keywords: raised voice, fast, "I told you already"
    Step 1 (text): ...
    Step 2 (audio): Volume: ... Speed: ... Pitch: ... Tone: ...
    Step 3 (synthesis): ...
    </think>
    <answer> anger</answer>

The distribution p_hat is read out at the slot right after the answer tag (:mod:`ambinb.readout`),
where the class name stands after one space (:func:`slot_text`: the space makes the slot a token
boundary of Qwen's BPE, so the ids scored there are the ids the model writes). Curation writes
think blocks with :func:`render_think`; training, rollouts and the format reward parse them with
the functions below. The ``audio_reasoner`` preset places the slot
after Audio-Reasoner's own ``<RESPONSE>`` tag so that checkpoint can be read out as a baseline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STEP_LABELS = ("Step 1 (text):", "Step 2 (audio):", "Step 3 (synthesis):")
KEYWORDS_LABEL = "Keywords:"
AUDIO_ASPECTS = ("Volume", "Speed", "Pitch", "Tone")


@dataclass(frozen=True)
class OutputFormat:
    """The tags around the reasoning and the answer; the readout slot follows ``answer_open``."""

    name: str
    think_open: str
    think_close: str
    answer_open: str
    answer_close: str

    @property
    def tags(self) -> tuple[str, str, str, str]:
        return (self.think_open, self.think_close, self.answer_open, self.answer_close)


AMBINB = OutputFormat("ambinb", "<think>", "</think>", "<answer>", "</answer>")
AUDIO_REASONER = OutputFormat("audio_reasoner", "<THINK>", "</THINK>", "<RESPONSE>", "</RESPONSE>")
PRESETS = {f.name: f for f in (AMBINB, AUDIO_REASONER)}


def get_format(name: str) -> OutputFormat:
    """The output format of a prompt preset, by name (``ambinb`` or ``audio_reasoner``)."""
    if name not in PRESETS:
        raise ValueError(f"prompt_preset={name!r}: choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def render_think(keywords: list[str], text: str, audio: dict[str, str], synthesis: str,
                 fmt: OutputFormat = AMBINB) -> str:
    """Write a think block from its parts.

    Args:
        keywords: salient acoustic and linguistic cues.
        text: step 1, the text analysis.
        audio: step 2, one sentence per aspect in :data:`AUDIO_ASPECTS` (missing aspects are an error).
        synthesis: step 3.

    Example: ``render_think(["loud"], "Neutral words.", {"Volume": "loud.", ...}, "Mostly anger.")``
    -> ``"<think>\\nKeywords: loud\\nStep 1 (text): Neutral words.\\nStep 2 (audio): Volume: loud. ..."``
    """
    missing = [a for a in AUDIO_ASPECTS if a not in audio]
    if missing:
        raise ValueError(f"audio analysis lacks {missing}")
    audio_line = " ".join(f"{a}: {audio[a].strip()}" for a in AUDIO_ASPECTS)
    lines = [
        fmt.think_open,
        f"{KEYWORDS_LABEL} {', '.join(k.strip() for k in keywords)}",
        f"{STEP_LABELS[0]} {text.strip()}",
        f"{STEP_LABELS[1]} {audio_line}",
        f"{STEP_LABELS[2]} {synthesis.strip()}",
        fmt.think_close,
    ]
    return "\n".join(lines)


def answer_prefix(think: str, fmt: OutputFormat = AMBINB) -> str:
    """Everything the model writes before the class name: the think block and the answer tag."""
    return f"{think}\n{fmt.answer_open}" if think else fmt.answer_open


def slot_text(answer: str) -> str:
    """A class name as it stands in the answer slot: after one space.

    Qwen's pre-tokeniser glues a tag's ``>`` to a letter that follows it (``">sadness"`` is one
    pre-token, which the real vocabulary splits ``>s ad ness``), so without the space the model never
    writes the ``>`` that the slot follows. After a space the name is a word of its own (``" sadness"``,
    one token ``Ġsadness`` on the real vocabulary, as is every class name of the toy, IEMOCAP and
    CREMA-D), and the read-out is the softmax over single class-token logits at one slot.

    Example: ``slot_text("sadness")`` -> ``" sadness"``.
    """
    return f" {answer}"


def render_output(think: str, answer: str, fmt: OutputFormat = AMBINB) -> str:
    """The full completion: think block, answer tag, the class name after a space (:func:`slot_text`), closing tag.

    Example: ``render_output("", "anger")`` -> ``"<answer> anger</answer>"``.
    """
    return f"{answer_prefix(think, fmt)}{slot_text(answer)}{fmt.answer_close}"


def split_output(completion: str, fmt: OutputFormat = AMBINB) -> tuple[str, str | None]:
    """Split a completion into (think block, answer text or None when no answer tag pair is found).

    Example: ``split_output("<think>x</think>\\n<answer> anger</answer>")`` -> ``("<think>x</think>", "anger")``.
    """
    start = completion.find(fmt.answer_open)
    if start < 0:
        return completion.strip(), None
    end = completion.find(fmt.answer_close, start)
    answer = completion[start + len(fmt.answer_open): end if end >= 0 else None]
    return completion[:start].strip(), answer.strip() if end >= 0 else None


def format_ok(completion: str, classes: list[str], fmt: OutputFormat = AMBINB) -> bool:
    """The format check of the format reward (Eq. 6): 1 when every tag occurs once and in order, the
    three steps sit inside the think block, and the answer is a valid class name (case-insensitive);
    else 0."""
    positions = []
    for tag in fmt.tags:
        if completion.count(tag) != 1:
            return False
        positions.append(completion.index(tag))
    if positions != sorted(positions):
        return False
    think = completion[positions[0]: positions[1]]
    step_pos = [think.find(s) for s in STEP_LABELS]
    if min(step_pos) < 0 or step_pos != sorted(step_pos):
        return False
    answer = completion[positions[2] + len(fmt.answer_open): positions[3]].strip().lower()
    return answer in {c.lower() for c in classes}


def answer_ok(completion: str, classes: list[str], fmt: OutputFormat = AMBINB) -> bool:
    """The format check of a completion without a think block (``use_cot: false``): True when it is
    the answer alone, ``<answer> class</answer>`` with a valid class name (case-insensitive, surrounding
    whitespace allowed), so the readout slot right after the answer tag is found.

    Example: ``answer_ok("<answer> anger</answer>", ["anger"])`` -> True;
    ``answer_ok("<think>x</think>\\n<answer> anger</answer>", ["anger"])`` -> False.
    """
    text = completion.strip()
    if not (text.startswith(fmt.answer_open) and text.endswith(fmt.answer_close)):
        return False
    if any(text.count(tag) != 1 for tag in (fmt.answer_open, fmt.answer_close)):
        return False
    answer = text[len(fmt.answer_open): len(text) - len(fmt.answer_close)].strip().lower()
    return answer in {c.lower() for c in classes}


def well_formed(completion: str, classes: list[str], fmt: OutputFormat = AMBINB, use_cot: bool = True) -> bool:
    """The format check that fits the variant: :func:`format_ok` (think block, then answer) when the
    model reasons (``use_cot``), :func:`answer_ok` (the answer alone) when it was trained without a
    think block. GRPO's format reward always uses :func:`format_ok`."""
    return format_ok(completion, classes, fmt) if use_cot else answer_ok(completion, classes, fmt)


def parse_think(think: str) -> dict[str, str]:
    """The parts of a think block: ``keywords``, ``text``, ``audio``, ``synthesis`` (missing -> "")."""
    labels = [KEYWORDS_LABEL, *STEP_LABELS]
    names = ["keywords", "text", "audio", "synthesis"]
    pattern = "|".join(re.escape(lab) for lab in labels)
    parts = {n: "" for n in names}
    matches = list(re.finditer(pattern, think))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(think)
        body = think[m.end(): end]
        for tag in (AMBINB.think_close, AUDIO_REASONER.think_close):
            body = body.replace(tag, "")
        parts[names[labels.index(m.group(0))]] = body.strip()
    return parts
