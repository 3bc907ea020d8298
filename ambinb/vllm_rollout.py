"""vLLM as the sampler of group rollouts (``rollout_backend: vllm``); the readout stays ambinb's.

:func:`ambinb.rollout.rollout` hands the sampling of its K completions per utterance to vLLM when
the params say ``rollout_backend: vllm`` (greedy evaluation always stays on the HF path, so reported
metrics never depend on the backend). Per call:

1. the policy's weights are pushed into the vLLM engine when they changed since the last push
   (:meth:`VLLMSampler.sync`, see below);
2. each utterance becomes one vLLM request: its prompt ids with the run of ``<|AUDIO|>`` tokens
   collapsed back to the single placeholder (vLLM's Qwen2-Audio processor expands it again from
   the waveform), ``multi_modal_data={"audio": [(wave, 16000)]}``, and ``SamplingParams(n=K,
   temperature, top_p, max_tokens=max_new_tokens, stop=[answer close tag], stop_token_ids=
   <|im_end|>/<|endoftext|>)``, :func:`ambinb.prompt.suppressed_ids` (the three audio special
   tokens and the head's rows that are no token) banned by a -100 logit bias (as the HF path masks
   them);
3. every completion's token ids and finish reason become the HF path's ``(ids, stop)`` pair
   (:func:`to_ids_and_stop`), and :func:`ambinb.rollout.rollout` then builds the same
   :class:`~ambinb.rollout.Trajectory` objects (``make_trajectory``) and reads p_hat out with the
   same :func:`ambinb.readout.read_out` on the training model with its own audio features.

Weights. vLLM's Qwen2-Audio has no LoRA support, so the policy's language-model weights are sent
merged (``W + scaling * B @ A`` for every LoRA layer, plus any other trainable weight) under their
checkpoint names, through ``LLM.apply_model(lambda m: m.load_weights(...))``. A push happens before
a sampling call whenever a trainable parameter was updated in place since the last one (torch's
per-tensor version counters), so each GRPO/DPO step samples from the current policy. This path was
checked here against a stand-in ``vllm`` module only (vLLM does not install on these machines);
on a real engine, ``apply_model`` must be allowed to run a Python function in the workers (see
vLLM's docs for the version in use), and each push moves every LoRA-wrapped matrix of the language
model, which costs seconds per step for a 7B model.

Waveforms: :class:`ambinb.prompt.Encoded` holds the tower output, not the audio, so the sampler
reads each utterance's wav from the dataset table by ``utt_id`` (:func:`dataset_waves`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ambinb import audio as audio_mod
from ambinb import cot, labels, lm, prompt, standin

EXTRA = "pip install 'ambinb[vllm]'"
BACKENDS = ("hf", "vllm")
BANNED_BIAS = -100.0  # vLLM's (OpenAI's) lowest logit bias: the suppressed ids are never sampled

# runtime parameter name prefix (transformers 5) -> checkpoint name prefix (what vLLM's load_weights reads)
_CHECKPOINT_PREFIXES = (("model.language_model.", "language_model.model."),
                        ("lm_head.", "language_model.lm_head."),
                        ("model.audio_tower.", "audio_tower."),
                        ("model.multi_modal_projector.", "multi_modal_projector."))
_PEFT_PREFIX = "base_model.model."


def check_backend(name: str) -> str:
    """``name`` when it is a known rollout backend, else a ValueError naming the param."""
    if name not in BACKENDS:
        raise ValueError(f"rollout_backend={name!r}: choose one of {BACKENDS}")
    return name


def import_vllm() -> Any:
    """The ``vllm`` module, or an ImportError that names the extra to install."""
    try:
        return importlib.import_module("vllm")
    except ImportError as err:
        raise ImportError(f"rollout_backend: vllm needs the vllm package, which is not installed: {EXTRA} "
                          "(on a machine with a CUDA GPU), or set rollout_backend: hf") from err


def collapse_audio(ids: list[int], audio_id: int) -> list[int]:
    """``ids`` with every run of ``audio_id`` shortened to one token (the processor's placeholder form).

    Example: ``[5, 9, 9, 9, 6]`` with audio id 9 -> ``[5, 9, 6]``.
    """
    out: list[int] = []
    for i in ids:
        if i == audio_id and out and out[-1] == audio_id:
            continue
        out.append(int(i))
    return out


def to_ids_and_stop(completion: Any, close: str, eos_ids: list[int]) -> tuple[list[int], str]:
    """One vLLM ``CompletionOutput`` as the HF path's ``(generated ids, stop reason)``.

    ``finish_reason == "length"`` -> ``"budget"``; a stop on the close tag -> ``"answer_close"``; a
    stop on an end-of-turn token (``stop_reason`` None or one of ``eos_ids``) -> ``"eos"``, with the
    end token appended when vLLM left it out of ``token_ids`` (the HF path keeps it as the last id).
    """
    ids = [int(i) for i in completion.token_ids]
    if completion.finish_reason == "length":
        return ids, "budget"
    reason = completion.stop_reason
    if isinstance(reason, str):
        if reason != close:
            raise ValueError(f"vLLM stopped on {reason!r}, but the only stop string asked for is {close!r}")
        return ids, "answer_close"
    if not ids or ids[-1] not in eos_ids:
        ids.append(int(reason) if reason is not None else int(eos_ids[0]))
    return ids, "eos"


def checkpoint_name(name: str) -> str:
    """A runtime parameter name of the (possibly peft-wrapped) model as written in a checkpoint.

    Example: ``base_model.model.model.language_model.layers.0.self_attn.q_proj.weight`` ->
    ``language_model.model.layers.0.self_attn.q_proj.weight``.
    """
    name = name.removeprefix(_PEFT_PREFIX).replace(".base_layer.", ".")
    for runtime, stored in _CHECKPOINT_PREFIXES:
        if name.startswith(runtime):
            return stored + name[len(runtime):]
    return name


def _lora_delta(module: Any) -> torch.Tensor:
    delta = torch.zeros_like(module.base_layer.weight)
    for name in module.active_adapters:
        if name not in module.lora_A:
            continue
        if getattr(module, "use_dora", {}).get(name):
            raise NotImplementedError("merging DoRA adapters for vLLM is not implemented")
        d = module.lora_B[name].weight @ module.lora_A[name].weight * module.scaling[name]
        delta = delta + (d.T if getattr(module, "fan_in_fan_out", False) else d).to(delta.dtype)
    return delta


@torch.no_grad()
def merged_weights(model: Any) -> list[tuple[str, torch.Tensor]]:
    """Every weight training can change, LoRA merged in, under its checkpoint name (what vLLM loads).

    LoRA layers give ``W + sum_a scaling_a * B_a @ A_a`` (nothing is added when peft has already
    merged them); other trainable parameters (a full fine-tune) are given as they are.
    """
    out: list[tuple[str, torch.Tensor]] = []
    lora_modules = {name: m for name, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")}
    for name, module in lora_modules.items():
        weight = module.base_layer.weight.detach()
        if not getattr(module, "merged", False):
            weight = weight + _lora_delta(module)
        out.append((checkpoint_name(f"{name}.weight"), weight))
    for name, p in model.named_parameters():
        if p.requires_grad and "lora_" not in name and not any(name.startswith(f"{m}.") for m in lora_modules):
            out.append((checkpoint_name(name), p.detach()))
    return out


def params_version(model: Any) -> int:
    """A number that changes whenever a trainable parameter is updated in place (an optimizer step)."""
    return sum(int(p._version) for p in model.parameters() if p.requires_grad)


def dataset_waves(cfg: dict[str, Any]) -> Callable[[str], np.ndarray]:
    """``utt_id -> waveform`` over the params' dataset table (the audio vLLM needs besides the ids)."""
    rows = {str(r["utt_id"]): r for r in labels.load_dataset(cfg).to_dict("records")}

    def wave_of(utt_id: str) -> np.ndarray:
        if utt_id not in rows:
            raise KeyError(f"{utt_id}: not in the dataset table of {cfg['dataset']!r}, so vLLM gets no audio")
        return audio_mod.load_row_audio(rows[utt_id], cfg)

    return wave_of


class VLLMSampler:
    """A vLLM engine, the ``SamplingParams`` class and the audio source: K completions per utterance."""

    def __init__(self, llm: Any, sampling_params: Any, wave_of: Callable[[str], np.ndarray], sync: bool = True):
        self.llm = llm
        self.sampling_params = sampling_params
        self.wave_of = wave_of
        self.sync_weights = sync
        self.pushed_version: int | None = None
        self.calls = 0

    def sync(self, model: Any) -> bool:
        """Push the policy's merged weights when they changed since the last push; True when it pushed."""
        version = params_version(model)
        if not self.sync_weights or version == self.pushed_version:
            return False
        weights = merged_weights(model)
        self.llm.apply_model(lambda engine_model: engine_model.load_weights(weights))
        self.pushed_version = version
        return True

    def generate(self, model: Any, tokenizer: Any, encoded: list[prompt.Encoded], k: int, max_new_tokens: int,
                 temperature: float, top_p: float, seed: int, fmt: cot.OutputFormat = cot.AMBINB
                 ) -> list[list[tuple[list[int], str]]]:
        """``[utterance][k] -> (generated ids, stop reason)``, as :func:`ambinb.rollout.generate_group` gives."""
        self.sync(model)
        audio_id = int(tokenizer.convert_tokens_to_ids(audio_mod.AUDIO_TOKEN))
        eos = prompt.eos_ids(tokenizer)
        banned = prompt.suppressed_ids(tokenizer, lm.head(model).weight.shape[0])
        params = self.sampling_params(n=k, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                      stop=[fmt.answer_close], include_stop_str_in_output=True, stop_token_ids=eos,
                                      logit_bias={int(i): BANNED_BIAS for i in banned},
                                      seed=int(seed) * 1_000_003 + self.calls)
        self.calls += 1
        requests = [{"prompt_token_ids": collapse_audio(e.prompt_ids, audio_id),
                     "multi_modal_data": {"audio": [(self.wave_of(e.utt_id), audio_mod.SAMPLE_RATE)]}}
                    for e in encoded]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        if len(outputs) != len(encoded) or any(len(o.outputs) != k for o in outputs):
            raise RuntimeError(f"vLLM returned {[len(o.outputs) for o in outputs]} completions for "
                               f"{len(encoded)} prompts x {k}")
        return [[to_ids_and_stop(c, fmt.answer_close, eos) for c in o.outputs] for o in outputs]


_SAMPLERS: dict[tuple[str, str], VLLMSampler] = {}


def sampler_for(cfg: dict[str, Any], wave_of: Callable[[str], np.ndarray] | None = None) -> VLLMSampler:
    """The process's vLLM sampler for the params' model (built once, on first use).

    Params used: ``model_name_or_path`` (the tiny stand-in's folder when empty), ``dtype``, ``seed``,
    ``vllm_gpu_memory_utilization``, ``vllm_max_model_len``, ``vllm_sync``.
    """
    path = str(cfg["model_name_or_path"] or "") or str(standin.ensure_tiny(cfg))
    key = (path, str(cfg["dtype"]))
    if key not in _SAMPLERS:
        vllm = import_vllm()
        dtype = str(cfg["dtype"])
        kwargs: dict[str, Any] = {"model": path, "limit_mm_per_prompt": {"audio": 1}, "seed": int(cfg["seed"]),
                                  "dtype": "auto" if dtype == "auto" else dtype,
                                  "gpu_memory_utilization": float(cfg["vllm_gpu_memory_utilization"])}
        if int(cfg["vllm_max_model_len"]) > 0:
            kwargs["max_model_len"] = int(cfg["vllm_max_model_len"])
        _SAMPLERS[key] = VLLMSampler(vllm.LLM(**kwargs), vllm.SamplingParams, wave_of or dataset_waves(cfg),
                                     sync=bool(cfg["vllm_sync"]))
    return _SAMPLERS[key]


def reset() -> None:
    """Forget the samplers built so far (the next rollout builds a new engine)."""
    _SAMPLERS.clear()


def generate_group(model: Any, tokenizer: Any, encoded: list[prompt.Encoded], k: int, cfg: dict[str, Any],
                   fmt: cot.OutputFormat = cot.AMBINB) -> list[list[tuple[list[int], str]]]:
    """:func:`ambinb.rollout.generate_group`'s result, sampled by vLLM (see the module docstring)."""
    return sampler_for(cfg).generate(model, tokenizer, encoded, k, int(cfg["max_new_tokens"]),
                                     float(cfg["temperature"]), float(cfg["top_p"]),
                                     int(cfg["seed"]), fmt)
