"""Full-size check: a backbone's real architecture and vocabulary, randomly initialised, on one GPU.

    .venv/bin/python bench/full_size.py                       # on a GPU: every section, < 8 min on one H100
    .venv/bin/python bench/full_size.py --model qwen2_5_omni_3b   # Qwen2.5-Omni-3B's Thinker (or _7b)
    .venv/bin/python bench/full_size.py --sections decode grpo   # a subset
    .venv/bin/python bench/full_size.py --smoke --out /tmp/full_size.json   # tiny sizes on the CPU
    .venv/bin/python bench/full_size.py --estimate --model qwen2_5_omni_3b  # memory at batch 8, computed (CPU)

No weights are needed: the model (``--model``: ``qwen2_audio_7b``, ``qwen2_5_omni_7b``,
``qwen2_5_omni_3b``) is its family's class (``Qwen2AudioForConditionalGeneration``,
``Qwen2_5OmniThinkerForConditionalGeneration``) built from the published ``config.json`` values
(:data:`SPECS`), allocated directly on the device in bfloat16 and randomly initialised; LoRA as in
the paper (r 8, alpha 16, dropout 0.05 on the language model's q, k, v, o, gate, up, down;
:func:`ambinb.model.apply_lora`). The tokenizer is the real one (:mod:`ambinb.vocab`: Qwen2's BPE
with Qwen2-Audio's or Qwen2.5-Omni's special tokens), so prompts (the chat template, the
transcript, the class list, the audio positions) and completions (a think block in the curator's
wording, the answer) have their real token counts.
Random weights run at the speed of trained ones (same shapes, same kernels); only sampled lengths
differ: a random model never writes the close tag, so rollouts run their whole token budget.

Sections, each under its own time cap (``--caps``), in this order:

* ``matmul``: the card's bf16 matmul rate (N x N, N = 8192 on a GPU), the denominator of the MFU;
* ``bandwidth``: the card's copy bandwidth (a 2 GiB device-to-device copy: read + write bytes/s);
* ``decode``: a decode step of ``--decode-rows`` rows (16) after one utterance's shared prefill,
  through each loop of ``--decodes`` (:func:`ambinb.rollout.generate_group`, LoRA merged as the
  rollouts do), its per-phase milliseconds from the loop's own timings (``--profile``: a torch.profiler
  trace and operator table of the first loop's timed call); and the floor a step cannot
  beat: the bytes a step must read (the language model's weights and the KV cache at the mean
  context) over the measured bandwidth;
* ``sft``: one SFT optimizer step (:meth:`ambinb.strategies.sft.SFTStrategy.loss`, Eq. 3, on synthetic
  utterances of ``--audio-seconds`` with the tower output cached, as training does; backward; AdamW
  on the LoRA parameters), without and with activation checkpointing: tokens/s, MFU, peak memory;
* ``grpo``: a GRPO step at K = 8 for 2 utterances (up to 3 steps within the cap; the last one is
  reported, the first one's seconds beside it): the audio encoder, the shared-prefill group rollout
  through ``--grpo-decode``, the readout, the policy and reference log-prob forwards
  (:func:`ambinb.policy.completion_logprobs`), Eq. 7 with group advantages of random rewards,
  backward, AdamW: each part's seconds and rollout tokens/s;
* ``max_batch``: the largest SFT micro-batch that fits the card, with and without checkpointing.

The JSON's top level also holds the numbers compared turn over turn (issue 17): ``decode_ms_per_step``,
``decode_floor_ms``, ``rollout_tokens_per_s``, ``grpo_step_s``, ``sft_tokens_per_s``, ``sft_mfu`` and
``peak_gib`` per section (:func:`summary`).

MFU counts model FLOPs (no recomputation): per token of the language model, 2 x its non-embedding
parameters forward, the same again for the activation gradients, and (full fine-tune only) once more
for the weight gradients; the LM head only where the loss reads logits (the completion and the
slot); attention scores 4 x layers x hidden x T^2 per sequence forward, x 3 with backward. The audio
tower is not counted (its output is cached).

Memory (:func:`memory_estimate`, also ``--estimate`` alone, on the CPU: the model is built on the meta
device): computed, not measured, for an SFT step at ``--batch`` with activation checkpointing, at
the batch's padded width and longest completion (the real token counts of the synthetic
utterances, :func:`token_counts`): parameters in bf16, LoRA's parameters (r 8 on q, k, v, o, gate,
up, down of the language model, counted on the meta model) with their gradients and AdamW moments
in float32 (16 bytes each), the float32 copy of the head that the log-prob path holds, and per
sequence the checkpointed layer inputs (layers x tokens x hidden, bf16), one layer's activations
recomputed (tokens x (10 hidden + 3 intermediate), bf16) and the completion's float32 logits with
their log-softmax and gradient (3 x (completion + 1) x vocabulary). A GPU run records it
(``memory_estimate``) beside the measured SFT peak and largest batch with checkpointing
(``measured_peak_gib``, ``measured_largest_batch``), with ``largest_batch``, the batch its slope
fits in the card's memory. For Qwen2-Audio-7B at the 427 tokens per sequence of
``bench/results/full_size_nvidia_h100_80gb_hbm3.json`` (its completion taken as 200 tokens, its
``--completion-tokens``; the file does not record it) it gives 22.4 GiB at batch 8, where that run
measured a peak of 24.4 GiB: the estimate falls about 2 GiB short. That run found a largest batch
of 118 with checkpointing; it recorded neither the estimate nor the card's memory.

Results go to ``bench/results/full_size_<card>.json`` (``full_size_<model>_<card>.json`` for a model
other than ``qwen2_audio_7b``; ``--estimate``'s to ``full_size_estimate[_<model>]_cpu.json``), or to
``--out``. ``--smoke`` runs every section on the CPU with the model's tiny
spec (same classes and vocabulary, tiny widths, float32; :func:`tiny_spec`) for the tests.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ambinb import audio as A  # noqa: E402
from ambinb import config, families, lm, losses, policy, prompt, readout, rollout, vocab  # noqa: E402
from ambinb import model as M  # noqa: E402
from ambinb.examples import Example  # noqa: E402
from ambinb.merge import merged_lora  # noqa: E402
from ambinb.strategies import sft  # noqa: E402
from bench import common  # noqa: E402

# Qwen/Qwen2-Audio-7B-Instruct config.json (the text model is Qwen2-7B's shape: the published file
# leaves hidden size, layers and heads at Qwen2Config's defaults, written out here)
FULL = {
    "family": "qwen2_audio",
    "audio": {"d_model": 1280, "encoder_layers": 32, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120,
              "num_mel_bins": 128, "max_source_positions": 1500, "activation_function": "gelu",
              "scale_embedding": False},
    "text": {"vocab_size": 156032, "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "intermediate_size": 11008, "max_position_embeddings": 8192,
             "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "sliding_window": 32768, "tie_word_embeddings": False},
    "audio_token_index": 151646, "bos_token_id": 151643, "eos_token_id": 151645, "pad_token_id": 151643,
}
# Qwen/Qwen2.5-Omni-7B config.json, thinker_config (the Thinker only; the Talker is never built)
OMNI_7B = {
    "family": "qwen2_5_omni",
    "audio": {"d_model": 1280, "encoder_layers": 32, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120,
              "num_mel_bins": 128, "max_source_positions": 1500, "n_window": 100, "output_dim": 3584,
              "activation_function": "gelu", "scale_embedding": False},
    "vision": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "in_channels": 3,
               "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
               "out_hidden_size": 3584, "fullatt_block_indexes": [7, 15, 23, 31], "hidden_act": "silu"},
    "text": {"vocab_size": 152064, "hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28,
             "num_key_value_heads": 4, "intermediate_size": 18944, "max_position_embeddings": 32768,
             "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "mrope_section": [16, 24, 24],
             "tie_word_embeddings": False},
    "audio_token_index": 151646, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
}
# Qwen/Qwen2.5-Omni-3B: the same towers (projecting to 2048), the text model of Qwen2.5-3B's shape; the head
# is taken as untied from the embeddings, as the 7B's is (an upper bound: tied, it would weigh 0.6 GB less)
OMNI_3B = {
    **OMNI_7B,
    "audio": {**OMNI_7B["audio"], "output_dim": 2048},
    "vision": {**OMNI_7B["vision"], "out_hidden_size": 2048},
    "text": {**OMNI_7B["text"], "vocab_size": 151936, "hidden_size": 2048, "num_hidden_layers": 36,
             "num_attention_heads": 16, "num_key_value_heads": 2, "intermediate_size": 11008},
}
SPECS = {"qwen2_audio_7b": FULL, "qwen2_5_omni_7b": OMNI_7B, "qwen2_5_omni_3b": OMNI_3B}
PROCESSORS = {"qwen2_audio": vocab.qwen2_audio_processor, "qwen2_5_omni": vocab.qwen2_5_omni_processor}


def tiny_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The same classes and vocabulary at tiny widths, for --smoke (widths 32, 2 layers, 1 vision block)."""
    text = {**spec["text"], "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 64}
    if "mrope_section" in text:
        text["mrope_section"] = [1, 1, 2]  # head_dim 8: 4 rotary frequencies
    out = {**spec, "text": text, "audio": {**spec["audio"], "d_model": 32, "encoder_layers": 2,
                                           "encoder_attention_heads": 2, "encoder_ffn_dim": 64}}
    if "output_dim" in spec["audio"]:
        out["audio"]["output_dim"] = 32
    if "vision" in spec:
        out["vision"] = {**spec["vision"], "depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2,
                         "out_hidden_size": 32, "fullatt_block_indexes": [0]}
    return out


DEFAULT_MODEL = "qwen2_audio_7b"  # its results file keeps the name it had before --model (full_size_<card>.json)
CLASSES = common.CLASSES
SECTIONS = ("matmul", "bandwidth", "decode", "sft", "grpo", "max_batch")
CAPS = {"matmul": 10.0, "bandwidth": 10.0, "decode": 150.0, "sft": 90.0, "grpo": 90.0, "max_batch": 120.0}
SMOKE = {"batch": 2, "steps": 1, "completion_tokens": 12, "audio_seconds": 1.0, "grpo_utterances": 1, "k": 2,
         "max_new_tokens": 4, "max_batch_limit": 2, "decode_rows": 4, "decode_steps": 4,
         "decodes": ["dynamic", "static"],
         "caps": {"matmul": 1.0, "bandwidth": 1.0, "decode": 30.0, "sft": 4.0, "grpo": 4.0, "max_batch": 30.0}}
THINK = ("<think>\nKeywords: raised voice, fast pace\nStep 1 (text): The words \"{t}\" sound tense.\n"
         "Step 2 (audio): Volume: loud. Speed: fast. Pitch: high. Tone: harsh.\n{more}"
         "Step 3 (synthesis): Mostly {a}, with some {b}.\n</think>")
MORE = "The voice rises towards the end of the sentence and the stress falls on the last word.\n"


# --- the model and the data ------------------------------------------------------------------

def qwen2_audio_config(spec: dict[str, Any]) -> Any:
    """A ``Qwen2AudioConfig`` from a spec like :data:`FULL`."""
    from transformers import Qwen2AudioConfig

    text = {k: v for k, v in spec["text"].items() if k != "rope_theta"}
    text.update(model_type="qwen2", bos_token_id=spec["bos_token_id"], eos_token_id=spec["eos_token_id"],
                pad_token_id=spec["pad_token_id"],
                rope_parameters={"rope_theta": float(spec["text"]["rope_theta"]), "rope_type": "default"})
    return Qwen2AudioConfig(audio_config={"model_type": "qwen2_audio_encoder", **spec["audio"]}, text_config=text,
                            audio_token_index=spec["audio_token_index"])


def qwen2_5_omni_config(spec: dict[str, Any]) -> Any:
    """A ``Qwen2_5OmniThinkerConfig`` from a spec like :data:`OMNI_7B`."""
    from transformers import Qwen2_5OmniThinkerConfig

    text = {k: v for k, v in spec["text"].items() if k not in ("rope_theta", "mrope_section")}
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": float(spec["text"]["rope_theta"]),
                               "mrope_section": list(spec["text"]["mrope_section"])}
    return Qwen2_5OmniThinkerConfig(text_config=text, audio_config=spec["audio"], vision_config=spec["vision"],
                                    audio_token_index=spec["audio_token_index"],
                                    vision_start_token_id=spec["vision_start_token_id"],
                                    vision_end_token_id=spec["vision_end_token_id"])


