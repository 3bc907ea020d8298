"""Engine vs TRL for DPO: steps per second of ambinb's DPO loss path against TRL's DPOTrainer, same pairs.

    .venv/bin/python bench/dpo_vs_trl.py                         # LoRA and full FT, batch 4 pairs, 5 x 20 timed steps
    .venv/bin/python bench/dpo_vs_trl.py --modes lora --repeats 3 --steps 40
    .venv/bin/python bench/dpo_vs_trl.py --smoke --out /tmp/dpo_vs_trl.json   # 1 timed step: every path runs

ambinb's DPO (:class:`ambinb.strategies.dpo.DPOStrategy`) samples its negatives on-policy each step; TRL's
``DPOTrainer`` is offline (the pairs are data). To time the same work on both sides, the rollout is
taken out of the comparison: every utterance gets one fixed rejected completion (a second synthetic
think block and answer, as an offline preference set would hold), and during ambinb's loss
``ambinb.rollout.rollout`` returns that completion (:class:`OfflinePairsDPO`) with ``tau = -1``, so
every utterance forms its pair. What remains is the DPO loss path proper: the policy forward on the
chosen and rejected rows, the reference forward (LoRA: the adapter disabled; full fine-tune: one
frozen copy), Eq. 5 plus lambda1 * KL at the positive's answer slot plus lambda2 * CE (Eq. 4),
backward and the AdamW step. Model, data (:func:`bench.sft_vs_trl.make_examples`), optimiser,
schedule, clipping, batch order and timing window are those of ``bench/sft_vs_trl.py``.

Paths, each a fresh model per repetition (order alternating between repetitions):

* ``engine``: :func:`ambinb.engine.train` with :class:`OfflinePairsDPO` (the cached tower output).
* ``trl``: TRL's ``DPOTrainer`` (its training loop, optimiser and scheduler) with ``compute_loss``
  calling the very same loss on index batches; the first step's loss is identical to the engine's
  (``loss_first``, checked by the smoke test). This isolates the trainer loop.
* ``trl_native``: TRL's ``DPOTrainer`` with its own loss code (``_compute_loss``: one forward of the
  concatenated ``[chosen; rejected]`` rows through the model with TRL's fused LM head, the reference
  forward through a frozen ``"ref"`` copy of the LoRA adapter, or a frozen model copy for the full
  fine-tune, and its metrics), with ``loss_type = ["sigmoid", "sft"]`` and ``loss_weights = [1,
  lambda2]``: Eq. 5 plus lambda2 * NLL of the chosen completion, no KL at the answer slot.
  ``DPOTrainer`` has no notion of audio; it forwards whatever the collator puts in the batch to the
  model. Its collator here (:func:`native_collator`) is TRL's ``DataCollatorForPreference`` on the
  token ids (prompt ids with the ``<|AUDIO|>`` positions expanded, chosen ids, rejected ids) plus the
  utterances' log-mel features and masks, precomputed once and repeated for the chosen and the
  rejected half. So Qwen2-Audio's own forward runs the frozen audio tower on all 2B rows in both the
  policy and the reference forward of every step, where ambinb runs it once per utterance before
  training. That is what the stock trainer does with an audio model; the ratio engine / trl_native
  therefore measures the trainer as it comes (its loss lacks the KL term, which is cheap: one (P, C)
  gather of hidden states already computed), while engine / trl measures the loop alone.

Settings both TRL paths need (nothing else changed): ``_prepare_dataset`` returns the dataset of
indices unchanged (TRL would tokenise text columns); ``disable_dropout=False`` (the engine keeps the
LoRA dropout of 0.05); ``gradient_checkpointing=False`` and ``bf16=False`` (``DPOConfig`` turns both
on by default); logging and checkpoints off. Results go to ``bench/results/dpo_vs_trl_<device>.json``.

Measured so far (CPU only, one thread, 4 pairs per step, 3 repetitions of 10 timed steps, on a
shared 2-core machine with a load average of 3-4 from other work, so the ranges are wide): full
fine-tune engine / trl 1.19x (1.13-1.24), engine / trl_native 12x (8.9-16); LoRA engine / trl 0.71x
(0.43-0.97, inconclusive under that load), engine / trl_native 3.3x (2.8-5.6).
"""

