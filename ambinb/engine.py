"""One compact training loop for every strategy, and the protocol a strategy follows.

Why not TRL's trainers: they run their log-prob passes without the audio features (GRPOTrainer
drops them silently) and cannot read p_hat from the logits inside a reward. Here a *strategy*
(:class:`Strategy`, implemented by :mod:`ambinb.strategies`) supplies
``loss(model, indices, step, micro) -> (loss, stats)`` for the examples ``indices`` of micro-batch
``micro`` of optimizer step ``step`` and, for on-policy methods, samples its own data there; the
loop does the rest:

* AdamW on the trainable parameters (LoRA adapters, or the language model for a full fine-tune),
  3 % linear warm-up then cosine decay, gradient accumulation and clipping.
* ``accelerate`` places the model and runs one CPU, one GPU or several processes. With several
  processes, gradients of the trainable parameters are averaged explicitly after backward (all of
  ambinb's forwards go through :mod:`ambinb.audio`, not through a DDP wrapper), so every process
  takes the same step; bf16 autocast where the device supports it, float32 on the CPU. Process 0's
  trainable parameters are broadcast at the start (as DDP does), and the logged loss and stats are
  averaged over the processes, so W processes with ``batch_size`` b log and take the same steps as
  one process with ``grad_accum`` W (or ``batch_size`` W*b, for a per-example mean loss). Each
  process loads the model onto its own device (:func:`place`); DeepSpeed and FSDP launches are
  refused (the engine does not hand the model to them, so they would not shard anything).
* Deterministic: micro-batch ``g`` is a fixed slice of the per-epoch permutations drawn from the
  seed, and the checkpoint holds the optimizer, scheduler and RNG states, so a killed run resumed
  from its last checkpoint takes exactly the steps of an uninterrupted one.
* Fail-fast: a loss or gradient norm that is not finite stops the run with
  :class:`NonFiniteError`, naming the step and the batch's utterances, before the optimizer step,
  so a NaN state is never applied nor checkpointed.
* ``checkpoint.pt`` is written every ``checkpoint_every`` optimizer steps and at the end, through
  :func:`ambinb.files.atomic`: a write that fails removes its temporary file and leaves the previous
  checkpoint as it was, and a full disk, which ``torch.save`` reports as
  ``RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos ...``, is said as
  ``no space left on device while writing <run>/checkpoint.pt``. ``train_log.jsonl`` holds one line
  per optimizer step (loss, KL, learning rate, the strategy's stats), rewritten from the checkpoint's
  history on resume so it never holds steps that were lost.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ambinb import config, files, results
from ambinb.progress import bar as progress_bar

CHECKPOINT = "checkpoint.pt"
TRAIN_LOG = "train_log.jsonl"


@runtime_checkable
class Strategy(Protocol):
    """What the engine and :func:`ambinb.run.train_and_evaluate` need from a training strategy.

    :func:`ambinb.strategies.strategy_class` maps each strategy name of ``params/strategies`` to a
    class following this protocol (:class:`ambinb.strategies.sft.SFTStrategy`, ``DPOStrategy``,
    ``GRPOStrategy``); ``isinstance(obj, Strategy)`` checks that an object has every member.
    """

    @classmethod
    def build(cls, model: Any, processor: Any, examples: list[Any], classes: list[str],
              cfg: dict[str, Any]) -> Strategy:
        """The strategy of one run: its training examples (:class:`ambinb.examples.Example`), the class
        names of the read-out, and the resolved params."""
        ...

    def num_examples(self) -> int:
        """How many training examples the engine draws micro-batches from."""
        ...

    def utt_ids(self, indices: list[int]) -> list[str]:
        """The utterance ids of the examples ``indices`` (named when a step fails)."""
        ...

    def loss(self, model: Any, indices: list[int], step: int,
             micro: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of micro-batch ``micro`` (0 .. grad_accum - 1) of optimizer step ``step``, on the
        examples ``indices``, and the stats to log (floats, averaged over the step's micro-batches)."""
        ...

    def summary(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """The strategy's own entries of ``metrics.json``'s ``train`` summary, from the training log."""
        ...


class NonFiniteError(FloatingPointError):
    """A loss or gradient norm that is not finite: the step is not taken and nothing is checkpointed."""


@dataclass
class TrainConfig:
    """The engine's settings, read from the resolved params by :meth:`from_cfg` (no defaults of its own:
    :meth:`with_defaults` takes them from ``params/defaults.yaml``)."""

    lr: float
    weight_decay: float
    warmup_ratio: float
    epochs: float
    max_steps: int
    batch_size: int
    grad_accum: int
    max_grad_norm: float
    checkpoint_every: int
    seed: int
    trackers: list[str]

    @classmethod
    def from_cfg(cls, cfg: dict[str, Any]) -> TrainConfig:
        return cls(lr=float(cfg["lr"]) * float(cfg["lr_scale"]), weight_decay=float(cfg["weight_decay"]),
                   warmup_ratio=float(cfg["warmup_ratio"]), epochs=float(cfg["epochs"]),
                   max_steps=int(cfg["max_steps"]), batch_size=int(cfg["batch_size"]),
                   grad_accum=int(cfg["grad_accum"]), max_grad_norm=float(cfg["max_grad_norm"]),
                   checkpoint_every=int(cfg["checkpoint_every"]), seed=int(cfg["seed"]),
                   trackers=tracker_names(cfg))

    @classmethod
    def with_defaults(cls, **settings: Any) -> TrainConfig:
        """The settings of ``params/defaults.yaml`` with ``settings`` in their place (``lr`` as given, unscaled).

        Example: ``TrainConfig.with_defaults(lr=0.1, max_steps=3)`` -> batch_size, warmup_ratio, ... from the YAML.
        """
        return dataclasses.replace(cls.from_cfg(config.defaults()), **settings)

    def total_steps(self, n_examples: int) -> int:
        """Optimizer steps: ``max_steps`` if set, else enough for ``epochs`` passes over the data."""
        if self.max_steps > 0:
            return self.max_steps
        return max(1, math.ceil(self.epochs * n_examples / (self.batch_size * self.grad_accum)))


def tracker_names(cfg: dict[str, Any]) -> list[str]:
    """The experiment trackers of the params' ``trackers`` (comma-separated; "" = none).

    Example: ``{"trackers": "tensorboard, wandb"}`` -> ``["tensorboard", "wandb"]``.
    """
    return [t.strip() for t in str(cfg["trackers"]).split(",") if t.strip()]


def warmup_cosine(step: int, total: int, warmup_ratio: float) -> float:
    """Learning-rate factor: linear warm-up over ``warmup_ratio`` of the steps, then cosine to 0.

    Example: total=100, warmup_ratio=0.03 -> step 0: 1/3, step 2: 1.0, step 51: ~0.5, step 99: ~0.0003.
    """
    warm = max(1, math.ceil(total * warmup_ratio))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def micro_batch(g: int, n: int, batch_size: int, seed: int) -> list[int]:
    """Indices of micro-batch ``g``: slice ``g`` of the stream of per-epoch permutations of ``range(n)``.

    Deterministic in (g, n, batch_size, seed), so a resumed run draws the same data as a straight one.
    """
    out: list[int] = []
    pos = g * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        take = perm[offset: offset + batch_size - len(out)]
        out.extend(int(i) for i in take)
        pos += len(take)
    return out


def trainable_parameters(model: Any) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _save_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any, step: int,
                     history: list[dict[str, Any]]) -> None:
    state = {
        "step": step,
        "params": {n: p.detach().cpu().clone() for n, p in trainable_parameters(model)},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "history": history,
    }
    with files.atomic(path) as tmp:  # a full disk: OSError "no space left on device while writing <path>"
        torch.save(state, tmp)


