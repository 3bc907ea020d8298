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

import copy
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ambinb import audio as A  # noqa: E402
from ambinb import config, engine, prompt  # noqa: E402
from ambinb.examples import Example  # noqa: E402
from ambinb.strategies import sft  # noqa: E402
from bench import trainers  # noqa: E402
from bench.trainers import CLASSES  # noqa: E402

PATHS = ("engine", "trl")
SMOKE = {"steps": 2, "warmup": 1, "batch_size": 2, "examples": 4, "repeats": 1}


# --- the data both paths train on -------------------------------------------------------------

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
            return trainers.FixedOrder(self.order)

    return AudioSFTTrainer


# --- timing -----------------------------------------------------------------------------------

def run_trl(model: Any, processor: Any, strategy: Any, tc: engine.TrainConfig, device: str,
            warmup: int) -> dict[str, Any]:
    from transformers import PrinterCallback
    from trl import SFTConfig

    clock = trainers.step_clock(device)
    losses: list[float] = []
    inner = strategy.loss

    def logged_loss(model, indices, step):  # the engine logs every step's loss; so does this path
        loss, stats = inner(model, indices, step)
        losses.append(float(loss.detach()))
        return loss, stats

    traced = copy.copy(strategy)
    traced.loss = logged_loss
    with tempfile.TemporaryDirectory(prefix="bench_trl_") as out:
        args = SFTConfig(**trainers.trl_args(out, tc, device), activation_checkpointing=False,
                         dataset_kwargs={"skip_prepare_dataset": True})
        dataset, order = trainers.index_dataset(strategy.num_examples(), tc)
        trainer = trl_trainer_class()(model=model, args=args, train_dataset=dataset, processing_class=processor,
                                      data_collator=trainers.collate_indices, callbacks=[clock], strategy=traced,
                                      order=order)
        trainer.remove_callback(PrinterCallback)  # the end-of-run summary line; logging is off in both paths
        trainer.train()
    return trainers.trl_rate(clock, tc.max_steps, warmup, losses)


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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = trainers.parser(__doc__, 8, SMOKE)
    parser.add_argument("--trl-tower", action="store_true", help="also time TRL running the frozen tower each step")
    args = trainers.parse(parser, argv)
    cfg = config.resolve(strategy="sft")
    tiny_dir, _, processor, examples, waves, tc = trainers.setup(args, cfg)
    paths = [*PATHS, "trl_tower"] if args.trl_tower else list(PATHS)

    def run_one(mode: str, path: str) -> dict[str, Any]:
        model = trainers.fresh_model(tiny_dir, mode, cfg, args.device, int(cfg["seed"]))
        strategy = sft.SFTStrategy(examples, CLASSES, processor.tokenizer, cfg)
        if path == "engine":
            return trainers.run_engine(model, strategy, tc, args.device, args.warmup)
        if path == "trl_tower":
            strategy = TowerSFTStrategy(strategy, model, processor, waves)
        return run_trl(model, processor, strategy, tc, args.device, args.warmup)

    rows = trainers.rows_of(trainers.repeat_runs(args, paths, run_one), paths)
    sizes = {"mean_sequence_tokens": float(np.mean([len(e.encoded.prompt_ids) + len(e.completion.ids)
                                                    for e in examples])),
             "mean_audio_tokens": float(np.mean([e.encoded.audio.shape[0] for e in examples]))}
    return trainers.finish("sft_vs_trl", "SFT", args, rows, format_table(rows, paths),
                           trainers.settings(args, tc, cfg, **sizes))


if __name__ == "__main__":
    main()
