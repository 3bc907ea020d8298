"""Fixtures shared by the model-core tests (and by the training tests that need a model).

Import them into a test module: ``from conftest_model import tiny, tiny_dir, toy_corpus  # noqa: F401``.

* ``tiny_dir`` (session): the tiny stand-in built by :func:`ambinb.standin.ensure_tiny` from the
  default params, i.e. under ``models/tiny/`` (gitignored); built once (~1.5-2.5 min on a
  2-core CPU: 600 warm-up steps), reused by every later session until its ``tiny_*`` params change.
* ``tiny`` (function): a fresh ``(model, processor)`` loaded from it, float32 on the CPU, so a test
  may wrap or perturb it freely; sets one torch thread.
* ``toy_corpus`` (session): ``(folder, table)`` of a 40-utterance toy corpus in a temporary folder.
* ``omni_dir`` (session): a tiny random ``Qwen2_5OmniThinkerForConditionalGeneration`` (the real class at
  widths of 32: 2 decoder layers, a 2-layer audio tower, a 1-block vision tower; the 3B's 151,936 head
  rows) saved as a checkpoint folder, built in about a second; ``omni_processor`` (session): the real
  ``Qwen2_5OmniProcessor`` around Qwen2.5-Omni's tokenizer (:func:`ambinb.vocab.qwen2_5_omni_processor`).
* ``omni`` (function): a fresh ``(model, processor)`` of that Thinker, float32 on the CPU.
* ``family_model`` (function, parametrised over the families): ``tiny`` (Qwen2-Audio) or ``omni``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ambinb import config, labels, lm, standin, vocab
from ambinb import model as model_mod
from ambinb import prompt as prompt_mod

CLASSES = ["anger", "happiness", "sadness", "neutral"]


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    return standin.ensure_tiny(config.resolve())


@pytest.fixture
def tiny(tiny_dir):
    torch.set_num_threads(1)
    return model_mod.load_checkpoint(tiny_dir, dtype="float32", device="cpu")


OMNI_TINY = {  # the real Thinker classes at tiny widths; ids and vocabulary as Qwen2.5-Omni-3B's
    "text_config": {"vocab_size": 151_936, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": False,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [1, 1, 2]}},
    "audio_config": {"d_model": 32, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
                     "output_dim": 32, "n_window": 100},
    "vision_config": {"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": 32,
                      "fullatt_block_indexes": [0]},
    "vision_start_token_id": 151_652, "vision_end_token_id": 151_653,  # as the published thinker_config has them
}
FAMILIES = ["qwen2_audio", "qwen2_5_omni"]


@pytest.fixture(scope="session")
def omni_processor():
    return vocab.qwen2_5_omni_processor()


@pytest.fixture(scope="session")
def omni_dir(tmp_path_factory, omni_processor) -> Path:
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration  # heavy

    torch.manual_seed(0)
    model = Qwen2_5OmniThinkerForConditionalGeneration(Qwen2_5OmniThinkerConfig(**OMNI_TINY))
    out = tmp_path_factory.mktemp("omni") / "thinker"
    model.save_pretrained(out)
    return out


@pytest.fixture
def omni(omni_dir, omni_processor):
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration  # heavy

    torch.set_num_threads(1)
    model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(omni_dir, dtype=torch.float32)
    model_mod.freeze_towers(model)
    return model.eval(), omni_processor


@pytest.fixture(params=FAMILIES)
def family_model(request):
    """``(model, processor)`` of each family in turn: the Qwen2-Audio stand-in, then the tiny Omni Thinker."""
    return request.getfixturevalue("tiny" if request.param == "qwen2_audio" else "omni")


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("toy_model_core") / "corpus"
    return out, labels.make_toy(out, n=40, seed=0)


def assert_adapter_loads_back(model, processor, example, tmp_path: Path, monkeypatch) -> None:
    """What training changed, saved as a run saves it (``model.save_trained``) and loaded on a fresh base
    (``model.load_trained``, the base from the model's own folder), gives the trained model's logits on
    ``example``. Qwen2.5-Omni's processor is handed over as it is: without torchvision (this machine)
    ``AutoProcessor`` cannot build its video part."""
    import transformers  # heavy

    out = model_mod.save_trained(model, processor, tmp_path / "adapter")
    if lm.family(model).name == "qwen2_5_omni":
        monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", lambda *a, **kw: processor)
    cfg = config.resolve(overrides={"model_name_or_path": str(lm.base_model(model).name_or_path), "dtype": "float32",
                                    "device": "cpu", "lora": hasattr(model, "peft_config")})
    loaded, _ = model_mod.load_trained(out, cfg)
    ids = torch.tensor([example.encoded.prompt_ids + example.completion.ids])
    with torch.no_grad():
        before, after = (lm.head_logits(m, lm.hidden_states(m.eval(), ids, None, [example.encoded.audio])[0])
                         for m in (model, loaded))
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def perturb_lora(model, seed: int = 1) -> None:
    """A trained adapter: every LoRA B matrix random (B = 0 leaves the model as it was)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def tone(seconds: float, freq: float, rate: int = 16_000, amp: float = 0.3) -> np.ndarray:
    """A sine tone: distinct, deterministic test audio."""
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def audio_logits(model, processor, wave: np.ndarray,
                 text: str = "<|audio_bos|><|AUDIO|><|audio_eos|>How does it sound?") -> torch.Tensor:
    """The model's logits (1, T, V) for one clip and ``text``, without gradients."""
    inputs = processor(text=[text], audio=[wave], sampling_rate=16_000, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits


def encode_waves(model, processor, waves: list[np.ndarray], transcripts: list[str], classes=CLASSES,
                 cache=None) -> list[prompt_mod.Encoded]:
    """Encoded utterances ``u0, u1, ...`` from waveforms, through a (new) feature cache."""
    from ambinb.audio import AudioFeatureCache

    cache = cache or AudioFeatureCache(model, processor.feature_extractor)
    ids = [f"u{i}" for i in range(len(waves))]
    feats = cache.features(ids, waves)
    return [prompt_mod.Encoded(u, prompt_mod.prompt_ids(processor.tokenizer,
                                                        prompt_mod.prompt_text(processor, t, classes, utt_id=u),
                                                        f.shape[0]), f)
            for u, t, f in zip(ids, transcripts, feats)]