def _load_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any) -> tuple[int, list[dict[str, Any]]]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    params = dict(trainable_parameters(model))
    missing = set(params) ^ set(state["params"])
    if missing:
        raise ValueError(f"{path}: the checkpoint's trainable parameters differ from the model's "
                         f"(e.g. {sorted(missing)[:3]}); delete it to start over")
    with torch.no_grad():
        for name, value in state["params"].items():
            params[name].copy_(value.to(params[name].device))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"]), list(state["history"])


def _write_log(path: Path, history: list[dict[str, Any]]) -> None:
    results.write_atomic(path, "".join(json.dumps(row) + "\n" for row in history))


def read_log(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-step training log of a run folder (empty when there is none)."""
    path = Path(run_dir) / TRAIN_LOG
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def process_device(requested: str, num_processes: int, own: str) -> str:
    """The device one process loads the model onto.

    With one process this is the params' ``device`` as given. With several, each process has its own
    device (``accelerator.device``, i.e. ``cuda:<LOCAL_RANK>``): ``auto`` and ``cuda`` map to it, and
    an explicit device must be that one (``cuda:0`` on every process would put them all on one GPU).

    Example: ``process_device("auto", 4, "cuda:2") -> "cuda:2"``; ``process_device("cpu", 4, "cuda:2") -> "cpu"``.

    Raises:
        ValueError: an explicit device that is not this process's own, under several processes.
    """
    own = "cpu" if own.startswith("cpu") else own  # gloo processes report cpu:0 for the one CPU device
    if num_processes <= 1 or requested == "cpu" or requested == own:
        return requested
    if requested in ("auto", "cuda"):
        return own
    raise ValueError(f"device={requested!r} but this is one of {num_processes} processes, whose own device is "
                     f"{own}: set device: auto (each process then uses cuda:<LOCAL_RANK>)")


def place(cfg: dict[str, Any], accelerator: Any) -> dict[str, Any]:
    """``cfg`` with ``device`` set to this process's device (:func:`process_device`); load the model after this."""
    device = process_device(str(cfg["device"]), accelerator.num_processes, str(accelerator.device))
    return {**cfg, "device": device}


def _refuse_sharded(accelerator: Any) -> None:
    """Raise when launched with DeepSpeed or FSDP: the engine would train unsharded without saying so."""
    kind = getattr(accelerator, "distributed_type", "")
    kind = str(getattr(kind, "value", kind)).split(".")[-1]
    if kind in ("DEEPSPEED", "FSDP"):
        raise NotImplementedError(
            f"accelerate launched this run with {kind}, which ambinb.engine does not support yet: it averages "
            "gradients itself and never hands the model to DeepSpeed/FSDP, so nothing would be sharded. Launch "
            "with params/accelerate/ddp.yaml (see book/running-at-scale.md)")


def make_accelerator(cfg: dict[str, Any], project_dir: Path) -> Any:
    """An ``accelerate.Accelerator`` for the params (``device``, ``dtype``, ``trackers``): CPU or GPU,
    bf16 autocast where the dtype asks."""
    from accelerate import Accelerator

    device, dtype = str(cfg["device"]), str(cfg["dtype"])
    cpu = device == "cpu" or not torch.cuda.is_available()
    bf16 = not cpu and dtype in ("auto", "bfloat16") and torch.cuda.is_bf16_supported()
    trackers = tracker_names(cfg)
    return Accelerator(cpu=cpu, mixed_precision="bf16" if bf16 else "no", log_with=trackers or None,
                       project_dir=str(project_dir))


def _broadcast_parameters(params: list[torch.nn.Parameter], accelerator: Any) -> None:
    from accelerate.utils import broadcast

    with torch.no_grad():
        for p in params:
            p.copy_(broadcast(p.detach().clone(), from_process=0))


def _mean_over_processes(sums: dict[str, float], accelerator: Any) -> dict[str, float]:
    """The step's logged values averaged over the processes (every process must log the same keys)."""
    keys = sorted(sums)
    values = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    mean = accelerator.reduce(values, reduction="mean")
    return {k: float(v) for k, v in zip(keys, mean.tolist())}


def _optimizer(named: list[tuple[str, torch.nn.Parameter]], tc: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices only (biases and norms undecayed)."""
    decay = [p for n, p in named if p.ndim >= 2]
    no_decay = [p for n, p in named if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr)


def _start(model: Any, params: list[torch.nn.Parameter], optimizer: Any, scheduler: Any, out_dir: Path,
           accelerator: Any, resume: bool) -> tuple[int, list[dict[str, Any]]]:
    """The first step and the history so far: process 0's parameters on every process, then the
    checkpoint loaded (``resume``) or deleted (not ``resume``)."""
    ckpt = out_dir / CHECKPOINT
    start, history = 0, []
    world = accelerator.num_processes
    if world > 1:  # every process starts from process 0's parameters (LoRA init may differ per process)
        _broadcast_parameters(params, accelerator)
    if resume and ckpt.exists():
        start, history = _load_checkpoint(ckpt, model, optimizer, scheduler)
        if accelerator.is_main_process:
            _write_log(out_dir / TRAIN_LOG, history)
    elif not resume and accelerator.is_main_process:
        ckpt.unlink(missing_ok=True)
    if world > 1:
        accelerator.wait_for_everyone()  # no process reads a checkpoint that process 0 is deleting
    return start, history


def _accumulate(model: Any, strategy: Strategy, tc: TrainConfig, step: int, n: int,
                accelerator: Any) -> tuple[dict[str, float], list[int]]:
    """Forward and backward of the ``grad_accum`` micro-batches of ``step`` on this process.

    Returns:
        The step's loss and stats, each averaged over its micro-batches, and the examples it used.
    """
    sums: dict[str, float] = {}
    used: list[int] = []
    world = accelerator.num_processes
    for micro in range(tc.grad_accum):
        g = (step * tc.grad_accum + micro) * world + accelerator.process_index
        indices = micro_batch(g, n, tc.batch_size, tc.seed)
        used.extend(indices)
        with accelerator.autocast():
            loss, stats = strategy.loss(model, indices, step, micro)
        (loss / tc.grad_accum).backward()
        for key, value in {"loss": float(loss.detach()), **stats}.items():
            sums[key] = sums.get(key, 0.0) + float(value) / tc.grad_accum
    return sums, used


def _check_finite(step: int, loss: float, grad_norm: float, strategy: Strategy, indices: list[int],
                  checkpoint: Path) -> None:
    """Raise :class:`NonFiniteError` when the step's loss or gradient norm is NaN or infinite.

    Args:
        step: the optimizer step (1-based, as in the log).
        strategy, indices: the strategy and the examples of the step's batch on this process (the error
            names their utterances).
        checkpoint: the run's checkpoint, which the failed step has not touched.
    """
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return
    raise NonFiniteError(
        f"step {step}: the loss is {loss} and the gradient norm {grad_norm} on the batch of utterances "
        f"{sorted(set(strategy.utt_ids(indices)))}; the run stops before the optimizer step, so neither the "
        f"weights nor {checkpoint} hold this state. Check those utterances' audio and labels (a NaN or infinite sample "
        "in a wav, a label row that does not sum to 1), or lower lr")


def _step(model: Any, strategy: Strategy, tc: TrainConfig, step: int, n: int, params: list[torch.nn.Parameter],
          optimizer: Any, scheduler: Any, accelerator: Any, checkpoint: Path) -> dict[str, Any]:
    """One optimizer step: micro-batches, the gradients averaged over the processes, the finite check,
    clipping, AdamW and the scheduler. Returns the step's log row."""
    t0 = time.perf_counter()
    sums, used = _accumulate(model, strategy, tc, step, n, accelerator)
    if accelerator.num_processes > 1:
        for p in params:
            if p.grad is not None:
                p.grad.copy_(accelerator.reduce(p.grad, reduction="mean"))
        sums = _mean_over_processes(sums, accelerator)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm))
    _check_finite(step + 1, sums["loss"], grad_norm, strategy, used, checkpoint)
    row = {"step": step + 1, "lr": scheduler.get_last_lr()[0], **sums, "grad_norm": grad_norm}
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    row["seconds"] = time.perf_counter() - t0
    return row


