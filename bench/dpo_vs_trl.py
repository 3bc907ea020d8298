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

import random
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ambinb import audio as A  # noqa: E402
from ambinb import config, engine, prompt, rollout, standin  # noqa: E402
from ambinb.examples import Example  # noqa: E402
from ambinb.strategies import dpo  # noqa: E402
from bench import trainers  # noqa: E402
from bench.trainers import CLASSES  # noqa: E402

PATHS = ("engine", "trl", "trl_native")
SMOKE = {"steps": 1, "warmup": 1, "batch_size": 2, "examples": 4, "repeats": 1}


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
            return trainers.FixedOrder(self.order)

    return AudioDPOTrainer


def run_trl(model: Any, processor: Any, strategy: OfflinePairsDPO, tc: engine.TrainConfig, device: str, warmup: int,
            native: bool, collator: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    from transformers import PrinterCallback
    from trl import DPOConfig

    clock = trainers.step_clock(device)
    losses: list[float] = []
    inner = strategy.strategy
    ref_model = None if inner.reference.uses_adapter else inner.reference.copy
    with tempfile.TemporaryDirectory(prefix="bench_trl_dpo_") as out:
        args = DPOConfig(**trainers.trl_args(out, tc, device), gradient_checkpointing=False, disable_dropout=False,
                         beta=float(cfg["beta"]), loss_type=["sigmoid", "sft"],
                         loss_weights=[1.0, float(cfg["dpo_ce_weight"])], max_length=None,
                         precompute_ref_log_probs=False)
        dataset, order = trainers.index_dataset(strategy.num_examples(), tc)
        trainer = trl_trainer_class(native)(
            model=model, ref_model=ref_model, args=args, train_dataset=dataset, processing_class=processor,
            data_collator=collator if native else trainers.collate_indices, callbacks=[clock], strategy=strategy,
            order=order, losses=losses)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return trainers.trl_rate(clock, tc.max_steps, warmup, losses)


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
    args = trainers.parse(trainers.parser(__doc__, 4, SMOKE), argv)
    warnings.filterwarnings("ignore", category=UserWarning, module="trl")
    # tau < 0: every utterance forms its pair (OfflinePairsDPO); outside the params' range, so set after resolving
    cfg = {**config.resolve(strategy="dpo", overrides={"dpo_rollouts": 1}), "tau": -1.0}
    tiny_dir, base, processor, examples, waves, tc = trainers.setup(args, cfg)
    rejected = rejected_completions(processor, examples, int(cfg["seed"]), cfg["prompt_preset"])
    mels, mel_masks = A.AudioFeatureCache(base, processor.feature_extractor).mels([e.utt_id for e in examples], waves)
    collator = native_collator(examples, rejected, mels, mel_masks, int(processor.tokenizer.pad_token_id))

    def run_one(mode: str, path: str) -> dict[str, Any]:
        model = trainers.fresh_model(tiny_dir, mode, cfg, args.device, int(cfg["seed"]))
        strategy = OfflinePairsDPO(dpo.DPOStrategy(model, processor, examples, CLASSES, cfg), rejected)
        if path == "engine":
            return trainers.run_engine(model, strategy, tc, args.device, args.warmup)
        return run_trl(model, processor, strategy, tc, args.device, args.warmup, path == "trl_native", collator, cfg)

    rows = trainers.rows_of(trainers.repeat_runs(args, list(PATHS), run_one), list(PATHS))
    sizes = {"beta": float(cfg["beta"]), "dpo_kl_weight": float(cfg["dpo_kl_weight"]),
             "dpo_ce_weight": float(cfg["dpo_ce_weight"]), "answer_ce": cfg["answer_ce"],
             "mean_prompt_tokens": float(np.mean([len(e.encoded.prompt_ids) for e in examples])),
             "mean_chosen_tokens": float(np.mean([len(e.completion.ids) for e in examples])),
             "mean_rejected_tokens": float(np.mean([len(t.token_ids) for t in rejected.values()]))}
    return trainers.finish("dpo_vs_trl", "DPO", args, rows, format_table(rows),
                           trainers.settings(args, tc, cfg, **sizes))


if __name__ == "__main__":
    main()
