"""GRPO and GRPO_z: rewards from the registry, the injected gold always on top, old-policy log-probs
kept across num_iterations, audio in every forward (rollout, policy, old policy, reference), and a
tiny training run that moves the trainable weights and not the tower; the audio and training checks for each
family (``family_model``: the Qwen2-Audio stand-in, a tiny Qwen2.5-Omni)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest_model import (
    CLASSES,
    assert_adapter_loads_back,
    family_model,
    omni,
    omni_dir,
    omni_processor,
    tiny,
    tiny_dir,
)
from test_dpo import (
    P_GT,
    THINK,
    audio_owner,
    check_audio_in,
    fake_rollout,
    make_examples,
    perturb_lora,
    record_forwards,
)

from ambinb import config, engine, lm, losses, metrics, prompt, rewards, rollout
from ambinb import model as model_mod
from ambinb.strategies import grpo

FIXTURES = (tiny, tiny_dir, family_model, omni, omni_dir, omni_processor)  # conftest_model's, used by name below


def make_cfg(strategy: str = "grpo_z", **over) -> dict:
    """The strategy's parameters at the paper's lambda3 (``format_weight`` 0.1, which the values by hand
    below assume; the toy report's is in ``params/models/tiny/grpo.yaml``)."""
    return config.resolve(dataset="toy", strategy=strategy, overrides={
        "max_new_tokens": 48, "readout_batch_size": 0, "seed": 0, "format_weight": 0.1, **over})


def test_the_reward_names_sum_to_eq6_by_hand():
    good = "<think>\nKeywords: loud\nStep 1 (text): a.\nStep 2 (audio): b.\nStep 3 (synthesis): c.\n</think>\n" \
           "<answer>anger</answer>"
    kw = {"p_gt": [[0.5, 0.5], [0.5, 0.5]], "p_hat": [[0.75, 0.25], [0.75, 0.25]], "classes": ["anger", "sadness"],
          "format_weight": 0.1}
    kl = 0.5 * np.log(0.5 / 0.75) + 0.5 * np.log(0.5 / 0.25)  # 0.1438
    r = rewards.combined_reward(["grpo"], [good, "<answer>anger"], **kw)
    assert r == pytest.approx([-kl + 0.1, -kl], abs=1e-6)
    assert rewards.combined_reward(["distribution"], [good, good], **kw) == pytest.approx([-kl, -kl], abs=1e-6)
    assert rewards.combined_reward(["distribution", "format"], [good], **{**kw, "p_gt": kw["p_gt"][:1],
                                                                     "p_hat": kw["p_hat"][:1]}) == \
        pytest.approx([-kl + 1.0], abs=1e-6)
    with pytest.raises(ValueError, match="unknown reward"):
        rewards.combined_reward(["nope"], [good], **kw)


def test_with_gold_by_hand():
    np.testing.assert_array_equal(grpo.with_gold([[-0.3, -0.1], [0.0, -1.0]], [0.1, 0.1]),
                                  [[-0.3, -0.1, 0.1], [0.0, -1.0, 0.1]])


def test_the_injected_gold_always_has_the_top_advantage():
    """Random groups scored by the grpo reward (random p_hat, texts good or broken), plus a member
    that is perfect (KL 0, format 1): the gold's advantage is never below any member's."""
    rng = np.random.default_rng(0)
    good = "<think>\nKeywords: x\nStep 1 (text): a.\nStep 2 (audio): b.\nStep 3 (synthesis): c.\n</think>\n" \
           "<answer>sadness</answer>"
    for trial in range(200):
        k = int(rng.integers(2, 9))
        p_gt = rng.dirichlet(np.ones(4), size=1).repeat(k, axis=0)
        p_hat = rng.dirichlet(np.full(4, rng.choice([0.1, 1.0, 10.0])), size=k)
        if trial % 4 == 0:
            p_hat[0] = p_gt[0]  # a perfect sampled member ties with the gold
        texts = [good if rng.random() < 0.7 or (trial % 4 == 0 and j == 0) else "broken" for j in range(k)]
        sampled = rewards.combined_reward(["grpo"], texts, p_gt=p_gt, p_hat=p_hat, classes=CLASSES, format_weight=0.1)
        table = grpo.with_gold(np.array([sampled]), rewards.gold_reward(["gold"], format_weight=0.1))
        adv = losses.group_advantages(torch.tensor(table, dtype=torch.float64), k + 1)
        assert float(adv[-1]) >= float(adv[:-1].max()) - 1e-9
        if trial % 4 != 0:
            assert float(adv[-1]) > float(adv[:-1].max())


def test_a_reward_list_that_could_beat_the_gold_is_refused(tiny):
    model, processor = tiny
    examples = make_examples(model, processor, 1)
    with pytest.raises(ValueError, match="gold would not rank first"):
        grpo.GRPOStrategy(model, processor, examples, CLASSES, make_cfg(rewards=["distribution", "format"]))
    grpo.GRPOStrategy(model, processor, examples, CLASSES, make_cfg(rewards=["distribution"]))  # max 0 < 0.1


def test_sampled_groups_rewards_and_gold_member(tiny, monkeypatch):
    """Hand-made read-outs: rewards are -KL + 0.1 * format per member, the gold is member K+1 with
    the top advantage in every group, and advantages are per group."""
    model, processor = tiny
    examples = make_examples(model, processor)
    rng = np.random.default_rng(1)
    p_hat = rng.dirichlet(np.ones(4), size=(3, 3))
    monkeypatch.setattr(grpo.rollout, "rollout", fake_rollout(p_hat))
    strategy = grpo.GRPOStrategy(model, processor, examples, CLASSES, make_cfg(grpo_k=3, grpo_kl_coef=0.0))
    batch = strategy.sample(model, [0, 1, 2], 0)
    assert len(batch.completions) == 3 * 4 and batch.old_logps is None
    for b in range(3):
        assert batch.completions[4 * b + 3] == examples[b].completion.ids  # the gold, teacher-forced
        r = -metrics.kl(np.repeat(P_GT[b:b + 1], 3, axis=0), p_hat[b]) + 0.1  # fake texts are well formed
        table = torch.tensor(np.append(r, 0.1)[None], dtype=torch.float32)
        torch.testing.assert_close(batch.advantages[4 * b: 4 * b + 4], losses.group_advantages(table, 4))
        assert int(batch.advantages[4 * b: 4 * b + 4].argmax()) == 3
    r_all = np.concatenate([-metrics.kl(np.repeat(P_GT[b:b + 1], 3, axis=0), p_hat[b]) + 0.1 for b in range(3)])
    assert batch.stats["reward_mean"] == pytest.approx(r_all.mean(), abs=1e-6)
    assert batch.stats["format_rate"] == 1.0


def test_audio_reaches_rollout_policy_old_policy_and_reference_forwards(family_model, monkeypatch):
    model, processor = family_model
    model = model_mod.apply_lora(model, make_cfg())
    perturb_lora(model)
    examples = make_examples(model, processor)
    with torch.no_grad():
        projected = [lm.project_audio(model, [ex.encoded.audio]) for ex in examples]
    placeholder = lm.base_model(model).get_input_embeddings().weight[
        processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")].detach()
    strategy = grpo.GRPOStrategy(model, processor, examples, CLASSES,  # all: the appended members' forward runs
                                 make_cfg(grpo_k=2, num_iterations=2, readout_grad="all"))
    seen, handle = record_forwards(model, monkeypatch, grpo)
    strategy.loss(model, [0, 1, 2], 0)
    handle.remove()
    kinds = [r["kind"] for r in seen]
    assert {"rollout", "policy", "old_policy", "reference"} <= set(kinds)
    check_audio_in(seen, projected, placeholder)
    ro = strategy._buffer[0].readout  # readout_grad all: members without their own slot are read out by one forward
    unread = [m // 3 for m in ro.members if ro.cols[m] is None]
    assert unread  # 48 tokens end before any answer tag here: the read-out forward runs
    read = [r for r in seen if r["kind"] == "policy" and r["past"] == 0][1]
    assert read["grad"] and [audio_owner(row, projected) for row in read["embeds"]] == unread
    for kind in ("policy", "old_policy", "reference"):  # each utterance's prompt once, its group continues it
        prefill = [r for r in seen if r["kind"] == kind and r["past"] == 0]
        tails = [r for r in seen if r["kind"] == kind and r["past"] > 0]
        assert len(prefill) == 1 + (kind == "policy" and bool(unread)) and len(tails) == 1
        assert [audio_owner(row, projected) for row in prefill[0]["embeds"]] == [0, 1, 2]
        assert tails[0]["embeds"].shape[0] == 9  # K = 2 samples + the gold, per utterance
        assert tails[0]["past"] == prefill[0]["embeds"].shape[1]  # on top of the whole prefill, audio included


def written_rollout(model, processor, encoded, classes, cfg, k=None, greedy=False, generator=None):
    """A stand-in for ``rollout.rollout`` with fixed texts: per utterance, the gold CoT answering each class
    in turn (a slot of its own), then the gold CoT cut before its answer tag (the tag appended); p_hat read
    out by the rollout's own no-grad path (:func:`ambinb.rollout.read_trajectories`)."""
    tok = processor.tokenizer
    groups = []
    for e in encoded:
        written = [prompt.completion_ids(tok, THINK, classes[j % len(classes)]).ids for j in range(k - 1)]
        cut = prompt.completion_ids(tok, THINK, classes[0])
        groups.append([rollout.make_trajectory(tok, e.utt_id, ids, "answer_close", classes) for ids in written]
                      + [rollout.make_trajectory(tok, e.utt_id, cut.ids[: cut.slot - 4], "budget", classes)])
    p_hat = rollout.read_trajectories(model, encoded, groups, prompt.class_ids(tok, classes), tok.pad_token_id)
    return rollout.GroupRollout(groups, p_hat.view(len(encoded), k, len(classes)), list(classes))


@pytest.mark.parametrize("members", ["all", "written"])
@pytest.mark.parametrize("strategy_name", ["grpo", "grpo_z"])
def test_the_readout_gradient_is_the_sampled_members_kl_at_their_own_slots(tiny, monkeypatch, strategy_name, members):
    """``readout_grad``: the loss adds KL(p_gt || p_hat) summed over the sampled members it names (not the gold;
    ``written``: only those that wrote their own tag) over the number of sampled members, p_hat read from the
    policy forward at a member's own slot or by a forward of its prefix when its tag was appended; it equals
    the KL of the rollout's own no-grad read-out, and it carries the gradient."""
    model, processor = tiny
    examples = make_examples(model, processor)
    monkeypatch.setattr(grpo.rollout, "rollout", written_rollout)
    strategy = grpo.GRPOStrategy(model, processor, examples, CLASSES, make_cfg(strategy_name, grpo_k=3,
                                                                             num_iterations=2, readout_grad=members))
    loss, st = strategy.loss(model, [0, 1, 2], 0)
    batch = strategy._buffer[0]
    ro = batch.readout
    appended = [False, False, True] * 3  # per utterance: two members wrote their tag, the third's was appended
    assert [ro.cols[m] is None for m in ro.members] == appended  # both read-out paths are used
    assert ro.written == [not a for a in appended]
    assert len(ro.members) == 9 and all(m % strategy.group < 3 for m in ro.members)  # the gold is not among them
    p_hat = written_rollout(model, processor, [ex.encoded for ex in examples], CLASSES, {}, k=3).p_hat
    kl = metrics.kl(np.repeat(P_GT, 3, axis=0), p_hat.reshape(9, -1).double().numpy())
    kept = np.ones(9) if members == "all" else 1.0 - np.asarray(appended, dtype=float)
    expected = float(np.sum(kl * kept) / 9)  # the appended members count zero under written
    assert st["readout_kl"] == pytest.approx(expected, rel=1e-4)
    model.zero_grad()
    by_forward = strategy._readout_loss(model, batch, None)  # every member by the prefix forward: the same value
    assert float(by_forward) == pytest.approx(expected, rel=1e-4)
    by_forward.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    off = grpo.GRPOStrategy(model, processor, examples, CLASSES, make_cfg(strategy_name, grpo_k=3,
                                                                        readout_grad="none"))
    assert off.readout_kl == 0.0 and "readout_kl" not in off.loss(model, [0, 1, 2], 0)[1]


def test_num_iterations_reuses_the_rollouts_with_the_old_policy_logprobs(tiny, monkeypatch):
    model, processor = tiny
    model = model_mod.apply_lora(model, make_cfg())
    examples = make_examples(model, processor)
    calls: list[int] = []
    rng = np.random.default_rng(2)
    monkeypatch.setattr(grpo.rollout, "rollout", fake_rollout(rng.dirichlet(np.ones(4), size=(2, 3)), calls))
    strategy = grpo.GRPOStrategy(model, processor, examples, CLASSES,
                                 make_cfg(grpo_k=3, num_iterations=2, grpo_kl_coef=0.04))
    loss0, st0 = strategy.loss(model, [0, 1], 0)
    assert st0["resampled"] == 1 and st0["ratio"] == pytest.approx(1.0, abs=1e-5) and st0["kl"] == 0.0
    old = strategy._buffer[0].old_logps.clone()
    perturb_lora(model, seed=3)  # an optimizer step stands in here
    loss1, st1 = strategy.loss(model, [2, 0], 1)  # the indices of a reuse step are ignored
    assert st1["resampled"] == 0 and calls == [2]
    assert torch.equal(strategy._buffer[0].old_logps, old)
    assert abs(st1["ratio"] - 1.0) > 1e-3 and st1["kl"] > 0 and st1["clip_fraction"] > 0
    _, st2 = strategy.loss(model, [1, 2], 2)  # a new block samples afresh
    assert st2["resampled"] == 1 and calls == [2, 2]


def test_the_buffer_follows_the_micro_batch_index_the_engine_passes(tiny, monkeypatch):
    """grad_accum 2, num_iterations 2: the reuse step of micro-batch 1 takes micro-batch 1's rollouts, even
    when it is the first call of its step (the index is passed, not inferred from the call order)."""
    model, processor = tiny
    model = model_mod.apply_lora(model, make_cfg())
    examples = make_examples(model, processor)
    calls: list[int] = []
    rng = np.random.default_rng(4)
    monkeypatch.setattr(grpo.rollout, "rollout", fake_rollout(rng.dirichlet(np.ones(4), size=(1, 2)), calls))
    strategy = grpo.GRPOStrategy(model, processor, examples, CLASSES,
                                 make_cfg(grpo_k=2, num_iterations=2, grpo_kl_coef=0.0))
    strategy.loss(model, [0], 0, micro=0)
    strategy.loss(model, [1], 0, micro=1)
    assert [strategy._buffer[m].prompts[0] for m in (0, 1)] == [examples[0].encoded.prompt_ids,
                                                               examples[1].encoded.prompt_ids]
    _, st = strategy.loss(model, [2], 1, micro=1)  # the reuse step, micro-batch 1 first
    assert st["resampled"] == 0 and calls == [1, 1]
    assert strategy._buffer[1].prompts[0] == examples[1].encoded.prompt_ids


def test_summary_compares_the_first_and_last_fifth_by_hand():
    history = [{"reward_mean": float(i), "js": 0.5 - 0.01 * i} for i in range(10)]  # fifth = 2 steps
    out = object.__new__(grpo.GRPOStrategy).summary(history)
    assert out["reward_mean_first_fifth"] == pytest.approx(0.5) and out["reward_mean_last_fifth"] == pytest.approx(8.5)
    assert out["js_first_fifth"] == pytest.approx(0.495) and out["js_last_fifth"] == pytest.approx(0.415)
    assert "kl_first_fifth" not in out  # keys the log lacks are left out


def test_one_iteration_has_no_old_policy_forward(tiny, monkeypatch):
    model, processor = tiny
    model = model_mod.apply_lora(model, make_cfg())
    examples = make_examples(model, processor, 2)
    strategy = grpo.GRPOStrategy(model, processor, examples, CLASSES, make_cfg("grpo", grpo_k=2, grpo_kl_coef=0.0))
    seen, handle = record_forwards(model, monkeypatch, grpo)
    loss, st = strategy.loss(model, [0, 1], 0)
    handle.remove()
    assert sorted({r["kind"] for r in seen}) == ["policy", "rollout"]  # no old policy, no reference (coef 0)
    assert st["ratio"] == pytest.approx(1.0) and st["clip_fraction"] == 0.0 and loss.requires_grad


@pytest.mark.parametrize(("family_model", "lora"), [("qwen2_audio", True), ("qwen2_audio", False),
                                                     ("qwen2_5_omni", True)], indirect=["family_model"])
def test_a_tiny_grpo_z_run_moves_the_trainable_weights_and_not_the_tower(family_model, tmp_path, lora, monkeypatch):
    model, processor = family_model
    cfg = make_cfg(grpo_k=2, lora=lora)
    model = model_mod.prepare_trainable(model, cfg)
    examples = make_examples(model, processor)
    strategy = grpo.GRPOStrategy(model, processor, examples, CLASSES, cfg)
    assert (strategy.reference.copy is None) == lora
    before = {n: p.detach().clone() for n, p in engine.trainable_parameters(model)}
    tower = {n: p.detach().clone() for n, p in lm.audio_tower(model).named_parameters()}
    tc = engine.TrainConfig.with_defaults(lr=1e-3, max_steps=2, batch_size=2, checkpoint_every=10)
    history = engine.train(model, strategy, tc, tmp_path, progress=False)
    assert len(history) == 2 and all(np.isfinite(row["loss"]) for row in history)
    moved = [n for n, p in engine.trainable_parameters(model) if not torch.equal(p.detach(), before[n])]
    assert len(moved) > len(before) // 2, f"only {len(moved)} of {len(before)} trainable tensors changed"
    for n, p in lm.audio_tower(model).named_parameters():
        assert torch.equal(p.detach(), tower[n]) and not p.requires_grad
    assert history[1]["kl"] > 0  # the policy left the reference after the first step
    if lora:
        assert_adapter_loads_back(model, processor, examples[0], tmp_path, monkeypatch)
    if not lora:  # the frozen reference copy stayed at the start
        for n, p in strategy.reference.copy.named_parameters():
            if n in before:
                torch.testing.assert_close(p, before[n])


def test_member_advantages_with_the_gold_in_or_out_of_the_baseline_by_hand():
    sampled, gold = np.array([[0.0, 1.0]]), np.array([2.0])
    plain = grpo.member_advantages(sampled, None)
    sd = float(np.sqrt(0.5)) + 1e-4  # mean 0.5, sample sd 0.7071
    torch.testing.assert_close(plain, torch.tensor([-0.5, 0.5]) / sd)
    inside = grpo.member_advantages(sampled, gold, True)  # group (0, 1, 2): mean 1, sd 1
    torch.testing.assert_close(inside, torch.tensor([-1.0, 0.0, 1.0]) / 1.0001)
    outside = grpo.member_advantages(sampled, gold, False)  # sampled among themselves; the gold against all
    torch.testing.assert_close(outside, torch.tensor([-0.5 / sd, 0.5 / sd, 1.0 / 1.0001]))
