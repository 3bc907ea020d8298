"""Full-size check: the real Qwen2-Audio-7B-Instruct architecture, randomly initialised, on one GPU.

    .venv/bin/python bench/full_size.py                       # on a GPU: every section, < 8 min on one H100
    .venv/bin/python bench/full_size.py --sections sft grpo   # a subset
    .venv/bin/python bench/full_size.py --smoke --out /tmp/full_size.json   # tiny config on the CPU, seconds

No weights are needed: the model is ``Qwen2AudioForConditionalGeneration`` built from the published
``config.json`` values of ``Qwen/Qwen2-Audio-7B-Instruct`` (:data:`FULL`), allocated directly on the
device in bfloat16 and randomly initialised; LoRA as in the paper (r 8, alpha 16, dropout 0.05 on
the language model's q, k, v, o, gate, up, down; :func:`ambinb.model.apply_lora`). Random weights
run at the speed of trained ones (same shapes, same kernels); only sampled lengths differ, so the
rollout runs its whole token budget every time.

Sections, each under its own time cap (``--caps``), in this order:

* ``matmul``: the card's bf16 matmul rate, measured (``torch.matmul`` of two N x N bf16 matrices,
  N = 8192 on a GPU), the denominator of the MFU below;
* ``sft``: one SFT optimizer step (:meth:`ambinb.strategies.sft.SFTStrategy.loss`, Eq. 3, on synthetic
  utterances of ``--audio-seconds`` with the tower output cached, as training does; backward; AdamW
  on the LoRA parameters), without and with activation checkpointing: tokens/s, MFU, peak memory;
* ``grpo``: a GRPO step at K = 8 (up to 3 steps within the cap; the last one is reported, the
  first one's seconds beside it): the audio encoder on the B utterances, the shared-prefill group
  rollout (:func:`ambinb.rollout.generate_group`, B*K rows), the readout at the answer slots, the
  policy and reference log-prob forwards (:func:`ambinb.policy.completion_logprobs`, the reference =
  the LoRA adapter disabled), Eq. 7 (:func:`ambinb.losses.grpo_loss`) with group advantages of random
  rewards (rewards are text functions; random weights write no text worth scoring), backward, AdamW:
  each part's seconds, rollout tokens/s and the encoder's share of the step;
* ``max_batch``: the largest SFT micro-batch that fits the card, with and without checkpointing
  (doubling until out of memory, then bisection; a capped search reports the largest batch that ran).

MFU counts model FLOPs (no recomputation): per token of the language model, 2 x its non-embedding
parameters forward, the same again for the activation gradients, and (full fine-tune only) once more
for the weight gradients; the LM head only where the loss reads logits (the completion and the
slot); attention scores 4 x layers x hidden x T^2 per sequence forward, x 3 with backward. The audio
tower is not counted (its output is cached). Token ids come from a stand-in tokenizer
(:class:`IdTokenizer`): the real one is not needed to time a random model.

Results go to ``bench/results/full_size_<card>.json``. ``--smoke`` runs every section on the CPU with
:data:`TINY` (same code, tiny sizes, float32) for the tests.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ambinb import audio as A  # noqa: E402
from ambinb import config, losses, policy, prompt, readout, results, rollout  # noqa: E402
from ambinb import model as M  # noqa: E402
from ambinb.run import Example  # noqa: E402
from ambinb.strategies import sft  # noqa: E402

# Qwen/Qwen2-Audio-7B-Instruct config.json (the text model is Qwen2-7B's shape: the published file
# leaves hidden size, layers and heads at Qwen2Config's defaults, written out here)
FULL = {
    "audio": {"d_model": 1280, "encoder_layers": 32, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120,
              "num_mel_bins": 128, "max_source_positions": 1500, "activation_function": "gelu",
              "scale_embedding": False},
    "text": {"vocab_size": 156032, "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "intermediate_size": 11008, "max_position_embeddings": 8192,
             "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "sliding_window": 32768, "tie_word_embeddings": False},
    "audio_token_index": 151646, "bos_token_id": 151643, "eos_token_id": 151645, "pad_token_id": 151643,
}
# the same code at tiny sizes, for --smoke
TINY = {
    "audio": {**FULL["audio"], "d_model": 32, "encoder_layers": 2, "encoder_attention_heads": 2,
              "encoder_ffn_dim": 64},
    "text": {**FULL["text"], "vocab_size": 512, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "intermediate_size": 64},
    "audio_token_index": 500, "bos_token_id": 501, "eos_token_id": 502, "pad_token_id": 501,
}
SPECIAL = ("<|endoftext|>", "<|im_end|>", A.AUDIO_TOKEN, A.AUDIO_BOS, A.AUDIO_EOS, "<answer>", "</answer>")
CLASSES = ["anger", "happiness", "sadness", "neutral"]
SECTIONS = ("matmul", "sft", "grpo", "max_batch")
CAPS = {"matmul": 10.0, "sft": 90.0, "grpo": 60.0, "max_batch": 120.0}  # seconds per section (GPU run)


# --- the model ------------------------------------------------------------------------------

def qwen2_audio_config(spec: dict[str, Any]) -> Any:
    """A ``Qwen2AudioConfig`` from a spec like :data:`FULL`."""
    from transformers import Qwen2AudioConfig

    text = {k: v for k, v in spec["text"].items() if k != "rope_theta"}
    text.update(model_type="qwen2", bos_token_id=spec["bos_token_id"], eos_token_id=spec["eos_token_id"],
                pad_token_id=spec["pad_token_id"],
                rope_parameters={"rope_theta": float(spec["text"]["rope_theta"]), "rope_type": "default"})
    return Qwen2AudioConfig(audio_config={"model_type": "qwen2_audio_encoder", **spec["audio"]}, text_config=text,
                            audio_token_index=spec["audio_token_index"])


def build_model(spec: dict[str, Any], device: str, dtype: torch.dtype, cfg: dict[str, Any]) -> Any:
    """The randomly initialised model, allocated on ``device`` in ``dtype``, with LoRA (tower frozen)."""
    from transformers import Qwen2AudioForConditionalGeneration

    with torch.device(device):
        model = Qwen2AudioForConditionalGeneration._from_config(qwen2_audio_config(spec), dtype=dtype)
    model.config.use_cache = False
    return M.apply_lora(model.train(), cfg)


class IdTokenizer:
    """The few tokenizer calls ambinb makes, for a model without a trained tokenizer: special tokens map
    to the spec's ids (the tags to free ids below them), a word to a fixed id by crc32, and decoding
    gives the ids as text (so a random model never writes ``</answer>`` and runs its whole budget).

    Example: ``IdTokenizer(TINY)("anger", add_special_tokens=False)["input_ids"]`` -> one id, the same every call.
    """

    def __init__(self, spec: dict[str, Any]):
        self.special = {"<|endoftext|>": spec["bos_token_id"], "<|im_end|>": spec["eos_token_id"],
                        A.AUDIO_TOKEN: spec["audio_token_index"]}
        free = min(self.special.values())
        for tok in SPECIAL:
            if tok not in self.special:
                free -= 1
                self.special[tok] = free
        self.words = free - 1  # plain words take ids [0, words)
        self.pad_token_id = spec["pad_token_id"]

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        ids = [self.special[w] if w in self.special else zlib.crc32(w.encode()) % self.words for w in text.split()]
        return {"input_ids": ids}

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        return self.special[tokens] if isinstance(tokens, str) else [self.special[t] for t in tokens]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(str(int(i)) for i in ids)


def synthetic_examples(model: Any, tok: IdTokenizer, n: int, audio_seconds: float, prompt_tokens: int,
                       completion_tokens: int, seed: int) -> tuple[list[Example], float]:
    """``n`` utterances and the tower's seconds: random mel features of ``audio_seconds`` through the tower
    (timed), prompt ids with the audio positions expanded, a completion ending in
    ``<answer> class </answer> <|im_end|>``."""
    gen = torch.Generator().manual_seed(seed)
    frames = int(audio_seconds * 100)  # 10 ms hop
    feats = torch.randn((n, A.N_MELS, A.N_FRAMES), generator=gen)
    masks = torch.zeros((n, A.N_FRAMES), dtype=torch.long)
    masks[:, :frames] = 1
    tower = A.core(model).audio_tower
    feats = feats.to(tower.conv1.weight.device, tower.conv1.weight.dtype)
    sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        audio = A.run_tower(model, feats, masks)
    sync()
    tower_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    words = tok.words
    out = []
    for i in range(n):
        head = rng.integers(0, words, prompt_tokens // 2).tolist()
        tail = rng.integers(0, words, prompt_tokens - len(head)).tolist()
        prompt_ids = head + [tok.special[A.AUDIO_BOS]] + [tok.special[A.AUDIO_TOKEN]] * audio[i].shape[0] \
            + [tok.special[A.AUDIO_EOS]] + tail
        think = rng.integers(0, words, max(1, completion_tokens - 4)).tolist()
        answer = tok(CLASSES[i % len(CLASSES)])["input_ids"]
        ids = think + [tok.special["<answer>"]] + answer + [tok.special["</answer>"], tok.special["<|im_end|>"]]
        completion = prompt.CompletionIds(ids, len(think) + 1, len(answer))
        p_gt = rng.dirichlet(np.ones(len(CLASSES)))
        out.append(Example(f"s{i}", prompt.Encoded(f"s{i}", prompt_ids, audio[i]), completion, p_gt))
    return out, tower_s


# --- measuring ------------------------------------------------------------------------------

def on_gpu() -> bool:
    return torch.cuda.is_available()


def sync() -> None:
    if on_gpu():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if on_gpu():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if on_gpu() else None


def is_oom(err: BaseException) -> bool:
    """True for a CUDA out-of-memory error (``torch.OutOfMemoryError`` or its message)."""
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def matmul_tflops(n: int, device: str, dtype: torch.dtype, cap_s: float) -> dict[str, Any]:
    """Measured dense matmul rate: 2 n^3 FLOPs per ``torch.matmul`` of two n x n matrices, median of runs.

    Example: n = 8192 takes 2 * 8192^3 = 1.1e12 FLOPs; done in 1.4 ms that is 785 TFLOP/s.
    """
    a = torch.randn((n, n), device=device, dtype=dtype)
    b = torch.randn((n, n), device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    sync()
    times, start = [], time.perf_counter()
    while len(times) < 50 and time.perf_counter() - start < cap_s:
        t0 = time.perf_counter()
        for _ in range(10):
            torch.matmul(a, b)
        sync()
        times.append((time.perf_counter() - t0) / 10)
    sec = float(np.median(times))
    return {"n": n, "dtype": str(dtype), "seconds_per_matmul": sec, "tflops": 2 * n**3 / sec / 1e12, "runs": len(times)}


def lm_param_counts(model: Any) -> dict[str, int]:
    """Parameters of the language model: ``body`` (the decoder layers and norm), ``embed``, ``head``; and ``tower``."""
    core = A.core(model)
    lm = core.language_model
    embed = sum(p.numel() for p in lm.embed_tokens.parameters())
    body = sum(p.numel() for n, p in lm.named_parameters() if "embed_tokens" not in n and "lora_" not in n)
    head = A.base_model(model).lm_head.weight.numel()
    tower = sum(p.numel() for p in core.audio_tower.parameters())
    return {"body": body, "embed": embed, "head": head, "tower": tower}


def sft_step_flops(counts: dict[str, int], examples: list[Example], layers: int, hidden: int,
                   full_finetune: bool = False) -> float:
    """Model FLOPs of one SFT step on ``examples`` (see the module docstring).

    Example: body 1e9, head 1e8, one sequence of 100 tokens, 10 of them read by the head, 2 layers,
    hidden 64, LoRA: 4 * 1e9 * 100 + 4 * 1e8 * 10 + 3 * 4 * 2 * 64 * 100^2 = 4.04e11 + 1.536e7.
    """
    factor = 6 if full_finetune else 4
    tokens = sum(len(e.encoded.prompt_ids) + len(e.completion.ids) for e in examples)
    head_tokens = sum(len(e.completion.ids) + 1 for e in examples)  # CE positions and the slot
    attn = sum(3 * 4 * layers * hidden * (len(e.encoded.prompt_ids) + len(e.completion.ids)) ** 2 for e in examples)
    return factor * counts["body"] * tokens + factor * counts["head"] * head_tokens + attn


def set_checkpointing(model: Any, on: bool) -> None:
    """Activation checkpointing on or off (:func:`ambinb.model.set_activation_checkpointing`), training mode."""
    M.set_activation_checkpointing(model, on)
    model.train()


def sft_step(model: Any, strategy: sft.SFTStrategy, optimizer: torch.optim.Optimizer, indices: list[int]) -> float:
    """One optimizer step of Eq. 3 on ``indices``; returns its seconds."""
    sync()
    t0 = time.perf_counter()
    loss, _ = strategy.loss(model, indices, 0)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sync()
    return time.perf_counter() - t0


def run_sft(model, strategy, optimizer, examples, batch, steps, counts, layers, hidden, peak_tflops, cap_s):
    rows = []
    for ckpt in (False, True):
        set_checkpointing(model, ckpt)
        indices = list(range(batch))
        sft_step(model, strategy, optimizer, indices)  # warm-up
        reset_peak()
        times, start = [], time.perf_counter()
        while len(times) < steps and time.perf_counter() - start < cap_s / 2:
            times.append(sft_step(model, strategy, optimizer, indices))
        sec = float(np.median(times))
        chosen = [examples[i] for i in indices]
        tokens = sum(len(e.encoded.prompt_ids) + len(e.completion.ids) for e in chosen)
        flops = sft_step_flops(counts, chosen, layers, hidden)
        rows.append({"activation_checkpointing": ckpt, "batch": batch, "steps_timed": len(times),
                     "seconds_per_step": sec, "tokens_per_step": tokens, "tokens_per_s": tokens / sec,
                     "model_tflops_per_step": flops / 1e12, "achieved_tflops": flops / sec / 1e12,
                     "mfu": flops / sec / 1e12 / peak_tflops if peak_tflops else None, "peak_memory_gib": peak_gib()})
        print(f"  SFT batch {batch} ckpt={ckpt!s:<5} {sec:7.3f} s/step  {tokens / sec:9.0f} tok/s  "
              f"MFU {rows[-1]['mfu'] or float('nan'):.3f}  peak {rows[-1]['peak_memory_gib'] or float('nan'):.1f} GiB",
              flush=True)
    set_checkpointing(model, False)
    return rows


def run_grpo(model, tok, examples, k, max_new, optimizer, reference, cfg) -> dict[str, Any]:
    """One GRPO step (module docstring), each part timed; the encoder re-run on the batch's utterances."""
    n = len(examples)
    device = A.device_of(model)
    parts: dict[str, float] = {}
    reset_peak()
    sync()
    t_start = time.perf_counter()
    frames = int(round(float(cfg["audio_seconds"]) * 100))
    feats = torch.randn((n, A.N_MELS, A.N_FRAMES), device=device, dtype=A.core(model).audio_tower.conv1.weight.dtype)
    masks = torch.zeros((n, A.N_FRAMES), dtype=torch.long)
    masks[:, :frames] = 1
    t0 = time.perf_counter()
    with torch.no_grad():
        A.run_tower(model, feats, masks)
    sync()
    parts["encoder"] = time.perf_counter() - t0
    model.eval()
    gen = torch.Generator(device=device).manual_seed(0)
    t0 = time.perf_counter()
    groups = rollout.generate_group(model, tok, [e.encoded for e in examples], k, max_new, generator=gen)
    sync()
    parts["rollout"] = time.perf_counter() - t0
    completions = [ids for group in groups for ids, _ in group]
    prompts = [e.encoded.prompt_ids for e in examples for _ in range(k)]
    audio = [e.encoded.audio for e in examples for _ in range(k)]
    answer_open = [tok.special["<answer>"]]
    t0 = time.perf_counter()
    with torch.no_grad():
        readout.read_out(model, [p + c + answer_open for p, c in zip(prompts, completions)], audio,
                         prompt.class_ids(tok, CLASSES), tok.pad_token_id)
    sync()
    parts["readout"] = time.perf_counter() - t0
    model.train()
    rewards = torch.rand((n, k), generator=torch.Generator().manual_seed(1))
    advantages = losses.group_advantages(rewards, k).reshape(-1).to(device)
    t0 = time.perf_counter()
    logps, mask, _ = policy.completion_logprobs(model, prompts, completions, audio, tok.pad_token_id)
    with torch.no_grad(), reference(model) as ref_model:
        ref_logps, _, _ = policy.completion_logprobs(ref_model, prompts, completions, audio, tok.pad_token_id)
    loss, _ = losses.grpo_loss(logps, None, ref_logps, advantages, mask, float(cfg["clip_eps"]),
                               float(cfg["grpo_kl_coef"]))  # Eq. 7
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sync()
    parts["update"] = time.perf_counter() - t0
    total = time.perf_counter() - t_start
    new_tokens = sum(len(c) for c in completions)
    return {"k": k, "utterances": n, "max_new_tokens": max_new, "seconds": parts, "step_seconds": total,
            "rollout_tokens": new_tokens, "rollout_tokens_per_s": new_tokens / parts["rollout"],
            "encoder_share": parts["encoder"] / total, "peak_memory_gib": peak_gib()}


