"""Audio in: wav files, mel features, and the frozen tower's outputs, computed once per utterance.

The audio tower of every family ambinb trains (:mod:`ambinb.families`) gives each utterance an
output that depends on that utterance alone: Qwen2-Audio's encoder sees 3,000 mel frames (30 s,
zero-padded) with its key padding masked; Qwen2.5-Omni's sees only the valid frames, in 2 s chunks.
With the tower frozen (the paper's setting: LoRA on the language model only) the output never
changes, so
:class:`AudioFeatureCache` computes it once per utterance and every later forward (epochs, K
rollouts, policy / old-policy / reference passes, read-outs) reuses it.

Design:

* The cache stores the tower's output, cut to the utterance's audio-token count: Qwen2-Audio's
  *last hidden state* before ``multi_modal_projector``, whose projector runs where the audio enters
  the language model (:func:`ambinb.lm.merge_audio`), so it can be trained (full fine-tune) while the
  tower stays frozen; Qwen2.5-Omni's tower ends in its own projection, so its output is cached as
  the language model reads it. How the tower runs is its family's ``tower_outputs`` (:func:`run_tower`).
* Keys are ``(utt_id, sha1 of the 16 kHz waveform, hash of the tower weights)``: a regenerated
  corpus or a changed tower never hits a stale entry. On disk (``feature_cache_dir``) the entries
  live under ``<dir>/<tower hash>.<format>/``, one file per utterance holding that utterance's bytes
  only (a copy, not a view of a padded batch, which ``torch.save`` would write whole).
* Audio that is not finite (a NaN or inf sample) is refused where it comes in, naming the file and
  the utterance (:func:`check_finite`), and again by the cache for waveforms from elsewhere: one
  NaN sample makes every feature of the utterance NaN, and then every weight after one step.
* When the tower is trainable the cache keeps only the mel features (compacted: the padded tail of
  a Whisper log-mel is one repeated column) and the tower runs with gradients on every call.

Worked example of the token count: a 2.0 s clip has 32,000 samples -> 200 valid mel frames (hop
160) -> conv stride 2 -> 100 -> average pool 2 -> 50 ``<|AUDIO|>`` positions.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from ambinb import files, lm
from ambinb.paths import resolve_path

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
N_MELS = 128
N_FRAMES = 3_000
HOP = 160
AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_BOS = "<|audio_bos|>"
AUDIO_EOS = "<|audio_eos|>"
AUDIO_SPECIAL_TOKENS = (AUDIO_TOKEN, AUDIO_BOS, AUDIO_EOS)

_NOTED_RESAMPLING: set[tuple[int, int]] = set()


class AudioError(ValueError):
    """Audio that cannot be used as it is; the message names the utterance and the file."""


# --- waveforms ------------------------------------------------------------------------------

def to_mono_16k(wave: np.ndarray, sample_rate: int, utt_id: str = "") -> np.ndarray:
    """Average channels and resample to 16 kHz (polyphase), saying so once per source format.

    Args:
        wave: shape (samples,) or (samples, channels).
        sample_rate: the rate of ``wave`` in Hz.

    Example: a (16000, 2) array at 8 kHz -> a (32000,) float32 array at 16 kHz.
    """
    from scipy.signal import resample_poly  # heavy

    wave = np.asarray(wave, dtype=np.float32)
    channels = 1 if wave.ndim == 1 else wave.shape[1]
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    elif wave.ndim != 1:
        raise AudioError(f"{utt_id}: expected a waveform of shape (samples,) or (samples, channels), got {wave.shape}")
    if sample_rate != SAMPLE_RATE:
        g = math.gcd(int(sample_rate), SAMPLE_RATE)
        wave = resample_poly(wave, SAMPLE_RATE // g, int(sample_rate) // g).astype(np.float32)
    if (sample_rate, channels) != (SAMPLE_RATE, 1) and (sample_rate, channels) not in _NOTED_RESAMPLING:
        _NOTED_RESAMPLING.add((sample_rate, channels))
        log.warning("audio at %d Hz with %d channel(s) (first: %s) is converted to 16 kHz mono",
                    sample_rate, channels, utt_id or "?")
    return wave


def check_finite(wave: np.ndarray, utt_id: str, path: str | os.PathLike | None = None) -> np.ndarray:
    """Return ``wave`` when every sample is finite; otherwise raise naming the utterance and the file.

    Example: a clip whose 3 silent samples became NaN when normalised by its own peak ->
    ``AudioError("u1: data/u1.wav: 3 of 16000 samples are NaN or inf (first at sample 0, 0.000 s) ...")``.
    """
    bad = ~np.isfinite(wave)
    if bad.any():
        first = int(np.flatnonzero(bad.ravel())[0])
        where = f"{path}: " if path else ""
        raise AudioError(f"{utt_id}: {where}{int(bad.sum())} of {bad.size} samples are NaN or inf (first at sample "
                         f"{first}, {first / SAMPLE_RATE:.3f} s); fix or replace the file (a silent clip "
                         "normalised by its own peak does this)")
    return wave


def check_duration(wave: np.ndarray, utt_id: str, max_seconds: float = 30.0, truncate: bool = False) -> np.ndarray:
    """Refuse, or cut when ``truncate`` is set, audio longer than the encoder's window.

    Raises:
        AudioError: naming the utterance and both durations, when too long and ``truncate`` is False,
            or when the waveform is empty or too short for one audio token (under 480 samples).
    """
    if wave.size == 0:
        raise AudioError(f"{utt_id}: empty audio")
    if n_audio_tokens(wave.shape[0] // HOP) < 1:
        raise AudioError(f"{utt_id}: audio of {wave.shape[0]} samples is too short to give one audio token")
    limit = int(round(max_seconds * SAMPLE_RATE))
    if wave.shape[0] <= limit:
        return wave
    if not truncate:
        raise AudioError(f"{utt_id}: audio is {wave.shape[0] / SAMPLE_RATE:.2f} s, longer than the encoder's "
                         f"{max_seconds:g} s window (set truncate_audio: true to cut it)")
    log.warning("%s: audio cut from %.2f s to %g s (truncate_audio)", utt_id, wave.shape[0] / SAMPLE_RATE,
                max_seconds)
    return wave[:limit]


def load_wav(path: str | os.PathLike, utt_id: str = "", max_seconds: float = 30.0,
             truncate: bool = False) -> np.ndarray:
    """Read a sound file as a float32 16 kHz mono waveform of at most ``max_seconds``.

    Raises:
        AudioError: an unreadable or missing file, a NaN or inf sample (:func:`check_finite`), or
            too long; naming the utterance and the path.
    """
    utt_id = utt_id or Path(path).stem
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception as err:  # soundfile raises LibsndfileError, RuntimeError or OSError
        raise AudioError(f"{utt_id}: cannot read audio file {path}: {err}") from err
    wave = to_mono_16k(check_finite(data, utt_id, path), rate, utt_id)
    return check_duration(wave, utt_id, max_seconds, truncate)


def load_row_audio(row: Any, cfg: dict[str, Any]) -> np.ndarray:
    """The waveform of one dataset-table row (``utt_id``, ``audio_path``), as the params say."""
    path = str(row["audio_path"] or "")
    if not path:
        raise AudioError(f"{row['utt_id']}: the table has no audio_path for this utterance")
    return load_wav(path, row["utt_id"], float(cfg["max_audio_seconds"]), bool(cfg["truncate_audio"]))


def wave_hash(wave: np.ndarray) -> str:
    """sha1 of the float32 samples (16 hex digits): part of every feature-cache key."""
    return hashlib.sha1(np.ascontiguousarray(wave, dtype=np.float32).tobytes()).hexdigest()[:16]


# --- mel features and token counts ----------------------------------------------------------

def mel_features(feature_extractor: Any, waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Whisper log-mel features padded to 30 s, as ``Qwen2AudioProcessor`` computes them.

    The padding is 30 s whatever the extractor's own ``chunk_length``: Qwen2.5-Omni's pads to 300 s,
    and a clip's valid frames are the same at either length (the tests compare them), so every
    family's features have the one shape the cache keeps.

    Returns:
        ``input_features`` (B, 128, 3000) float32 and ``feature_attention_mask`` (B, 3000) long.
    """
    out = feature_extractor(waves, sampling_rate=SAMPLE_RATE, return_attention_mask=True,
                            padding="max_length", max_length=N_FRAMES * HOP, return_tensors="pt")
    return out["input_features"].float(), out["attention_mask"].long()


