"""The stand-in's pretraining (the warm-up): a short, deterministic training of a fresh model on its
own speech corpus (:mod:`ambinb.standin.recordings`) and text drills. The audio tower trains here
and is frozen afterwards, as in the paper.

A random model writes noise and hears nothing, which would make the ``base`` row, DPO's
on-policy negatives and GRPO's format reward meaningless; the real Qwen2-Audio comes from
pretraining able to hear how something is said, to quote its prompt and to answer in a chat. Each
step sums the losses of the tasks, each a module with a batch builder and a loss:

- :mod:`ambinb.standin.listening`: the tower's pooled output predicts the recording's acoustics;
- :mod:`ambinb.standin.descriptions`: chats that ask how the voice sounds, answered in the
  curator's words;
- :mod:`ambinb.standin.chats`: chats in the emotion prompt's template, answered in the
  think/answer format (the audio step describes the recording, the answer is random);
- :mod:`ambinb.standin.drills`: text-only quoting drills.

A new task is a module of the same shape whose loss is added in :func:`warm_up`'s step.
"""

from __future__ import annotations

import logging
import math
import random
import time
from typing import Any

import numpy as np
import torch

from ambinb import audio as audio_mod
from ambinb import lm, prosody
from ambinb.standin import chats, descriptions, drills, listening
from ambinb.standin.recordings import Recordings
from ambinb.standin.speech import clip_mels, stack_mels
from ambinb.standin.words import transcript_vocabulary

log = logging.getLogger(__name__)


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


def optimizer(model: Any, head: torch.nn.Module, lr: float, tower_lr: float) -> torch.optim.Optimizer:
    """AdamW over the language model and projector at ``lr`` and the tower and listening head at ``tower_lr``."""
    tower = lm.core(model).audio_tower
    tower.requires_grad_(True)
    tower_ids = {id(p) for p in tower.parameters()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in tower_ids]
    return torch.optim.AdamW([{"params": rest, "lr": lr},
                              {"params": list(tower.parameters()) + list(head.parameters()), "lr": tower_lr}],
                             weight_decay=0.0)


def step_loss(model: Any, processor: Any, head: listening.ListeningHead, rec: Recordings,
              mels: list[tuple[torch.Tensor, int]], idx: list[int], rng: random.Random) -> torch.Tensor:
    """The summed task losses of one step on recordings ``idx`` (half described, half in think chats)."""
    pad_id = int(processor.tokenizer.pad_token_id)
    feats, mask = stack_mels([mels[i] for i in idx])
    outputs = audio_mod.run_tower(model, feats, mask)
    zs = [rec.prosody.iloc[i].to_dict() for i in idx]
    bins = torch.as_tensor(listening.bins(rec.prosody.iloc[idx].to_numpy()))
    loss = listening.listening_loss(head, outputs, torch.as_tensor(rec.functionals[idx]), bins)
    half = len(idx) // 2
    loss = loss + descriptions.description_loss(
        model, descriptions.description_batch(processor, outputs[:half], zs[:half], pad_id))
    loss = loss + chats.chat_loss(model, chats.chat_batch(
        rng, processor, outputs[half:], zs[half:], [rec.transcripts[i] for i in idx[half:]], pad_id))
    if drills.COPY_DRILL_BATCH:
        batch = drills.drill_batch(rng, processor.tokenizer, drills.COPY_DRILL_BATCH, pad_id, transcript_vocabulary())
        loss = loss + drills.drill_loss(model, batch)
    return loss


def warm_up(model: Any, processor: Any, rec: Recordings, *, steps: int, batch_size: int, lr: float,
            tower_lr: float, seed: int) -> dict[str, float]:
    """Pretrain a fresh model on its recordings and drills (see the module docstring), then freeze the tower.

    Each step draws ``batch_size`` recordings (every recording once per pass, in a seeded order),
    runs the tower on them with gradients and sums the tasks' losses; AdamW with
    :func:`lr_schedule`, gradients clipped to norm 1.

    Returns:
        ``{"steps", "loss_first", "loss_last", "seconds", "recordings"}``.
    """
    start = time.perf_counter()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    order_rng = np.random.default_rng(seed)
    mels = [clip_mels(processor.feature_extractor, w) for w in rec.waves]
    d_audio = lm.core(model).audio_tower.config.d_model
    head = listening.ListeningHead(d_audio, rec.functionals.shape[1], len(prosody.DIMENSIONS))
    opt = optimizer(model, head, lr, tower_lr)
    params = [p for g in opt.param_groups for p in g["params"]]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(steps))
    model.train()
    losses, order = [], []
    for _ in range(steps):
        if len(order) < batch_size:
            order += order_rng.permutation(len(rec)).tolist()
        idx, order = order[:batch_size], order[batch_size:]
        loss = step_loss(model, processor, head, rec, mels, idx, rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if len(losses) % 100 == 0:
            log.info("pretraining step %d/%d: loss %.3f (mean of the last 100)", len(losses), steps,
                     np.mean(losses[-100:]))
    lm.core(model).audio_tower.requires_grad_(False)
    model.eval()
    return {"steps": steps, "loss_first": losses[0] if losses else float("nan"),
            "loss_last": float(np.mean(losses[-10:])) if losses else float("nan"),
            "seconds": time.perf_counter() - start, "recordings": len(rec)}
