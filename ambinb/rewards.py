"""GRPO rewards as pure functions, chosen by name (Eq. 6, the format reward and GRPO_z's gold reward).

Every reward has the open-r1 signature ``reward(completions: list[str], **kw) -> list[float]``,
one value per completion, and ignores keyword arguments it does not use, so the GRPO strategy passes
one shared set (``classes``, ``p_gt``, ``p_hat``, ``format_weight``, ``fmt``) to whichever the params
name. ``p_gt[i]`` and
``p_hat[i]`` belong to ``completions[i]``: the gold distribution of its utterance, and the
distribution read out at its answer slot.

Registry (:data:`REWARDS`): ``format``, ``distribution``, ``grpo`` (= distribution + lambda3 format,
Eq. 6, lambda3 = ``format_weight``) and ``gold`` (the reward GRPO_z gives its injected gold CoT).
:func:`combined_reward` sums the rewards the params' ``rewards`` list names;
:class:`ambinb.strategies.grpo.GRPOStrategy` scores its groups with it.

Worked example (two classes, lambda3 = 0.1): p_gt = (0.5, 0.5), p_hat = (0.75, 0.25), a
well-formed completion -> KL = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25) = 0.1438, reward
-0.1438 + 0.1 * 1 = -0.0438; the same with a broken format -> -0.1438; the gold -> 0.1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from ambinb import cot, metrics

RewardFn = Callable[..., list[float]]
FORMAT_WEIGHT = 0.1  # lambda3 of Eq. 6


def _as_array(x: Any, name: str) -> np.ndarray:
    """A (N, C) float64 array from a list, an array or a (possibly grad-carrying) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return metrics.check_distributions(np.asarray(x, dtype=np.float64), name)


def _check_strings(completions: list[str]) -> None:
    for i, c in enumerate(completions):
        if not isinstance(c, str):
            raise TypeError(f"completion {i} is a {type(c).__name__}, not a str")


def format_reward(completions: list[str], classes: list[str], fmt: str | cot.OutputFormat = "ambinb",
                  **kw: Any) -> list[float]:
    """1.0 for each completion that passes ``ambinb.cot.format_ok`` (the format reward of Eq. 6), else 0.0.

    Args:
        completions: the generated texts (think block and answer, no prompt).
        classes: the valid class names for the answer slot.
        fmt: an output format preset name (``ambinb``, ``audio_reasoner``) or an ``OutputFormat``.
    """
    _check_strings(completions)
    form = cot.get_format(fmt) if isinstance(fmt, str) else fmt
    return [1.0 if cot.format_ok(c, classes, form) else 0.0 for c in completions]


def distribution_reward(completions: list[str], p_gt: Any, p_hat: Any, **kw: Any) -> list[float]:
    """-KL(p_gt || p_hat) per completion, by ``ambinb.metrics.kl`` (Eq. 6, first term).

    KL is non-negative; a value a rounding error below 0 (p_hat equal to p_gt up to float noise)
    is taken as 0, so no reward ever exceeds the ideal 0 and the gold of GRPO_z stays on top.

    Args:
        completions: N texts (only their number is used).
        p_gt: (N, C) gold distributions, row i for completion i.
        p_hat: (N, C) read-out distributions.
    """
    p, q = _as_array(p_gt, "p_gt"), _as_array(p_hat, "p_hat")
    if p.shape[0] != len(completions):
        raise ValueError(f"distribution_reward: {len(completions)} completions but p_gt has {p.shape[0]} rows")
    kl = np.maximum(metrics.kl(p, q), 0.0)
    return [float(-v) for v in kl]


def grpo_reward(completions: list[str], p_gt: Any, p_hat: Any, classes: list[str],
                format_weight: float = FORMAT_WEIGHT, fmt: str | cot.OutputFormat = "ambinb",
                **kw: Any) -> list[float]:
    """r = -KL(p_gt || p_hat) + lambda3 * format (Eq. 6), lambda3 = ``format_weight``."""
    dist = distribution_reward(completions, p_gt, p_hat)
    form = format_reward(completions, classes, fmt)
    return [d + format_weight * f for d, f in zip(dist, form)]


def gold_reward(completions: list[str], format_weight: float = FORMAT_WEIGHT, **kw: Any) -> list[float]:
    """The reward of GRPO_z's injected gold CoT: the highest Eq. 6 can give, ``lambda3``.

    Eq. 6 is at most 0 + lambda3 * 1 (KL >= 0, format <= 1), and the gold gets exactly that
    without a read-out: its KL term is defined as 0 and its format as 1. In its group it therefore
    has the highest reward, and by :func:`ambinb.losses.group_advantages` the highest advantage. A
    sampled member that is itself perfect (KL 0, format 1) ties with the gold: both get the same
    top advantage, and no member can exceed it.

    Raises:
        ValueError: for a negative ``format_weight`` (the format bonus would become a penalty, and
            format 1 would no longer be the best attainable).
    """
    if format_weight < 0:
        raise ValueError(f"gold_reward: format_weight must be >= 0, got {format_weight}")
    return [float(format_weight)] * len(completions)


REWARDS: dict[str, RewardFn] = {
    "format": format_reward,
    "distribution": distribution_reward,
    "grpo": grpo_reward,
    "gold": gold_reward,
}


READOUT_KL = ("distribution", "grpo")  # rewards equal to -KL(p_gt || p_hat) plus terms of the text alone


def readout_kl_weight(rewards: Iterable[str]) -> float:
    """How many times -KL(p_gt || p_hat) stands in the summed ``rewards`` (each with weight 1): the weight of
    the reward's own gradient through p_hat (GRPO's ``readout_grad``). Example: ``[grpo]`` -> 1.0,
    ``[format]`` -> 0.0 (a reward of the text alone has none)."""
    names = [str(n) for n in rewards]
    for name in names:
        get_reward(name)
    return float(sum(n in READOUT_KL for n in names))


def get_reward(name: str) -> RewardFn:
    """The reward function registered as ``name``.

    Raises:
        ValueError: naming the unknown reward and listing the registered ones.
    """
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}: choose one of {sorted(REWARDS)}")
    return REWARDS[name]


def combined_reward(rewards: Mapping[str, float] | Iterable[str | tuple[str, float]], completions: list[str],
                    **kw: Any) -> list[float]:
    """Weighted sum of registered rewards, ``sum_j w_j * reward_j(completions, **kw)``: GRPO's reward.

    Args:
        rewards: reward names (weight 1 each, as the params' ``rewards`` list gives them), a mapping
            name -> weight, or (name, weight) pairs.
        completions: the texts to score; ``kw`` goes to every reward.

    Example: ``combined_reward(["grpo"], texts, p_gt=..., p_hat=..., classes=..., format_weight=0.1)`` is
    Eq. 6, and so is ``combined_reward({"distribution": 1.0, "format": 0.1}, texts, ...)``.

    Raises:
        ValueError: no reward named, an unknown name, or a reward that returns the wrong number of values.
    """
    if isinstance(rewards, Mapping):
        pairs = [(str(n), float(w)) for n, w in rewards.items()]
    else:
        pairs = [(r, 1.0) if isinstance(r, str) else (str(r[0]), float(r[1])) for r in rewards]
    if not pairs:
        raise ValueError("rewards: name at least one reward of the registry")
    total = [0.0] * len(completions)
    for name, weight in pairs:
        values = get_reward(name)(completions, **kw)
        if len(values) != len(completions):
            raise ValueError(f"reward {name!r} returned {len(values)} values for {len(completions)} completions")
        total = [t + weight * float(v) for t, v in zip(total, values)]
    return total
