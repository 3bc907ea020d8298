"""The output format: rendering, splitting and the format check of the format reward."""

import pytest

from ambinb import cot

CLASSES = ["anger", "happiness", "sadness", "neutral"]
AUDIO = {"Volume": "loud.", "Speed": "fast.", "Pitch": "high and varied.", "Tone": "tense."}


def think():
    return cot.render_think(["loud", "'told you'"], "Irritated wording.", AUDIO, "Mostly anger, some neutral.")


def test_render_and_parse_round_trip():
    t = think()
    assert t.startswith("<think>\nKeywords: loud, 'told you'\nStep 1 (text): Irritated wording.")
    assert "Step 2 (audio): Volume: loud. Speed: fast. Pitch: high and varied. Tone: tense." in t
    parts = cot.parse_think(t)
    assert parts == {"keywords": "loud, 'told you'", "text": "Irritated wording.",
                     "audio": "Volume: loud. Speed: fast. Pitch: high and varied. Tone: tense.",
                     "synthesis": "Mostly anger, some neutral."}


def test_missing_audio_aspect_raises():
    with pytest.raises(ValueError, match="Tone"):
        cot.render_think([], "x", {k: v for k, v in AUDIO.items() if k != "Tone"}, "y")


def test_output_split_and_format_ok():
    out = cot.render_output(think(), "anger")
    assert out.endswith("</think>\n<answer> anger</answer>")  # the name after one space: cot.slot_text
    assert cot.render_output("", "anger") == "<answer> anger</answer>" and cot.slot_text("fear") == " fear"
    assert cot.split_output(out) == (think(), "anger")
    assert cot.format_ok(out, CLASSES)
    assert cot.format_ok(out.replace("anger</answer>", "Anger</answer>"), CLASSES)
    assert cot.format_ok(out.replace("> anger", ">anger"), CLASSES)  # the format reward's rule asks no space


@pytest.mark.parametrize("broken", [
    lambda o: o.replace("<answer> anger</answer>", ""),                    # no answer
    lambda o: o.replace("anger</answer>", "rage</answer>"),                # not a class
    lambda o: o + "<answer> anger</answer>",                               # tags twice
    lambda o: o.replace("Step 2 (audio):", "Audio:"),                      # a step missing
    lambda o: o.replace("<think>", "").replace("</think>", "</think><think>"),  # order broken
    lambda o: o.replace("Step 1 (text): Irritated wording.\n", "").replace(
        "Step 3 (synthesis):", "Step 1 (text): x\nStep 3 (synthesis):"),  # steps out of order
])
def test_format_check_rejects_broken_outputs(broken):
    assert not cot.format_ok(broken(cot.render_output(think(), "anger")), CLASSES)


def test_audio_reasoner_preset_places_the_slot_after_its_response_tag():
    fmt = cot.get_format("audio_reasoner")
    assert cot.answer_prefix("<THINK>x</THINK>", fmt).endswith("<RESPONSE>")
    assert cot.split_output("<THINK>x</THINK>\n<RESPONSE>sadness</RESPONSE>", fmt) == ("<THINK>x</THINK>", "sadness")
    with pytest.raises(ValueError, match="prompt_preset"):
        cot.get_format("nope")
