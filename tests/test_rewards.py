"""ambinb.rewards: the format reward on good and broken outputs, Eq. 6 by hand, the registry, GRPO_z's gold."""

import math

import numpy as np
import pytest
import torch

from ambinb import cot, losses, metrics, rewards

CLASSES = ["anger", "happiness", "sadness", "neutral"]
AUDIO = {"Volume": "loud.", "Speed": "fast.", "Pitch": "high.", "Tone": "tense."}
KL_HAND = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # KL((.5,.5) || (.75,.25)) = 0.14384


def good(answer="anger", fmt=cot.AMBINB):
    think = cot.render_think(["loud"], "Curt words.", AUDIO, "Mostly anger.", fmt=fmt)
    return cot.render_output(think, answer, fmt=fmt)


BROKEN = {
    "no think block": cot.render_output("", "anger"),
    "think not closed": good().replace("</think>", ""),
    "two answers": good() + "<answer>anger</answer>",
    "not a class": good("rage"),
    "empty answer": good(""),
    "answer not closed": good().replace("</answer>", ""),
    "steps out of order": good().replace("Step 1 (text):", "Step X:").replace("Step 3 (synthesis):",
                                                                               "Step 1 (text):"),
    "step missing": good().replace("Step 2 (audio):", ""),
    "answer before think": "<answer>anger</answer>" + good().split("<answer>")[0],
    "other preset's tags": good(fmt=cot.AUDIO_REASONER),
    "empty": "",
}


def test_format_reward_good_outputs():
    outs = [good(), good("Sadness"), good("neutral") + "\n"]  # class names are matched case-insensitively
    assert rewards.format_reward(outs, classes=CLASSES) == [1.0, 1.0, 1.0]
    assert rewards.format_reward([good(fmt=cot.AUDIO_REASONER)], classes=CLASSES, fmt="audio_reasoner") == [1.0]
    assert rewards.format_reward([good(fmt=cot.AUDIO_REASONER)], classes=CLASSES, fmt=cot.AUDIO_REASONER) == [1.0]


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_format_reward_broken_outputs(name):
    assert rewards.format_reward([BROKEN[name]], classes=CLASSES) == [0.0]


def test_format_reward_errors():
    with pytest.raises(ValueError, match="prompt_preset"):
        rewards.format_reward([good()], classes=CLASSES, fmt="nope")
    with pytest.raises(TypeError, match="completion 1"):
        rewards.format_reward([good(), [{"role": "assistant", "content": good()}]], classes=CLASSES)


def test_distribution_reward_hand_worked():
    p_gt = [[0.5, 0.5], [0.2, 0.8]]
    p_hat = np.array([[0.75, 0.25], [0.2, 0.8]])
    out = rewards.distribution_reward(["a", "b"], p_gt=p_gt, p_hat=p_hat)
    assert out[0] == pytest.approx(-KL_HAND, rel=1e-8)
    assert out[1] == 0.0
    # a differentiable tensor (as read out during training) is accepted and gives the same numbers
    t = torch.tensor(p_hat, requires_grad=True)
    assert rewards.distribution_reward(["a", "b"], p_gt=p_gt, p_hat=t) == out
    np.testing.assert_allclose(out, -metrics.kl(p_gt, p_hat))


def test_distribution_reward_never_positive():
    # p_hat equal to p_gt up to float noise: KL may round a hair below 0; the reward is clipped at 0
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=200)
    q = p * (1 + rng.normal(0, 1e-13, p.shape))
    q /= q.sum(axis=1, keepdims=True)
    out = rewards.distribution_reward(["x"] * 200, p_gt=p, p_hat=q)
    assert max(out) <= 0.0


def test_distribution_reward_errors():
    with pytest.raises(ValueError, match="3 completions but p_gt has 2 rows"):
        rewards.distribution_reward(["a", "b", "c"], p_gt=[[1, 0], [0, 1]], p_hat=[[1, 0], [0, 1]])
    with pytest.raises(ValueError, match="p_hat: row 1 sums to"):
        rewards.distribution_reward(["a", "b"], p_gt=[[1, 0], [0, 1]], p_hat=[[1, 0], [0.5, 0.4]])


