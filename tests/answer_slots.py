"""The answer-slot check that test_vocab (Qwen2-Audio's real vocabulary) and test_standin (the stand-in's
tokenizer) run for every class of every dataset: the complete completion text, tokenised as one text the
way the model reads and writes it, holds the scored ids right at the slot the rollout finds."""

from __future__ import annotations

from ambinb import cot, labels, prompt, rollout

THINK_PARTS = (["raised voice", "fast pace"], "Tense words.",
               {"Volume": "loud.", "Speed": "fast.", "Pitch": "high.", "Tone": "harsh."}, "Mostly anger.")


def check_every_dataset(tok, fmt: cot.OutputFormat) -> dict[str, list[list[str]]]:
    """Run :func:`check_slot` for every class of every dataset of ``labels.CLASSES`` (toy, IEMOCAP,
    CREMA-D); returns each dataset's scored tokens, for the caller to compare with a hand reference."""
    think = cot.render_think(*THINK_PARTS, fmt=fmt)
    out = {}
    for dataset, classes in labels.CLASSES.items():
        for name in classes:
            check_slot(tok, think, name, classes, fmt)
            check_slot(tok, "", name, classes, fmt)
        out[dataset] = [tok.convert_ids_to_tokens(ids) for ids in prompt.class_ids(tok, classes, fmt)]
    return out


def check_slot(tok, think: str, name: str, classes: list[str], fmt: cot.OutputFormat) -> None:
    """``render_output(think, name) + <|im_end|>`` tokenised whole: the rollout's slot (the first ids that
    decode to text ending with the answer tag) is clean, the scored ids of ``name`` follow it, then the
    close tag and ``<|im_end|>``; ``completion_ids`` gives the same ids and slot, and a trajectory of
    these ids is read out right there and passes its format check."""
    text = cot.render_output(think, name, fmt) + prompt.IM_END
    whole = list(tok(text, add_special_tokens=False)["input_ids"])
    scored = prompt.class_ids(tok, classes, fmt)[classes.index(name)]
    slot = rollout.find_answer_slot(tok, whole, fmt.answer_open)
    assert slot is not None, (name, tok.convert_ids_to_tokens(whole)[-8:])
    assert tok.decode(whole[:slot]) == cot.answer_prefix(think, fmt)
    assert whole[slot: slot + len(scored)] == scored, (name, tok.convert_ids_to_tokens(whole)[-8:])
    assert tok.decode(whole[slot + len(scored):]) == fmt.answer_close + prompt.IM_END
    got = prompt.completion_ids(tok, think, name, fmt)
    assert (got.ids, got.slot, got.answer_len) == (whole, slot, len(scored))
    trajectory = rollout.make_trajectory(tok, "u0", whole, "eos", classes, fmt)
    assert trajectory.answer_found and trajectory.readout_ids == whole[:slot]
    assert trajectory.format_ok == bool(think) and cot.answer_ok(trajectory.text, classes, fmt) == (not think)