def n_audio_tokens(n_frames: int | torch.Tensor) -> int | torch.Tensor:
    """``<|AUDIO|>`` positions for ``n_frames`` valid mel frames: ``((n-1)//2+1-2)//2+1``.

    Example: 200 frames -> 50 tokens; 3000 frames -> 750 tokens.
    """
    return (((n_frames - 1) // 2 + 1) - 2) // 2 + 1


# --- the frozen tower -------------------------------------------------------------------------

def tower_hash(model: Any) -> str:
    """sha1 over the audio tower's parameter names, shapes, dtypes and bytes (16 hex digits)."""
    h = hashlib.sha1()
    for name, tensor in sorted(lm.audio_tower(model).state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def tower_is_frozen(model: Any) -> bool:
    """True when no audio-tower parameter requires a gradient."""
    return not any(p.requires_grad for p in lm.audio_tower(model).parameters())


def run_tower(model: Any, input_features: torch.Tensor, feature_attention_mask: torch.Tensor,
              windowed: bool = True) -> list[torch.Tensor]:
    """The audio tower's output per utterance, cut to its audio-token count, as the model's own
    forward merges it (before any projector outside the tower): the family's ``tower_outputs``.

    With ``windowed`` (the default) Qwen2-Audio's tower runs on the frames a batch needs only
    (:func:`ambinb.families.qwen2_audio.tower_window`, equal results); ``windowed=False`` runs its
    own forward on all 3,000. Qwen2.5-Omni's own forward already runs on the valid frames only, so
    both are the same call there. Gradients flow when the tower is trainable.

    Args:
        input_features: (B, 128, 3000) from :func:`mel_features`.
        feature_attention_mask: (B, 3000), 1 on valid frames.

    Returns:
        One tensor (n_audio_tokens_i, d_audio) per row of ``input_features``.
    """
    return lm.family(model).tower_outputs(lm.audio_tower(model), input_features, feature_attention_mask, windowed)


# --- the feature cache ----------------------------------------------------------------------

CACHE_FORMAT = "alone"  # how cached outputs were computed: each utterance on its own (older folders were batched)


@dataclass
class _Mel:
    """Mel features kept compact: the first ``body`` columns and the one column that fills the rest."""

    body: torch.Tensor      # (128, n)
    fill: torch.Tensor      # (128,)
    frames: int             # valid frames (feature_attention_mask sum)

    @staticmethod
    def pack(features: torch.Tensor, frames: int) -> _Mel:
        last = features[:, -1:]
        same = (features == last).all(dim=0)
        differ = torch.nonzero(~same)
        n = int(differ.max()) + 1 if differ.numel() else 0
        return _Mel(features[:, :n].clone(), features[:, -1].clone(), int(frames))

    def unpack(self) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.fill[:, None].expand(N_MELS, N_FRAMES).clone()
        feats[:, : self.body.shape[1]] = self.body
        mask = torch.zeros(N_FRAMES, dtype=torch.long)
        mask[: self.frames] = 1
        return feats, mask


class AudioFeatureCache:
    """Tower outputs per utterance, computed once (frozen tower) and reused; mel features otherwise.

    Each utterance goes through the tower on its own (at its own window, for Qwen2-Audio): in a
    batch, the padding window that the longest clip sets moves the float rounding of a shorter clip's
    output (by about 1e-6 on the tiny stand-in), and an RL run turns such a difference into another
    run. Computed alone, an utterance's output is a function of that utterance and the weights only,
    so what a run reads does not depend on which run, batch or test filled the cache first. The
    tower runs once per utterance per cache folder, so the lost batching costs little. On disk the
    entries live under ``<cache_dir>/<tower hash>.<CACHE_FORMAT>/``.

    >>> cache = AudioFeatureCache(model, processor.feature_extractor, ".cache/audio_features")  # doctest: +SKIP
    >>> feats = cache.features(["utt1", "utt2"], [wave1, wave2])    # two (n_i, d_audio) tensors  # doctest: +SKIP

    Attributes:
        tower_calls: utterances passed through the tower by this cache (a counter for tests and logs).
        hits: lookups answered from memory or disk.
    """

    def __init__(self, model: Any, feature_extractor: Any, cache_dir: str | os.PathLike | None = None):
        self.model = model
        self.feature_extractor = feature_extractor
        self.key = tower_hash(model)
        self.dir = Path(cache_dir) / f"{self.key}.{CACHE_FORMAT}" if cache_dir else None
        self._tower: dict[tuple[str, str], torch.Tensor] = {}
        self._mel: dict[tuple[str, str], _Mel] = {}
        self.tower_calls = 0
        self.hits = 0

    def refresh(self) -> None:
        """Re-hash the tower (call after loading other weights into it); stale entries are not used."""
        self.key = tower_hash(self.model)
        if self.dir is not None:
            self.dir = self.dir.parent / f"{self.key}.{CACHE_FORMAT}"
        self._tower.clear()

    def _disk_path(self, utt_id: str, whash: str) -> Path | None:
        if self.dir is None:
            return None
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in utt_id)
        return self.dir / f"{safe}.{whash}.pt"

    def mels(self, utt_ids: list[str], waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mel features (B, 128, 3000) and masks (B, 3000), computed once per utterance and kept compact."""
        keys = [(u, wave_hash(w)) for u, w in zip(utt_ids, waves)]
        todo = [i for i, k in enumerate(keys) if k not in self._mel]
        if todo:
            feats, masks = mel_features(self.feature_extractor, [waves[i] for i in todo])
            for j, i in enumerate(todo):
                self._mel[keys[i]] = _Mel.pack(feats[j], int(masks[j].sum()))
        packed = [self._mel[k].unpack() for k in keys]
        return torch.stack([p[0] for p in packed]), torch.stack([p[1] for p in packed])

    def features(self, utt_ids: list[str], waves: list[np.ndarray]) -> list[torch.Tensor]:
        """The tower output (n_i, d_audio) of each utterance; frozen tower: computed at most once each."""
        if len(utt_ids) != len(waves):
            raise ValueError(f"{len(utt_ids)} utterance ids for {len(waves)} waveforms")
        for utt_id, wave in zip(utt_ids, waves):
            check_finite(wave, utt_id)
        if not tower_is_frozen(self.model):
            feats, masks = self.mels(utt_ids, waves)
            self.tower_calls += len(utt_ids)
            return run_tower(self.model, feats, masks)
        keys = [(u, wave_hash(w)) for u, w in zip(utt_ids, waves)]
        out: dict[int, torch.Tensor] = {}
        todo: list[int] = []
        for i, key in enumerate(keys):
            if key in self._tower:
                out[i] = self._tower[key]
                self.hits += 1
                continue
            path = self._disk_path(*key)
            if path is not None and path.exists():
                self._tower[key] = out[i] = torch.load(path, map_location="cpu")
                self.hits += 1
                continue
            todo.append(i)
        first = {keys[i]: i for i in reversed(todo)}  # each missing key's first index
        for key in dict.fromkeys(keys[i] for i in todo):  # one utterance per forward: see the class docstring
            feats, masks = self.mels([key[0]], [waves[first[key]]])
            with torch.no_grad():
                res = run_tower(self.model, feats, masks)[0].detach().to("cpu", copy=True)
            self.tower_calls += 1
            self._tower[key] = res
            path = self._disk_path(*key)
            if path is not None:
                with files.atomic(path) as tmp:  # a full disk: "no space left on device while writing <path>"
                    torch.save(res, tmp)
        device = lm.device_of(self.model)
        return [(out[i] if i in out else self._tower[keys[i]]).to(device) for i in range(len(keys))]


def feature_cache(model: Any, processor: Any, cfg: dict[str, Any]) -> AudioFeatureCache:
    """The audio-feature cache the params ask for (``feature_cache_dir``; "" = memory only)."""
    folder = str(cfg["feature_cache_dir"])
    return AudioFeatureCache(model, processor.feature_extractor, resolve_path(folder) if folder else None)