def train(model: Any, strategy: Strategy, tc: TrainConfig, out_dir: str | os.PathLike, accelerator: Any = None,
          resume: bool = True, progress: bool = True, stop_at: int | None = None,
          on_step: Callable[[int, dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Train ``model`` with ``strategy`` for ``tc.total_steps`` optimizer steps; return the log.

    Args:
        out_dir: the run folder (``checkpoint.pt``, ``train_log.jsonl``).
        accelerator: from :func:`make_accelerator`; None = one process with the default params.
        resume: continue from ``checkpoint.pt`` when it exists.
        stop_at: stop after this optimizer step as if killed (for tests; the checkpoint stays as it was).
        on_step: called after each optimizer step with (step, log row).

    Returns:
        One dict per optimizer step: ``step``, ``lr``, ``loss`` and the strategy's stats (averaged
        over the micro-batches of the step), ``grad_norm``, ``seconds``.

    Raises:
        NonFiniteError: a step's loss or gradient norm is not finite (nothing of it is applied or saved).
        OSError: the checkpoint cannot be written (``no space left on device while writing ...``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    accelerator = accelerator or make_accelerator(config.defaults(), out_dir)
    _refuse_sharded(accelerator)
    named = trainable_parameters(model)
    if not named:
        raise ValueError("the model has no trainable parameter: call ambinb.model.prepare_trainable first")
    params = [p for _, p in named]
    optimizer = _optimizer(named, tc)
    n = strategy.num_examples()
    if n == 0:
        raise ValueError("no training examples")
    total = tc.total_steps(n)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, tc.warmup_ratio))
    ckpt = out_dir / CHECKPOINT
    start, history = _start(model, params, optimizer, scheduler, out_dir, accelerator, resume)
    if tc.trackers and accelerator.is_main_process:
        accelerator.init_trackers(out_dir.name, config={k: v for k, v in vars(tc).items() if k != "trackers"})
    bar = progress_bar(total=total, initial=start, desc="train", unit="step", disable=not progress or start >= total)
    model.train()
    for step in range(start, total):
        row = _step(model, strategy, tc, step, n, params, optimizer, scheduler, accelerator, ckpt)
        history.append(row)
        if tc.trackers:
            accelerator.log({k: v for k, v in row.items() if k != "step"}, step=step + 1)
        bar.update()
        bar.set_postfix({k: f"{row[k]:.3g}" for k in ("loss", "kl", "lr") if k in row})
        if on_step:
            on_step(step + 1, row)
        if stop_at is not None and step + 1 >= stop_at:
            bar.close()
            return history
        if accelerator.is_main_process and ((step + 1) % tc.checkpoint_every == 0 or step + 1 == total):
            _save_checkpoint(ckpt, model, optimizer, scheduler, step + 1, history)
            _write_log(out_dir / TRAIN_LOG, history)
    bar.close()
    if tc.trackers:
        accelerator.end_training()
    model.eval()
    return history
