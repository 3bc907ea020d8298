"""The stand-in's pretraining (the warm-up): a short, deterministic training of a fresh model on its
synthetic tasks, the audio tower frozen.

A random model writes noise, which would make the ``base`` row, DPO's on-policy negatives and
GRPO's format reward meaningless; and the real Qwen2-Audio comes from pretraining able to quote its
prompt and to hear how something is said. Each step sums the losses of the tasks, each a module
with a batch builder and a loss:

- :mod:`ambinb.standin.chats`: audio chats in the chat template, answered in the think/answer
  format;
- :mod:`ambinb.standin.drills`: text-only quoting drills.

A new task is a module of the same shape whose loss is added in :func:`warm_up`'s step.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

import numpy as np
import torch

from ambinb import audio as audio_mod
from ambinb.standin import chats, drills
from ambinb.standin.words import transcript_vocabulary

WARMUP_CLIPS = 384  # synthetic speech clips whose tower outputs the warm-up's chats draw from


def lr_schedule(steps: int) -> Any:
    """The learning-rate factor per step: linear warm-up over ``min(10, max(1, steps // 10))`` steps,
    then cosine decay to 10 %.

    Example: ``steps = 100`` -> factors 0.1, 0.2, ..., 1.0 for steps 0-9, 0.55 at step 55, 0.1 at 100.
    """
    warm = min(10, max(1, steps // 10))

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    return schedule


def warm_up(model: Any, processor: Any, *, steps: int, batch_size: int, lr: float, seed: int,
            n_audio: int = WARMUP_CLIPS) -> dict[str, float]:
    """Pretrain a fresh model on the synthetic tasks (see the module docstring).

    The audio tower is frozen and its outputs for ``n_audio`` synthetic speech clips (at most one
    per warm-up chat) are computed once. Each step: a batch of ``batch_size`` chats and one of
    :data:`ambinb.standin.drills.COPY_DRILL_BATCH` drills, AdamW at ``lr`` with
    :func:`lr_schedule`, gradients clipped to norm 1.

    Returns:
        ``{"steps", "loss_first", "loss_last", "seconds"}``.
    """
    start = time.perf_counter()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    audio_mod.core(model).audio_tower.requires_grad_(False)
    pool = chats.warmup_pool(model, processor, max(1, min(n_audio, steps * batch_size)), np_rng)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(steps))
    pad_id = int(processor.tokenizer.pad_token_id)
    vocabulary = transcript_vocabulary()
    model.train()
    losses = []
    for _ in range(steps):
        loss = chats.chat_loss(model, chats.chat_batch(rng, processor, pool, batch_size, pad_id, vocabulary))
        if drills.COPY_DRILL_BATCH:
            batch = drills.drill_batch(rng, processor.tokenizer, drills.COPY_DRILL_BATCH, pad_id, vocabulary)
            loss = loss + drills.drill_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    return {"steps": steps, "loss_first": losses[0] if losses else float("nan"),
            "loss_last": float(np.mean(losses[-10:])) if losses else float("nan"),
            "seconds": time.perf_counter() - start}
