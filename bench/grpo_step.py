"""GRPO step time: shared-encoder group rollouts against the naive rollout path, at K = 8.

    .venv/bin/python bench/grpo_step.py                      # tiny model, CPU, 4 utterances, K = 8
    .venv/bin/python bench/grpo_step.py --device cuda --k 8 16

One GRPO optimizer step (:meth:`ambinb.strategies.grpo.GRPOStrategy.loss`, backward, AdamW step) on the same
utterances, timed twice, with only the rollout swapped:

* ``shared``: :func:`ambinb.rollout.rollout` (the tower output cached once per utterance before
  training, as the engine does; all prompts prefilled once, the KV cache repeated K times, B*K rows
  decoded together);
* ``naive``: :func:`ambinb.rollout.generate_naive` (``model.generate`` K times per utterance on the
  processor's full inputs, so the encoder and the prefill run K times), then the same trajectory
  parsing and readout.

Everything after the rollout (rewards, advantages, policy / reference forwards, backward) is the
same code in both. Sampled lengths differ between the paths, so the tokens generated are printed
beside the wall-time ratio. One warm-up step first, then one timed step per path and K. Results go
to ``bench/results/grpo_step_<device>.json``.

Measured (tiny model, full fine-tune as ``params/models/tiny.yaml`` sets it, 4 utterances of 2 s,
K = 8, 128-token budget): on one thread of a shared 2-core CPU the naive step took 19.3 s and the
shared one 1.87 s (10.3x wall, 9.3x tokens/s; an earlier run under heavier load gave 7.0x); on an
H200, 10.5 s against 0.41 s (25x) at K = 8 and 20.1 s against 0.47 s (43x) at K = 16.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ambinb import audio as A  # noqa: E402
from ambinb import config, lm, prompt, readout, rollout  # noqa: E402
from ambinb import model as M  # noqa: E402
from ambinb.examples import Example  # noqa: E402
from ambinb.strategies import grpo  # noqa: E402
from bench import common  # noqa: E402
from bench.common import CLASSES, TRANSCRIPTS, waves  # noqa: E402

THINK_ANSWERS = ["anger", "sadness", "neutral", "happiness"]


def naive_rollout(sources: dict[str, tuple[str, object]]):
    """A drop-in for ``rollout.rollout`` that generates with :func:`rollout.generate_naive`."""
    def run(model, processor, encoded, classes, cfg, k=None, greedy=False, generator=None):
        tok = processor.tokenizer
        k = int(k or cfg["rollout_k"])
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device)) if generator else 0
        was_training = model.training
        model.eval()
        t0 = time.perf_counter()
        groups = rollout.generate_naive(model, processor, [sources[e.utt_id][0] for e in encoded],
                                        [sources[e.utt_id][1] for e in encoded], k, int(cfg["max_new_tokens"]),
                                        greedy, float(cfg["temperature"]), float(cfg["top_p"]), seed)
        t1 = time.perf_counter()
        eos = set(prompt.eos_ids(tok))
        trajectories = [[rollout.make_trajectory(tok, e.utt_id, ids, "eos" if ids and ids[-1] in eos else "budget",
                                                 classes) for ids in group] for e, group in zip(encoded, groups)]
        prefixes = [e.prompt_ids + t.readout_ids for e, group in zip(encoded, trajectories) for t in group]
        with torch.no_grad():
            p = readout.read_out(model, prefixes, [e.audio for e in encoded for _ in range(k)],
                                 prompt.class_ids(tok, classes), int(tok.pad_token_id))
        if was_training:
            model.train()
        return rollout.GroupRollout(trajectories, p.view(len(encoded), k, len(classes)).cpu(), list(classes),
                                    {"generate": t1 - t0, "readout": time.perf_counter() - t1})
    return run


def tone_examples(model, processor, n: int, seconds: float) -> tuple[list[Example], dict[str, tuple[str, object]]]:
    """``n`` training examples on test tones (a fixed gold CoT each, uniform p_gt), and each one's
    ``(prompt text, waveform)`` for the naive path; tower outputs through a fresh feature cache."""
    tok = processor.tokenizer
    texts_raw = (TRANSCRIPTS * n)[:n]
    ws = waves(n, seconds)
    ids = [f"u{i}" for i in range(n)]
    feats = A.AudioFeatureCache(model, processor.feature_extractor).features(ids, ws)
    examples, sources = [], {}
    for i, (u, t, f, w) in enumerate(zip(ids, texts_raw, feats, ws)):
        answer = THINK_ANSWERS[i % len(THINK_ANSWERS)]
        think = ("<think>\nKeywords: loud\nStep 1 (text): The words are tense.\nStep 2 (audio): Volume: loud. "
                 f"Speed: fast. Pitch: high. Tone: harsh.\nStep 3 (synthesis): Mostly {answer}.\n</think>")
        text = prompt.prompt_text(processor, t, CLASSES, utt_id=u)
        enc = prompt.Encoded(u, prompt.prompt_ids(tok, text, f.shape[0]), f)
        examples.append(Example(u, enc, prompt.completion_ids(tok, think, answer),
                                    np.full(len(CLASSES), 1 / len(CLASSES))))
        sources[u] = (text, w)
    return examples, sources


def time_path(path: str, k: int, model: Any, processor: Any, examples: list[Example], sources: dict,
              cfg: dict[str, Any], device: str) -> tuple[float, dict[str, float], int]:
    """One timed GRPO step (after a warm-up step) with ``path``'s rollout: seconds, stats, encoder runs."""
    plain = grpo.rollout.rollout
    indices = list(range(len(examples)))
    grpo.rollout.rollout = plain if path == "shared" else naive_rollout(sources)
    try:
        strategy = grpo.GRPOStrategy(model, processor, examples, CLASSES, {**cfg, "grpo_k": k})
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)
        model.train()
        common.train_step(strategy, model, optimizer, indices, 0, device)  # warm-up
        tower_rows: list[int] = []  # utterances the audio encoder processes during the timed step
        hook = lm.core(model).audio_tower.conv1.register_forward_hook(lambda m, a, o: tower_rows.append(a[0].shape[0]))
        seconds, stats = common.train_step(strategy, model, optimizer, indices, 1, device)
        hook.remove()
    finally:
        grpo.rollout.rollout = plain
    return seconds, stats, int(sum(tower_rows))