def model_config(spec: dict[str, Any]) -> Any:
    """The transformers config of a spec, by its family."""
    return (qwen2_audio_config if spec["family"] == "qwen2_audio" else qwen2_5_omni_config)(spec)


def build_model(spec: dict[str, Any], device: str, dtype: torch.dtype, cfg: dict[str, Any] | None) -> Any:
    """The randomly initialised model, allocated on ``device`` in ``dtype``, with LoRA (towers frozen) unless
    ``cfg`` is None (the bare model, e.g. on the meta device for :func:`memory_estimate`)."""
    import transformers

    family = families.for_model_type(model_config(spec).model_type)
    with torch.device(device):
        model = getattr(transformers, family.model_class)._from_config(model_config(spec), dtype=dtype)
    model.config.use_cache = False
    return model if cfg is None else M.apply_lora(model.train(), cfg)


def completion(tok: Any, transcript: str, answer: str, n_tokens: int) -> prompt.CompletionIds:
    """A think block in the curator's wording, lengthened to at least ``n_tokens``, and the answer."""
    more = ""
    while True:
        other = CLASSES[(CLASSES.index(answer) + 1) % len(CLASSES)]
        ids = prompt.completion_ids(tok, THINK.format(t=transcript, more=more, a=answer, b=other), answer)
        if len(ids.ids) >= n_tokens:
            return ids
        more += MORE


