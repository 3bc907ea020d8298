"""The on-policy methods learn: a few dozen steps of DPO and of GRPO_z on a tiny task make what the policy
*samples* better (DPO's rollout JS falls, GRPO_z's mean sampled reward rises, first fifth of the steps
against the last), not only their surrogate losses.

The task: three utterances (distinct tones and transcripts, hand-made annotator distributions) that
the stand-in trains on again and again, with short completions and a full fine-tune at lr 1e-3.
Learning is possible there, so a policy that does not improve its samples is broken. The mutation
tests (``-m slow``) break the losses the ways this check must catch, a flipped GRPO advantage and
DPO's chosen and rejected swapped, and assert that the check then fails (it does: GRPO_z's reward
falls by about 1, DPO's rollout JS rises by about 0.03, where unbroken DPO improves by 0.10 to 0.16
over seeds 0-3).

GRPO_z does NOT pass this check reliably (a strict xfail, :data:`GRPO_Z_DOES_NOT_LEARN_HERE`): its
+0.12 at seed 0 was one lucky draw (seeds 1-3: -0.15, -0.02, +0.02; 60 steps: worse at every seed),
found when a 1e-7 change of the log-prob arithmetic flipped seed 0 to -0.08 (the marker's reason has
every number). Its mutation test is skipped until GRPO_z learns here; issue 24 stays open on it.

An unmasked prompt is no such mutation: the prompt is the same for every member of a GRPO group and
for both sides of a DPO pair, so its terms cancel in group-centred advantages and in the DPO margin,
and Adam undoes the dilution of the per-token mean. Measured here it learned as well as the masked
loss (+0.127 against +0.121). What the mask must cover is checked directly instead:
``test_dpo.py::test_completion_logprobs_equal_a_full_forward`` compares every scored position with a
full forward, which a prompt position in the mask would fail.

DPO here uses the paper's gold positive (``dpo_positive: gold``): the loss path is the same for both
positives, and on three utterances from the base stand-in ``best_rollout`` (whose rollouts must reach
the answer, 160 tokens) improved its rollout JS by 0.011 in one setting and not in two others (30 steps
at 3e-3: +0.045; 60 at 1e-3: +0.012), so it makes no reliable check here. Its samples improve on the toy
validation fold from the SFT start, where the report uses it (``params/models/tiny/dpo.yaml``).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest_model import tiny, tiny_dir
from test_dpo import make_examples

from ambinb import config, engine, learning, losses
from ambinb import model as model_mod
from ambinb.strategies import dpo, grpo

FIXTURES = (tiny, tiny_dir)  # conftest_model's, used by name below
CLASSES = ["anger", "happiness", "sadness", "neutral"]
STEPS = 30
MARGIN = {"dpo": 0.03, "grpo_z": 0.05}  # the least improvement, first fifth -> last fifth, that counts
LR = {"dpo": 1e-3, "grpo_z": 1e-3}


def train(model, processor, strategy_name: str, tmp_path, steps: int = STEPS, **over) -> list[dict]:
    """``steps`` optimizer steps of ``strategy_name`` on the three-utterance task; the training log."""
    cfg = config.resolve(dataset="toy", strategy=strategy_name, overrides={
        "max_new_tokens": 40, "readout_batch_size": 0, "seed": 0, "lora": False, "grpo_k": 4, "dpo_rollouts": 4,
        "tau": 0.0, "dpo_positive": "gold", **over})
    model = model_mod.prepare_trainable(model, cfg)
    examples = make_examples(model, processor)
    cls = grpo.GRPOStrategy if strategy_name.startswith("grpo") else dpo.DPOStrategy
    strategy = cls(model, processor, examples, CLASSES, cfg)
    tc = engine.TrainConfig.with_defaults(lr=LR[strategy_name], max_steps=steps, batch_size=3, checkpoint_every=10_000,
                                          seed=0)
    return engine.train(model, strategy, tc, tmp_path, progress=False)


def learned(history: list[dict], strategy_name: str) -> learning.Trend:
    return learning.sampled_trend(history, "dpo" if strategy_name.startswith("dpo") else "grpo")


def improvement(tr: learning.Trend) -> float:
    return tr.change if tr.higher_is_better else -tr.change


def test_fifths_smoothing_and_the_verdict_by_hand():
    assert learning.fifths(np.arange(10.0)) == (0.5, 8.5)
    assert learning.fifths(np.array([3.0])) == (3.0, 3.0)
    np.testing.assert_allclose(learning.smooth([0, 2, 4, 6], 2), [0, 1, 3, 5])
    history = [{"step": i, "rollout_js": v} for i, v in enumerate([0.5, 0.4, 0.3, 0.2, 0.1])]
    tr = learning.sampled_trend(history, "dpo")
    assert (tr.first, tr.last, tr.improved) == (0.5, 0.1, True)
    assert tr.sentence() == "rollout_js 0.500 -> 0.100 (-0.400): improved"
    rewards = [{"step": i, "reward_mean": v} for i, v in enumerate([-1.0, -1.2, -1.5])]
    assert not learning.sampled_trend(rewards, "grpo").improved  # the reward fell
    with pytest.raises(KeyError, match="trains on no samples"):
        learning.sampled_trend(history, "sft")


def test_the_sampled_curve_states_the_change(tmp_path):
    from ambinb import plots

    history = [{"step": i, "reward_mean": -1.0 + 0.01 * i, "js": 0.4 - 0.002 * i} for i in range(50)]
    fig = plots.sampled_curve(history, (("reward_mean", True), ("js", False)))
    titles = [ax.get_title() for ax in fig.axes]
    # first fifth: steps 0-9 (mean step 4.5), last: 40-49 (44.5)
    assert titles[0].startswith("reward_mean: -0.955 -> -0.555 (+0.400)") and "; improved" in titles[0]
    assert titles[1].startswith("js: 0.391 -> 0.311 (-0.080)") and "lower is better; improved" in titles[1]


GRPO_Z_DOES_NOT_LEARN_HERE = pytest.mark.xfail(strict=True, reason=(
    "GRPO_z from the base stand-in on this three-utterance task does not reliably improve its sampled reward "
    "(issue 24 open): first -> last fifth over seeds 0-3, 30 steps: -0.080, -0.111, +0.041, +0.012 (TRL's "
    "logsumexp log-probs: +0.121, -0.150, -0.019, +0.022; 60 steps: -0.205, -0.148, -0.029, -0.334). Seed 0's "
    "+0.121 passed by luck; a 1e-7 change of the log-probs flipped it. DPO here: +0.10 to +0.16 over seeds 0-3."))


@pytest.mark.parametrize("strategy_name", ["dpo", pytest.param("grpo_z", marks=GRPO_Z_DOES_NOT_LEARN_HERE)])
def test_a_few_dozen_steps_improve_what_the_policy_samples(tiny, tmp_path, strategy_name):
    model, processor = tiny
    history = train(model, processor, strategy_name, tmp_path)
    tr = learned(history, strategy_name)
    assert improvement(tr) > MARGIN[strategy_name], tr.sentence()


def flip_advantages(monkeypatch):
    real = losses.group_advantages
    monkeypatch.setattr(losses, "group_advantages", lambda *a, **kw: -real(*a, **kw))


def swap_preferences(monkeypatch):
    real = losses.dpo_loss
    monkeypatch.setattr(losses, "dpo_loss", lambda pol_c, pol_r, ref_c, ref_r, *a, **kw:
                        real(pol_r, pol_c, ref_r, ref_c, *a, **kw))


MUTATIONS = {("grpo_z", "flipped advantage sign"): flip_advantages,
             ("dpo", "chosen and rejected swapped"): swap_preferences}
# a mutation test shows something only where the unmutated check passes
UNGUARDED = {"grpo_z": pytest.mark.skip(reason="the unmutated GRPO_z check fails too (GRPO_Z_DOES_NOT_LEARN_HERE)")}


@pytest.mark.slow
@pytest.mark.parametrize(("strategy_name", "mutation"),
                         [pytest.param(s, m, id=f"{s}: {m}", marks=UNGUARDED.get(s, ())) for s, m in MUTATIONS])
def test_the_learning_check_fails_under_a_mutation(tiny, tmp_path, monkeypatch, strategy_name, mutation):
    MUTATIONS[(strategy_name, mutation)](monkeypatch)
    model, processor = tiny
    history = train(model, processor, strategy_name, tmp_path)
    tr = learned(history, strategy_name)
    assert not improvement(tr) > MARGIN[strategy_name], f"the check passed under '{mutation}': {tr.sentence()}"
    assert np.isfinite(tr.first) and np.isfinite(tr.last)
