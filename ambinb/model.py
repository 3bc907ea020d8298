"""Loading checkpoints (Qwen2-Audio, Qwen2.5-Omni's Thinker), choosing what trains (LoRA or full), saving it.

Loading (:func:`load_model`, :func:`load_checkpoint`): a checkpoint of any family in
:mod:`ambinb.families` (by its config's ``model_type``) and its processor from a hub id or a local
folder, with ``dtype``, ``device`` and ``attn_implementation`` from the params; the towers are
frozen. An empty ``model_name_or_path`` selects the tiny stand-in (:mod:`ambinb.standin`), built
on first use. Nothing can be downloaded on the project's machines, so the tests load local
folders; a folder that is not a checkpoint of a known family fails with its path and what it holds
instead. :func:`why_absent` tells, without loading anything, whether the model is on
this machine at all.

What trains (:func:`prepare_trainable`): with ``lora: true``, peft LoRA on the language model's
q, k, v, o, gate, up and down projections only, chosen by the ``lora_target_regex`` param (the audio
tower has q/k/v projections too, and Qwen2.5-Omni's vision tower gate/up/down; the regex matches
``language_model`` modules only, and :func:`apply_lora` checks that no tower is hit); with
``lora: false``, a full fine-tune of everything but the towers (Qwen2-Audio: the language model and
projector). The towers stay frozen either way, as in the paper. Toy runs may choose the full
fine-tune in their params (LoRA on a model of width 64 learns slowly); LoRA is the default
everywhere else.

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

from ambinb import families, files, lm, standin
from ambinb.families.base import Family
from ambinb.paths import resolve_path


class ModelLoadError(ValueError):
    """A checkpoint or processor that cannot be loaded as a known family; the message names the path."""


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

def check_checkpoint_folder(path: Path) -> Family:
    """The family of the checkpoint folder ``path`` (:mod:`ambinb.families`, by its config's ``model_type``);
    :class:`ModelLoadError` unless it is a folder whose ``config.json`` names a known family."""
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
    if model_type not in families.MODEL_TYPES:
        raise ModelLoadError(f"{path}: not a checkpoint of a known family (config.json has model_type {model_type!r}, "
                             f"expected one of {', '.join(families.MODEL_TYPES)})")
    return families.for_model_type(model_type)


def _hub_family(name: str) -> Family:
    """The family of a hub checkpoint, from its ``config.json`` (downloaded, or in the local cache)."""
    from transformers import PretrainedConfig  # heavy

    config, _ = PretrainedConfig.get_config_dict(name)
    try:
        return families.for_model_type(config.get("model_type"))
    except ValueError as err:
        raise ModelLoadError(f"{name}: {err}") from err


def load_checkpoint(name_or_path: str | os.PathLike, dtype: str = "auto", device: str = "auto",
                    attn_implementation: str = "sdpa") -> tuple[Any, Any]:
    """Load a model of a known family (:mod:`ambinb.families`) and its processor from a local folder or a hub id.

    The family comes from the checkpoint's ``config.json``: Qwen2-Audio loads whole; Qwen2.5-Omni loads
    its Thinker only (``Qwen2_5OmniThinkerForConditionalGeneration``), never the Talker.

    The weights load straight onto ``device`` (``device_map``), never first into host memory (17 GB
    for the 7B) and then moved.

    Returns:
        ``(model, processor)``, the model in eval mode on ``device``, its towers frozen (so
        :class:`ambinb.audio.AudioFeatureCache` reuses the audio tower's outputs).

    Raises:
        ModelLoadError: the folder is missing or of no known family, a hub id cannot be fetched
            (these machines are offline: download the checkpoint elsewhere and give its folder), or the
            processor needs a package that is missing (Qwen2.5-Omni's needs torchvision).
    """
    import transformers  # heavy

    name = str(name_or_path)
    local = Path(name).expanduser()
    family = None
    if local.exists() or name.startswith((".", "/", "~")):
        family = check_checkpoint_folder(local)
        name = str(local)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    try:
        family = family or _hub_family(name)
        processor = transformers.AutoProcessor.from_pretrained(name)
        model = getattr(transformers, family.model_class).from_pretrained(  # weights straight onto the device
            name, dtype=torch_dtype, attn_implementation=attn_implementation, device_map=torch.device(device))
    except ImportError as err:  # Qwen2.5-Omni's processor builds its video part, which needs torchvision
        raise ModelLoadError(f"{name}: its processor needs a package that is not installed (pip install "
                             f"'ambinb[omni]' for Qwen2.5-Omni's torchvision): {err}") from err
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{name}: cannot load a checkpoint (offline machines: give a local "
                             f"folder; HF_HUB_OFFLINE=1 fails fast): {err}") from err
    if not isinstance(processor, getattr(transformers, family.processor_class)):
        raise ModelLoadError(f"{name}: the processor is {type(processor).__name__}, expected {family.processor_class}")
    model.eval()
    freeze_towers(model)  # the paper's setting; unfreeze explicitly to train the audio tower
    return model, processor


def freeze_towers(model: Any) -> None:
    """No gradient for the family's towers (audio, and Qwen2.5-Omni's vision tower)."""
    for tower in lm.towers(model).values():
        tower.requires_grad_(False)


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
    """Wrap ``model`` with peft LoRA on the modules matched by ``lora_target_regex``; towers frozen.

    Raises:
        ValueError: the regex matches no module, or matches a module of a tower (audio, vision).
    """
    from peft import LoraConfig, get_peft_model  # heavy

    regex = cfg["lora_target_regex"]
    matched = [n for n, _ in model.named_modules() if re.fullmatch(regex, n)]
    if not matched:
        raise ValueError(f"lora_target_regex={regex!r} matches no module of the model")
    names = lm.family(model).towers
    tower = [n for n in matched if set(n.split(".")) & set(names)]
    if tower:
        raise ValueError(f"lora_target_regex={regex!r} matches tower modules ({', '.join(names)}: never trained) "
                         f"such as {tower[0]!r}")
    freeze_towers(model)
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
    """LoRA (``lora: true``) or a full fine-tune of all but the towers (the language model and any projector);
    the towers frozen; activation checkpointing as ``activation_checkpointing`` says."""
    if cfg["lora"]:
        model = apply_lora(model, cfg)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
        freeze_towers(model)
    set_activation_checkpointing(model, bool(cfg["activation_checkpointing"]))
    return model


START_FILE = "ambinb_start.json"  # in an adapter folder: the adapter folded into the base before it trained


def save_trained(model: Any, processor: Any, out_dir: str | os.PathLike,
                 folded: str | os.PathLike | None = None) -> Path:
    """Save what training changed: the LoRA adapter (peft model) or the full model and processor.

    ``folded`` names an adapter that :func:`fold_in` merged into the base before this one trained; it is
    recorded in ``START_FILE``, so :func:`load_trained` folds it in again. The folder is written whole or
    not at all (:func:`ambinb.files.atomic`): a full disk, which
    safetensors reports as ``SafetensorError``, fails with ``no space left on device while writing
    <out_dir>``, and an adapter saved before stays as it was.
    """
    out_dir = Path(out_dir)
    with files.atomic(out_dir) as tmp:
        model.save_pretrained(tmp)
        if not hasattr(model, "peft_config"):
            processor.save_pretrained(tmp)
        elif folded is not None:
            (Path(tmp) / START_FILE).write_text(json.dumps({"fold_in": str(Path(folded).resolve())}))
    return out_dir


def fold_in(model: Any, path: str | os.PathLike) -> Any:
    """The loaded (not yet trainable) ``model`` with what :func:`save_trained` wrote at ``path`` folded into
    its weights: a LoRA adapter merged (``W += scaling * B @ A``), or full weights copied. Training then adds
    its own adapter on top, so the model as it is now is both the policy's start and, with the adapter
    switched off, the reference (``reference: init``).

    Raises:
        FileNotFoundError: ``path`` holds no adapter or model.
    """
    path = Path(path)
    if (path / "adapter_config.json").exists():
        from peft import PeftModel  # heavy

        return PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    _copy_full_weights(model, path)
    return model


def _copy_full_weights(model: Any, path: Path) -> None:
    """Every tensor of the full model saved at ``path`` (loaded by its own class, which maps the checkpoint's
    key names) copied into ``model``."""
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no saved adapter or model to start from")
    base = lm.base_model(model)
    saved = type(base).from_pretrained(str(path), dtype=base.dtype).state_dict()
    with torch.no_grad():
        base.load_state_dict(saved, strict=True)


def load_into(model: Any, path: str | os.PathLike) -> None:
    """Copy what :func:`save_trained` wrote at ``path`` into ``model``, prepared the same way (LoRA or full
    fine-tune, :func:`prepare_trainable`), in place: the model keeps its wrappers and its frozen tower.

    A run that starts from another run's weights (``init_from``) calls this after its strategy took its
    reference from the base model (:class:`ambinb.policy.Reference`). A LoRA adapter is set into the
    model's adapter; full weights are loaded by their own class (which maps the checkpoint's key names)
    and copied over, every tensor.

    Raises:
        FileNotFoundError: ``path`` holds no adapter or model.
        ValueError: the saved weights do not fit ``model`` (another LoRA setting or model), naming keys.
    """
    path = Path(path)
    lora = (path / "adapter_config.json").exists()
    if lora != hasattr(model, "peft_config"):
        raise ValueError(f"{path} holds {'a LoRA adapter' if lora else 'a full model'}, but this run trains "
                         f"{'the full model' if lora else 'with LoRA'}: set lora as that run did")
    if lora:
        from peft import set_peft_model_state_dict  # heavy
        from peft.utils import load_peft_weights  # heavy

        unexpected = list(set_peft_model_state_dict(model, load_peft_weights(str(path))).unexpected_keys)
        if unexpected:
            raise ValueError(f"{path}: the adapter does not fit this model (e.g. {unexpected[:3]})")
        return
    _copy_full_weights(model, path)


def load_trained(path: str | os.PathLike, cfg: dict[str, Any], is_trainable: bool = False) -> tuple[Any, Any]:
    """Load what :func:`save_trained` wrote: the base model (from ``cfg``) plus the adapter (on top of the
    adapter it started from, when ``START_FILE`` names one), or a full model."""
    path = Path(path)
    if (path / "adapter_config.json").exists():
        from peft import PeftModel  # heavy

        model, processor = load_model(cfg)
        if (path / START_FILE).exists():
            model = fold_in(model, json.loads((path / START_FILE).read_text())["fold_in"])
        return PeftModel.from_pretrained(model, str(path), is_trainable=is_trainable), processor
    return load_checkpoint(path, cfg["dtype"], cfg["device"], cfg["attn_implementation"])