def synthetic_examples(model: Any, processor: Any, n: int, audio_seconds: float, completion_tokens: int,
                       seed: int) -> tuple[list[Example], float]:
    """``n`` utterances and the tower's seconds: random mel features of ``audio_seconds`` through the tower
    (timed), the real prompt (chat template, transcript, classes, the audio positions expanded), a
    completion of about ``completion_tokens`` real tokens."""
    gen = torch.Generator().manual_seed(seed)
    masks = torch.zeros((n, A.N_FRAMES), dtype=torch.long)
    masks[:, : int(audio_seconds * 100)] = 1  # 10 ms hop
    tower = lm.audio_tower(model)
    feats = torch.randn((n, A.N_MELS, A.N_FRAMES), generator=gen)
    feats = feats.to(tower.conv1.weight.device, tower.conv1.weight.dtype)
    with torch.no_grad():
        tower_s, audio = common.timed(lambda: A.run_tower(model, feats, masks), tower.conv1.weight.device)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        prompt_ids, answer = example_ids(processor, i, audio[i].shape[0], completion_tokens)
        encoded = prompt.Encoded(f"s{i}", prompt_ids, audio[i])
        out.append(Example(f"s{i}", encoded, answer, rng.dirichlet(np.ones(len(CLASSES)))))
    return out, tower_s


def example_ids(processor: Any, i: int, n_audio: int, completion_tokens: int
                ) -> tuple[list[int], prompt.CompletionIds]:
    """Synthetic utterance ``i``'s prompt ids (the chat template, transcript ``i``, the classes, ``n_audio`` audio
    positions) and its completion of at least ``completion_tokens`` tokens: what :func:`synthetic_examples` uses."""
    tok = processor.tokenizer
    transcript = common.TRANSCRIPTS[i % len(common.TRANSCRIPTS)]
    text = prompt.prompt_text(processor, transcript, CLASSES, utt_id=f"s{i}")
    return prompt.prompt_ids(tok, text, n_audio), completion(tok, transcript, CLASSES[i % len(CLASSES)],
                                                             completion_tokens)


