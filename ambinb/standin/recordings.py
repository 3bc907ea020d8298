"""The stand-in's own speech corpus: eSpeak NG recordings of random sentences in voices the toy corpus
never uses, at random prosody settings, each measured with the curator's acoustics.

Nothing of a dataset enters it: the voices are eSpeak NG voice and variant pairs that no toy
speaker uses (:func:`pretraining_voices`), the sentences are random word strings
(:func:`ambinb.standin.transcripts.cued_transcript`), the settings are drawn uniformly over wide
ranges (:data:`SETTING_RANGES`), independent of any emotion, and there are no labels. Each
recording is measured as the curator measures a dataset (:mod:`ambinb.prosody`: eGeMAPS
functionals, the six dimensions, z-scored over this corpus), so its descriptions use the curator's
words against a typical voice of this corpus.

Building the corpus takes about 0.1 s per recording; :func:`ensure_recordings` keeps it on disk
(``.cache/standin``), keyed by its arguments and :data:`RECORDINGS_VERSION`.
"""

from __future__ import annotations

import hashlib
import io
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ambinb import prosody
from ambinb.paths import resolve_path
from ambinb.results import write_atomic
from ambinb.standin.transcripts import cued_transcript
from ambinb.standin.words import synthetic_class_list, transcript_vocabulary
from ambinb.toy.design import SPEAKERS
from ambinb.toy.espeak import Espeak
from ambinb.toy.speech import to_sample_rate

RECORDINGS_VERSION = 1  # bump whenever a change alters the recordings or their measurements
VOICE_BASES = ("en", "en-us", "en-us-nyc", "en-029", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
               "en-gb-x-rp")
VOICE_VARIANTS = ("m2", "m4", "m5", "m6", "m8", "f1", "f2", "f3", "f4", "f5", "Andrea", "Annie", "belinda",
                  "linda", "steph", "adam", "david", "ed", "john", "max", "paul", "rob", "travis", "victor")
# eSpeak NG settings, drawn uniformly (wordgap from WORDGAPS); a wider span than any one corpus uses
SETTING_RANGES = {"rate": (110, 240), "pitch": (10, 90), "range": (5, 100), "volume": (40, 190)}
WORDGAPS = (0, 0, 1, 2, 4, 6)
MIN_SECONDS, MAX_SECONDS = 1.0, 3.5  # shorter speech is padded with silence, longer is cut


def pretraining_voices() -> list[str]:
    """Voice and variant pairs of :data:`VOICE_BASES` x :data:`VOICE_VARIANTS`, and the bases
    alone, minus every voice a toy speaker uses.

    Example: ``"en-us+m2"`` is one; ``"en-us+f2"`` (toy speaker Ses01F) is not.
    """
    taken = {s.voice for s in SPEAKERS}
    voices = [f"{b}+{v}" for b in VOICE_BASES for v in VOICE_VARIANTS] + list(VOICE_BASES)
    return [v for v in voices if v not in taken]


def draw_settings(rng: np.random.Generator) -> dict[str, int]:
    """eSpeak NG settings of one recording: :data:`SETTING_RANGES` uniformly, a word gap of :data:`WORDGAPS`."""
    out = {k: int(rng.integers(lo, hi + 1)) for k, (lo, hi) in SETTING_RANGES.items()}
    out["wordgap"] = int(rng.choice(WORDGAPS))
    return out


def fit_length(samples: np.ndarray, rate: int) -> np.ndarray:
    """float32 samples in [-1, 1) between :data:`MIN_SECONDS` and :data:`MAX_SECONDS` (int16 in)."""
    wave = samples.astype(np.float32) / 32768.0
    wave = wave[: int(MAX_SECONDS * rate)]
    short = int(MIN_SECONDS * rate) - len(wave)
    return np.concatenate([wave, np.zeros(short, dtype=np.float32)]) if short > 0 else wave


@dataclass
class Recordings:
    """The corpus: ``waves`` (16 kHz float32), ``transcripts``, ``voices``, the eSpeak ``settings``
    (a table), the 88 eGeMAPS ``functionals`` z-scored over the corpus (N, 88, NaN as 0), and
    ``prosody``, the six dimensions of :mod:`ambinb.prosody` against the corpus (a table)."""

    waves: list[np.ndarray]
    transcripts: list[str]
    voices: list[str]
    settings: pd.DataFrame
    functionals: np.ndarray
    prosody: pd.DataFrame

    def __len__(self) -> int:
        return len(self.waves)