def test_grpo_reward_hand_worked():
    # r = -KL + 0.1 * format: well formed -> -0.14384 + 0.1 = -0.04384; broken -> -0.14384
    kw = {"p_gt": [[0.5, 0.5], [0.5, 0.5]], "p_hat": [[0.75, 0.25], [0.75, 0.25]], "classes": ["anger", "sadness"]}
    out = rewards.grpo_reward([good(), BROKEN["not a class"]], **kw)
    assert out == pytest.approx([-KL_HAND + 0.1, -KL_HAND], rel=1e-8)
    assert rewards.grpo_reward([good()], p_gt=[[0.5, 0.5]], p_hat=[[0.5, 0.5]], classes=["anger", "sadness"],
                               format_weight=0.3) == [pytest.approx(0.3)]
    combined = rewards.combined_reward({"distribution": 1.0, "format": 0.1}, [good(), BROKEN["not a class"]], **kw)
    assert combined == pytest.approx(out, rel=1e-12)
    assert rewards.get_reward("grpo") is rewards.grpo_reward


def test_gold_reward():
    assert rewards.gold_reward(["gold"]) == [0.1]
    assert rewards.gold_reward(["g1", "g2"], format_weight=0.25) == [0.25, 0.25]
    with pytest.raises(ValueError, match="format_weight"):
        rewards.gold_reward(["gold"], format_weight=-0.1)


def test_registry():
    assert set(rewards.REWARDS) == {"format", "distribution", "grpo", "gold"}
    for name, fn in rewards.REWARDS.items():
        assert rewards.get_reward(name) is fn
    with pytest.raises(ValueError, match=r"unknown reward 'acuracy': choose one of \['distribution', 'format'"):
        rewards.get_reward("acuracy")
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        rewards.combined_reward([("format", 1.0), ("nope", 1.0)], [good()], classes=CLASSES)
    with pytest.raises(ValueError, match="name at least one reward of the registry"):
        rewards.combined_reward({}, [good()])
    with pytest.raises(ValueError, match="name at least one reward of the registry"):
        rewards.combined_reward([], [good()])
    # a list of names weighs each by 1, as the params' ``rewards`` list does
    assert rewards.combined_reward(["format", "format"], [good(), "broken"], classes=CLASSES) == [2.0, 0.0]
    # extra keyword arguments meant for other rewards are ignored
    assert rewards.combined_reward([("format", 2.0)], [good()], classes=CLASSES, p_gt=None, beta=0.1) == [2.0]


def _group(rng, k, classes, perfect_share):
    """K sampled members: each perfect (p_hat = p_gt, well formed) with probability ``perfect_share``."""
    c = len(classes)
    p_gt = rng.dirichlet(np.ones(c) * rng.choice([0.2, 1.0, 5.0]))
    texts, p_hats = [], []
    for _ in range(k):
        if rng.random() < perfect_share:
            p_hats.append(p_gt.copy())
            texts.append(good(classes[0]))
        else:
            q = rng.dirichlet(np.ones(c) * rng.choice([0.1, 1.0, 10.0]))
            if rng.random() < 0.3:  # near-perfect: p_gt plus a tiny perturbation
                q = p_gt + rng.normal(0, 1e-12, c) * p_gt
                q /= q.sum()
            p_hats.append(q)
            texts.append(good(classes[0]) if rng.random() < 0.5 else BROKEN["two answers"])
    return texts, np.tile(p_gt, (k, 1)), np.array(p_hats)


@pytest.mark.parametrize("perfect_share", [0.0, 0.3, 1.0])
def test_gold_has_the_top_advantage_in_every_group(perfect_share):
    # GRPO_z: the gold joins each group of K samples as member K+1 with gold_reward. Over many random
    # groups its advantage is the group's maximum. Members that are themselves perfect (KL 0, format
    # 1) tie with it exactly; members with any lower reward rank strictly below it. With
    # perfect_share = 1 every member ties: all advantages are 0 and the gold shares the top.
    rng = np.random.default_rng(int(perfect_share * 10))
    for _ in range(300):
        k = int(rng.integers(2, 9))
        lam = float(rng.choice([0.0, 0.1, 0.5]))
        texts, p_gt, p_hat = _group(rng, k, CLASSES, perfect_share)
        r = rewards.grpo_reward(texts, p_gt=p_gt, p_hat=p_hat, classes=CLASSES, format_weight=lam)
        r = r + rewards.gold_reward(["<gold>"], format_weight=lam)
        adv = losses.group_advantages(torch.tensor(r, dtype=torch.float64), k + 1)
        gold = adv[-1]
        assert gold == adv.max()
        for i in range(k):
            if r[i] == r[-1]:
                assert adv[i] == gold  # a perfect member ties for the top
            elif r[-1] - r[i] > 1e-9:
                assert adv[i] < gold
        if perfect_share == 1.0:
            assert r == [lam] * (k + 1) and (adv == 0).all()
