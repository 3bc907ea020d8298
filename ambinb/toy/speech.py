"""The audio of one planned toy utterance: spoken by eSpeak NG, resampled to 16 kHz, fitted to
1-3 s, and written as a PCM16 WAV file's bytes."""

from __future__ import annotations

import io
import wave

import numpy as np
import pandas as pd
from scipy.signal import resample_poly

from ambinb.toy.design import ESPEAK_LIMITS, MAX_RESPEAKS, MAX_SECONDS, MIN_SECONDS, SAMPLE_RATE
from ambinb.toy.espeak import PARAMETER_IDS, Espeak


def to_sample_rate(samples: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Resample int16 ``samples`` from ``rate`` to ``target`` Hz (polyphase), back to int16."""
    g = np.gcd(int(rate), int(target))
    y = resample_poly(samples.astype(np.float64), target // g, rate // g)
    return np.clip(np.round(y), -32768, 32767).astype(np.int16)


def wav_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """A mono PCM16 WAV file's bytes."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, dtype="<i2").tobytes())
    return buf.getvalue()


def speak_utterance(tts: Espeak, row: pd.Series) -> tuple[np.ndarray, int]:
    """16 kHz samples of one planned utterance, between MIN_SECONDS and MAX_SECONDS.

    Speech longer than :data:`MAX_SECONDS` is re-spoken at a proportionally higher rate (at most
    :data:`MAX_RESPEAKS` times); shorter than :data:`MIN_SECONDS` gets trailing silence. Returns
    ``(samples, rate actually used)``.
    """
    settings = {k: int(row[k]) for k in PARAMETER_IDS}
    for _ in range(MAX_RESPEAKS + 1):
        raw, rate = tts.speak(row["transcript"], row["voice"], settings, noise_seed=int(row["noise_seed"]))
        samples = to_sample_rate(raw, rate)
        seconds = len(samples) / SAMPLE_RATE
        if seconds <= MAX_SECONDS:
            break
        settings["rate"] = min(ESPEAK_LIMITS["rate"][1], int(np.ceil(settings["rate"] * seconds / (MAX_SECONDS - 0.1))))
    else:
        raise RuntimeError(f"{row['utt_id']}: {row['transcript']!r} stays longer than {MAX_SECONDS} s "
                           f"even at rate {settings['rate']}")
    min_len = int(round(MIN_SECONDS * SAMPLE_RATE))
    if len(samples) < min_len:
        samples = np.concatenate([samples, np.zeros(min_len - len(samples), dtype=np.int16)])
    return samples, settings["rate"]

