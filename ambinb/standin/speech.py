"""Audio for the stand-in and its tests, independent of any corpus: simple test signals, a fast path to
the Whisper features of a short clip, and those features cut to the frames the tower needs
(:func:`ambinb.audio.tower_window`) so that a pretraining corpus fits in memory."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ambinb import audio as audio_mod


def synthetic_wave(rng: np.random.Generator) -> np.ndarray:
    """1-3 s of toy-independent audio at 16 kHz: silence, noise, a tone with vibrato, or a chirp."""
    n = int(rng.uniform(1.0, 3.0) * audio_mod.SAMPLE_RATE)
    t = np.arange(n) / audio_mod.SAMPLE_RATE
    kind = rng.integers(0, 4)
    if kind == 0:
        wave = np.zeros(n)
    elif kind == 1:
        wave = rng.normal(0.0, rng.uniform(0.01, 0.3), n)
    elif kind == 2:
        f0 = rng.uniform(80, 400)
        wave = rng.uniform(0.05, 0.5) * np.sin(2 * np.pi * f0 * t + rng.uniform(1, 8) * np.sin(2 * np.pi * 5 * t))
    else:
        f0, f1 = rng.uniform(80, 500, size=2)
        wave = rng.uniform(0.05, 0.5) * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * t[-1])))
    return wave.astype(np.float32)


def quick_mel(feature_extractor: Any, wave: np.ndarray, pad_seconds: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """The Whisper features of :func:`ambinb.audio.mel_features` for one wave, computed on the wave
    plus ``pad_seconds`` of silence and filled out to 3,000 frames with the padding's constant
    column (equal to the full computation, about 10x faster for a 2 s clip)."""
    sr = audio_mod.SAMPLE_RATE
    padded = np.concatenate([wave, np.zeros(int(pad_seconds * sr), dtype=wave.dtype)])
    out = feature_extractor([padded], sampling_rate=sr, return_attention_mask=True, padding="max_length",
                            max_length=len(padded), return_tensors="pt")
    body = out["input_features"][0].float()
    feats = body[:, -1:].expand(audio_mod.N_MELS, audio_mod.N_FRAMES).clone()
    feats[:, : body.shape[1]] = body
    mask = torch.zeros(audio_mod.N_FRAMES, dtype=torch.long)
    mask[: -(-len(wave) // audio_mod.HOP)] = 1  # ceil, as the extractor counts
    return feats, mask



def clip_mels(feature_extractor: Any, wave: np.ndarray) -> tuple[torch.Tensor, int]:
    """:func:`quick_mel` cut to the valid frames plus six padding frames: ``(features (128, n + 6), n)``."""
    feats, mask = quick_mel(feature_extractor, wave)
    n = int(mask.sum())
    return feats[:, : n + 6].clone(), n


def stack_mels(clips: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips of :func:`clip_mels` as one batch for :func:`ambinb.audio.run_tower`: features
    (B, 128, W) filled out with each clip's own padding column, and the frame mask (B, W)."""
    width = max(f.shape[1] for f, _ in clips)
    feats = torch.stack([torch.cat([f, f[:, -1:].expand(-1, width - f.shape[1])], dim=1) for f, _ in clips])
    mask = (torch.arange(width)[None, :] < torch.tensor([n for _, n in clips])[:, None]).long()
    return feats, mask