def fits(model, strategy, optimizer, batch: int) -> bool:
    """Whether one SFT step at ``batch`` runs without running out of memory."""
    try:
        sft_step(model, strategy, optimizer, list(range(batch)))
        return True
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if not is_oom(err):
            raise
        optimizer.zero_grad(set_to_none=True)
        return False
    finally:
        if on_gpu():
            torch.cuda.empty_cache()


def largest_batch(try_batch, start: int, limit: int, cap_s: float) -> dict[str, Any]:
    """The largest batch in [start, limit] for which ``try_batch(b)`` is True: doubling, then bisection.

    Stops when ``cap_s`` seconds have passed; ``capped`` then says the answer is a lower bound.
    Example: with fits(b) = b <= 20, start 1, limit 64: tries 1, 2, 4, 8, 16, 32, 24, 20, 22, 21 -> 20.
    """
    t0 = time.perf_counter()
    tried: dict[int, bool] = {}
    good, bad = 0, limit + 1
    b = start
    while b <= limit:
        if time.perf_counter() - t0 > cap_s:
            return {"largest": good, "capped": True, "tried": tried}
        tried[b] = try_batch(b)
        if not tried[b]:
            bad = b
            break
        good, b = b, b * 2
    while bad - good > 1:
        if time.perf_counter() - t0 > cap_s:
            return {"largest": good, "capped": True, "tried": tried}
        mid = (good + bad) // 2
        tried[mid] = try_batch(mid)
        good, bad = (mid, bad) if tried[mid] else (good, mid)
    return {"largest": good, "capped": False, "tried": tried}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny config on the CPU, every section, seconds")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--batch", type=int, default=8, help="SFT micro-batch")
    parser.add_argument("--steps", type=int, default=5, help="timed SFT steps per setting")
    parser.add_argument("--audio-seconds", type=float, default=5.0)
    parser.add_argument("--prompt-tokens", type=int, default=100, help="text tokens of the prompt around the audio")
    parser.add_argument("--completion-tokens", type=int, default=200)
    parser.add_argument("--grpo-utterances", type=int, default=2)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--max-batch-limit", type=int, default=256)
    parser.add_argument("--caps", type=float, nargs=4, default=None, metavar=("MATMUL", "SFT", "GRPO", "MAX_BATCH"),
                        help="seconds per section")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the --smoke run)")
    parser.add_argument("--device", default="", help="cpu or cuda (default: cuda, or cpu with --smoke); "
                        "'--smoke --device cuda' checks the GPU code paths in seconds before the full run")
    parser.add_argument("--out", default="", help="JSON path (default bench/results/full_size_<card>.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    caps = dict(zip(SECTIONS, args.caps)) if args.caps else dict(CAPS)
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' renamed checkpointing methods
    if args.smoke:
        spec, device, n_mat = TINY, args.device or "cpu", 256
        args.batch, args.steps, args.prompt_tokens, args.completion_tokens = 2, 2, 8, 12
        args.audio_seconds, args.grpo_utterances, args.k, args.max_new_tokens = 1.0, 1, 2, 4
        args.max_batch_limit = 4
        caps = {"matmul": 1.0, "sft": 4.0, "grpo": 4.0, "max_batch": 30.0}
    else:
        if not on_gpu():
            raise SystemExit("bench/full_size.py needs a CUDA GPU (or --smoke for the tiny CPU run)")
        spec, device, n_mat = FULL, args.device or "cuda", 8192
    if device.startswith("cuda") and not on_gpu():
        raise SystemExit(f"--device {device}: no CUDA GPU here")
    dtype = torch.float32 if args.smoke else torch.bfloat16  # CPUs without bf16 units emulate it, slowly
    started = time.perf_counter()
    cfg = config.resolve(strategy="grpo", overrides={"device": device})
    result: dict[str, Any] = {"bench": "full_size", "smoke": args.smoke, "device": device,
                              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "device_name": results.bench_device(device)[0], "spec": spec, "dtype": str(dtype),
                              "settings": {**{k: v for k, v in vars(args).items() if k not in ("out", "caps")},
                                           "caps": caps, "lora_r": cfg["lora_r"], "lora_alpha": cfg["lora_alpha"],
                                           "lora_dropout": cfg["lora_dropout"],
                                           "lora_target_regex": cfg["lora_target_regex"]},
                              "versions": {"torch": torch.__version__}, "env": results.env_info(device)}
    if "matmul" in args.sections:
        result["matmul"] = matmul_tflops(n_mat, device, dtype, caps["matmul"])
        print(f"{dtype} matmul {n_mat}: {result['matmul']['tflops']:.3g} TFLOP/s", flush=True)
    peak = result.get("matmul", {}).get("tflops")

    t0 = time.perf_counter()
    model = build_model(spec, device, dtype, cfg)
    sync()
    counts = lm_param_counts(model)
    result["build_seconds"] = time.perf_counter() - t0
    result["parameters"] = {**counts, "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    print(f"built in {result['build_seconds']:.1f} s: {result['parameters']}", flush=True)
    tok = IdTokenizer(spec)
    n_examples = max(args.batch, args.grpo_utterances)
    examples, tower_s = synthetic_examples(model, tok, n_examples, args.audio_seconds, args.prompt_tokens,
                                           args.completion_tokens, int(cfg["seed"]))
    result["encoder_seconds_for_examples"] = tower_s
    result["sequence_tokens"] = len(examples[0].encoded.prompt_ids) + len(examples[0].completion.ids)
    result["audio_tokens"] = int(examples[0].encoded.audio.shape[0])
    strategy = sft.SFTStrategy(examples, CLASSES, tok, cfg)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    text = spec["text"]

    def save() -> None:  # after every section: a run cut short still leaves what it measured
        result["total_seconds"] = time.perf_counter() - started
        results.write_bench("full_size", results.bench_device(device)[1], result, args.out)

    def grpo() -> dict[str, Any]:  # checkpointing as the 7B params set it: B*K rows of ~700 tokens need it
        set_checkpointing(model, bool(config.resolve(model="qwen2_audio_7b")["activation_checkpointing"]))
        reference, steps, t0 = policy.Reference(model), [], time.perf_counter()
        while len(steps) < 3 and (not steps or time.perf_counter() - t0 + steps[-1]["step_seconds"] < caps["grpo"]):
            steps.append(run_grpo(model, tok, examples[: args.grpo_utterances], args.k, args.max_new_tokens,
                                  optimizer, reference, {**cfg, "audio_seconds": args.audio_seconds}))
        g = {**steps[-1], "steps_run": len(steps), "first_step_seconds": steps[0]["step_seconds"],  # last = warm
             "activation_checkpointing": bool(A.base_model(model).is_activation_checkpointing)}
        set_checkpointing(model, False)
        print(f"  GRPO K={g['k']} B={g['utterances']}: step {g['step_seconds']:.2f} s "
              f"({', '.join(f'{k} {v:.2f}' for k, v in g['seconds'].items())}), rollout "
              f"{g['rollout_tokens_per_s']:.0f} tok/s, encoder share {g['encoder_share']:.3f}", flush=True)
        return g

    def max_batch() -> list[dict[str, Any]]:
        rows = []
        big = [examples[i % len(examples)] for i in range(args.max_batch_limit)]  # same length, tower run once
        big_strategy = sft.SFTStrategy(big, CLASSES, tok, cfg)
        for ckpt in (False, True):
            set_checkpointing(model, ckpt)
            found = largest_batch(lambda b: fits(model, big_strategy, optimizer, b), 1, args.max_batch_limit,
                                  caps["max_batch"] / 2)
            rows.append({"activation_checkpointing": ckpt, **found})
            print(f"  largest SFT batch ckpt={ckpt}: {found['largest']}{' (capped)' if found['capped'] else ''}",
                  flush=True)
        set_checkpointing(model, False)
        return rows

    sections = {
        "sft": lambda: run_sft(model, strategy, optimizer, examples, args.batch, args.steps, counts,
                               text["num_hidden_layers"], text["hidden_size"], peak, caps["sft"]),
        "grpo": grpo,
        "max_batch": max_batch,
    }
    save()
    for name, run in sections.items():
        if name not in args.sections:
            continue
        try:
            result[name] = run()
        except Exception as err:  # an unattended run goes on to the next section; the error is recorded
            if args.smoke:
                raise
            result[f"{name}_error"] = f"{type(err).__name__}: {err}"[:500]
            print(f"  {name} failed: {result[f'{name}_error']}", flush=True)
            optimizer.zero_grad(set_to_none=True)
            set_checkpointing(model, False)
            if on_gpu():
                torch.cuda.empty_cache()
        save()
    return result

if __name__ == "__main__":
    main()
