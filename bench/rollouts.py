"""Group-rollout speed: the shared-encoder, shared-prefill path against the naive K-times path.

    .venv/bin/python bench/rollouts.py                 # K = 8, 4 utterances, tiny model, CPU
    .venv/bin/python bench/rollouts.py --k 4 8 16 --device cuda

Paths timed, per K (one run each, after one warm-up call):

* ``naive``: ``model.generate`` K times per utterance on the processor's full inputs (the audio
  encoder and the prompt prefill run K times, batch 1);
* ``hf_batched``: one ``model.generate(num_return_sequences=K)`` per utterance on the full inputs
  (transformers expands the inputs first, so the encoder and the prefill still run K times, batched);
* ``shared``: :class:`ambinb.audio.AudioFeatureCache` (encoder once per utterance) then
  :func:`ambinb.rollout.generate_group` (all utterances' prompts prefilled once, KV cache repeated K
  times, B*K rows decoded together).

And the decoding loop's forward, side by side on the same prefill and seed (``rollout_decode``):
``dynamic`` (transformers' model forward per step) against ``lean`` (:class:`ambinb.lm.LeanStep`),
alternately, the best of three each; both give the same tokens (``lean_same_tokens``).

All sample with the same temperature, suppress the audio tokens and stop at ``</answer>``, an end
token or ``--max-new-tokens``; sampled lengths differ between paths, so tokens/s is printed beside
the wall-time ratio. The readout forward that follows a rollout is timed separately (it is the same
for every path). Results go to ``bench/results/rollouts.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ambinb import audio as A  # noqa: E402
from ambinb import config, lm, prompt, readout, rollout, standin  # noqa: E402
from bench import common  # noqa: E402
from bench.common import CLASSES, TRANSCRIPTS, sync, waves  # noqa: E402


def time_naive(model, processor, texts, ws, k, max_new, device, batched):
    sync(device)
    start = time.perf_counter()
    tokens = 0
    if batched:
        tok = processor.tokenizer
        for text, w in zip(texts, ws):
            inputs = processor(text=[text], audio=[w], sampling_rate=A.SAMPLE_RATE, return_tensors="pt").to(device)
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=max_new, do_sample=True, temperature=1.0, top_p=1.0,
                                     top_k=None, num_return_sequences=k,
                                     suppress_tokens=prompt.suppressed_ids(tok, lm.head(model).weight.shape[0]),
                                     eos_token_id=prompt.eos_ids(tok), pad_token_id=tok.pad_token_id,
                                     stop_strings=["</answer>"], tokenizer=tok)
            gen = out[:, inputs["input_ids"].shape[1]:]
            tokens += int((gen != tok.pad_token_id).sum())
    else:
        groups = rollout.generate_naive(model, processor, texts, ws, k, max_new)
        tokens = sum(len(g) for group in groups for g in group)
    sync(device)
    return time.perf_counter() - start, tokens


def time_shared(model, processor, texts_raw, ws, k, max_new, device):
    sync(device)
    start = time.perf_counter()
    cache = A.AudioFeatureCache(model, processor.feature_extractor)
    feats = cache.features([f"u{i}" for i in range(len(ws))], ws)
    enc = [prompt.Encoded(f"u{i}", prompt.prompt_ids(processor.tokenizer, prompt.prompt_text(processor, t, CLASSES),
                                                     f.shape[0]), f) for i, (t, f) in enumerate(zip(texts_raw, feats))]
    gen = torch.Generator(device=device).manual_seed(0)
    groups = rollout.generate_group(model, processor.tokenizer, enc, k, max_new, generator=gen)
    sync(device)
    elapsed = time.perf_counter() - start
    tokens = sum(len(ids) for group in groups for ids, _ in group)
    # the readout that follows (same for every path): one batched forward at the answer slots
    trajectories = [rollout.make_trajectory(processor.tokenizer, e.utt_id, ids, stop, CLASSES)
                    for e, group in zip(enc, groups) for ids, stop in group]
    prefixes = [e.prompt_ids + t.readout_ids for e, t in zip([e for e in enc for _ in range(k)], trajectories)]
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        readout.read_out(model, prefixes, [e.audio for e in enc for _ in range(k)],
                         prompt.class_ids(processor.tokenizer, CLASSES), processor.tokenizer.pad_token_id)
    sync(device)
    return elapsed, tokens, time.perf_counter() - t0, cache.tower_calls


def time_decodes(model, processor, texts_raw, ws, k, max_new, device, reps=3):
    """Best-of-``reps`` seconds of the shared path's generation with ``dynamic`` and with ``lean``
    (alternating), and whether their tokens are the same."""
    cache = A.AudioFeatureCache(model, processor.feature_extractor)
    feats = cache.features([f"u{i}" for i in range(len(ws))], ws)
    enc = [prompt.Encoded(f"u{i}", prompt.prompt_ids(processor.tokenizer, prompt.prompt_text(processor, t, CLASSES),
                                                     f.shape[0]), f) for i, (t, f) in enumerate(zip(texts_raw, feats))]
    best, tokens = {"dynamic": float("inf"), "lean": float("inf")}, {}
    for _ in range(reps):
        for decode in best:
            gen = torch.Generator(device=device).manual_seed(0)
            sync(device)
            start = time.perf_counter()
            tokens[decode] = rollout.generate_group(model, processor.tokenizer, enc, k, max_new, generator=gen,
                                                    decode=decode)
            sync(device)
            best[decode] = min(best[decode], time.perf_counter() - start)
    return best["dynamic"], best["lean"], tokens["dynamic"] == tokens["lean"]


def row_for(k: int, args: Any, model: Any, processor: Any, texts_raw: list[str], ws: list) -> dict[str, Any]:
    """One K's timings of the three paths (module docstring) and the speed-ups; prints them."""
    texts = [prompt.prompt_text(processor, t, CLASSES) for t in texts_raw]
    naive_s, naive_tok = time_naive(model, processor, texts, ws, k, args.max_new_tokens, args.device, False)
    hf_s, hf_tok = (float("nan"), 0) if args.skip_hf_batched else time_naive(
        model, processor, texts, ws, k, args.max_new_tokens, args.device, True)
    shared_s, shared_tok, readout_s, tower_calls = time_shared(model, processor, texts_raw, ws, k,
                                                               args.max_new_tokens, args.device)
    dynamic_s, lean_s, same = time_decodes(model, processor, texts_raw, ws, k, args.max_new_tokens, args.device)
    row = {"k": k, "utterances": args.utterances, "dynamic_s": dynamic_s, "lean_s": lean_s,
           "lean_over_dynamic": lean_s / dynamic_s, "lean_same_tokens": same, "naive_s": naive_s,
           "naive_tokens": naive_tok,
           "hf_batched_s": hf_s, "hf_batched_tokens": hf_tok, "shared_s": shared_s, "shared_tokens": shared_tok,
           "readout_s": readout_s, "shared_tower_calls": tower_calls, "speedup_wall": naive_s / shared_s,
           "speedup_tokens_per_s": (shared_tok / shared_s) / (naive_tok / naive_s),
           "speedup_vs_hf_batched_wall": hf_s / shared_s}
    print(f"K={k:>2} utts={args.utterances}  naive {naive_s:7.2f} s ({naive_tok} tok)  "
          f"hf_batched {hf_s:7.2f} s ({hf_tok} tok)  shared {shared_s:6.2f} s ({shared_tok} tok, "
          f"encoder {tower_calls}x)  readout {readout_s:.3f} s")
    print(f"      speed-up of shared over naive: {row['speedup_wall']:.1f}x wall, "
          f"{row['speedup_tokens_per_s']:.1f}x tokens/s; over hf_batched: {row['speedup_vs_hf_batched_wall']:.1f}x")
    print(f"      decode forward: dynamic {dynamic_s:.3f} s, lean {lean_s:.3f} s ({lean_s / dynamic_s:.2f}x; "
          f"same tokens: {same})")
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = common.group_parser(__doc__)
    parser.add_argument("--skip-hf-batched", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = config.resolve()
    ensure_seconds, (tiny_dir, model, processor) = common.timed(lambda: common.tiny_model(cfg, args.device))
    build_info = json.loads((tiny_dir / standin.TINY_SPEC_FILE).read_text())
    texts_raw = (TRANSCRIPTS * args.utterances)[: args.utterances]
    ws = waves(args.utterances, args.seconds)
    time_shared(model, processor, texts_raw, ws, 2, 8, args.device)  # warm-up call
    rows = [row_for(k, args, model, processor, texts_raw, ws) for k in args.k]
    result = {**common.header("rollouts", args.device), "max_new_tokens": args.max_new_tokens,
              "seconds_audio": args.seconds, "tiny_build_seconds": build_info.get("build_seconds"),
              "tiny_warmup": build_info.get("warmup"), "ensure_tiny_seconds": ensure_seconds, "rows": rows}
    common.write("rollouts", args.device, result, args.out)
    return result


if __name__ == "__main__":
    main()