def batch_tokens(rows: list[tuple[list[int], prompt.CompletionIds]]) -> tuple[int, int]:
    """``(padded width, longest completion)`` of a batch of (prompt ids, completion) rows: its right-padded
    forward runs every row at the longest prompt + completion."""
    return max(len(p) + len(c.ids) for p, c in rows), max(len(c.ids) for _, c in rows)


def token_counts(processor: Any, batch: int, audio_seconds: float, completion_tokens: int) -> tuple[int, int]:
    """:func:`batch_tokens` of the first ``batch`` synthetic utterances, computed without a model: the audio
    positions of ``audio_seconds`` from the frame count (:func:`ambinb.audio.n_audio_tokens`, 10 ms frames)."""
    n_audio = int(A.n_audio_tokens(int(audio_seconds * 100)))
    return batch_tokens([example_ids(processor, i, n_audio, completion_tokens) for i in range(batch)])


def lm_param_counts(model: Any) -> dict[str, int]:
    """Parameters of the language model: ``body`` (the decoder layers and norm), ``embed``, ``head``; the audio
    ``tower``; ``other`` (the rest: Qwen2-Audio's projector, Qwen2.5-Omni's vision tower)."""
    text = lm.text_model(model)
    embed = sum(p.numel() for p in text.embed_tokens.parameters())
    body = sum(p.numel() for n, p in text.named_parameters() if "embed_tokens" not in n and "lora_" not in n)
    head = lm.head(model).weight.numel()
    tower = sum(p.numel() for p in lm.audio_tower(model).parameters())
    total = sum(p.numel() for n, p in lm.base_model(model).named_parameters() if "lora_" not in n)
    return {"body": body, "embed": embed, "head": head, "tower": tower, "other": total - body - embed - head - tower}


# --- memory ------------------------------------------------------------------------------------

LORA_KEYS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_regex")
GIB = 2**30


def lora_parameters(model: Any, lora: dict[str, Any]) -> int:
    """LoRA's parameter count on ``model`` (meta device): :func:`ambinb.model.apply_lora` applied, its
    ``lora_`` tensors counted (r x (in + out) per matched linear)."""
    wrapped = M.apply_lora(model.train(), lora)
    return sum(p.numel() for n, p in wrapped.named_parameters() if "lora_" in n)


