"""Loading Qwen2-Audio checkpoints, choosing what trains (LoRA or a full fine-tune), and saving it.

Loading (:func:`load_model`, :func:`load_checkpoint`): any Qwen2-Audio checkpoint and its processor
from a hub id or a local folder, with ``dtype``, ``device`` and ``attn_implementation`` from the
params; the audio tower is frozen. An empty ``model_name_or_path`` selects the tiny stand-in
(:mod:`ambinb.standin`), built on first use. Nothing can be downloaded on the project's machines, so
the tests load local folders; a folder that is not a Qwen2-Audio checkpoint fails with its path and
what it holds instead. :func:`why_absent` tells, without loading anything, whether the model is on
this machine at all.

What trains (:func:`prepare_trainable`): with ``lora: true``, peft LoRA on the language model's
q, k, v, o, gate, up and down projections only, chosen by the ``lora_target_regex`` param (the audio
tower has q/k/v projections too; the regex excludes them, and :func:`apply_lora` checks it did);
with ``lora: false``, a full fine-tune of the language model and projector. The audio tower stays
frozen either way, as in the paper. Toy runs may choose the full fine-tune in their params (LoRA
on a model of width 64 learns slowly); LoRA is the default everywhere else.

Saving: the adapter (or the full weights) is saved with the run by :func:`save_trained` and
restored on top of the base model by :func:`load_trained`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from ambinb import files, lm, standin
from ambinb.paths import resolve_path


class ModelLoadError(ValueError):
    """A checkpoint or processor that cannot be loaded as Qwen2-Audio; the message names the path."""


# --- devices and dtypes ---------------------------------------------------------------------

def resolve_device(name: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; any other name is returned as is."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def resolve_dtype(name: str = "auto", device: str = "cpu") -> torch.dtype:
    """``auto`` -> bfloat16 on a GPU that has it, float32 otherwise; or the named dtype."""
    if name == "auto":
        if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise ValueError(f"dtype={name!r}: choose auto, {', '.join(table)}")
    return table[name]


# --- loading --------------------------------------------------------------------------------

def check_checkpoint_folder(path: Path) -> None:
    """Raise :class:`ModelLoadError` unless ``path`` is a folder holding a Qwen2-Audio ``config.json``."""
    if not path.is_dir():
        raise ModelLoadError(f"{path}: no such checkpoint folder")
    config = path / "config.json"
    if not config.exists():
        raise ModelLoadError(f"{path}: not a checkpoint folder (no config.json; holds "
                             f"{sorted(p.name for p in path.iterdir())[:8]})")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except ValueError as err:
        raise ModelLoadError(f"{config}: not valid JSON: {err}") from err
    if model_type != "qwen2_audio":
        raise ModelLoadError(f"{path}: not a Qwen2-Audio checkpoint (config.json has model_type {model_type!r}, "
                             "expected 'qwen2_audio')")


def load_checkpoint(name_or_path: str | os.PathLike, dtype: str = "auto", device: str = "auto",
                    attn_implementation: str = "sdpa") -> tuple[Any, Any]:
    """Load a Qwen2-Audio model and its processor from a local folder or a hub id.

    Returns:
        ``(model, processor)``, the model in eval mode on ``device``, its audio tower frozen (so
        :class:`ambinb.audio.AudioFeatureCache` reuses the tower's outputs).

    Raises:
        ModelLoadError: the folder is missing or not Qwen2-Audio, or a hub id cannot be fetched
            (these machines are offline: download the checkpoint elsewhere and give its folder).
    """
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor  # heavy

    name = str(name_or_path)
    local = Path(name).expanduser()
    if local.exists() or name.startswith((".", "/", "~")):
        check_checkpoint_folder(local)
        name = str(local)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    try:
        processor = AutoProcessor.from_pretrained(name)
        model = Qwen2AudioForConditionalGeneration.from_pretrained(
            name, dtype=torch_dtype, attn_implementation=attn_implementation)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{name}: cannot load a Qwen2-Audio checkpoint (offline machines: give a local "
                             f"folder; HF_HUB_OFFLINE=1 fails fast): {err}") from err
    if not isinstance(processor, Qwen2AudioProcessor):
        raise ModelLoadError(f"{name}: the processor is {type(processor).__name__}, expected Qwen2AudioProcessor")
    model.to(device)
    model.eval()
    lm.core(model).audio_tower.requires_grad_(False)  # the paper's setting; unfreeze explicitly to train it
    return model, processor


def load_model(cfg: dict[str, Any]) -> tuple[Any, Any]:
    """The run's base model and processor: ``model_name_or_path``, or the tiny stand-in when it is empty."""
    path = cfg["model_name_or_path"]
    if not path:
        path = str(standin.ensure_tiny(cfg))
    elif not path.startswith(("/", "~")) and (resolve_path(path)).exists():
        path = str(resolve_path(path))
    return load_checkpoint(path, cfg["dtype"], cfg["device"], cfg["attn_implementation"])


def why_absent(cfg: dict[str, Any]) -> str:
    """Why the run's model cannot be loaded without a download, or "" when it can: the tiny stand-in
    (built here) and a local folder can; a hub id only when the Hugging Face cache holds it. Reads
    nothing but the file system, so a chapter that merely looks at the model (the tower probe of
    ``02_curate_cot``) can skip it on a laptop without the 7B weights instead of waiting on the hub.

    Example: ``model_name_or_path: Qwen/Qwen2-Audio-7B-Instruct``, never downloaded ->
    ``"Qwen/Qwen2-Audio-7B-Instruct is not on this machine (a hub id, not in the Hugging Face cache)"``;
    ``model_name_or_path: ""`` -> ``""``.
    """
    from huggingface_hub import try_to_load_from_cache  # heavy

    name = str(cfg["model_name_or_path"])
    if not name:
        return ""
    local = Path(name).expanduser() if name.startswith(("/", "~", ".")) else resolve_path(name)
    if local.exists():
        return ""
    if name.startswith(("/", "~", ".")):
        return f"{name} is not on this machine (no such folder)"
    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError:  # HFValidationError: not shaped like a hub id either
        return f"{name} is not on this machine (no such folder, and not a hub id)"
    return "" if isinstance(cached, str) else f"{name} is not on this machine (a hub id, not in the Hugging Face cache)"


# --- LoRA and what trains -------------------------------------------------------------------

def apply_lora(model: Any, cfg: dict[str, Any]) -> Any:
    """Wrap ``model`` with peft LoRA on the modules matched by ``lora_target_regex``; tower frozen.

    Raises:
        ValueError: the regex matches no module, or matches a module of the audio tower.
    """
    from peft import LoraConfig, get_peft_model  # heavy

    regex = cfg["lora_target_regex"]
    matched = [n for n, _ in model.named_modules() if re.fullmatch(regex, n)]
    if not matched:
        raise ValueError(f"lora_target_regex={regex!r} matches no module of the model")
    tower = [n for n in matched if "audio_tower" in n]
    if tower:
        raise ValueError(f"lora_target_regex={regex!r} matches audio-tower modules such as {tower[0]!r}")
    lm.core(model).audio_tower.requires_grad_(False)
    conf = LoraConfig(r=int(cfg["lora_r"]), lora_alpha=int(cfg["lora_alpha"]),
                      lora_dropout=float(cfg["lora_dropout"]), target_modules=regex, bias="none")
    training = model.training
    wrapped = get_peft_model(model, conf)
    return wrapped.train(training)  # the new dropout modules start in train mode; keep the model's mode


def set_activation_checkpointing(model: Any, on: bool) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them
    (transformers' non-reentrant checkpointing; works under LoRA with frozen inputs). Only training-mode
    forwards are affected: rollouts and no-grad forwards run as before."""
    base = lm.base_model(model)
    if on:
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.activation_checkpointing_disable()


def prepare_trainable(model: Any, cfg: dict[str, Any]) -> Any:
    """LoRA (``lora: true``) or a full fine-tune of the language model and projector; the tower frozen;
    activation checkpointing as ``activation_checkpointing`` says."""
    if cfg["lora"]:
        model = apply_lora(model, cfg)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
        lm.core(model).audio_tower.requires_grad_(False)
    set_activation_checkpointing(model, bool(cfg["activation_checkpointing"]))
    return model


def save_trained(model: Any, processor: Any, out_dir: str | os.PathLike) -> Path:
    """Save what training changed: the LoRA adapter (peft model) or the full model and processor.

    The folder is written whole or not at all (:func:`ambinb.files.atomic`): a full disk, which
    safetensors reports as ``SafetensorError``, fails with ``no space left on device while writing
    <out_dir>``, and an adapter saved before stays as it was.
    """
    out_dir = Path(out_dir)
    with files.atomic(out_dir) as tmp:
        model.save_pretrained(tmp)
        if not hasattr(model, "peft_config"):
            processor.save_pretrained(tmp)
    return out_dir


def load_trained(path: str | os.PathLike, cfg: dict[str, Any], is_trainable: bool = False) -> tuple[Any, Any]:
    """Load what :func:`save_trained` wrote: the base model (from ``cfg``) plus the adapter, or a full model."""
    path = Path(path)
    if (path / "adapter_config.json").exists():
        from peft import PeftModel  # heavy

        model, processor = load_model(cfg)
        return PeftModel.from_pretrained(model, str(path), is_trainable=is_trainable), processor
    return load_checkpoint(path, cfg["dtype"], cfg["device"], cfg["attn_implementation"])
