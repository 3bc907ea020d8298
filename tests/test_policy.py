"""The policy helpers every strategy shares: the soft-CE term by hand, the answer_ce choices, and the
slot read-out from a teacher-forced forward against the read-out of :mod:`ambinb.readout`."""

import pytest
import torch
from conftest_model import CLASSES, encode_waves, tiny, tiny_dir, tone

from ambinb import cot, lm, policy, prompt, readout
from ambinb.examples import Example

FIXTURES = (tiny, tiny_dir)  # pytest fixtures from conftest_model, used by name below


def test_completion_ce_by_hand():
    """The module's worked example: NLLs summing to 3.0 over 5 tokens, slot log-likelihoods (-0.1, -2.3),
    p_gt (0.5, 0.5): soft -> (3.0 + 0.05 + 1.15) / 6 = 0.7; majority and none -> 3.0 / 5."""
    class_ll, p_gt = torch.tensor([[-0.1, -2.3]]), torch.tensor([[0.5, 0.5]])
    assert float(policy.completion_ce(torch.tensor(3.0), 5, class_ll, p_gt, "soft")) == pytest.approx(0.7)
    assert float(policy.completion_ce(torch.tensor(3.0), 5.0, class_ll, p_gt, "majority")) == pytest.approx(0.6)
    assert float(policy.completion_ce(torch.tensor(3.0), 5, class_ll, p_gt, "none")) == pytest.approx(0.6)
    assert float(policy.completion_ce(torch.tensor(0.0), 0, class_ll, p_gt, "none")) == 0.0  # no token: no 0/0


def test_an_unknown_answer_ce_names_the_key():
    assert policy.check_answer_ce("soft") == "soft"
    with pytest.raises(ValueError, match=r"answer_ce='hard': choose one of \('soft', 'majority', 'none'\)"):
        policy.check_answer_ce("hard")


@pytest.mark.parametrize("classes", [CLASSES, ["anger", "frustration"]], ids=["single-token", "multi-token"])
def test_slot_read_out_of_a_teacher_forced_forward_equals_the_readout(tiny, classes):
    model, processor = tiny
    tok = processor.tokenizer
    encoded = encode_waves(model, processor, [tone(1.0, 200), tone(1.4, 400)], ["no way", "fine"], classes=classes)
    think = cot.render_think(["loud"], "Tense.", {"Volume": "loud.", "Speed": "fast.", "Pitch": "high.",
                                                  "Tone": "tense."}, "Mostly anger.")
    examples = [Example(e.utt_id, e, prompt.completion_ids(tok, think, classes[0]), None) for e in encoded]
    class_ids = prompt.class_ids(tok, classes)
    assert all(len(ids) == 1 for ids in class_ids) == (classes == CLASSES)
    with torch.no_grad():
        rows = [ex.encoded.prompt_ids + ex.completion.ids for ex in examples]
        ids, attn = lm.right_pad(rows, tok.pad_token_id)
        hidden, _ = lm.hidden_states(model, ids, attn, [ex.encoded.audio for ex in examples])
        got = policy.slot_class_log_likelihoods(model, hidden, examples, class_ids, tok.pad_token_id)
        prefixes = [ex.encoded.prompt_ids + ex.completion.ids[: ex.completion.slot] for ex in examples]
        want = readout.class_log_likelihoods(model, prefixes, [ex.encoded.audio for ex in examples], class_ids,
                                             tok.pad_token_id)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