def memory_estimate(spec: dict[str, Any], batch: int, sequence_tokens: int, completion_tokens: int,
                    lora: dict[str, Any] | None = None, card_gib: float | None = None) -> dict[str, Any]:
    """Memory of an SFT step at ``batch`` with activation checkpointing, computed (the module docstring's
    Memory paragraph), in GiB: the ``fixed`` parts, the ``per_sequence`` parts at ``sequence_tokens``
    (the batch's padded width) and ``completion_tokens``, and ``total_gib`` = fixed + batch x per sequence.
    Parameters are counted on the model built on the meta device; LoRA from ``lora`` (default: the
    ``lora_*`` keys of ``params/defaults.yaml``, the paper's). With ``card_gib``, ``largest_batch`` is the
    batch the slope fits in it.

    Example (Qwen2-Audio-7B, 427 tokens, 200 of them completion): 8.40e9 parameters x 2 B, 2.0e7 LoRA x 16,
    head 6.39e8 x 4 = 18.3 GiB fixed; per sequence 32 x 427 x 4096 x 2 + 427 x (10 x 4096 + 3 x 11008) x 2
    + 3 x 201 x 156032 x 4 B = 0.51 GiB; at batch 8, 22.4 GiB.
    """
    lora = lora or {k: config.defaults()[k] for k in LORA_KEYS}
    model = build_model(spec, "meta", torch.bfloat16, None)
    counts = lm_param_counts(model)
    n_lora = lora_parameters(model, lora)
    text = spec["text"]
    layers, hidden, inter, vocab_size = (text[k] for k in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                                            "vocab_size"))
    fixed = {"parameters_bf16": 2 * sum(counts.values()), "lora_fp32_grad_adamw": 16 * n_lora,
             "head_fp32_copy": 4 * counts["head"]}
    per_sequence = {"checkpointed_layer_inputs": 2 * layers * sequence_tokens * hidden,
                    "recomputed_layer": 2 * sequence_tokens * (10 * hidden + 3 * inter),
                    "completion_logits_fp32": 4 * 3 * (completion_tokens + 1) * vocab_size}
    fixed_gib, seq_gib = sum(fixed.values()) / GIB, sum(per_sequence.values()) / GIB
    out = {"batch": batch, "sequence_tokens": sequence_tokens, "completion_tokens": completion_tokens,
           "parameters": counts, "lora_parameters": n_lora,
           "fixed": {k: v / GIB for k, v in fixed.items()}, "fixed_gib": fixed_gib,
           "per_sequence": {k: v / GIB for k, v in per_sequence.items()}, "per_sequence_gib": seq_gib,
           "total_gib": fixed_gib + batch * seq_gib}
    if card_gib:
        out.update(card_gib=card_gib, largest_batch=int((card_gib - fixed_gib) // seq_gib))
    return out


def print_estimate(name: str, est: dict[str, Any]) -> None:
    """One line per part of :func:`memory_estimate`'s result."""
    print(f"  memory estimate {name}, SFT batch {est['batch']} with checkpointing, {est['sequence_tokens']} tokens "
          f"({est['completion_tokens']} completion): {est['total_gib']:.2f} GiB", flush=True)
    print("    fixed " + ", ".join(f"{k} {v:.2f}" for k, v in est["fixed"].items()) + f" = {est['fixed_gib']:.2f}")
    print("    per sequence " + ", ".join(f"{k} {v:.3f}" for k, v in est["per_sequence"].items())
          + f" = {est['per_sequence_gib']:.3f} GiB x {est['batch']}", flush=True)


# --- decoding ----------------------------------------------------------------------------------

def decode_bytes(counts: dict[str, int], text: dict[str, Any], rows: int, context: float, elt: int) -> float:
    """Bytes one decode step must read: the language model's body and head, and the KV cache of ``rows``.

    Example (7B, bf16, 16 rows at a mean context of 400): (6.5e9 + 6.4e8) x 2 + 32 layers x 2 (K, V)
    x 4096 x 400 x 16 rows x 2 = 1.43e10 + 3.4e9 bytes.
    """
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    kv = text["num_hidden_layers"] * 2 * text["num_key_value_heads"] * head_dim * context * rows * elt
    return (counts["body"] + counts["head"]) * elt + kv


def profiled(path: str, work: Any) -> Any:
    """``work()`` under ``torch.profiler`` (CPU and CUDA activities): a Chrome trace at ``<path>.json``
    and the 40 costliest operators at ``<path>.txt``; just ``work()`` when ``path`` is empty."""
    if not path:
        return work()
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        out = work()
    prof.export_chrome_trace(f"{path}.json")
    key = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    Path(f"{path}.txt").write_text(prof.key_averages().table(sort_by=key, row_limit=40))
    return out


def run_decode(model: Any, tok: Any, example: Example, rows: int, steps: int, decodes: list[str],
               profile_path: str = "") -> list[dict]:
    """Milliseconds per decode step of ``rows`` rows through each loop, phases from the loop's timings;
    the first loop's timed call profiled when ``profile_path`` is given (:func:`profiled`)."""
    model.eval()
    out = []
    for loop in decodes:
        gen = torch.Generator(device=lm.device_of(model))
        try:
            with merged_lora(model):
                for n in (3, steps):  # the first call warms up (and compiles) the loop
                    timings: dict[str, float] = {}
                    common.reset_peak()
                    call = functools.partial(rollout.generate_group, model, tok, [example.encoded], rows, n,
                                             decode=loop, generator=gen.manual_seed(0), timings=timings)
                    groups = profiled(profile_path if n == steps and loop == decodes[0] else "", call)
        except Exception as err:  # one loop failing (a compiler error) leaves the others measured
            out.append({"decode": loop, "rows": rows, "error": f"{type(err).__name__}: {err}"[:500]})
            print(f"  decode {loop} failed: {out[-1]['error']}", flush=True)
            continue
        done = max(len(ids) for ids, _ in groups[0])
        per_step = {k: 1000 * v / max(done - 1, 1) for k, v in timings.items() if k != "prefill"}
        out.append({"decode": loop, "rows": rows, "steps": done, "ms_per_step": sum(per_step.values()),
                    "phases_ms_per_step": per_step, "prefill_ms": 1000 * timings["prefill"],
                    "peak_gib": common.peak_gib()})
        print(f"  decode {loop:<9} {rows} rows: {out[-1]['ms_per_step']:8.2f} ms/step "
              f"({', '.join(f'{k} {v:.2f}' for k, v in per_step.items())})", flush=True)
    model.train()
    return out


# --- SFT -----------------------------------------------------------------------------------------

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
    return common.train_step(strategy, model, optimizer, indices, 0, lm.device_of(model))[0]


def run_sft(model, strategy, optimizer, examples, batch, steps, counts, text, peak_tflops, cap_s) -> list[dict]:
    """Seconds, tokens/s, MFU and peak memory of SFT steps at ``batch``, without and with checkpointing."""
    rows = []
    for ckpt in (False, True):
        set_checkpointing(model, ckpt)
        indices = list(range(batch))
        sft_step(model, strategy, optimizer, indices)  # warm-up
        common.reset_peak()
        times, start = [], time.perf_counter()
        while len(times) < steps and time.perf_counter() - start < cap_s / 2:
            times.append(sft_step(model, strategy, optimizer, indices))
        sec = float(np.median(times))
        chosen = [examples[i] for i in indices]
        tokens = sum(len(e.encoded.prompt_ids) + len(e.completion.ids) for e in chosen)
        flops = sft_step_flops(counts, chosen, text["num_hidden_layers"], text["hidden_size"])
        rows.append({"activation_checkpointing": ckpt, "batch": batch, "steps_timed": len(times),
                     "seconds_per_step": sec, "tokens_per_step": tokens, "tokens_per_s": tokens / sec,
                     "model_tflops_per_step": flops / 1e12, "achieved_tflops": flops / sec / 1e12,
                     "mfu": flops / sec / 1e12 / peak_tflops if peak_tflops else None,
                     "peak_memory_gib": common.peak_gib()})
        print(f"  SFT batch {batch} ckpt={ckpt!s:<5} {sec:7.3f} s/step  {tokens / sec:9.0f} tok/s  "
              f"MFU {rows[-1]['mfu'] or float('nan'):.3f}", flush=True)
    set_checkpointing(model, False)
    return rows


def fits(model, strategy, optimizer, batch: int) -> bool:
    """Whether one SFT step at ``batch`` runs without running out of memory."""
    try:
        sft_step(model, strategy, optimizer, list(range(batch)))
        return True
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if not common.is_oom(err):
            raise
        optimizer.zero_grad(set_to_none=True)
        return False
    finally:
        common.reset_peak()


def run_max_batch(model, examples, tok, cfg, optimizer, limit: int, cap_s: float) -> list[dict]:
    """The largest SFT micro-batch that fits, without and with activation checkpointing."""
    rows = []
    big = sft.SFTStrategy([examples[i % len(examples)] for i in range(limit)], CLASSES, tok, cfg)
    for ckpt in (False, True):
        set_checkpointing(model, ckpt)
        found = common.largest_batch(lambda b: fits(model, big, optimizer, b), 1, limit, cap_s / 2)
        rows.append({"activation_checkpointing": ckpt, **found})
        capped = " (capped)" if found["capped"] else ""
        print(f"  largest SFT batch ckpt={ckpt}: {found['largest']}{capped}", flush=True)
    set_checkpointing(model, False)
    return rows


# --- GRPO ----------------------------------------------------------------------------------------

def grpo_rollout(model, tok, examples, k: int, max_new: int, decode: str, parts: dict[str, float]) -> list:
    """The step's encoder run and group rollout (LoRA merged), their seconds into ``parts``."""
    device, n = lm.device_of(model), len(examples)
    masks = torch.zeros((n, A.N_FRAMES), dtype=torch.long)
    masks[:, : examples[0].encoded.audio.shape[0] * 4] = 1  # the frames behind the utterance's audio tokens
    feats = torch.randn((n, A.N_MELS, A.N_FRAMES), device=device, dtype=lm.audio_tower(model).conv1.weight.dtype)
    with torch.no_grad():
        parts["encoder"], _ = common.timed(lambda: A.run_tower(model, feats, masks), device)
    model.eval()
    gen = torch.Generator(device=device).manual_seed(0)
    with merged_lora(model):
        parts["rollout"], groups = common.timed(lambda: rollout.generate_group(
            model, tok, [e.encoded for e in examples], k, max_new, generator=gen, decode=decode), device)
    return [ids for group in groups for ids, _ in group]


def run_grpo(model, tok, examples, k, max_new, optimizer, reference, cfg, decode: str) -> dict[str, Any]:
    """One GRPO step (module docstring), each part timed."""
    n, device, parts = len(examples), lm.device_of(model), {}
    common.reset_peak()
    t_start = time.perf_counter()
    completions = grpo_rollout(model, tok, examples, k, max_new, decode, parts)
    prompts = [e.encoded.prompt_ids for e in examples for _ in range(k)]
    audio = [e.encoded.audio for e in examples for _ in range(k)]
    answer_open = prompt.segment_ids(tok, "<answer>")
    with torch.no_grad():
        parts["readout"], _ = common.timed(lambda: readout.read_out(
            model, [p + c + answer_open for p, c in zip(prompts, completions)], audio, prompt.class_ids(tok, CLASSES),
            tok.pad_token_id), device)
    model.train()
    advantages = losses.group_advantages(torch.rand((n, k), generator=torch.Generator().manual_seed(1)), k)

    def update() -> None:
        logps, mask, _ = policy.completion_logprobs(model, prompts, completions, audio, tok.pad_token_id, k)
        with torch.no_grad(), reference(model) as ref_model:
            ref_logps, _, _ = policy.completion_logprobs(ref_model, prompts, completions, audio, tok.pad_token_id, k)
        loss, _ = losses.grpo_loss(logps, None, ref_logps, advantages.reshape(-1).to(device), mask,
                                   float(cfg["clip_eps"]), float(cfg["grpo_kl_coef"]))  # Eq. 7
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    parts["update"], _ = common.timed(update, device)
    total = time.perf_counter() - t_start
    new_tokens = sum(len(c) for c in completions)
    return {"k": k, "utterances": n, "max_new_tokens": max_new, "decode": decode, "seconds": parts,
            "step_seconds": total, "rollout_tokens": new_tokens, "rollout_tokens_per_s": new_tokens / parts["rollout"],
            "encoder_share": parts["encoder"] / total, "peak_memory_gib": common.peak_gib()}


def run_grpo_steps(model, tok, examples, args, optimizer, cfg) -> dict[str, Any]:
    """Up to 3 GRPO steps within the cap, checkpointing as the model's params set it (``cfg``, resolved with
    ``params/models/<--model>.yaml``); the last (warm) one reported."""
    set_checkpointing(model, bool(cfg["activation_checkpointing"]))
    reference, steps, t0 = policy.Reference(model), [], time.perf_counter()
    while len(steps) < 3 and (not steps or time.perf_counter() - t0 + steps[-1]["step_seconds"] < args.caps["grpo"]):
        steps.append(run_grpo(model, tok, examples[: args.grpo_utterances], args.k, args.max_new_tokens, optimizer,
                              reference, cfg, args.grpo_decode))
    g = {**steps[-1], "steps_run": len(steps), "first_step_seconds": steps[0]["step_seconds"],
         "activation_checkpointing": bool(lm.base_model(model).is_activation_checkpointing)}
    set_checkpointing(model, False)
    print(f"  GRPO K={g['k']} B={g['utterances']}: step {g['step_seconds']:.2f} s "
          f"({', '.join(f'{k} {v:.2f}' for k, v in g['seconds'].items())}), rollout "
          f"{g['rollout_tokens_per_s']:.0f} tok/s", flush=True)
    return g


# --- the run ---------------------------------------------------------------------------------------

def parse(argv: list[str] | None) -> Any:
    """The options (module docstring); ``--smoke`` replaces the sizes and caps by :data:`SMOKE`'s; ``--estimate``
    runs on the CPU whatever ``--device`` says."""
    p = common.parser(__doc__, device="")
    p.add_argument("--model", default=DEFAULT_MODEL, choices=list(SPECS),
                   help=f"the backbone (default {DEFAULT_MODEL})")
    p.add_argument("--smoke", action="store_true", help="tiny widths on the CPU, every section, seconds")
    p.add_argument("--estimate", action="store_true",
                   help="only the computed SFT memory at --batch (memory_estimate; CPU, the model on the meta device)")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument("--batch", type=int, default=8, help="SFT micro-batch")
    p.add_argument("--steps", type=int, default=5, help="timed SFT steps per setting")
    p.add_argument("--audio-seconds", type=float, default=5.0)
    p.add_argument("--completion-tokens", type=int, default=200)
    p.add_argument("--grpo-utterances", type=int, default=2)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--max-batch-limit", type=int, default=256)
    p.add_argument("--decode-rows", type=int, default=16)
    p.add_argument("--decode-steps", type=int, default=64)
    p.add_argument("--decodes", nargs="+", default=["dynamic", "static", "compiled"], choices=rollout.DECODES)
    p.add_argument("--profile", default="", help="path prefix: torch.profiler trace and table of the first loop")
    p.add_argument("--grpo-decode", default="compiled", choices=rollout.DECODES, help="the GRPO step's loop")
    p.add_argument("--caps", type=float, nargs=len(SECTIONS), default=None, metavar=tuple(s.upper() for s in SECTIONS),
                   help="seconds per section")
    args = p.parse_args(argv)
    args.caps = dict(zip(SECTIONS, args.caps)) if args.caps else dict(CAPS)
    if args.smoke:
        vars(args).update({**SMOKE, "grpo_decode": "dynamic"})
    args.device = "cpu" if args.estimate else args.device or ("cpu" if args.smoke else "cuda")
    if not args.smoke and not args.estimate and not common.is_cuda():
        raise SystemExit("bench/full_size.py needs a CUDA GPU (or --smoke for the tiny CPU run, --estimate for the "
                         "computed memory)")
    if common.is_cuda(args.device) and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA GPU here")
    return args


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The keys compared turn over turn (issue 17), from the sections that ran (None where one did not)."""
    decode, sft_rows, g = result.get("decode") or [], result.get("sft") or [], result.get("grpo") or {}
    timed_loops = [r for r in decode if "ms_per_step" in r]
    best = min(timed_loops, key=lambda r: r["ms_per_step"]) if timed_loops else {}
    fast = max(sft_rows, key=lambda r: r["tokens_per_s"]) if sft_rows else {}
    return {"decode_ms_per_step": best.get("ms_per_step"), "decode_loop": best.get("decode"),
            "decode_floor_ms": result.get("decode_floor", {}).get("ms"),
            "rollout_tokens_per_s": g.get("rollout_tokens_per_s"), "grpo_step_s": g.get("step_seconds"),
            "sft_tokens_per_s": fast.get("tokens_per_s"), "sft_mfu": fast.get("mfu"),
            "peak_gib": {"decode": best.get("peak_gib"), "grpo": g.get("peak_memory_gib"),
                         "sft": fast.get("peak_memory_gib")}}


def decode_floor(result: dict[str, Any], spec: dict[str, Any], args: Any, example: Example, elt: int) -> dict:
    """Bytes a decode step reads at the decode section's mean context, over the measured copy bandwidth."""
    context = len(example.encoded.prompt_ids) + args.decode_steps / 2
    n = decode_bytes(result["parameters"], spec["text"], args.decode_rows, context, elt)
    bandwidth = result["bandwidth"]["bytes_per_s"]
    return {"bytes_per_step": n, "mean_context": context, "bytes_per_s": bandwidth, "ms": 1000 * n / bandwidth}


def run_section(name: str, work: Any, result: dict[str, Any], args: Any, optimizer: Any, model: Any) -> None:
    """``result[name] = work()``; an unattended GPU run records an error and goes on (the smoke run raises)."""
    try:
        result[name] = work()
    except Exception as err:
        if args.smoke:
            raise
        result[f"{name}_error"] = f"{type(err).__name__}: {err}"[:500]
        print(f"  {name} failed: {result[f'{name}_error']}", flush=True)
        optimizer.zero_grad(set_to_none=True)
        set_checkpointing(model, False)
        common.reset_peak()


def prepare(args: Any, spec: dict[str, Any], dtype: torch.dtype, cfg: dict[str, Any], result: dict[str, Any]
            ) -> tuple[Any, Any, list[Example]]:
    """The model (built and counted), the real tokenizer of its family (:data:`PROCESSORS`) and the synthetic
    examples, their sizes into ``result``."""
    processor = PROCESSORS[spec["family"]]()
    result["build_seconds"], model = common.timed(lambda: build_model(spec, args.device, dtype, cfg), args.device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result["parameters"] = {**lm_param_counts(model), "trainable": trainable}
    n = max(args.batch, args.grpo_utterances)
    examples, result["encoder_seconds_for_examples"] = synthetic_examples(
        model, processor, n, args.audio_seconds, args.completion_tokens, cfg["seed"])
    first = examples[0]
    result.update(prompt_tokens=len(first.encoded.prompt_ids), completion_tokens=len(first.completion.ids),
                  sequence_tokens=len(first.encoded.prompt_ids) + len(first.completion.ids),
                  audio_tokens=int(first.encoded.audio.shape[0]))
    return model, processor.tokenizer, examples


def result_name(bench: str, model: str) -> str:
    """The results file's stem before the card: ``bench`` for :data:`DEFAULT_MODEL`, ``<bench>_<model>`` otherwise."""
    return bench if model == DEFAULT_MODEL else f"{bench}_{model}"


def run_estimate(args: Any, spec: dict[str, Any], lora: dict[str, Any]) -> dict[str, Any]:
    """``--estimate``: :func:`memory_estimate` at ``--batch`` with the benchmark's real token counts
    (:func:`token_counts`), printed and written (``full_size_estimate[_<model>]_cpu.json``)."""
    sequence, completion_n = token_counts(PROCESSORS[spec["family"]](), args.batch, args.audio_seconds,
                                          args.completion_tokens)
    est = memory_estimate(spec, args.batch, sequence, completion_n, lora)
    print_estimate(args.model, est)
    result = {**common.header("full_size_estimate", args.device, smoke=args.smoke, model=args.model, spec=spec),
              "settings": {"batch": args.batch, "audio_seconds": args.audio_seconds,
                           "completion_tokens": args.completion_tokens, **lora},
              "memory_estimate": est}
    common.write(result_name("full_size_estimate", args.model), args.device, result, args.out)
    return result


def estimate_beside_measured(result: dict[str, Any], spec: dict[str, Any], args: Any, examples: list[Example],
                             lora: dict[str, Any]) -> dict[str, Any]:
    """:func:`memory_estimate` at the SFT section's batch of ``examples`` (on a GPU with the card's memory for
    ``largest_batch``); :func:`note_measured` adds the measured numbers beside it."""
    rows = [(e.encoded.prompt_ids, e.completion) for e in examples[: args.batch]]
    card = torch.cuda.get_device_properties(args.device).total_memory / GIB if common.is_cuda(args.device) else None
    return memory_estimate(spec, args.batch, *batch_tokens(rows), lora, card)


def note_measured(result: dict[str, Any]) -> None:
    """Beside the estimate: the SFT peak with checkpointing and the largest batch with it, where measured."""
    est = result.get("memory_estimate")
    if est is None:
        return
    ckpt = [r for r in result.get("sft") or [] if r["activation_checkpointing"]]
    if ckpt:
        est["measured_peak_gib"] = ckpt[0]["peak_memory_gib"]
    largest = [r for r in result.get("max_batch") or [] if r["activation_checkpointing"]]
    if largest:
        est["measured_largest_batch"] = largest[0]["largest"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """The run (module docstring): ``--estimate`` alone, or the sections in order, the JSON written after each."""
    args = parse(argv)
    common.quiet_libraries(args.threads)
    spec = tiny_spec(SPECS[args.model]) if args.smoke else SPECS[args.model]
    dtype = torch.float32 if args.smoke else torch.bfloat16  # CPUs emulate bf16, slowly
    cfg = config.resolve(strategy="grpo", model=args.model, overrides={"device": args.device})
    lora = {k: cfg[k] for k in LORA_KEYS}
    if args.estimate:
        return run_estimate(args, spec, lora)
    result = {**common.header("full_size", args.device, smoke=args.smoke, model=args.model, spec=spec,
                              dtype=str(dtype)),
              "settings": {**{k: v for k, v in vars(args).items() if k != "out"}, **lora}}
    started, section, caps = time.perf_counter(), args.sections, args.caps

    def save() -> None:  # after every section: a run cut short still leaves what it measured
        note_measured(result)
        result.update(summary(result), total_seconds=time.perf_counter() - started)
        common.write(result_name("full_size", args.model), args.device, result, args.out)

    if "matmul" in section:
        result["matmul"] = common.matmul_tflops(256 if args.smoke else 8192, args.device, dtype, caps["matmul"])
    if "bandwidth" in section or "decode" in section:
        result["bandwidth"] = common.copy_bandwidth(2**26 if args.smoke else 2**31, args.device, caps["bandwidth"])
    model, tok, examples = prepare(args, spec, dtype, cfg, result)
    result["memory_estimate"] = estimate_beside_measured(result, spec, args, examples, lora)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    sections = {
        "decode": lambda: run_decode(model, tok, examples[0], args.decode_rows, args.decode_steps, args.decodes,
                                     args.profile),
        "sft": lambda: run_sft(model, sft.SFTStrategy(examples, CLASSES, tok, cfg), optimizer, examples, args.batch,
                               args.steps, result["parameters"], spec["text"], result.get("matmul", {}).get("tflops"),
                               caps["sft"]),
        "grpo": lambda: run_grpo_steps(model, tok, examples, args, optimizer, cfg),
        "max_batch": lambda: run_max_batch(model, examples, tok, cfg, optimizer, args.max_batch_limit,
                                           caps["max_batch"]),
    }
    save()
    for name in (s for s in sections if s in section):
        run_section(name, sections[name], result, args, optimizer, model)
        if name == "decode" and "decode" in result:
            result["decode_floor"] = decode_floor(result, spec, args, examples[0], dtype.itemsize)
            if any(r["decode"] == args.grpo_decode and "error" in r for r in result["decode"]):
                args.grpo_decode = "dynamic"  # the GRPO step runs on a loop that worked
        save()
    return result


if __name__ == "__main__":
    main()
