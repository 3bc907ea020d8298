"""What the engine-vs-TRL benchmarks (``sft_vs_trl.py``, ``dpo_vs_trl.py``) share: the synthetic
utterances both paths train on, the engine's batch order replayed by TRL's sampler, the step clocks,
the run options and the repetition loop, and the paired ratios of the table.

Not a script: the benchmark scripts import it (and :mod:`bench.common`), never each other.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ambinb import audio as A
from ambinb import engine, prompt, standin
from ambinb import model as M
from ambinb.examples import Example
from bench import common

CLASSES = common.CLASSES


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


def step_clock(device: str) -> Any:
    """A ``TrainerCallback`` that records the wall time at the end of every optimizer step."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            common.sync(device)
            self.times.append(time.perf_counter())

    return StepClock()


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
        common.sync(device)
        times.append(time.perf_counter())

    with tempfile.TemporaryDirectory(prefix="bench_engine_") as out:
        accelerator = engine.make_accelerator({"device": device, "dtype": "float32", "trackers": ""}, Path(out))
        history = engine.train(model, strategy, tc, out, accelerator, resume=False, progress=False, on_step=on_step)
    rate, seconds = window_rate(times, warmup)
    return {"steps_per_s": rate, "seconds": seconds, "loss_first": history[0]["loss"], "loss_last": history[-1]["loss"]}


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


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every engine-vs-TRL benchmark shares beside :func:`bench.common.parser`'s: repeats, modes."""
    parser.add_argument("--repeats", type=int, default=5, help="runs per path and mode (alternating order)")
    parser.add_argument("--modes", nargs="+", default=["lora", "full"], choices=["lora", "full"])


def train_config(cfg: dict[str, Any], total: int, batch_size: int) -> engine.TrainConfig:
    """The engine's settings for ``total`` optimizer steps of ``batch_size``, no checkpoint inside the timed window."""
    return dataclasses.replace(engine.TrainConfig.from_cfg(cfg), epochs=1.0, max_steps=total, batch_size=batch_size,
                               grad_accum=1, checkpoint_every=10**9, trackers=[])


def trl_args(out: str, tc: engine.TrainConfig, device: str) -> dict[str, Any]:
    """The ``SFTConfig`` / ``DPOConfig`` arguments both TRL paths share: the engine's optimizer and
    schedule, float32, no accumulation, no checkpoints, no logging, the dataset of indices kept as is."""
    return dict(output_dir=out, max_steps=tc.max_steps, per_device_train_batch_size=tc.batch_size,
                gradient_accumulation_steps=1, learning_rate=tc.lr, weight_decay=tc.weight_decay,
                warmup_steps=tc.warmup_ratio, lr_scheduler_type="cosine", optim="adamw_torch",
                max_grad_norm=tc.max_grad_norm, seed=tc.seed, bf16=False, fp16=False,
                use_cpu=not common.is_cuda(device), save_strategy="no", eval_strategy="no", logging_strategy="no",
                report_to="none", disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False,
                remove_unused_columns=False)


def index_dataset(n: int, tc: engine.TrainConfig) -> tuple[Any, list[int]]:
    """TRL's dataset (the example indices) and the engine's batch order for ``tc.max_steps`` steps."""
    from datasets import Dataset

    return Dataset.from_dict({"index": list(range(n))}), batch_order(tc.max_steps, n, tc.batch_size, tc.seed)


def trl_rate(clock: Any, total: int, warmup: int, losses: list[float]) -> dict[str, Any]:
    """Steps/s of a finished TRL run from its clock (which must have seen every step), first and last loss."""
    if len(clock.times) != total:
        raise RuntimeError(f"TRL took {len(clock.times)} optimizer steps, expected {total}")
    rate, seconds = window_rate(clock.times, warmup)
    return {"steps_per_s": rate, "seconds": seconds, "loss_first": losses[0], "loss_last": losses[-1]}


