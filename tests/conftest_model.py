"""Fixtures shared by the model-core tests (and by the training tests that need a model).

Import them into a test module: ``from conftest_model import tiny, tiny_dir, toy_corpus  # noqa: F401``.

* ``tiny_dir`` (session): the tiny stand-in built by :func:`ambinb.standin.ensure_tiny` from the
  default params, i.e. under ``models/tiny/`` (gitignored); built once (~1.5-2.5 min on a
  2-core CPU: 600 warm-up steps), reused by every later session until its ``tiny_*`` params change.
* ``tiny`` (function): a fresh ``(model, processor)`` loaded from it, float32 on the CPU, so a test
  may wrap or perturb it freely; sets one torch thread.
* ``toy_corpus`` (session): ``(folder, table)`` of a 40-utterance toy corpus in a temporary folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ambinb import config, labels, standin
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


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("toy_model_core") / "corpus"
    return out, labels.make_toy(out, n=40, seed=0)


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
