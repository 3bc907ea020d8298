"""Loading checkpoints, dtypes and devices, LoRA or a full fine-tune, and saved adapters (on the stand-in)."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from conftest_model import (
    OMNI_TINY,
    audio_logits,
    family_model,
    omni,
    omni_dir,
    omni_processor,
    perturb_lora,
    tiny,
    tiny_dir,
    tone,
)
from full_disk import fill, small_disk  # noqa: F401

from ambinb import config, lm
from ambinb import model as M

FIXTURES = (tiny, tiny_dir, family_model, omni, omni_dir, omni_processor)  # conftest_model's, used by name below


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
    with pytest.raises(M.ModelLoadError, match=r"gpt2: not a checkpoint of a known family .*model_type 'gpt2'"):
        M.load_checkpoint(other)
    with pytest.raises(M.ModelLoadError, match="Qwen/Qwen2-Audio-7B-Instruct: cannot load"):
        M.load_checkpoint("Qwen/Qwen2-Audio-7B-Instruct")  # no network and no local copy here


def test_the_weights_load_straight_onto_the_device(tiny_dir, monkeypatch):
    """``from_pretrained`` is given the device (``device_map``) and the model is never moved after, so on
    a GPU the 7B's 17 GB never sit in host memory first; here on the CPU, with ``Module.to`` refused."""
    import transformers

    cls = transformers.Qwen2AudioForConditionalGeneration
    plain, devices = cls.from_pretrained.__func__, []

    def spy(klass, *args, **kwargs):
        devices.append(kwargs.get("device_map"))
        return plain(klass, *args, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("the loaded model was moved")

    monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    monkeypatch.setattr(torch.nn.Module, "to", refuse)
    model, _ = M.load_checkpoint(tiny_dir, dtype="float32", device="cpu")
    assert devices == [torch.device("cpu")] and lm.device_of(model) == torch.device("cpu")
    assert all(p.device == torch.device("cpu") and p.dtype == torch.float32 for p in model.parameters())


def test_an_omni_checkpoint_loads_its_thinker_only(omni_dir, omni_processor, tmp_path, monkeypatch):
    """A folder laid out as the hub's Qwen/Qwen2.5-Omni-* (model_type qwen2_5_omni: the whole model, its
    weights under ``thinker.``) and a Thinker-only folder both load as the Thinker with its towers frozen,
    weight for weight; the Talker is never built. A processor that needs torchvision says what to install
    (the processor itself is handed over: this machine has no torchvision to build Omni's from a folder)."""
    import transformers

    thinker = transformers.Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(omni_dir)
    whole = transformers.Qwen2_5OmniForConditionalGeneration(transformers.Qwen2_5OmniConfig(
        thinker_config=transformers.Qwen2_5OmniThinkerConfig(**OMNI_TINY).to_dict(), enable_audio_output=False))
    whole.thinker.load_state_dict(thinker.state_dict())
    whole.save_pretrained(tmp_path / "hub")
    assert json.loads((tmp_path / "hub" / "config.json").read_text())["model_type"] == "qwen2_5_omni"

    def no_torchvision(*args, **kwargs):  # what transformers raises for the video part without torchvision
        raise ImportError("Qwen2VLVideoProcessor requires the Torchvision library but it was not found")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", no_torchvision)
    with pytest.raises(M.ModelLoadError, match=r"hub: its processor needs a package .*ambinb\[omni\].*Torchvision"):
        M.load_checkpoint(tmp_path / "hub", dtype="float32", device="cpu")
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", lambda *a, **kw: omni_processor)
    for folder in (tmp_path / "hub", omni_dir):
        model, _ = M.load_checkpoint(folder, dtype="float32", device="cpu")
        assert type(model).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration"
        assert lm.family(model).name == "qwen2_5_omni"
        assert not any("talker" in n for n, _ in model.named_parameters())
        assert not any(p.requires_grad for t in lm.towers(model).values() for p in t.parameters())
        expected = thinker.state_dict()
        assert all(torch.equal(t, expected[k]) for k, t in model.state_dict().items())


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


def test_lora_targets_the_language_model_only(family_model):
    model, _ = family_model
    cfg = config.resolve()
    peft_model = M.apply_lora(model, cfg)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    wrapped = {n.rsplit(".lora_", 1)[0] for n in trainable}
    n_layers = model.config.text_config.num_hidden_layers
    assert len(wrapped) == 7 * n_layers  # q, k, v, o, gate, up, down in every layer
    assert not any(t in n for t in ("audio_tower", "visual") for n, _ in peft_model.named_modules() if "lora_" in n)


def test_lora_regex_that_misses_or_hits_the_tower_is_refused(family_model):
    model, _ = family_model
    cfg = config.resolve()
    with pytest.raises(ValueError, match=r"matches tower modules .* such as 'model.audio_tower"):
        M.apply_lora(model, {**cfg, "lora_target_regex": r".*\.(q_proj|k_proj|v_proj)"})
    if lm.family(model).name == "qwen2_5_omni":  # its vision tower's MLPs have the language model's names
        with pytest.raises(ValueError, match=r"matches tower modules .* such as 'model.visual"):
            M.apply_lora(model, {**cfg, "lora_target_regex": r".*visual.*mlp\.(gate_proj|up_proj|down_proj)"})
    with pytest.raises(ValueError, match="matches no module"):
        M.apply_lora(model, {**cfg, "lora_target_regex": r".*nothing_here"})


def test_full_fine_tune_keeps_the_tower_frozen(family_model):
    model, _ = family_model
    model = M.prepare_trainable(model, {**config.resolve(), "lora": False})
    towers = {"audio_tower", "visual"}
    assert all(p.requires_grad for n, p in model.named_parameters() if not towers & set(n.split(".")))
    assert not any(p.requires_grad for tower in lm.towers(model).values() for p in tower.parameters())


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


# --- starting from another run's weights: fold_in, load_into, a recorded start adapter ---------------------

# text only (LoRA is on the language model): ids past the stand-in's special tokens, <|AUDIO|> (3) among them
IDS = torch.randint(10, 100, (1, 12), generator=torch.Generator().manual_seed(0))


def text_logits(model) -> torch.Tensor:
    """The language model's logits (1, 12, V) on ``IDS``, without gradients, in eval mode."""
    with torch.no_grad():
        return lm.head_logits(model, lm.hidden_states(model.eval(), IDS)[0])


def trainable_cfg(tiny_dir, lora: bool) -> dict:
    return config.resolve(overrides={"model_name_or_path": str(tiny_dir), "dtype": "float32", "device": "cpu",
                                     "lora": lora, "lora_dropout": 0.0})


def fresh(tiny_dir):
    return M.load_checkpoint(tiny_dir, dtype="float32", device="cpu")[0]


def test_fold_in_merges_a_lora_adapter_into_the_base_weights(tiny, tiny_dir, tmp_path):
    model, processor = tiny
    cfg = trainable_cfg(tiny_dir, lora=True)
    peft_model = M.prepare_trainable(model, cfg)
    perturb_lora(peft_model, seed=1)
    expected = text_logits(peft_model)
    q = "base_model.model.model.language_model.layers.0.self_attn.q_proj"
    module = dict(peft_model.named_modules())[q]
    delta = (cfg["lora_alpha"] / cfg["lora_r"]) * module.lora_B["default"].weight @ module.lora_A["default"].weight
    M.save_trained(peft_model, processor, tmp_path / "first")
    assert (tmp_path / "first" / "adapter_config.json").exists()
    assert not (tmp_path / "first" / M.START_FILE).exists()     # nothing was folded in before it

    base = fresh(tiny_dir)
    base_q = base.model.language_model.layers[0].self_attn.q_proj.weight.detach().clone()
    assert (text_logits(base) - expected).abs().max() > 1e-2, "the perturbed adapter must change the logits"
    merged = M.fold_in(base, tmp_path / "first")
    assert not hasattr(merged, "peft_config")                    # merged and unloaded: a plain model
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(text_logits(merged), expected, rtol=1e-5, atol=1e-5)
    # W + (alpha / r) B A, by hand, for one projection
    torch.testing.assert_close(merged.model.language_model.layers[0].self_attn.q_proj.weight, base_q + delta,
                               rtol=1e-5, atol=1e-6)


def test_a_second_adapter_loads_back_on_the_first_it_started_from(tiny, tiny_dir, tmp_path):
    """reference: init: the first run's adapter is folded into the base, a new LoRA trains on top and is saved
    with ``folded`` naming the first; load_trained on a fresh base folds the first in again, then the second."""
    import shutil

    model, processor = tiny
    cfg = trainable_cfg(tiny_dir, lora=True)
    first = M.prepare_trainable(model, cfg)
    perturb_lora(first, seed=1)
    M.save_trained(first, processor, tmp_path / "first")
    start = M.fold_in(fresh(tiny_dir), tmp_path / "first")
    start_logits = text_logits(start)
    second = M.prepare_trainable(start, cfg)
    torch.testing.assert_close(text_logits(second), start_logits, rtol=1e-5, atol=1e-5)  # B = 0: no change yet
    perturb_lora(second, seed=2)
    final = text_logits(second)
    assert (final - start_logits).abs().max() > 1e-2
    out = M.save_trained(second, processor, tmp_path / "second", folded=tmp_path / "first")
    recorded = json.loads((out / M.START_FILE).read_text())
    assert recorded == {"fold_in": str((tmp_path / "first").resolve())}

    loaded, _ = M.load_trained(out, cfg)
    torch.testing.assert_close(text_logits(loaded), final, rtol=1e-5, atol=1e-5)
    # without the record, the second adapter alone sits on the bare base: other logits
    shutil.copytree(out, tmp_path / "second_alone")
    (tmp_path / "second_alone" / M.START_FILE).unlink()
    alone, _ = M.load_trained(tmp_path / "second_alone", cfg)
    assert (text_logits(alone) - final).abs().max() > 1e-2


def test_load_into_sets_a_saved_adapter_into_a_prepared_lora_model(tiny, tiny_dir, tmp_path):
    """reference: base: the model is prepared (a fresh LoRA, B = 0), then the init run's adapter is copied in."""
    model, processor = tiny
    cfg = trainable_cfg(tiny_dir, lora=True)
    trained = M.prepare_trainable(model, cfg)
    perturb_lora(trained, seed=3)
    expected = text_logits(trained)
    M.save_trained(trained, processor, tmp_path / "adapter")
    target = M.prepare_trainable(fresh(tiny_dir), cfg)
    assert (text_logits(target) - expected).abs().max() > 1e-2
    assert M.load_into(target, tmp_path / "adapter") is None      # in place
    torch.testing.assert_close(text_logits(target), expected, rtol=1e-5, atol=1e-5)
    assert hasattr(target, "peft_config")
    assert all(p.requires_grad == ("lora_" in n) for n, p in target.named_parameters())  # still trains LoRA only
    M.save_trained(M.prepare_trainable(fresh(tiny_dir), trainable_cfg(tiny_dir, lora=False)), processor,
                   tmp_path / "full")
    with pytest.raises(ValueError, match=r"full holds a full model, but this run trains with LoRA: set lora as"):
        M.load_into(target, tmp_path / "full")


def test_full_weights_fold_in_and_load_into_a_fresh_model(tiny, tiny_dir, tmp_path):
    model, processor = tiny
    cfg = trainable_cfg(tiny_dir, lora=False)
    trained = M.prepare_trainable(model, cfg)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:                                     # everything but the tower
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    expected = text_logits(trained)
    out = M.save_trained(trained, processor, tmp_path / "full", folded=tmp_path / "ignored")
    assert (out / "config.json").exists() and not (out / "adapter_config.json").exists()
    assert not (out / M.START_FILE).exists()                      # a full model records no start adapter
    saved = {k: v.clone() for k, v in trained.state_dict().items()}

    base = fresh(tiny_dir)
    assert (text_logits(base) - expected).abs().max() > 1e-2
    assert M.fold_in(base, out) is base                             # copied in place
    torch.testing.assert_close(text_logits(base), expected, rtol=1e-5, atol=1e-5)

    target = M.prepare_trainable(fresh(tiny_dir), cfg)
    assert M.load_into(target, out) is None
    torch.testing.assert_close(text_logits(target), expected, rtol=1e-5, atol=1e-5)
    state = target.state_dict()
    assert state.keys() == saved.keys()
    for k in saved:                                                 # every tensor, the tower's too
        torch.testing.assert_close(state[k], saved[k], rtol=0, atol=0)
    assert not any(p.requires_grad for t in lm.towers(target).values() for p in t.parameters())
    assert any(p.requires_grad for p in target.parameters())


def test_load_into_refuses_a_lora_adapter_for_a_full_fine_tune(tiny, tiny_dir, tmp_path):
    model, processor = tiny
    M.save_trained(M.prepare_trainable(model, trainable_cfg(tiny_dir, lora=True)), processor, tmp_path / "adapter")
    full = M.prepare_trainable(fresh(tiny_dir), trainable_cfg(tiny_dir, lora=False))
    before = {k: v.clone() for k, v in full.state_dict().items()}
    with pytest.raises(ValueError, match=r"adapter holds a LoRA adapter, but this run trains the full model: "
                                         r"set lora as that run did"):
        M.load_into(full, tmp_path / "adapter")
    assert all(torch.equal(v, before[k]) for k, v in full.state_dict().items())   # left as it was


def test_fold_in_without_saved_weights_names_the_folder(tiny, tmp_path):
    model, _ = tiny
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: no saved adapter or model to start from"):
        M.fold_in(model, tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"empty: no saved adapter or model to start from"):
        M.load_into(model, tmp_path / "empty")
