"""The training losses of SFT, DPO and GRPO as pure tensor functions (Eq. 2-7 of the paper).

Nothing here touches a model: the engine runs the forwards and hands these functions log-probs,
logits and masks. Shapes: B sequences, T positions, V vocabulary, C classes. Everything that
takes a log or an exponential works in float32 (float64 stays float64), whatever the model's
dtype. The conventions are the paper's: forward KL(p_gt || p_hat) with eps = 1e-10 smoothing,
sigmoid DPO with beta = 0.1, GRPO with clip eps = 0.2, a k3 KL to the reference with coefficient
0.04, advantages (r - mean) / (std + 1e-4) per group.

Where TRL (the installed ``trl``) implements the same thing, the function says which TRL code it
matches, and ``tests/test_losses.py`` checks the numbers against it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

EPS = 1e-10  # the paper's smoothing of p_hat, the same as ambinb.metrics.EPS
ADV_EPS = 1e-4  # GRPO advantages: (r - mean) / (std + 1e-4)
IGNORE_INDEX = -100  # label value of positions without a target (Hugging Face's convention)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32, or float64 when ``x`` already is."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _row_log_softmax_gather(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[..., index], one batch row at a time, each row in float32 (float64 stays float64).

    The same values as TRL's ``selective_log_softmax`` (trl/trainer/utils.py; ``tests/test_losses.py``
    compares them), which takes ``gather(logits) - logsumexp(logits)``. Both keep one (T, V) tensor per
    row for the backward pass (TRL the logits, this the log-softmax), but the fused log-softmax kernel
    and its backward ran 1.6-1.9x faster than logsumexp's separate max, subtract, exp and sum on a
    2-core CPU (``bench/logprobs.py``).
    """
    rows = [torch.log_softmax(row.to(_compute_dtype(row)), dim=-1).gather(-1, idx.unsqueeze(-1)).squeeze(-1)
            for row, idx in zip(logits, index)]
    return torch.stack(rows)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of each label token under the logits at the same position.

    No shift happens here: ``logits[:, t]`` must already be the prediction for ``labels[:, t]``
    (for a causal LM: ``logits[:, :-1]`` with ``input_ids[:, 1:]``). Labels below 0 (``-100``,
    positions without a target) get log-prob 0.

    One batch row at a time (:func:`_row_log_softmax_gather`, equal to TRL's ``selective_log_softmax``):
    logits in half precision are cast to float32 one row at a time, so the result is float32 without a
    float32 copy of the whole (B, T, V) tensor (TRL itself would compute bf16 logits in bf16).

    Args:
        logits: (B, T, V), any float dtype.
        labels: (B, T) token ids, or -100 where there is no target.

    Returns:
        (B, T) float32 (float64 for float64 logits), differentiable with respect to ``logits``.

    Example: logits row ``[0, 0, ln 2]`` (probabilities 1/4, 1/4, 1/2) and label 2 -> ``ln(1/2) = -0.693``.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"token_logprobs: logits (B, T, V) and labels (B, T) expected, got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    has_target = labels >= 0
    safe = torch.where(has_target, labels, torch.zeros_like(labels))
    return _row_log_softmax_gather(logits, safe).masked_fill(~has_target, 0.0)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (all of them, or along ``dim``).

    An empty mask (no position counted) gives 0, not NaN, as TRL's ``clamp(min=1.0)`` does.

    Args:
        x: any shape.
        mask: the same shape as ``x``, 0/1 (bool, int or float).
        dim: the dimension to average over; None averages over every element.

    Example: ``masked_mean([[1., 2., 9.]], [[1, 1, 0]])`` -> ``1.5``.
    """
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1.0)
    return (x * m).sum(dim=dim) / m.sum(dim=dim).clamp(min=1.0)


def ce_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-mean negative log-likelihood over the positions where ``mask`` is 1 (L_CE of Eq. 3-4).

    The mean is over all counted tokens of the batch together (as Hugging Face's CE with
    ``ignore_index``), so long targets weigh more than short ones. Prompt and audio positions
    carry mask 0. No shift happens here; see :func:`token_logprobs`.

    Args:
        logits: (B, T, V), already aligned with ``labels``.
        labels: (B, T) token ids (-100 allowed where ``mask`` is 0).
        mask: (B, T) 1 on target tokens.

    Returns:
        A scalar, float32.

    Example: two counted tokens with probabilities 1/2 and 1/4 -> ``(ln 2 + ln 4) / 2 = 1.040``.
    """
    if mask.shape != labels.shape:
        raise ValueError(f"ce_loss: mask {tuple(mask.shape)} and labels {tuple(labels.shape)} differ")
    if bool(((labels < 0) & (mask != 0)).any()):
        raise ValueError("ce_loss: a position with mask 1 has a negative label (no target)")
    return -masked_mean(token_logprobs(logits, labels), mask)


def sequence_logprob(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of the completion tokens' log-probs per sequence: log pi(y | x), (B, T) -> (B,).

    This is what DPO compares (Eq. 5), as TRL's DPOTrainer does ("sum over sequence length").
    """
    return (token_logps * mask.to(token_logps.dtype)).sum(dim=-1)


def class_log_probs(class_seq_logprobs: torch.Tensor) -> torch.Tensor:
    """log p_hat: log-softmax over classes of each class name's whole-sequence log-likelihood.

    The read-out: p_hat = softmax_j(s_j), s_j = log p(name_j | prefix); this returns its log
    (the form :func:`kl_dist_loss` wants), in float32.

    Args:
        class_seq_logprobs: (B, C), e.g. from ``ambinb.readout.class_log_likelihoods``.

    Returns:
        (B, C) float32; ``exp`` of each row sums to 1.

    Example: ``s = [ln 3, ln 1]`` -> ``log p_hat = [ln 0.75, ln 0.25]``.
    """
    return torch.log_softmax(class_seq_logprobs.to(_compute_dtype(class_seq_logprobs)), dim=-1)


def kl_dist_loss(p_gt: torch.Tensor, log_p_hat: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Mean over the batch of KL(p_gt || p_hat), the distribution loss of Eq. 2 (forward KL).

    Both sides are smoothed exactly as ``ambinb.metrics.kl`` does (add ``eps``, renormalise), so
    the loss equals the evaluation metric on the same numbers. p_hat's smoothing is done in log
    space: ``log(q + eps) = logaddexp(log q, log eps)``, which stays finite and differentiable when
    q underflows. The gradient with respect to ``log_p_hat`` is that of the plain KL up to O(eps).

    Args:
        p_gt: (B, C) target distributions (rows sum to 1; not differentiated).
        log_p_hat: (B, C) log p_hat, e.g. :func:`class_log_probs` (differentiable).
        eps: smoothing mass per class.

    Returns:
        A scalar, float32 (float64 for float64 input).

    Example: p_gt = (1/2, 1/2), p_hat = (3/4, 1/4) -> ``0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25) = 0.1438``.
    """
    if p_gt.shape != log_p_hat.shape or p_gt.dim() != 2:
        raise ValueError(f"kl_dist_loss: p_gt and log_p_hat must both be (B, C), got {tuple(p_gt.shape)} and "
                         f"{tuple(log_p_hat.shape)}")
    dtype = _compute_dtype(log_p_hat)
    p = p_gt.to(device=log_p_hat.device, dtype=dtype) + eps
    p = p / p.sum(dim=-1, keepdim=True)
    log_q = torch.logaddexp(log_p_hat.to(dtype), torch.tensor(math.log(eps), dtype=dtype, device=log_p_hat.device))
    log_q = log_q - torch.logsumexp(log_q, dim=-1, keepdim=True)
    per_row = (p * (torch.log(p) - log_q)).sum(dim=-1)  # Eq. 2: sum_i p_gt,i log(p_gt,i / p_hat,i)
    return per_row.mean()


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid DPO (Eq. 5) per pair, with the implicit rewards.

    ``losses = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))``; the rewards are
    ``beta * (pi - ref)``, detached. This is TRL's DPOTrainer with ``loss_type="sigmoid"``,
    ``f_divergence_type="reverse_kl"`` (trl/trainer/dpo_trainer.py, ``DPOTrainer._compute_loss``),
    except that TRL returns only the batch mean.

    Args:
        policy_chosen_logps, policy_rejected_logps: (B,) sequence log-probs under the policy
            (:func:`sequence_logprob`).
        ref_chosen_logps, ref_rejected_logps: (B,) the same under the reference (adapter disabled).
        beta: the DPO temperature (the paper: 0.1).

    Returns:
        ``(losses (B,), chosen_rewards (B,), rejected_rewards (B,))``; average ``losses`` for the loss.

    Example: policy (-10, -12), reference (-11, -11), beta 0.1: logits = 1 - (-1) = 2,
    loss = -log sigmoid(0.2) = 0.598, rewards (0.1, -0.1).
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    logits = chosen_logratios - rejected_logratios
    losses = -F.logsigmoid(beta * logits)  # Eq. 5
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def dpo_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, float]:
    """Mean implicit reward ``margin`` (chosen - rejected) and ``accuracy`` (share with chosen > rejected).

    The same as TRL's logged ``rewards/margins`` and ``rewards/accuracies`` (strict ``>``: a tie is
    not correct). An empty batch gives NaN for both.
    """
    if chosen_rewards.numel() == 0:
        return {"margin": float("nan"), "accuracy": float("nan")}
    diff = (chosen_rewards - rejected_rewards).detach().float()
    return {"margin": float(diff.mean()), "accuracy": float((diff > 0).float().mean())}


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = ADV_EPS) -> torch.Tensor:
    """GRPO advantages: (r - mean) / (std + eps) within each group of ``group_size`` (Eq. 7).

    The std is the unbiased sample std (divisor K - 1), as TRL's GRPOTrainer (``nanstd`` in
    trl/trainer/utils.py, ``scale_rewards="group"``). Within a group the advantage is a strictly
    increasing function of the reward (std + eps > 0), so the member with the highest reward has
    the highest advantage, and equal rewards get bit-identical advantages; a group whose rewards are
    all equal gets advantage exactly 0 everywhere.

    Args:
        rewards: (N * K,) with each group's K members adjacent, or (N, K).
        group_size: K, at least 2.
        eps: added to the std (the paper: 1e-4).

    Returns:
        (N * K,) float32 (float64 for float64 input).

    Example: one group (1, 2, 3): mean 2, std 1 -> ``(-1, 0, 1) / 1.0001``.
    """
    if group_size < 2:
        raise ValueError(f"group_advantages: group_size must be at least 2 (got {group_size}): one member has no "
                         "baseline")
    r = torch.as_tensor(rewards)
    r = r.to(_compute_dtype(r) if r.is_floating_point() else torch.float32)
    if r.numel() % group_size != 0 or (r.dim() == 2 and r.shape[1] != group_size) or r.dim() > 2:
        raise ValueError(f"group_advantages: rewards of shape {tuple(r.shape)} do not split into groups of "
                         f"{group_size}")
    # shifting each group by its first member changes neither the mean difference nor the std, but a
    # group of equal rewards becomes exact zeros, so its advantages are exactly 0 (not rounding / eps)
    grouped = r.reshape(-1, group_size)
    grouped = grouped - grouped[:, :1]
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True, correction=1)
    return ((grouped - mean) / (std + eps)).reshape(-1)


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref): ``exp(ref - logp) - (ref - logp) - 1`` (always >= 0).

    Example: ref - logp = ln 2 -> ``2 - 0.6931 - 1 = 0.3069``; equal log-probs -> 0.
    """
    d = ref_logps - logps
    return torch.exp(d) - d - 1.0


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor | None, ref_logps: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, clip_eps: float = 0.2, kl_coef: float = 0.04
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO loss (Eq. 7): clipped ratio objective, per-token mean per sequence, minus a k3 KL.

    Per token t of sequence k, with ratio ``rho = exp(logp - old_logp)``::

        J_kt = min(rho * A_k, clip(rho, 1 - clip_eps, 1 + clip_eps) * A_k) - kl_coef * k3_kt
        loss = -(1/K) sum_k (1/|Z_k|) sum_t J_kt

    This is TRL's GRPOTrainer with ``loss_type="grpo"`` (trl/trainer/grpo_trainer.py,
    ``GRPOTrainer._compute_loss``): token-level ratios, the same k3 KL added per token, and the
    same aggregation (masked mean per sequence, then mean over sequences). With a zero KL
    coefficient, pass ``ref_logps = logps.detach()``: k3 is then 0.

    Args:
        logps: (B, T) token log-probs under the policy being trained (differentiable).
        old_logps: (B, T) the same under the policy that sampled the batch, or None for one update
            per batch (then ``logps.detach()``: rho = 1, and the gradient is the plain policy gradient).
        ref_logps: (B, T) the same under the reference (adapter disabled).
        advantages: (B,) one per sequence (:func:`group_advantages`).
        mask: (B, T) 1 on completion tokens. A sequence without any counted token contributes 0.
        clip_eps: the clip range (the paper: 0.2).
        kl_coef: the KL coefficient (the paper: 0.04).

    Returns:
        ``(loss, stats)``: a scalar, and detached scalars over all counted tokens: ``clip_fraction``
        (share of tokens where the clipped term is the active one: rho > 1 + eps with A > 0, or
        rho < 1 - eps with A < 0, TRL's ``clip_ratio/region_mean``), ``kl`` (mean k3) and
        ``ratio`` (mean rho).

    Example (one token, A = 1, rho = 1.5, k3 = 0): J = min(1.5, 1.2) = 1.2, loss = -1.2, clipped.
    """
    if not (logps.shape == ref_logps.shape == mask.shape) or logps.dim() != 2:
        raise ValueError(f"grpo_loss: logps {tuple(logps.shape)}, ref_logps {tuple(ref_logps.shape)} and mask "
                         f"{tuple(mask.shape)} must all be (B, T)")
    if advantages.shape != logps.shape[:1]:
        raise ValueError(f"grpo_loss: advantages {tuple(advantages.shape)} must be (B,) = ({logps.shape[0]},)")
    old = logps.detach() if old_logps is None else old_logps
    if old.shape != logps.shape:
        raise ValueError(f"grpo_loss: old_logps {tuple(old.shape)} differs from logps {tuple(logps.shape)}")
    adv = advantages.to(logps.dtype).unsqueeze(1)
    ratio = torch.exp(logps - old)
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    surrogate = torch.min(ratio * adv, clipped * adv)  # Eq. 7: min(rho A, clip(rho) A)
    kl = k3_kl(logps, ref_logps)  # Eq. 7: k3 estimator of KL(pi || pi_ref)
    per_token = surrogate - kl_coef * kl
    per_seq = masked_mean(per_token, mask, dim=1)  # Eq. 7: 1/|Z_k| sum_t
    loss = -per_seq.mean()  # Eq. 7: 1/K sum_k, maximised
    with torch.no_grad():
        active_clip = ((ratio > 1.0 + clip_eps) & (adv > 0)) | ((ratio < 1.0 - clip_eps) & (adv < 0))
        stats = {
            "clip_fraction": masked_mean(active_clip.to(logps.dtype), mask),
            "kl": masked_mean(kl.detach(), mask),
            "ratio": masked_mean(ratio.detach(), mask),
        }
    return loss, stats


def select_negative(js_values: Sequence[float] | torch.Tensor, tau: float = 0.1) -> int | None:
    """The DPO negative among R rollouts (Eq. 5's y_neg).

    The index of the rollout with the largest JS(p_hat, p_gt) when that JS exceeds ``tau``
    (strictly); otherwise, or with no rollouts, None (the utterance gives no pair this round).
    Ties go to the lowest index.

    Example: ``select_negative([0.05, 0.3, 0.2])`` -> 1; ``select_negative([0.05, 0.1])`` -> None.
    """
    values = torch.as_tensor(js_values, dtype=torch.float64).reshape(-1)
    if values.numel() == 0:
        return None
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"select_negative: JS values must be finite, got {values.tolist()}")
    best = int(torch.argmax(values))
    return best if float(values[best]) > tau else None