def speak(n: int, seed: int) -> tuple[list[np.ndarray], list[str], list[str], pd.DataFrame]:
    """``n`` recordings: waves, transcripts, voices and settings, deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    text_rng = random.Random(seed)
    voices_all, vocabulary = pretraining_voices(), transcript_vocabulary()
    waves, transcripts, voices, settings = [], [], [], []
    with Espeak() as tts:
        for i in range(n):
            voice = voices_all[int(rng.integers(len(voices_all)))]
            s = draw_settings(rng)
            text = cued_transcript(text_rng, synthetic_class_list(text_rng), vocabulary, max_words=7)
            raw, rate = tts.speak(text, voice, s, noise_seed=seed * 1_000_003 + i)
            waves.append(fit_length(to_sample_rate(raw, rate), 16_000))
            transcripts.append(text)
            voices.append(voice)
            settings.append(s)
    return waves, transcripts, voices, pd.DataFrame(settings)


def measure(waves: list[np.ndarray]) -> tuple[np.ndarray, pd.DataFrame]:
    """The curator's acoustics of each wave, against this set of waves: the 88 eGeMAPS functionals
    z-scored over the set (NaN as 0, clipped to +-4) and the six dimensions (:func:`prosody.dimensions`)."""
    raw = pd.DataFrame([prosody.measure_samples(w, 16_000, f"recording {i}") for i, w in enumerate(waves)],
                       columns=prosody.feature_names())
    groups = ["corpus"] * len(raw)
    z = prosody.speaker_zscores(raw, groups)
    dims = prosody.dimensions(z, groups)
    return z.fillna(0.0).clip(-4, 4).to_numpy(np.float32), dims.fillna(0.0)


def record(n: int, seed: int) -> Recordings:
    """Speak and measure ``n`` recordings (:func:`speak`, :func:`measure`)."""
    waves, transcripts, voices, settings = speak(n, seed)
    functionals, dims = measure(waves)
    return Recordings(waves, transcripts, voices, settings, functionals, dims)


def cache_file(n: int, seed: int, cache_dir: str | Path) -> Path:
    """Where :func:`ensure_recordings` keeps a corpus: named by a hash of its arguments and version."""
    with Espeak() as tts:
        version = tts.version()
    key = f"{n}:{seed}:{RECORDINGS_VERSION}:{version}:{','.join(pretraining_voices())}"
    return Path(cache_dir) / f"recordings-{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz"


def ensure_recordings(n: int, seed: int, cache_dir: str | Path = ".cache/standin") -> Recordings:
    """The corpus of :func:`record`, read from ``cache_dir`` when built before, else built and kept there."""
    path = cache_file(n, seed, resolve_path(str(cache_dir)))
    if path.exists():
        return load(path)
    rec = record(n, seed)
    save(rec, path)
    return rec


def save(rec: Recordings, path: Path) -> None:
    """Write a corpus atomically as one ``.npz`` (waves as int16, as eSpeak made them)."""
    buf = io.BytesIO()
    np.savez(buf, lengths=np.array([len(w) for w in rec.waves]),
             waves=np.round(np.concatenate(rec.waves) * 32768.0).astype(np.int16),
             transcripts=np.array(rec.transcripts, dtype=str), voices=np.array(rec.voices, dtype=str),
             settings=rec.settings.to_numpy(), setting_names=np.array(list(rec.settings.columns), dtype=str),
             functionals=rec.functionals, prosody=rec.prosody.to_numpy(),
             dims=np.array(list(rec.prosody.columns), dtype=str))
    write_atomic(path, buf.getvalue())


def load(path: Path) -> Recordings:
    """A corpus written by :func:`ensure_recordings`."""
    with np.load(path) as f:
        cuts = np.cumsum(f["lengths"])[:-1]
        waves = list(np.split(f["waves"].astype(np.float32) / 32768.0, cuts))
        settings = pd.DataFrame(f["settings"], columns=list(f["setting_names"]))
        return Recordings(waves, [str(t) for t in f["transcripts"]], [str(v) for v in f["voices"]], settings,
                          f["functionals"], pd.DataFrame(f["prosody"], columns=[str(d) for d in f["dims"]]))