def row_for(k: int, args: Any, model: Any, processor: Any, examples: list[Example], sources: dict,
            cfg: dict[str, Any]) -> dict[str, Any]:
    """Both paths at one K, and the speed-ups; prints them."""
    row: dict[str, Any] = {"k": k, "utterances": args.utterances}
    for path in ("shared", "naive"):
        seconds, stats, runs = time_path(path, k, model, processor, examples, sources, cfg, args.device)
        row.update({f"{path}_s": seconds, f"{path}_tokens": stats["completion_len"] * k * args.utterances,
                    f"{path}_encoder_runs": runs})
    row["speedup_wall"] = row["naive_s"] / row["shared_s"]
    row["speedup_tokens_per_s"] = (row["shared_tokens"] / row["shared_s"]) / (row["naive_tokens"] / row["naive_s"])
    print(f"K={k:>2} utts={args.utterances}  GRPO step: naive {row['naive_s']:6.2f} s "
          f"({row['naive_tokens']:.0f} tok, encoder {row['naive_encoder_runs']}x)  shared {row['shared_s']:6.2f} s "
          f"({row['shared_tokens']:.0f} tok, encoder {row['shared_encoder_runs']}x)")
    print(f"      speed-up of shared over naive: {row['speedup_wall']:.1f}x wall, "
          f"{row['speedup_tokens_per_s']:.1f}x tokens/s")
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = common.group_parser(__doc__)
    parser.add_argument("--strategy", default="grpo_z", help="grpo or grpo_z")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = config.resolve(strategy=args.strategy, overrides={"max_new_tokens": args.max_new_tokens,
                                                            "device": args.device, "readout_batch_size": 0})
    _, model, processor = common.tiny_model(cfg, args.device)
    model = M.prepare_trainable(model, cfg)
    examples, sources = tone_examples(model, processor, args.utterances, args.seconds)
    rows = [row_for(k, args, model, processor, examples, sources, cfg) for k in args.k]
    result = {**common.header("grpo_step", args.device), "strategy": args.strategy,
              "max_new_tokens": args.max_new_tokens, "seconds_audio": args.seconds, "lora": bool(cfg["lora"]),
              "rows": rows}
    common.write("grpo_step", args.device, result, args.out)
    return result


if __name__ == "__main__":
    main()