def repeat_runs(args: argparse.Namespace, paths: list[str], run_one: Callable[[str, str], dict[str, Any]]
                ) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``runs[mode][path]``: ``run_one(mode, path)`` for every repetition, mode and path, the order of the
    paths alternating between repetitions (adjacent runs share the machine's load)."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {m: {p: [] for p in paths} for m in args.modes}
    for rep in range(args.repeats):
        for mode in args.modes:
            for path in paths if rep % 2 == 0 else paths[::-1]:
                res = run_one(mode, path)
                runs[mode][path].append({"repeat": rep, **res})
                print(f"  rep {rep} {mode:>4} {path:<10} {res['steps_per_s']:7.2f} steps/s", flush=True)
    return runs


def rows_of(runs: dict[str, dict[str, list[dict[str, Any]]]], paths: list[str]) -> list[dict[str, Any]]:
    """One row per mode: each path's summary and the engine's paired ratio over every other path."""
    rows = []
    for mode, by_path in runs.items():
        row: dict[str, Any] = {"mode": mode, **{p: summarize(by_path[p]) for p in paths}}
        row.update({f"engine_over_{p}": paired_ratio(by_path["engine"], by_path[p]) for p in paths if p != "engine"})
        rows.append(row)
    return rows


def settings(args: argparse.Namespace, tc: engine.TrainConfig, cfg: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The run settings every engine-vs-TRL result records."""
    return {"steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size, "examples": args.examples,
            "repeats": args.repeats, "modes": args.modes, "dtype": "float32", "lr": tc.lr,
            "weight_decay": tc.weight_decay, "max_grad_norm": tc.max_grad_norm, "lora_r": cfg["lora_r"],
            "lora_alpha": cfg["lora_alpha"], "lora_dropout": cfg["lora_dropout"], "tiny_spec": standin.tiny_spec(cfg),
            **extra}


def parser(doc: str | None, batch_size: int, smoke: dict[str, int]) -> argparse.ArgumentParser:
    """The options of an engine-vs-TRL benchmark; ``--smoke`` sets the values in ``smoke`` (see :func:`parse`)."""
    p = common.parser(doc)
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps before the timed ones")
    p.add_argument("--batch-size", type=int, default=batch_size, help="examples (DPO: pairs) per step")
    p.add_argument("--examples", type=int, default=32, help="synthetic training utterances")
    add_run_arguments(p)
    p.add_argument("--smoke", action="store_true", help=", ".join(f"{k} {v}" for k, v in smoke.items()))
    p.set_defaults(smoke_values=smoke)
    return p


def parse(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parsed options, the smoke values applied, the libraries quietened."""
    args = p.parse_args(argv)
    if args.smoke:
        vars(args).update(args.smoke_values)
    common.quiet_libraries(args.threads)
    return args


def setup(args: argparse.Namespace, cfg: dict[str, Any]
          ) -> tuple[Path, Any, Any, list[Example], list[np.ndarray], engine.TrainConfig]:
    """The stand-in's folder, a model and its processor, the synthetic examples and waves, the engine's settings."""
    tiny_dir, base, processor = common.tiny_model(cfg, args.device)
    examples, waves = make_examples(base, processor, args.examples, cfg["seed"], cfg)
    return tiny_dir, base, processor, examples, waves, train_config(cfg, args.warmup + args.steps, args.batch_size)


def finish(bench: str, what: str, args: argparse.Namespace, rows: list[dict[str, Any]], table: str,
           run_settings: dict[str, Any]) -> dict[str, Any]:
    """Print the table under its heading and write the result (``bench/results/<bench>_<card>.json``)."""
    name = common.results.bench_device(args.device)[0]
    print(f"\n{what} steps/s, tiny model, batch {args.batch_size}, {args.steps} timed steps after {args.warmup}, "
          f"median of {args.repeats} ({name}, {torch.get_num_threads()} thread(s))")
    print(table)
    result = {**common.header(bench, args.device, smoke=args.smoke), "settings": run_settings, "rows": rows}
    common.write(bench, args.device, result, args.out)
    return result
