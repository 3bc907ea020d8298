"""The readout against brute force: each class name scored in its own forward through transformers'
full path (input_features, no cache), summed in float64, then softmaxed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest_model import CLASSES, encode_waves, tiny, tiny_dir, tone

from ambinb import cot, lm, prompt, readout

FIXTURES = (tiny, tiny_dir)  # pytest fixtures from conftest_model, used by name below

THINK = cot.render_think(["loud", '"no way"'], "The words are tense.",
                         {"Volume": "loud.", "Speed": "fast.", "Pitch": "high.", "Tone": "harsh."},
                         "Mostly anger, with some sadness.")


def _setup(model, processor, classes=CLASSES):
    waves = [tone(1.0, 180), tone(2.0, 320), tone(1.5, 500)]
    transcripts = ["No way, not again.", "The train leaves at seven.", "I miss her so much."]
    enc = encode_waves(model, processor, waves, transcripts, classes)
    thinks = (THINK, "", "<think>\nhmm\n</think>")
    tails = [prompt.segment_ids(processor.tokenizer, cot.answer_prefix(t)) for t in thinks]
    texts = [prompt.prompt_text(processor, tr, classes, utt_id=e.utt_id) for tr, e in zip(transcripts, enc)]
    return waves, texts, enc, tails


def _brute_force(model, processor, wave, text, tail, names):
    """Each name's log-likelihood by a loop: one full-path forward per name, float64 sums over its tokens."""
    tok = processor.tokenizer
    inputs = processor(text=[text], audio=[wave], sampling_rate=16_000, return_tensors="pt")
    scores = []
    for name in names:
        cont = tok(cot.slot_text(name), add_special_tokens=False)["input_ids"]  # as it stands in the slot
        ids = torch.cat([inputs["input_ids"], torch.tensor([tail + cont])], dim=1)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), input_features=inputs["input_features"],
                           feature_attention_mask=inputs["feature_attention_mask"]).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        start = ids.shape[1] - len(cont)
        scores.append(sum(float(logp[start - 1 + j, t]) for j, t in enumerate(cont)))
    return np.array(scores)


def _softmax(s: np.ndarray) -> np.ndarray:
    return np.exp(s - s.max()) / np.exp(s - s.max()).sum()


@pytest.mark.parametrize("names", [CLASSES, ["happiness", "frustration", "xyzzy plugh", "anger"]],
                         ids=["single_token", "multi_token"])