from __future__ import annotations

import argparse
import os
import random
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
from ambinb import config, engine, prompt, results, rollout, standin  # noqa: E402
from ambinb import model as M  # noqa: E402
from ambinb.run import Example  # noqa: E402
from ambinb.strategies import dpo  # noqa: E402
from bench.sft_vs_trl import (  # noqa: E402
    CLASSES,
    FixedOrder,
    add_run_arguments,
    batch_order,
    collate_indices,
    fresh_model,
    make_examples,
    paired_ratio,
    quiet_libraries,
    run_engine,
    step_clock,
    summarize,
    window_rate,
)

PATHS = ("engine", "trl", "trl_native")


# --- the pairs ------------------------------------------------------------------------------

def rejected_completions(processor: Any, examples: list[Example], seed: int, preset: str
                         ) -> dict[str, rollout.Trajectory]:
    """One rejected completion per utterance (a second synthetic think block and answer), as a trajectory."""
    rng = random.Random(seed + 1)
    tok = processor.tokenizer
    out = {}
    for ex in examples:
        think, answer = standin.synthetic_completion(rng, standin.synthetic_transcript(rng), CLASSES)
        ids = prompt.completion_ids(tok, think, answer, preset).ids
        out[ex.utt_id] = rollout.make_trajectory(tok, ex.utt_id, ids, "answer_close", CLASSES)
    return out


