"""The on-policy methods learn: a few dozen steps of DPO and of GRPO_z on a tiny task make what the policy
*samples* better (DPO's rollout JS falls, GRPO_z's mean sampled reward rises, first fifth of the steps
against the last), not only their surrogate losses.

The task: three utterances (distinct tones and transcripts, hand-made annotator distributions) that
the stand-in trains on again and again, with a full fine-tune at lr 1e-3. GRPO_z's rollouts may run to
72 tokens, past the gold CoT's answer (66 tokens): with the earlier budget of 40 no rollout could ever
write an answer, which is why the GRPO_z check of before passed or failed by chance. Learning is
possible there, so a policy that does not improve its samples is broken.

GRPO_z is checked twice, because its gradient has two halves (``readout_grad``, the method chapter):
- with Eq. 6's reward (``[grpo]``) its sampled reward rises (seeds 0-3 measured with ``readout_grad: all``:
  +0.35, +0.44, +0.44, +0.48; with ``written``, the default: +0.31, +0.50 at seeds 0-1). Without the reward's
  own gradient through p_hat (``readout_grad: none``, Eq. 7 as printed) it
  falls at every seed (-0.25, -0.03, -0.20, -0.03): the mutation test drops that term and asserts the
  check then fails;
- with a reward of the text alone (``[format]``, ``format_weight`` 1 so the gold stays on top) only the
  policy-gradient half acts: the format rate rises (+0.38, +0.38, +0.22, +0.28), and with the advantage
  sign flipped it stays at 0 at every seed: the mutation test flips it. (With ``[grpo]`` a flipped sign
  does not show: the read-out gradient alone still raises that reward, +0.36 and +0.35 measured.)

The ``[grpo]`` check runs at the paper's lambda3 (``format_weight: 0.1``), where the numbers above were
measured; the toy report's is 1 (``params/models/tiny/grpo.yaml``).

DPO's mutation swaps chosen and rejected; its rollout JS then rises by about 0.03 (+0.029, +0.011 at
seeds 0-1), where unbroken DPO improves by 0.10 to 0.16 over seeds 0-3. The check runs at the paper's
lambda1 (``dpo_kl_weight: 0.1``), not the toy report's 1 (``params/models/tiny/dpo.yaml``): at lambda1 = 1
the read-out KL alone improves the samples, and the swapped pairs still did (by 0.078 and 0.130, against
0.123 and 0.131 unbroken), so that check could not see the preference term.

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
# per check: strategy, overrides, the least improvement (first fifth -> last fifth) that counts
CHECKS = {"dpo": ("dpo", {"max_new_tokens": 40, "dpo_kl_weight": 0.1}, 0.03),
          "grpo_z": ("grpo_z", {"max_new_tokens": 72, "format_weight": 0.1}, 0.05),
          "grpo_z, format reward": ("grpo_z", {"max_new_tokens": 72, "rewards": ["format"], "format_weight": 1.0},
                                    0.05)}
LR = 1e-3


def train(model, processor, strategy_name: str, tmp_path, steps: int = STEPS, **over) -> list[dict]:
    """``steps`` optimizer steps of ``strategy_name`` on the three-utterance task; the training log."""
    cfg = config.resolve(dataset="toy", strategy=strategy_name, overrides={
        "readout_batch_size": 0, "seed": 0, "lora": False, "grpo_k": 4, "dpo_rollouts": 4,
        "tau": 0.0, "dpo_positive": "gold", **over})
    model = model_mod.prepare_trainable(model, cfg)
    examples = make_examples(model, processor)
    cls = grpo.GRPOStrategy if strategy_name.startswith("grpo") else dpo.DPOStrategy
    strategy = cls(model, processor, examples, CLASSES, cfg)
    tc = engine.TrainConfig.with_defaults(lr=LR, max_steps=steps, batch_size=3, checkpoint_every=10_000, seed=0)
    return engine.train(model, strategy, tc, tmp_path, progress=False)


def run_check(tiny, tmp_path, check: str, **over) -> tuple[learning.Trend, float]:
    """The trend of check ``check``'s sampled quantity and the margin it must beat."""
    strategy_name, base, margin = CHECKS[check]
    model, processor = tiny
    history = train(model, processor, strategy_name, tmp_path, **{**base, **over})
    return learned(history, strategy_name), margin


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


@pytest.mark.parametrize("check", list(CHECKS))
def test_a_few_dozen_steps_improve_what_the_policy_samples(tiny, tmp_path, check):
    tr, margin = run_check(tiny, tmp_path, check)
    assert improvement(tr) > margin, tr.sentence()


def flip_advantages(monkeypatch):
    real = losses.group_advantages
    monkeypatch.setattr(losses, "group_advantages", lambda *a, **kw: -real(*a, **kw))


def swap_preferences(monkeypatch):
    real = losses.dpo_loss
    monkeypatch.setattr(losses, "dpo_loss", lambda pol_c, pol_r, ref_c, ref_r, *a, **kw:
                        real(pol_r, pol_c, ref_r, ref_c, *a, **kw))


# per check, a mutation (a monkeypatch, or overrides that drop a term) the check must catch
MUTATIONS = {("dpo", "chosen and rejected swapped"): swap_preferences,
             ("grpo_z", "read-out gradient dropped"): {"readout_grad": "none"},
             ("grpo_z, format reward", "flipped advantage sign"): flip_advantages}


@pytest.mark.slow
@pytest.mark.parametrize(("check", "mutation"), [pytest.param(c, m, id=f"{c}: {m}") for c, m in MUTATIONS])
def test_the_learning_check_fails_under_a_mutation(tiny, tmp_path, monkeypatch, check, mutation):
    broken = MUTATIONS[(check, mutation)]
    if callable(broken):
        broken(monkeypatch)
    tr, margin = run_check(tiny, tmp_path, check, **({} if callable(broken) else broken))
    assert not improvement(tr) > margin, f"the check passed under '{mutation}': {tr.sentence()}"
    assert np.isfinite(tr.first) and np.isfinite(tr.last)
