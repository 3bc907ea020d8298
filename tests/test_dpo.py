"""On-policy DPO: pair formation on hand-made JS values, the zero-pair step, audio in every forward
(rollout, policy, reference), the reference really being the model without its adapter (or the frozen
copy of a full fine-tune), and a tiny training run that moves the trainable weights and not the tower; the
audio and training checks for each family (``family_model``: the Qwen2-Audio stand-in, a tiny Qwen2.5-Omni)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest_model import (
    CLASSES,
    assert_adapter_loads_back,
    encode_waves,
    family_model,
    omni,
    omni_dir,
    omni_processor,
    perturb_lora,
    tiny,
    tiny_dir,
    tone,
)

from ambinb import config, cot, engine, lm, metrics, prompt, rollout
from ambinb import model as model_mod
from ambinb import policy as policy_mod
from ambinb.examples import Example
from ambinb.strategies import dpo

FIXTURES = (tiny, tiny_dir, family_model, omni, omni_dir, omni_processor)  # conftest_model's, used by name below

THINK = cot.render_think(["loud", '"no way"'], "The words are tense.",
                         {"Volume": "loud.", "Speed": "fast.", "Pitch": "high.", "Tone": "harsh."},
                         "Mostly anger, with some sadness.")
TRANSCRIPTS = ["No way, not again.", "The train leaves at seven.", "I miss her so much."]
P_GT = np.array([[0.7, 0.0, 0.3, 0.0], [0.0, 0.2, 0.0, 0.8], [0.25, 0.25, 0.25, 0.25]])
ANSWERS = ["anger", "neutral", "anger"]


def make_cfg(**over) -> dict:
    return config.resolve(dataset="toy", strategy="dpo", overrides={  # the paper's gold positive
        "max_new_tokens": 48, "readout_batch_size": 0, "seed": 0, "dpo_positive": "gold", **over})


def make_examples(model, processor, n: int = 3) -> list[Example]:
    enc = encode_waves(model, processor, [tone(1.0, 180), tone(2.0, 320), tone(1.5, 500)][:n], TRANSCRIPTS[:n])
    return [Example(e.utt_id, e, prompt.completion_ids(processor.tokenizer, THINK, a), p)
            for e, a, p in zip(enc, ANSWERS, P_GT)]


def fake_rollout(p_hat: np.ndarray, calls: list | None = None):
    """A stand-in for ``rollout.rollout`` that returns hand-made p_hat (B, R, C) and distinct token ids."""
    def run(model, processor, encoded, classes, cfg, k=None, greedy=False, generator=None):
        if calls is not None:
            calls.append(len(encoded))
        tok = processor.tokenizer
        trajectories = []
        for b, e in enumerate(encoded):
            group = []
            for j in range(k):
                text = cot.answer_prefix(THINK) + f"{classes[j % len(classes)]}</answer>"
                ids = prompt.segment_ids(tok, text) + [b, j]  # distinct per (utterance, rollout)
                group.append(rollout.Trajectory(e.utt_id, ids, text, [], True, True, "answer_close"))
            trajectories.append(group)
        return rollout.GroupRollout(trajectories, torch.tensor(p_hat, dtype=torch.float32), list(classes))
    return run


def test_form_pairs_by_hand():
    js = [[0.05, 0.3, 0.2], [0.02, 0.08, 0.1], [0.4, 0.4, 0.1]]
    assert dpo.form_pairs(js, 0.1) == [(0, 1), (2, 0)]  # row 1: its worst (0.1) is not above tau
    assert dpo.form_pairs(js, 0.05) == [(0, 1), (1, 2), (2, 0)]
    assert dpo.form_pairs(js, 0.5) == []
    with pytest.raises(ValueError):
        dpo.form_pairs([0.1, 0.2], 0.1)


def test_rollout_js_is_metrics_js_per_rollout():
    p_gt = np.array([[0.5, 0.5], [1.0, 0.0]])
    p_hat = torch.tensor([[[0.5, 0.5], [0.9, 0.1]], [[0.2, 0.8], [1.0, 0.0]]])
    js = policy_mod.rollout_js(p_gt, p_hat)
    assert js.shape == (2, 2)
    assert js[0, 0] == pytest.approx(0.0, abs=1e-9) and js[1, 1] == pytest.approx(0.0, abs=1e-9)
    assert js[0, 1] == pytest.approx(float(metrics.js(p_gt[:1], np.array([[0.9, 0.1]]))[0]))


def test_pairs_follow_the_rollouts_js(tiny, monkeypatch):
    """Utterance 0: every rollout reads out p_gt (no pair); utterance 1: rollout 2 is far off (the
    negative); utterance 2: all rollouts a little off, under tau (no pair)."""
    model, processor = tiny
    model = model_mod.apply_lora(model, make_cfg())
    examples = make_examples(model, processor)
    p_hat = np.repeat(P_GT[:, None], 3, axis=1).copy()
    p_hat[1, 2] = [0.9, 0.05, 0.05, 0.0]
    p_hat[1, 0] = [0.0, 0.3, 0.0, 0.7]
    p_hat[2] = [[0.3, 0.25, 0.2, 0.25]] * 3
    monkeypatch.setattr(dpo.rollout, "rollout", fake_rollout(p_hat))
    seen = []
    plain = policy_mod.completion_logprobs
    monkeypatch.setattr(policy_mod, "completion_logprobs",
                        lambda m, p, c, a, pad, **kw: seen.append([list(x) for x in c]) or plain(m, p, c, a, pad, **kw))
    strategy = dpo.DPOStrategy(model, processor, examples, CLASSES, make_cfg(dpo_rollouts=3))
    loss, stats = strategy.loss(model, [0, 1, 2], 0)
    assert stats["pairs"] == 1 and stats["no_pair"] == 0
    expected_js = float(metrics.js(P_GT[1:2], np.array([[0.9, 0.05, 0.05, 0.0]]))[0])
    assert stats["neg_js"] == pytest.approx(expected_js, rel=1e-5) and expected_js > 0.1
    policy_rows = seen[0]
    assert policy_rows[0] == examples[1].completion.ids  # the positive: utterance 1's gold completion
    assert policy_rows[1][-2:] == [1, 2]                  # the negative: utterance 1's rollout 2
    assert seen[1] == policy_rows                         # the reference scores the same pair
    assert loss.requires_grad and torch.isfinite(loss)
    # first step: policy == reference (LoRA B starts at 0), so the DPO term is log 2 and the margin 0
    assert stats["dpo"] == pytest.approx(np.log(2), abs=1e-5) and stats["margin"] == pytest.approx(0, abs=1e-6)


def test_no_pair_gives_a_zero_loss_that_reaches_every_trainable_weight(tiny, monkeypatch):
    model, processor = tiny
    model = model_mod.apply_lora(model, make_cfg())
    examples = make_examples(model, processor)
    monkeypatch.setattr(dpo.rollout, "rollout", fake_rollout(np.repeat(P_GT[:, None], 2, axis=1)))
    strategy = dpo.DPOStrategy(model, processor, examples, CLASSES, make_cfg(dpo_rollouts=2))
    loss, stats = strategy.loss(model, [0, 1, 2], 0)
    assert stats["pairs"] == 0 and stats["no_pair"] == 1 and np.isnan(stats["margin"])
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    loss.backward()
    grads = [p.grad for _, p in engine.trainable_parameters(model)]
    assert grads and all(g is not None and not g.any() for g in grads)


def _adapter_disabled(model) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    return bool(layers) and all(m.disable_adapters for m in layers)


def audio_owner(embeds_row: torch.Tensor, projected: list[torch.Tensor]) -> int | None:
    """The utterance whose projected audio features ALL sit in this row (and no other's), or None."""
    hits = [int(((embeds_row[:, None] - p[None]).abs().amax(-1) < 1e-6).any(dim=0).sum()) for p in projected]
    full = [i for i, (h, p) in enumerate(zip(hits, projected)) if h == p.shape[0]]
    return full[0] if len(full) == 1 and sum(hits) == hits[full[0]] else None


def record_forwards(model, monkeypatch, module) -> list[dict]:
    """Hook where audio enters the language model; label each forward rollout / policy / reference / other."""
    seen: list[dict] = []
    phase = {"rollout": False}
    plain = module.rollout.rollout

    def tagged(*a, **kw):
        phase["rollout"] = True
        try:
            return plain(*a, **kw)
        finally:
            phase["rollout"] = False

    monkeypatch.setattr(module.rollout, "rollout", tagged)

    def hook(m, args, kwargs):
        embeds = kwargs["inputs_embeds"]
        if phase["rollout"]:
            kind = "rollout"
        elif _adapter_disabled(model):
            kind = "reference"
        else:
            kind = "policy" if torch.is_grad_enabled() else "old_policy"
        cache = kwargs.get("cache")
        past = int(cache.get_seq_length()) if cache is not None else 0  # > 0: it continues a prefill's cache
        seen.append({"kind": kind, "embeds": embeds.detach().clone(), "grad": torch.is_grad_enabled(), "past": past})

    handle = lm.text_model(model).register_forward_pre_hook(hook, with_kwargs=True)
    return seen, handle


def check_audio_in(seen: list[dict], projected: list[torch.Tensor], placeholder: torch.Tensor) -> None:
    for rec in seen:
        embeds = rec["embeds"]
        assert not (embeds - placeholder).abs().sum(-1).lt(1e-6).any(), f"an unmerged <|AUDIO|> in a {rec['kind']}"
        if rec["past"] == 0:  # every forward over prompts (not one that continues a cache) carries audio
            for row in embeds:
                assert audio_owner(row, projected) is not None, f"a {rec['kind']} row lacks its utterance's audio"


def test_audio_reaches_the_rollout_policy_and_reference_forwards(family_model, monkeypatch):
    model, processor = family_model
    model = model_mod.apply_lora(model, make_cfg())
    examples = make_examples(model, processor)
    with torch.no_grad():
        projected = [lm.project_audio(model, [ex.encoded.audio]) for ex in examples]
    placeholder = lm.base_model(model).get_input_embeddings().weight[
        processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")].detach()
    strategy = dpo.DPOStrategy(model, processor, examples, CLASSES, make_cfg(dpo_rollouts=2, tau=0.0))
    seen, handle = record_forwards(model, monkeypatch, dpo)
    _, stats = strategy.loss(model, [0, 1, 2], 0)
    handle.remove()
    assert stats["pairs"] == 3  # tau 0: every utterance whose sampled read-outs are not exactly p_gt gives a pair
    kinds = {r["kind"] for r in seen}
    assert {"rollout", "policy", "reference"} <= kinds
    assert all(r["grad"] for r in seen if r["kind"] == "policy")
    assert not any(r["grad"] for r in seen if r["kind"] == "reference")
    check_audio_in(seen, projected, placeholder)
    policy = [r for r in seen if r["kind"] == "policy"][0]["embeds"]
    owners = [audio_owner(row, projected) for row in policy]
    assert owners == [0, 1, 2, 0, 1, 2]  # chosen rows then rejected rows, each with its own utterance's audio


def test_the_audio_check_fails_when_one_forward_drops_its_audio(family_model, monkeypatch):
    """The check above can fail: with the reference forward reading the ``<|AUDIO|>`` placeholder embeddings
    instead of the audio (the merge skipped whenever the adapter is disabled), it names that forward."""
    model, processor = family_model
    model = model_mod.apply_lora(model, make_cfg())
    examples = make_examples(model, processor)
    with torch.no_grad():
        projected = [lm.project_audio(model, [ex.encoded.audio]) for ex in examples]
    placeholder = lm.base_model(model).get_input_embeddings().weight[lm.audio_token_id(model)].detach()
    plain = lm.merge_audio

    def drops_in_reference(m, input_ids, audio):
        if _adapter_disabled(model):
            return lm.base_model(m).get_input_embeddings()(input_ids)
        return plain(m, input_ids, audio)

    monkeypatch.setattr(lm, "merge_audio", drops_in_reference)
    strategy = dpo.DPOStrategy(model, processor, examples, CLASSES, make_cfg(dpo_rollouts=2, tau=0.0))
    seen, handle = record_forwards(model, monkeypatch, dpo)
    strategy.loss(model, [0, 1, 2], 0)
    handle.remove()
    check_audio_in([r for r in seen if r["kind"] != "reference"], projected, placeholder)
    with pytest.raises(AssertionError, match="an unmerged <|AUDIO|> in a reference"):
        check_audio_in(seen, projected, placeholder)


def test_reference_is_the_model_without_its_adapter(tiny, tiny_dir):
    model, processor = tiny
    base, _ = model_mod.load_checkpoint(tiny_dir, dtype="float32", device="cpu")
    model = model_mod.apply_lora(model, make_cfg()).eval()
    perturb_lora(model)
    examples = make_examples(model, processor)
    prompts = [ex.encoded.prompt_ids for ex in examples]
    completions = [ex.completion.ids for ex in examples]
    audio = [ex.encoded.audio for ex in examples]
    pad = processor.tokenizer.pad_token_id
    reference = policy_mod.Reference(model)
    assert reference.uses_adapter and reference.copy is None  # no second copy of the weights
    with torch.no_grad():
        with reference(model) as ref_model:
            ref, mask, _ = policy_mod.completion_logprobs(ref_model, prompts, completions, audio, pad)
        policy, _, _ = policy_mod.completion_logprobs(model, prompts, completions, audio, pad)
        expected, _, _ = policy_mod.completion_logprobs(base, prompts, completions, audio, pad)
    torch.testing.assert_close(ref, expected, rtol=1e-5, atol=1e-5)
    assert (policy - expected).abs().max() > 1e-2, "the perturbed adapter must change the policy"
    assert mask.sum(1).tolist() == [len(c) for c in completions]


def test_full_fine_tune_reference_is_one_frozen_copy_of_the_start(tiny, tiny_dir):
    model, processor = tiny
    base, _ = model_mod.load_checkpoint(tiny_dir, dtype="float32", device="cpu")
    model = model_mod.prepare_trainable(model, make_cfg(lora=False))
    reference = policy_mod.Reference(model)
    assert not reference.uses_adapter and reference.copy is not model
    assert not any(p.requires_grad for p in reference.copy.parameters())
    with torch.no_grad():
        for p in lm.text_model(model).parameters():
            p.add_(0.05)
    examples = make_examples(model, processor, 2)
    args = ([ex.encoded.prompt_ids for ex in examples], [ex.completion.ids for ex in examples],
            [ex.encoded.audio for ex in examples], processor.tokenizer.pad_token_id)
    with torch.no_grad(), reference(model) as ref_model:
        ref, _, _ = policy_mod.completion_logprobs(ref_model, *args)
        policy, _, _ = policy_mod.completion_logprobs(model, *args)
        expected, _, _ = policy_mod.completion_logprobs(base, *args)
    torch.testing.assert_close(ref, expected, rtol=1e-5, atol=1e-5)
    assert (policy - expected).abs().max() > 1e-2


def test_completion_logprobs_equal_a_full_forward(tiny):
    """Per-token log-probs of the completion against transformers' own forward on the whole row."""
    model, processor = tiny
    examples = make_examples(model, processor, 2)
    prompts = [ex.encoded.prompt_ids for ex in examples]
    completions = [examples[0].completion.ids, examples[1].completion.ids[:7]]  # unequal lengths: padding
    audio = [ex.encoded.audio for ex in examples]
    with torch.no_grad():
        logps, mask, _ = policy_mod.completion_logprobs(model, prompts, completions, audio,
                                                        processor.tokenizer.pad_token_id)
        for i, (p, c) in enumerate(zip(prompts, completions)):
            ids = torch.tensor([p + c])
            hidden, _ = lm.hidden_states(model, ids, torch.ones_like(ids), [audio[i]])
            logits = lm.head_logits(model, hidden)[0].double()
            expected = torch.log_softmax(logits, -1)[torch.arange(len(p) - 1, len(p) - 1 + len(c)), torch.tensor(c)]
            torch.testing.assert_close(logps[i, : len(c)].double(), expected, rtol=1e-4, atol=1e-4)
            assert mask[i].sum() == len(c) and not logps[i, len(c):].any()


@pytest.mark.parametrize(("family_model", "lora"), [("qwen2_audio", True), ("qwen2_audio", False),
                                                     ("qwen2_5_omni", True)], indirect=["family_model"])
def test_a_tiny_dpo_run_moves_the_trainable_weights_and_not_the_tower(family_model, tmp_path, lora, monkeypatch):
    model, processor = family_model
    cfg = make_cfg(dpo_rollouts=2, tau=0.0, lora=lora)
    model = model_mod.prepare_trainable(model, cfg)
    examples = make_examples(model, processor)
    strategy = dpo.DPOStrategy(model, processor, examples, CLASSES, cfg)
    before = {n: p.detach().clone() for n, p in engine.trainable_parameters(model)}
    tower = {n: p.detach().clone() for n, p in lm.audio_tower(model).named_parameters()}
    tc = engine.TrainConfig.with_defaults(lr=1e-3, max_steps=2, batch_size=2, checkpoint_every=10)
    history = engine.train(model, strategy, tc, tmp_path, progress=False)
    assert len(history) == 2 and all(row["pairs"] == 2 for row in history)
    moved = [n for n, p in engine.trainable_parameters(model) if not torch.equal(p.detach(), before[n])]
    assert len(moved) > len(before) // 2, f"only {len(moved)} of {len(before)} trainable tensors changed"
    if lora:
        assert all("lora_" in n for n in before)
        assert_adapter_loads_back(model, processor, examples[0], tmp_path, monkeypatch)
    for n, p in lm.audio_tower(model).named_parameters():
        assert torch.equal(p.detach(), tower[n]) and not p.requires_grad
    assert history[1]["margin"] != 0.0  # after one step the policy differs from the reference


def test_summary_counts_pairs_and_averages_the_last_fifth_by_hand():
    nan = float("nan")
    history = [{"pairs": p, "neg_js": j, "accuracy": a, "margin": m} for p, j, a, m in
               [(0, nan, nan, nan), (2, 0.4, 0.5, 0.1), (1, 0.3, 1.0, 0.2), (0, nan, nan, nan), (3, 0.2, 1.0, 0.4),
                (2, 0.1, 0.5, 0.6)]]  # 6 steps: the last fifth is the last step
    out = object.__new__(dpo.DPOStrategy).summary(history)
    assert out["pairs_total"] == 8 and out["steps_without_pair"] == 2
    assert out["neg_js_first"] == 0.4  # the first step that had a pair
    assert out["neg_js_last_fifth"] == 0.1 and out["accuracy_last_fifth"] == 0.5 and out["margin_last_fifth"] == 0.6
    assert np.isnan(object.__new__(dpo.DPOStrategy).summary(history[:1])["neg_js_last_fifth"])


def test_grouped_completion_logprobs_equal_the_flat_ones_with_their_gradients(tiny):
    """Groups of three rows sharing a prompt (prompts of two lengths, completions of unequal lengths): the
    one-prefill forward gives the flat forward's log-probs and the same gradient on every weight; under
    activation checkpointing it falls back to the flat forward (whole-row hidden states come back)."""
    model, processor = tiny
    model = model_mod.prepare_trainable(model, make_cfg(lora=False))
    examples = make_examples(model, processor, 2)
    assert len(examples[0].encoded.prompt_ids) != len(examples[1].encoded.prompt_ids)
    g, pad = 3, processor.tokenizer.pad_token_id
    prompts = [ex.encoded.prompt_ids for ex in examples for _ in range(g)]
    audio = [ex.encoded.audio for ex in examples for _ in range(g)]
    completions = [ex.completion.ids[:n] for ex in examples for n in (len(ex.completion.ids), 5, 1)]
    weights = torch.linspace(0.5, 1.5, 6)[:, None]
    params = [p for _, p in engine.trainable_parameters(model)]

    def run(group_size):
        model.zero_grad(set_to_none=True)
        logps, mask, hidden = policy_mod.completion_logprobs(model, prompts, completions, audio, pad, group_size)
        (logps * mask * weights).sum().backward()
        return logps.detach(), mask, hidden, [p.grad.clone() for p in params]

    flat, flat_mask, flat_hidden, flat_grads = run(1)
    grouped, grouped_mask, grouped_hidden, grouped_grads = run(g)
    assert flat_hidden is not None and grouped_hidden is None
    assert torch.equal(flat_mask, grouped_mask)
    torch.testing.assert_close(grouped, flat, rtol=1e-4, atol=1e-5)
    for a, b in zip(grouped_grads, flat_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    model_mod.set_activation_checkpointing(model, True)
    model.train()
    _, _, hidden, _ = run(g)
    assert hidden is not None
    with pytest.raises(ValueError, match="prompts of a group of 3 rows differ"):
        policy_mod.completion_logprobs(model, prompts[1:] + prompts[:1], completions, audio, pad, g)


def test_best_rollout_pairs_by_hand():
    js = [[0.05, 0.3, 0.2], [0.02, 0.08, 0.1], [0.4, 0.4, 0.4], [0.3, 0.1, 0.5]]
    usable = [[True, True, True], [True, True, True], [True, True, True], [True, False, True]]
    # row 1: its worst is not above tau; row 2: all equal (no better positive); row 3: rollout 1 unusable
    assert dpo.form_best_worst(js, 0.1, usable) == [(0, 0, 1), (3, 0, 2)]
    assert dpo.form_best_worst(js, 0.1, [[False] * 3] * 4) == []


def test_a_rollout_positive_keeps_its_own_ids_and_answer_slot(tiny):
    _, processor = tiny
    tok = processor.tokenizer
    class_ids = prompt.class_ids(tok, CLASSES)
    done = prompt.completion_ids(tok, THINK, "sadness")
    ex = Example("u0", None, prompt.completion_ids(tok, THINK, "anger"), P_GT[0])
    t = rollout.Trajectory("u0", done.ids, "", done.ids[: done.slot], True, True, "answer_close")
    pos = dpo.as_positive(ex, t, class_ids)
    assert (pos.completion.ids, pos.completion.slot, pos.completion.answer_len) == (done.ids, done.slot,
                                                                                      done.answer_len)
    assert pos.utt_id == "u0" and pos.completion.ids[pos.completion.slot] == class_ids[2][0]
    no_answer = rollout.Trajectory("u0", done.ids[: done.slot], "", [], False, False, "budget")
    with pytest.raises(ValueError, match="u0: a positive must write a class name"):
        dpo.as_positive(ex, no_answer, class_ids)


def test_any_class_scores_the_slot_as_the_mass_of_every_class_name(tiny):
    """answer_action any_class: at the answer column the log-prob is log sum_c p(c) over the class names'
    first tokens (from a full forward by hand); every other column keeps the written token's log-prob."""
    model, processor = tiny
    examples = make_examples(model, processor, 2)
    prompts = [ex.encoded.prompt_ids for ex in examples]
    completions = [ex.completion.ids for ex in examples]
    audio = [ex.encoded.audio for ex in examples]
    first = [ids[0] for ids in prompt.class_ids(processor.tokenizer, CLASSES)]
    cols = [examples[0].completion.slot, None]
    pad = processor.tokenizer.pad_token_id
    with torch.no_grad():
        plain, _, _ = policy_mod.completion_logprobs(model, prompts, completions, audio, pad)
        mixed, _, _ = policy_mod.completion_logprobs(model, prompts, completions, audio, pad, answer_cols=cols,
                                                     answer_ids=first)
        p, c, slot = prompts[0], completions[0], cols[0]
        ids = torch.tensor([p + c])
        hidden, _ = lm.hidden_states(model, ids, torch.ones_like(ids), [audio[0]])
        logp = torch.log_softmax(lm.head_logits(model, hidden)[0].double(), -1)[len(p) - 1 + slot]
    expected = torch.logsumexp(logp[first], 0)
    assert float(mixed[0, slot]) == pytest.approx(float(expected), abs=1e-4)
    assert float(mixed[0, slot]) > float(plain[0, slot])  # the written name is one of the classes
    keep = [t for t in range(len(c)) if t != slot]
    torch.testing.assert_close(mixed[0, keep], plain[0, keep])
    torch.testing.assert_close(mixed[1], plain[1])  # no answer column: unchanged
