"""Loading checkpoints, dtypes and devices, LoRA or a full fine-tune, and saved adapters (on the stand-in)."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from conftest_model import audio_logits, tiny, tiny_dir, tone
from full_disk import fill, small_disk  # noqa: F401

from ambinb import config, lm
from ambinb import model as M

FIXTURES = (tiny, tiny_dir)  # pytest fixtures from conftest_model, used by name below


def test_load_errors_name_the_path(tmp_path, tiny_dir, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no waiting on a network that is not there
    with pytest.raises(M.ModelLoadError, match=r"nowhere: no such checkpoint folder"):
        M.load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(M.ModelLoadError, match=r"empty: not a checkpoint folder \(no config.json"):
        M.load_checkpoint(tmp_path / "empty")
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(M.ModelLoadError, match=r"gpt2: not a Qwen2-Audio checkpoint .*model_type 'gpt2'"):
        M.load_checkpoint(other)
    with pytest.raises(M.ModelLoadError, match="Qwen/Qwen2-Audio-7B-Instruct: cannot load"):
        M.load_checkpoint("Qwen/Qwen2-Audio-7B-Instruct")  # no network and no local copy here


def test_load_model_from_params(tiny_dir):
    cfg = config.resolve(overrides={"model_name_or_path": str(tiny_dir), "dtype": "bfloat16", "device": "cpu",
                                    "attn_implementation": "eager"})
    model, processor = M.load_model(cfg)
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    assert model.config._attn_implementation == "eager"
    assert not any(p.requires_grad for p in lm.core(model).audio_tower.parameters())


def test_resolve_dtype_and_device():
    assert M.resolve_dtype("auto", "cpu") == torch.float32
    assert M.resolve_dtype("bfloat16") == torch.bfloat16
    assert M.resolve_device("cpu") == "cpu"
    assert M.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="dtype='fp8'"):
        M.resolve_dtype("fp8")


def test_lora_targets_the_language_model_only(tiny):
    model, _ = tiny
    cfg = config.resolve()
    peft_model = M.apply_lora(model, cfg)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    wrapped = {n.rsplit(".lora_", 1)[0] for n in trainable}
    n_layers = model.config.text_config.num_hidden_layers
    assert len(wrapped) == 7 * n_layers  # q, k, v, o, gate, up, down in every layer
    assert not any("audio_tower" in n for n, _ in peft_model.named_modules() if "lora_" in n)


def test_lora_regex_that_misses_or_hits_the_tower_is_refused(tiny):
    model, _ = tiny
    cfg = config.resolve()
    with pytest.raises(ValueError, match="matches audio-tower modules"):
        M.apply_lora(model, {**cfg, "lora_target_regex": r".*\.(q_proj|k_proj|v_proj)"})
    with pytest.raises(ValueError, match="matches no module"):
        M.apply_lora(model, {**cfg, "lora_target_regex": r".*nothing_here"})


def test_full_fine_tune_keeps_the_tower_frozen(tiny):
    model, _ = tiny
    model = M.prepare_trainable(model, {**config.resolve(), "lora": False})
    assert all(p.requires_grad for n, p in model.named_parameters() if "audio_tower" not in n)
    assert not any(p.requires_grad for p in lm.core(model).audio_tower.parameters())


def test_adapter_saves_and_loads_with_the_run(tiny, tiny_dir, tmp_path):
    model, processor = tiny
    cfg = config.resolve(overrides={"model_name_or_path": str(tiny_dir), "dtype": "float32", "device": "cpu",
                                    "lora": True})  # the tiny model's layer fine-tunes fully; LoRA here
    peft_model = M.prepare_trainable(model, cfg)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)  # a trained adapter: B != 0 changes the output
    wave = tone(1.0, 300)
    before = audio_logits(peft_model, processor, wave)
    M.save_trained(peft_model, processor, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    loaded, loaded_processor = M.load_trained(tmp_path / "adapter", cfg)
    after = audio_logits(loaded, loaded_processor, wave)
    assert torch.allclose(before, after, atol=1e-6)
    base, _ = M.load_model(cfg)
    assert not torch.allclose(audio_logits(base, processor, wave), after, atol=1e-4)



def test_a_full_disk_while_saving_the_adapter_says_so_and_keeps_the_last_one(tiny, small_disk):  # noqa: F811
    """The run folder is a 256 KiB tmpfs: the first adapter (~75 KB) fits; then the disk is filled to
    16 KB, so the second save fails inside safetensors. The user reads that the disk is full, with the
    folder; no temporary is left, and the first adapter is as it was, file for file."""
    model, processor = tiny
    peft_model = M.apply_lora(model, config.resolve())
    out = small_disk / "adapter"
    M.save_trained(peft_model, processor, out)
    saved = {p.name: p.read_bytes() for p in out.iterdir()}
    fill(small_disk, leave=16 * 1024)
    with pytest.raises(OSError, match=re.escape(f"no space left on device while writing {out}")):
        M.save_trained(peft_model, processor, out)
    assert sorted(p.name for p in small_disk.iterdir()) == ["adapter", "filler"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == saved

def test_activation_checkpointing_recomputes_and_keeps_loss_and_gradients(tiny):
    """With ``activation_checkpointing`` each decoder layer runs again in backward (a forward hook inside
    the layer counts it), and the loss and LoRA gradients are those of the plain run."""
    model, _ = tiny
    cfg = {**config.resolve(), "lora_dropout": 0.0}
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))

    def step(on: bool) -> tuple[float, dict[str, torch.Tensor], int]:
        peft_model = M.prepare_trainable(copy.deepcopy(model), {**cfg, "activation_checkpointing": on}).train()
        calls = []
        first = lm.core(peft_model).language_model.layers[0].input_layernorm  # the layer's first module
        first.register_forward_hook(lambda *_: calls.append(1))
        out = peft_model(input_ids=ids, labels=ids)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in peft_model.named_parameters()
                 if p.requires_grad and p.grad is not None}  # text only: the projector gets none
        return out.loss.item(), grads, len(calls)

    loss_off, grads_off, calls_off = step(False)
    loss_on, grads_on, calls_on = step(True)
    assert (calls_off, calls_on) == (1, 2)
    assert loss_on == pytest.approx(loss_off, rel=1e-6)
    assert grads_on.keys() == grads_off.keys() and grads_off
    for n in grads_off:
        torch.testing.assert_close(grads_on[n], grads_off[n], rtol=1e-5, atol=1e-7)


def test_an_empty_model_name_loads_the_stand_in(tiny_dir, monkeypatch):
    from ambinb import standin

    asked = []
    monkeypatch.setattr(standin, "ensure_tiny", lambda cfg: asked.append(cfg["tiny_dir"]) or tiny_dir)
    cfg = config.resolve(overrides={"model_name_or_path": "", "dtype": "float32", "device": "cpu"})
    model, processor = M.load_model(cfg)
    assert asked == [cfg["tiny_dir"]]
    assert model.config.text_config.hidden_size == cfg["tiny_hidden_size"]
