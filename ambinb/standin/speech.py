"""Synthetic audio for the stand-in's pretraining, independent of any corpus: speech-like clips whose
loudness, rate, pitch, pitch variation, tension and roughness follow given z-scores, simple test
signals, and a fast path to their Whisper features."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ambinb import audio as audio_mod
from ambinb import prosody


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


# The reference voice of :func:`synthetic_speech` (z = 0 on every dimension) and what one standard
# deviation of each dimension of :mod:`ambinb.prosody` changes. Absolute values: a clip is heard
# alone, so "louder" here means louder than this reference, not than a speaker's usual.
SPEECH_REFERENCE: dict[str, tuple[float, float]] = {
    "loudness": (-24.0, 5.0),    # RMS of the voiced parts in dB full scale; dB per z
    "rate": (4.0, 1.3),          # syllables per second; factor per z
    "pitch": (150.0, 3.0),       # mean F0 in Hz; semitones per z
    "pitch_var": (3.0, 1.6),     # intonation range in semitones; factor per z
    "tension": (1.3, 0.3),       # harmonic k has amplitude k^-(a - b z) (tense: flatter spectrum)
    "roughness": (0.006, 2.0),   # jitter sd as a fraction of F0 (shimmer 6x that); factor per z
}
SPEECH_Z_LIMIT = 2.5  # drawn z-scores are clipped to +-2.5


def speech_settings(z: dict[str, float]) -> dict[str, float]:
    """Physical settings of :func:`synthetic_speech` for z-scores of the prosody dimensions.

    Example: ``z = {"loudness": 1, "pitch": -1}`` (others 0) -> ``level_db = -19``, ``f0 = 150 *
    2^(-3/12) = 126.1`` Hz, ``rate = 4`` syllables/s, ``range_st = 3``, ``tilt = 1.3``,
    ``jitter = 0.006``, ``breath = 0.08``.
    """
    def zz(d: str) -> float:
        return float(np.clip(z.get(d, 0.0), -SPEECH_Z_LIMIT, SPEECH_Z_LIMIT))

    ref = SPEECH_REFERENCE
    return {"level_db": ref["loudness"][0] + ref["loudness"][1] * zz("loudness"),
            "rate": ref["rate"][0] * ref["rate"][1] ** zz("rate"),
            "f0": ref["pitch"][0] * 2.0 ** (ref["pitch"][1] * zz("pitch") / 12.0),
            "range_st": ref["pitch_var"][0] * ref["pitch_var"][1] ** zz("pitch_var"),
            "tilt": ref["tension"][0] - ref["tension"][1] * zz("tension"),
            "breath": 0.08 * 2.0 ** (-zz("tension")),
            "jitter": ref["roughness"][0] * ref["roughness"][1] ** zz("roughness")}


def _block_noise(rng: np.random.Generator, n: int, block: int) -> np.ndarray:
    """Unit Gaussian noise held constant over blocks of ``block`` samples (per-cycle perturbation)."""
    return np.repeat(rng.normal(size=n // block + 1), block)[:n]


def synthetic_speech(rng: np.random.Generator, z: dict[str, float]) -> np.ndarray:
    """1-3 s of speech-like audio at 16 kHz whose prosody follows the z-scores ``z``.

    Syllables are voiced segments (harmonics of a gliding F0 shaped by two random vowel formants,
    a smooth envelope, jitter, shimmer and breath noise) separated by short gaps and occasional
    pauses; :func:`speech_settings` maps ``z`` to the level, syllable rate, mean F0, intonation
    range, spectral tilt, breathiness and jitter. No words, no corpus audio.
    """
    s = speech_settings(z)
    sr = audio_mod.SAMPLE_RATE
    seconds = rng.uniform(1.0, 3.0)
    n = int(seconds * sr)
    starts, lengths = [], []
    t = rng.uniform(0.02, 0.1)
    while t < seconds - 0.08:
        period = rng.uniform(0.8, 1.2) / s["rate"]
        starts.append(t)
        lengths.append(min(period * rng.uniform(0.55, 0.75), seconds - t))
        t += period
        if rng.random() < 0.15:  # a pause between words, longer in slow speech
            t += rng.uniform(0.05, 0.2) * 4.0 / s["rate"]
    # F0: one intonation target per syllable within the range, a gentle declination, mean = f0
    targets = rng.uniform(-0.5, 0.5, len(starts)) * s["range_st"]
    targets += np.linspace(0.25, -0.25, len(starts)) * s["range_st"]
    centres = [st + ln / 2 for st, ln in zip(starts, lengths)]
    times = np.arange(n) / sr
    semis = np.interp(times, centres, targets - targets.mean()) if len(starts) > 1 else np.zeros(n)
    f0 = s["f0"] * 2.0 ** (semis / 12.0) * (1.0 + s["jitter"] * _block_noise(rng, n, int(sr / s["f0"])))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    shimmer = 1.0 + 6 * s["jitter"] * _block_noise(rng, n, int(sr / s["f0"]))
    wave = np.zeros(n)
    for start, length in zip(starts, lengths):
        a, b = int(start * sr), min(n, int((start + length) * sr))
        if b - a < 32:
            continue
        formants = ((rng.uniform(300, 850), 90.0), (rng.uniform(900, 2300), 140.0), (rng.uniform(2400, 3100), 220.0))
        k = np.arange(1, int(5000 // (s["f0"] * 1.5)) + 1)
        freq = k * s["f0"]
        gain = 0.05 + sum(1.0 / (1.0 + ((freq - fc) / bw) ** 2) for fc, bw in formants)
        weights = k ** -s["tilt"] * gain
        voiced = np.sin(np.outer(phase[a:b], k)) @ weights
        voiced /= np.sqrt(np.mean(voiced**2)) + 1e-9
        breath = np.diff(rng.normal(size=b - a + 1))  # first difference: a breathy, high-tilted noise
        env = np.sin(np.pi * np.linspace(0, 1, b - a)) ** 0.6
        wave[a:b] += env * shimmer[a:b] * (voiced + s["breath"] * breath)
    voiced_rms = np.sqrt(np.mean(wave[np.abs(wave) > 0] ** 2)) if np.any(wave) else 1.0
    wave *= 10.0 ** (s["level_db"] / 20.0) / voiced_rms
    wave += rng.normal(0.0, 1e-4, n)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def draw_prosody(rng: np.random.Generator) -> dict[str, float]:
    """Random z-scores of the six prosody dimensions (standard normal, clipped to +-2.5)."""
    return {d: float(np.clip(rng.normal(), -SPEECH_Z_LIMIT, SPEECH_Z_LIMIT)) for d in prosody.DIMENSIONS}


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