def test_readout_equals_brute_force_per_class_scoring(tiny, names):
    model, processor = tiny
    waves, texts, enc, tails = _setup(model, processor)
    ids = prompt.class_ids(processor.tokenizer, names)
    if names is not CLASSES:
        assert any(len(i) > 1 for i in ids), "the multi-token case must really have split names"
    prefixes, feats = [e.prompt_ids + t for e, t in zip(enc, tails)], [e.audio for e in enc]
    with torch.no_grad():
        p = readout.read_out(model, prefixes, feats, ids, processor.tokenizer.pad_token_id)
        ll = readout.class_log_likelihoods(model, prefixes, feats, ids, processor.tokenizer.pad_token_id)
    assert p.dtype == torch.float32 and p.shape == (3, len(names))
    for i in range(3):
        expected = _brute_force(model, processor, waves[i], texts[i], tails[i], names)
        np.testing.assert_allclose(ll[i].numpy(), expected, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(p[i].numpy(), _softmax(expected), atol=2e-5)


def test_single_token_path_equals_the_row_per_class_path(tiny):
    model, processor = tiny
    _, _, enc, tails = _setup(model, processor)
    ids = prompt.class_ids(processor.tokenizer, CLASSES)
    assert all(len(i) == 1 for i in ids)
    prefixes, feats = [e.prompt_ids + t for e, t in zip(enc, tails)], [e.audio for e in enc]
    with torch.no_grad():
        fast = readout.class_log_likelihoods(model, prefixes, feats, ids, 0)
        # the same names with a dummy 2-token name appended force the (prefix x name) rows path
        slow = readout.class_log_likelihoods(model, prefixes, feats, ids + [ids[0] + ids[1]], 0)[:, :4]
        chunked = readout.class_log_likelihoods(model, prefixes, feats, ids, 0, batch_size=1)
    assert torch.allclose(fast, slow, atol=1e-5) and torch.allclose(fast, chunked, atol=1e-5)


def test_class_subset_is_the_renormalised_restriction(tiny):
    """A model read out over IEMOCAP's four classes gives the six-class distribution restricted and
    renormalised (each name's score does not depend on the other names)."""
    model, processor = tiny
    six = ["anger", "disgust", "fear", "happiness", "neutral", "sadness"]
    _, _, enc, tails = _setup(model, processor, six)
    prefixes, feats = [e.prompt_ids + t for e, t in zip(enc, tails)], [e.audio for e in enc]
    with torch.no_grad():
        p6 = readout.read_out(model, prefixes, feats, prompt.class_ids(processor.tokenizer, six), 0)
        p4 = readout.read_out(model, prefixes, feats, prompt.class_ids(processor.tokenizer, CLASSES), 0)
    idx = [six.index(c) for c in CLASSES]
    restricted = p6[:, idx] / p6[:, idx].sum(dim=1, keepdim=True)
    assert torch.allclose(p4, restricted, atol=1e-6)


def test_readout_is_differentiable_into_the_language_model_only(tiny):
    model, processor = tiny
    _, _, enc, tails = _setup(model, processor)
    p = readout.read_out(model, [e.prompt_ids + t for e, t in zip(enc, tails)], [e.audio for e in enc],
                         prompt.class_ids(processor.tokenizer, CLASSES), 0)
    p_gt = torch.tensor([[0.5, 0.0, 0.5, 0.0]] * 3)
    kl = (p_gt * (torch.log(p_gt + 1e-10) - torch.log(p + 1e-10))).sum(dim=1).mean()
    kl.backward()
    core = lm.core(model)
    assert core.language_model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert core.multi_modal_projector.linear.weight.grad.abs().sum() > 0  # audio positions feed the slot
    assert all(q.grad is None for q in core.audio_tower.parameters())


def test_slot_distribution_worked_example_and_refusal():
    logits = torch.tensor([[2.0, 0.0, 5.0, -1.0]])  # ids 0 and 1 are the two names; 2, 3 anything else
    p = readout.slot_distribution(logits, [[0], [1]])
    assert torch.allclose(p, torch.tensor([[0.8808, 0.1192]]), atol=1e-4)  # e^2 / (e^2 + e^0)
    with pytest.raises(ValueError, match="single-token"):
        readout.slot_distribution(logits, [[0], [1, 2]])


def test_slot_distribution_matches_read_out(tiny):
    model, processor = tiny
    _, _, enc, tails = _setup(model, processor)
    prefixes, feats = [e.prompt_ids + t for e, t in zip(enc, tails)], [e.audio for e in enc]
    ids = prompt.class_ids(processor.tokenizer, CLASSES)
    with torch.no_grad():
        p = readout.read_out(model, prefixes, feats, ids, 0)
        tok_ids, mask = lm.right_pad(prefixes, 0)
        logits = lm.head_logits(model, lm.hidden_states(model, tok_ids, mask, feats)[0])
        slot = logits[torch.arange(3), torch.tensor([len(x) - 1 for x in prefixes])]
    assert torch.allclose(readout.slot_distribution(slot, ids), p, atol=1e-5)


def test_right_padded_rows_need_no_attention_mask(tiny):
    """Each row of a right-padded batch run without a mask has, at its real positions, the hidden
    states of the same row run alone: the causal mask keeps real tokens off the padding after them."""
    model, processor = tiny
    _, _, enc, tails = _setup(model, processor)
    rows, feats = [e.prompt_ids + t for e, t in zip(enc, tails)], [e.audio for e in enc]
    assert len({len(r) for r in rows}) == 3  # three lengths, so two rows carry padding
    with torch.no_grad():
        ids, _ = lm.right_pad(rows, 0)
        batched, _ = lm.hidden_states(model, ids, None, feats)
        for i, (row, feat) in enumerate(zip(rows, feats)):
            alone, _ = lm.hidden_states(model, torch.tensor([row]), None, [feat])
            assert torch.allclose(batched[i, : len(row)], alone[0], atol=1e-5)
        # the shortcut is for right padding only: left-padded rows need their mask and positions (with
        # them they equal the rows run alone), and without either they do not
        left, mask = lm.left_pad(rows, 0)
        short = min(range(3), key=lambda i: len(rows[i]))
        alone, _ = lm.hidden_states(model, torch.tensor([rows[short]]), None, [feats[short]])
        cols = slice(left.shape[1] - len(rows[short]), None)
        masked, _ = lm.hidden_states(model, left, mask, feats, (mask.cumsum(-1) - 1).clamp(min=0))
        unmasked, _ = lm.hidden_states(model, left, None, feats)
        assert torch.allclose(masked[short, cols], alone[0], atol=1e-5)
        assert not torch.allclose(unmasked[short, cols], alone[0], atol=1e-3)
