"""Engine vs TRL: SFT steps per second of ambinb's engine against TRL's SFTTrainer, same batches, same loss.

    .venv/bin/python bench/sft_vs_trl.py                        # LoRA and full FT, batch 8, 5 x 20 timed steps, CPU
    .venv/bin/python bench/sft_vs_trl.py --modes lora --repeats 5 --steps 60
    .venv/bin/python bench/sft_vs_trl.py --trl-tower            # also TRL with the frozen tower run every step
    .venv/bin/python bench/sft_vs_trl.py --smoke --out /tmp/sft_vs_trl.json   # 2 timed steps: both paths run

Both paths train the tiny stand-in (``ambinb.standin.ensure_tiny`` then ``load_checkpoint``, float32)
prepared by :func:`ambinb.model.prepare_trainable` (LoRA, or a full fine-tune of the language model
and projector), on the same synthetic utterances encoded once (prompt ids with the ``<|AUDIO|>``
positions, the cached tower output, a think block in the curator's wording, a random p_gt), with
the same loss: :meth:`ambinb.strategies.sft.SFTStrategy.loss` (Eq. 3: CE on the completion + KL at the answer
slot). They see the same micro-batches in the same order (the engine's
:func:`ambinb.engine.micro_batch` stream) and take the same number of optimizer steps: AdamW
(``torch.optim.AdamW`` on both, each built by its own trainer), 3 % warm-up then cosine (TRL's
warm-up starts at lr 0, the engine's at lr / warm-up steps: same cost), clipping at
``max_grad_norm``, no gradient accumulation, no activation checkpointing and no bf16 (TRL's
``SFTConfig`` turns both on by default; both are off here), no checkpoint writes inside the timed
window, TRL's logging off (the engine keeps its in-memory per-step log, as always). Same
weights, same first batch, same loss: the first step's loss is identical on both paths
(recorded as ``loss_first``; the smoke test checks it).

What TRL's ``SFTTrainer`` needed (``AudioSFTTrainer`` from :func:`trl_trainer_class`; nothing else
changed):

* a dataset of example indices, passed with ``dataset_kwargs={"skip_prepare_dataset": True}`` and
  ``remove_unused_columns=False``, and a collator that stacks the indices (:func:`collate_indices`);
* ``compute_loss`` calling the strategy's loss on those indices (TRL's own loss is token CE from its
  fused LM head: no KL at the answer slot, and through the model's forward it would run the audio
  tower on every step);
* ``_get_train_sampler`` returning the engine's batch order (:class:`FixedOrder`).

Timing: the wall time from the end of optimizer step ``--warmup`` to the end of the last step,
read by a callback on both paths (``on_step`` for the engine, a ``TrainerCallback`` for TRL), so
model loading, trainer construction and the warm-up steps are excluded. Each repetition trains a
fresh model on each path; the order of the paths alternates between repetitions; the table gives
the median steps/s of each path and the ratio engine / TRL as the median (and range) of the
per-repetition ratios, since adjacent runs share the machine's load at the time; the JSON also
holds the ratio of the medians.
``--trl-tower`` adds a third path: TRL fed mel features and running the frozen tower inside every
step (what the model's own forward does with ``input_features``), to show what the feature cache
saves. Results go to ``bench/results/sft_vs_trl_<device>.json``.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ambinb import audio as A  # noqa: E402
from ambinb import config, engine, prompt, results, standin  # noqa: E402
from ambinb import model as M  # noqa: E402
from ambinb.run import Example  # noqa: E402
from ambinb.strategies import sft  # noqa: E402

CLASSES = ["anger", "happiness", "sadness", "neutral"]
PATHS = ("engine", "trl")


# --- the data both paths train on -------------------------------------------------------------

def make_examples(model: Any, processor: Any, n: int, seed: int, cfg: dict[str, Any]
                  ) -> tuple[list[Example], list[np.ndarray]]:
    """``n`` synthetic training utterances, encoded once through a feature cache; also their waveforms.

    Audio from :func:`ambinb.standin.synthetic_wave` (1-3 s), transcripts and think blocks from the
    stand-in's synthetic generators, p_gt drawn from a Dirichlet: realistic lengths, no corpus needed.
    """
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    waves = [standin.synthetic_wave(np_rng) for _ in range(n)]
    cache = A.AudioFeatureCache(model, processor.feature_extractor)
    utt_ids = [f"bench{i:03d}" for i in range(n)]
    feats = cache.features(utt_ids, waves)
    tok = processor.tokenizer
    out = []
    for utt, f in zip(utt_ids, feats):
        transcript = standin.synthetic_transcript(rng)
        text = prompt.prompt_text(processor, transcript, CLASSES, cfg["prompt_preset"], utt)
        think, answer = standin.synthetic_completion(rng, transcript, CLASSES)
        encoded = prompt.Encoded(utt, prompt.prompt_ids(tok, text, f.shape[0]), f)
        completion = prompt.completion_ids(tok, think, answer, cfg["prompt_preset"])
        out.append(Example(utt, encoded, completion, np_rng.dirichlet(np.ones(len(CLASSES)))))
    return out, waves


def batch_order(total_steps: int, n: int, batch_size: int, seed: int) -> list[int]:
    """The engine's micro-batches for ``total_steps`` steps, flattened: what TRL's sampler replays.

    Example: ``batch_order(2, 4, 2, 0)`` = ``micro_batch(0, 4, 2, 0) + micro_batch(1, 4, 2, 0)``.
    """
    return [i for g in range(total_steps) for i in engine.micro_batch(g, n, batch_size, seed)]


class TowerSFTStrategy:
    """SFT's loss with the frozen tower run on the batch's mel features inside the step (no cache)."""

    def __init__(self, strategy: sft.SFTStrategy, model: Any, processor: Any, waves: list[np.ndarray]):
        self.strategy = strategy
        self.mel_cache = A.AudioFeatureCache(model, processor.feature_extractor)
        self.utt_ids = [ex.utt_id for ex in strategy.examples]
        self.waves = waves
        self.mel_cache.mels(self.utt_ids, waves)  # mel features precomputed (compact), as a collator would

    def num_examples(self) -> int:
        return self.strategy.num_examples()

    def loss(self, model: Any, indices: list[int], step: int, micro: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        feats, masks = self.mel_cache.mels([self.utt_ids[i] for i in indices], [self.waves[i] for i in indices])
        with torch.no_grad():
            audio = A.run_tower(model, feats, masks)
        view = copy.copy(self.strategy)
        view.examples = [Example(ex.utt_id, prompt.Encoded(ex.utt_id, ex.encoded.prompt_ids, a), ex.completion,
                                     ex.p_gt) for ex, a in zip((self.strategy.examples[i] for i in indices), audio)]
        return view.loss(model, list(range(len(indices))), step, micro)


# --- the TRL side -----------------------------------------------------------------------------

def collate_indices(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """TRL's collator here: the batch is the examples' indices (the strategy holds the tensors)."""
    return {"index": torch.tensor([int(r["index"]) for r in rows], dtype=torch.long)}


class FixedOrder(torch.utils.data.Sampler):
    """A sampler that replays a given index sequence (the engine's batch order)."""

    def __init__(self, order: list[int]):
        self.order = list(order)

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def trl_trainer_class() -> type:
    """``AudioSFTTrainer``: TRL's SFTTrainer with ambinb's loss on index batches (see the module docstring)."""
    from trl import SFTTrainer

    class AudioSFTTrainer(SFTTrainer):
        def __init__(self, *args: Any, strategy: Any, order: list[int], **kwargs: Any):
            self.strategy = strategy
            self.order = order
            super().__init__(*args, **kwargs)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, _ = self.strategy.loss(model, inputs["index"].tolist(), self.state.global_step)
            return (loss, None) if return_outputs else loss

        def _get_train_sampler(self, train_dataset=None):
            return FixedOrder(self.order)

    return AudioSFTTrainer


def step_clock(device: str) -> Any:
    """A ``TrainerCallback`` that records the wall time at the end of every optimizer step."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            sync(device)
            self.times.append(time.perf_counter())

    return StepClock()


# --- timing -----------------------------------------------------------------------------------

def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def fresh_model(tiny_dir: Path, mode: str, cfg: dict[str, Any], device: str, seed: int) -> Any:
    """The tiny stand-in, float32 on ``device``, prepared for ``mode`` (``lora`` or ``full``)."""
    model, _ = M.load_checkpoint(tiny_dir, dtype="float32", device=device)
    torch.manual_seed(seed)
    return M.prepare_trainable(model, {**cfg, "lora": mode == "lora"})


def window_rate(times: list[float], warmup: int) -> tuple[float, float]:
    """Steps/s and seconds from the end of step ``warmup`` to the end of the last step.

    Example: step ends at [1.0, 1.5, 2.0, 2.5] with warmup=1 -> 3 steps in 1.5 s -> (2.0, 1.5).
    """
    steps = len(times) - warmup
    if warmup < 1 or steps < 1:
        raise ValueError(f"need at least one warm-up and one timed step, got {len(times)} steps, warmup {warmup}")
    seconds = times[-1] - times[warmup - 1]
    return steps / seconds, seconds


def run_engine(model: Any, strategy: Any, tc: engine.TrainConfig, device: str, warmup: int) -> dict[str, Any]:
    times: list[float] = []

    def on_step(step: int, row: dict[str, Any]) -> None:
        sync(device)
        times.append(time.perf_counter())

    with tempfile.TemporaryDirectory(prefix="bench_engine_") as out:
        accelerator = engine.make_accelerator({"device": device, "dtype": "float32", "trackers": ""}, Path(out))
        history = engine.train(model, strategy, tc, out, accelerator, resume=False, progress=False, on_step=on_step)
    rate, seconds = window_rate(times, warmup)
    return {"steps_per_s": rate, "seconds": seconds, "loss_first": history[0]["loss"], "loss_last": history[-1]["loss"]}


def run_trl(model: Any, processor: Any, strategy: Any, tc: engine.TrainConfig, device: str,
            warmup: int) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig

    total = tc.max_steps
    clock = step_clock(device)
    losses: list[float] = []
    inner = strategy.loss

    def logged_loss(model, indices, step):  # the engine logs every step's loss; so does this path
        loss, stats = inner(model, indices, step)
        losses.append(float(loss.detach()))
        return loss, stats

    traced = copy.copy(strategy)
    traced.loss = logged_loss
    with tempfile.TemporaryDirectory(prefix="bench_trl_") as out:
        args = SFTConfig(
            output_dir=out, max_steps=total, per_device_train_batch_size=tc.batch_size, gradient_accumulation_steps=1,
            learning_rate=tc.lr, weight_decay=tc.weight_decay, warmup_steps=tc.warmup_ratio,
            lr_scheduler_type="cosine", optim="adamw_torch", max_grad_norm=tc.max_grad_norm, seed=tc.seed,
            activation_checkpointing=False, bf16=False, fp16=False, use_cpu=not device.startswith("cuda"),
            save_strategy="no", eval_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
            dataloader_num_workers=0, dataloader_pin_memory=False, remove_unused_columns=False,
            dataset_kwargs={"skip_prepare_dataset": True})
        dataset = Dataset.from_dict({"index": list(range(strategy.num_examples()))})
        order = batch_order(total, strategy.num_examples(), tc.batch_size, tc.seed)
        trainer = trl_trainer_class()(model=model, args=args, train_dataset=dataset, processing_class=processor,
                                      data_collator=collate_indices, callbacks=[clock], strategy=traced, order=order)
        trainer.remove_callback(PrinterCallback)  # the end-of-run summary line; logging is off in both paths
        trainer.train()
    if len(clock.times) != total:
        raise RuntimeError(f"TRL took {len(clock.times)} optimizer steps, expected {total}")
    rate, seconds = window_rate(clock.times, warmup)
    return {"steps_per_s": rate, "seconds": seconds, "loss_first": losses[0], "loss_last": losses[-1]}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["steps_per_s"] for r in runs]
    return {"steps_per_s_median": statistics.median(rates), "steps_per_s_min": min(rates),
            "steps_per_s_max": max(rates), "runs": runs}


def paired_ratio(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """Steps/s of path ``a`` over path ``b``, repetition by repetition (adjacent runs share the load).

    Example: a = [4, 6], b = [2, 4] steps/s -> per repeat [2.0, 1.5]; median 1.75, range 1.5-2.0;
    ratio of the medians 5 / 3 = 1.67.
    """
    per = [x["steps_per_s"] / y["steps_per_s"] for x, y in zip(a, b)]
    med_a = statistics.median(x["steps_per_s"] for x in a)
    med_b = statistics.median(y["steps_per_s"] for y in b)
    return {"median": statistics.median(per), "min": min(per), "max": max(per), "per_repeat": per,
            "ratio_of_medians": med_a / med_b}


def format_table(rows: list[dict[str, Any]], paths: list[str]) -> str:
    """The printed table: median steps/s per path, then engine / TRL (median of the paired ratios, range)."""
    tower = "trl_tower" in paths
    lines = [f"{'mode':<5} {'engine':>8} {'trl':>8}" + (f" {'trl_tower':>10}" if tower else "")
             + f" {'engine/trl':>11} {'range':>12}" + (f" {'engine/trl_tower':>17}" if tower else "")]
    for row in rows:
        r = row["engine_over_trl"]
        line = f"{row['mode']:<5}" + "".join(f" {row[p]['steps_per_s_median']:{10 if p == 'trl_tower' else 8}.2f}"
                                             for p in paths)
        line += f" {r['median']:10.2f}x {r['min']:5.2f}-{r['max']:.2f}x"
        if tower:
            line += f" {row['engine_over_trl_tower']['median']:16.2f}x"
        lines.append(line)
    return "\n".join(lines)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every engine-vs-TRL benchmark shares: repeats, modes, device, threads."""
    parser.add_argument("--repeats", type=int, default=5, help="runs per path and mode (alternating order)")
    parser.add_argument("--modes", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def quiet_libraries(threads: int) -> None:
    """Set the torch threads and silence transformers' progress bars and notices, for a clean table."""
    torch.set_num_threads(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' renamed-argument notices


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps before the timed ones")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--examples", type=int, default=32, help="synthetic training utterances")
    add_run_arguments(parser)
    parser.add_argument("--trl-tower", action="store_true", help="also time TRL running the frozen tower each step")
    parser.add_argument("--smoke", action="store_true",
                        help="2 timed steps after 1 warm-up, batch 2, 4 utterances, one repeat")
    parser.add_argument("--out", default="", help="JSON path (default bench/results/sft_vs_trl_<device>.json)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.warmup, args.batch_size, args.examples, args.repeats = 2, 1, 2, 4, 1
    quiet_libraries(args.threads)
    import transformers

    cfg = config.resolve(strategy="sft")
    tiny_dir = standin.ensure_tiny(cfg)
    base, processor = M.load_checkpoint(tiny_dir, dtype="float32", device=args.device)
    examples, waves = make_examples(base, processor, args.examples, cfg["seed"], cfg)
    total = args.warmup + args.steps
    tc = engine.TrainConfig(lr=float(cfg["lr"]) * float(cfg["lr_scale"]), weight_decay=float(cfg["weight_decay"]),
                            warmup_ratio=float(cfg["warmup_ratio"]), max_steps=total, batch_size=args.batch_size,
                            max_grad_norm=float(cfg["max_grad_norm"]), checkpoint_every=10**9, seed=int(cfg["seed"]))
    paths = [*PATHS, "trl_tower"] if args.trl_tower else list(PATHS)
    load_before = os.getloadavg()
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {m: {p: [] for p in paths} for m in args.modes}
    for rep in range(args.repeats):
        order = paths if rep % 2 == 0 else paths[::-1]
        for mode in args.modes:
            for path in order:
                model = fresh_model(tiny_dir, mode, cfg, args.device, int(cfg["seed"]))
                strategy = sft.SFTStrategy(examples, CLASSES, processor.tokenizer, cfg)
                if path == "engine":
                    res = run_engine(model, strategy, tc, args.device, args.warmup)
                elif path == "trl":
                    res = run_trl(model, processor, strategy, tc, args.device, args.warmup)
                else:
                    res = run_trl(model, processor, TowerSFTStrategy(strategy, model, processor, waves), tc,
                                  args.device, args.warmup)
                runs[mode][path].append({"repeat": rep, **res})
                print(f"  rep {rep} {mode:>4} {path:<9} {res['steps_per_s']:7.2f} steps/s", flush=True)
    rows = []
    for mode in args.modes:
        row: dict[str, Any] = {"mode": mode, **{p: summarize(runs[mode][p]) for p in paths}}
        row["engine_over_trl"] = paired_ratio(runs[mode]["engine"], runs[mode]["trl"])
        if "trl_tower" in paths:
            row["engine_over_trl_tower"] = paired_ratio(runs[mode]["engine"], runs[mode]["trl_tower"])
        rows.append(row)
    name, slug = results.bench_device(args.device)
    print(f"\nSFT steps/s, tiny model, batch {args.batch_size}, {args.steps} timed steps after {args.warmup}, "
          f"median of {args.repeats} ({name}, {torch.get_num_threads()} thread(s))")
    print(format_table(rows, paths))
    import accelerate
    import peft
    import trl

    result = {
        "bench": "sft_vs_trl", "device": args.device, "device_name": name, "smoke": args.smoke,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                     "peft": peft.__version__, "accelerate": accelerate.__version__},
        "env": results.env_info(args.device),
        "settings": {"steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size,
                     "examples": args.examples, "repeats": args.repeats, "modes": args.modes, "dtype": "float32",
                     "lr": tc.lr, "weight_decay": tc.weight_decay, "max_grad_norm": tc.max_grad_norm,
                     "lora_r": cfg["lora_r"], "lora_alpha": cfg["lora_alpha"], "lora_dropout": cfg["lora_dropout"],
                     "mean_sequence_tokens": float(np.mean([len(e.encoded.prompt_ids) + len(e.completion.ids)
                                                            for e in examples])),
                     "mean_audio_tokens": float(np.mean([e.encoded.audio.shape[0] for e in examples])),
                     "tiny_spec": standin.tiny_spec(cfg)},
        "rows": rows,
    }
    results.write_bench("sft_vs_trl", slug, result, args.out)
    return result


if __name__ == "__main__":
    main()