class OfflinePairsDPO:
    """ambinb's DPO loss (Eq. 4-5) with each utterance's rollout replaced by its fixed rejected completion.

    ``cfg["tau"]`` must be below 0 so that every utterance forms its pair (JS >= 0 > tau).
    """

    def __init__(self, strategy: dpo.DPOStrategy, rejected: dict[str, rollout.Trajectory]):
        if strategy.tau >= 0 or strategy.r != 1:
            raise ValueError(f"OfflinePairsDPO needs tau < 0 and dpo_rollouts = 1, got {strategy.tau}, {strategy.r}")
        self.strategy = strategy
        self.rejected = rejected

    def num_examples(self) -> int:
        return self.strategy.num_examples()

    def _fixed_rollout(self, model, processor, encoded, classes, cfg, k=None, greedy=False, generator=None):
        p_hat = torch.full((len(encoded), 1, len(classes)), 1.0 / len(classes))
        return rollout.GroupRollout([[self.rejected[e.utt_id]] for e in encoded], p_hat, list(classes),
                                    {"generate": 0.0, "readout": 0.0})

    def loss(self, model: Any, indices: list[int], step: int, micro: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        plain = rollout.rollout
        rollout.rollout = self._fixed_rollout
        try:
            return self.strategy.loss(model, indices, step, micro)
        finally:
            rollout.rollout = plain


# --- the TRL side ---------------------------------------------------------------------------

def native_collator(examples: list[Example], rejected: dict[str, rollout.Trajectory], mels: torch.Tensor,
                    mel_masks: torch.Tensor, pad_id: int) -> Any:
    """TRL's preference collator on the pairs' ids, plus each row's log-mel features (see the module docstring).

    The batch rows are ``[chosen_1..B, rejected_1..B]`` (TRL's layout), so the features are the
    batch's mels twice over.
    """
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    ids_collator = DataCollatorForPreference(pad_token_id=pad_id)

    def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        idx = [int(r["index"]) for r in rows]
        batch = ids_collator([{"prompt_ids": examples[i].encoded.prompt_ids, "chosen_ids": examples[i].completion.ids,
                               "rejected_ids": rejected[examples[i].utt_id].token_ids} for i in idx])
        batch["input_features"] = torch.cat([mels[idx], mels[idx]])
        batch["feature_attention_mask"] = torch.cat([mel_masks[idx], mel_masks[idx]])
        return batch

    return collate


def trl_trainer_class(native: bool) -> type:
    """``DPOTrainer`` with the dataset left as is and the engine's batch order; ambinb's loss unless ``native``."""
    from trl import DPOTrainer

    class AudioDPOTrainer(DPOTrainer):
        def __init__(self, *args: Any, strategy: Any, order: list[int], losses: list[float], **kwargs: Any):
            self.strategy = strategy
            self.order = order
            self.losses = losses
            super().__init__(*args, **kwargs)

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if native:
                out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
                loss = out[0] if return_outputs else out
            else:
                loss, _ = self.strategy.loss(model, inputs["index"].tolist(), self.state.global_step)
                out = (loss, None) if return_outputs else loss
            self.losses.append(float(loss.detach()))  # the engine logs every step's loss; so does this path
            return out

        def _get_train_sampler(self, train_dataset=None):
            return FixedOrder(self.order)

    return AudioDPOTrainer


def run_trl(model: Any, processor: Any, strategy: OfflinePairsDPO, tc: engine.TrainConfig, device: str, warmup: int,
            native: bool, collator: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import DPOConfig

    total = tc.max_steps
    clock = step_clock(device)
    losses: list[float] = []
    inner = strategy.strategy
    ref_model = None if inner.reference.uses_adapter else inner.reference.copy
    with tempfile.TemporaryDirectory(prefix="bench_trl_dpo_") as out:
        args = DPOConfig(
            output_dir=out, max_steps=total, per_device_train_batch_size=tc.batch_size, gradient_accumulation_steps=1,
            learning_rate=tc.lr, weight_decay=tc.weight_decay, warmup_steps=tc.warmup_ratio,
            lr_scheduler_type="cosine", optim="adamw_torch", max_grad_norm=tc.max_grad_norm, seed=tc.seed,
            gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=not device.startswith("cuda"),
            save_strategy="no", eval_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
            dataloader_num_workers=0, dataloader_pin_memory=False, remove_unused_columns=False,
            disable_dropout=False, beta=float(cfg["beta"]), loss_type=["sigmoid", "sft"],
            loss_weights=[1.0, float(cfg["dpo_ce_weight"])], max_length=None, precompute_ref_log_probs=False)
        dataset = Dataset.from_dict({"index": list(range(strategy.num_examples()))})
        order = batch_order(total, strategy.num_examples(), tc.batch_size, tc.seed)
        trainer = trl_trainer_class(native)(
            model=model, ref_model=ref_model, args=args, train_dataset=dataset, processing_class=processor,
            data_collator=collator if native else collate_indices, callbacks=[clock], strategy=strategy,
            order=order, losses=losses)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    if len(clock.times) != total:
        raise RuntimeError(f"TRL took {len(clock.times)} optimizer steps, expected {total}")
    rate, seconds = window_rate(clock.times, warmup)
    return {"steps_per_s": rate, "seconds": seconds, "loss_first": losses[0], "loss_last": losses[-1]}


def format_table(rows: list[dict[str, Any]]) -> str:
    """Median steps/s per path, then engine / trl and engine / trl_native (median of the paired ratios, range)."""
    lines = [f"{'mode':<5} {'engine':>8} {'trl':>8} {'trl_native':>11} {'engine/trl':>11} {'range':>12} "
             f"{'engine/trl_native':>18} {'range':>12}"]
    for row in rows:
        a, b = row["engine_over_trl"], row["engine_over_trl_native"]
        rates = [row[p]["steps_per_s_median"] for p in PATHS]
        lines.append(f"{row['mode']:<5} {rates[0]:8.2f} {rates[1]:8.2f} {rates[2]:11.2f}"
                     f" {a['median']:10.2f}x {a['min']:5.2f}-{a['max']:.2f}x"
                     f" {b['median']:17.2f}x {b['min']:5.2f}-{b['max']:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps before the timed ones")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per step (2x rows per forward)")
    parser.add_argument("--examples", type=int, default=32, help="synthetic training utterances")
    add_run_arguments(parser)
    parser.add_argument("--smoke", action="store_true", help="1 timed step after 1 warm-up, batch 2, 4 utterances")
    parser.add_argument("--out", default="", help="JSON path (default bench/results/dpo_vs_trl_<device>.json)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.warmup, args.batch_size, args.examples, args.repeats = 1, 1, 2, 4, 1
    quiet_libraries(args.threads)
    import transformers
    warnings.filterwarnings("ignore", category=UserWarning, module="trl")

    cfg = config.resolve(strategy="dpo", overrides={"tau": -1.0, "dpo_rollouts": 1})
    tiny_dir = standin.ensure_tiny(cfg)
    base, processor = M.load_checkpoint(tiny_dir, dtype="float32", device=args.device)
    examples, waves = make_examples(base, processor, args.examples, cfg["seed"], cfg)
    rejected = rejected_completions(processor, examples, int(cfg["seed"]), cfg["prompt_preset"])
    mels, mel_masks = A.AudioFeatureCache(base, processor.feature_extractor).mels([e.utt_id for e in examples], waves)
    collator = native_collator(examples, rejected, mels, mel_masks, int(processor.tokenizer.pad_token_id))
    total = args.warmup + args.steps
    tc = engine.TrainConfig(lr=float(cfg["lr"]) * float(cfg["lr_scale"]), weight_decay=float(cfg["weight_decay"]),
                            warmup_ratio=float(cfg["warmup_ratio"]), max_steps=total, batch_size=args.batch_size,
                            max_grad_norm=float(cfg["max_grad_norm"]), checkpoint_every=10**9, seed=int(cfg["seed"]))
    load_before = os.getloadavg()
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {m: {p: [] for p in PATHS} for m in args.modes}
    for rep in range(args.repeats):
        order = PATHS if rep % 2 == 0 else PATHS[::-1]
        for mode in args.modes:
            for path in order:
                model = fresh_model(tiny_dir, mode, cfg, args.device, int(cfg["seed"]))
                strategy = OfflinePairsDPO(dpo.DPOStrategy(model, processor, examples, CLASSES, cfg), rejected)
                if path == "engine":
                    res = run_engine(model, strategy, tc, args.device, args.warmup)
                else:
                    res = run_trl(model, processor, strategy, tc, args.device, args.warmup, path == "trl_native",
                                  collator, cfg)
                runs[mode][path].append({"repeat": rep, **res})
                print(f"  rep {rep} {mode:>4} {path:<10} {res['steps_per_s']:7.2f} steps/s", flush=True)
    rows = []
    for mode in args.modes:
        row: dict[str, Any] = {"mode": mode, **{p: summarize(runs[mode][p]) for p in PATHS}}
        row["engine_over_trl"] = paired_ratio(runs[mode]["engine"], runs[mode]["trl"])
        row["engine_over_trl_native"] = paired_ratio(runs[mode]["engine"], runs[mode]["trl_native"])
        rows.append(row)
    name, slug = results.bench_device(args.device)
    print(f"\nDPO steps/s, tiny model, {args.batch_size} pairs per step, {args.steps} timed steps after {args.warmup}, "
          f"median of {args.repeats} ({name}, {torch.get_num_threads()} thread(s))")
    print(format_table(rows))
    import accelerate
    import peft
    import trl

    result = {
        "bench": "dpo_vs_trl", "device": args.device, "device_name": name, "smoke": args.smoke,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                     "peft": peft.__version__, "accelerate": accelerate.__version__},
        "env": results.env_info(args.device),
        "settings": {"steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size,
                     "examples": args.examples, "repeats": args.repeats, "modes": args.modes, "dtype": "float32",
                     "lr": tc.lr, "weight_decay": tc.weight_decay, "max_grad_norm": tc.max_grad_norm,
                     "beta": float(cfg["beta"]), "dpo_kl_weight": float(cfg["dpo_kl_weight"]),
                     "dpo_ce_weight": float(cfg["dpo_ce_weight"]), "answer_ce": cfg["answer_ce"],
                     "lora_r": cfg["lora_r"], "lora_alpha": cfg["lora_alpha"], "lora_dropout": cfg["lora_dropout"],
                     "mean_prompt_tokens": float(np.mean([len(e.encoded.prompt_ids) for e in examples])),
                     "mean_chosen_tokens": float(np.mean([len(e.completion.ids) for e in examples])),
                     "mean_rejected_tokens": float(np.mean([len(t.token_ids) for t in rejected.values()])),
                     "tiny_spec": standin.tiny_spec(cfg)},
        "rows": rows,
    }
    results.write_bench("dpo_vs_trl", slug, result, args.out)
    return result



if __name__ == "__main__":
    main()
