"""Building a toy corpus folder, reading it back, and reusing it when it matches (under a lock)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ambinb.results import write_atomic, write_json
from ambinb.toy import speech
from ambinb.toy.design import (
    CLASSES,
    DATASET,
    GENERATOR_VERSION,
    LABELS_FILE,
    LATENT_FILE,
    META_FILE,
    SAMPLE_RATE,
    WAV_DIR,
    speakers_for,
)
from ambinb.toy.espeak import Espeak
from ambinb.toy.plan import label_table, plan_utterances, vote_noise_floor


def _meta(n: int, seed: int, sessions: int, espeak_version: str) -> dict:
    return {"dataset": DATASET, "n": int(n), "seed": int(seed), "sessions": int(sessions),
            "version": GENERATOR_VERSION, "espeak_ng": espeak_version, "classes": list(CLASSES),
            "sample_rate": SAMPLE_RATE,
            "voices": {s.speaker: s.voice for s in speakers_for(sessions)}}


def make_toy(out_dir: str | os.PathLike, n: int = 800, seed: int = 0, sessions: int = 5) -> pd.DataFrame:
    """Build the toy corpus in ``out_dir`` and return its dataset table.

    Writes ``wav/<utt_id>.wav``, ``latent.csv``, ``labels.csv`` and, last, ``meta.json``. An existing
    ``meta.json`` is removed first and the wav folder is built under a temporary name and swapped in,
    so an interrupted build never looks complete. Not safe for two processes building the same
    folder at once: use :func:`ensure_toy`, which locks.

    Args:
        out_dir: the corpus folder (created if missing).
        n: number of utterances (600-1,200 make a learnable corpus; tests use fewer).
        seed: the generator seed; the same seed gives the same table and wav bytes.
        sessions: sessions of two speakers each (3 to 6); session ``k+1`` is fold ``k``.
    """
    start = time.perf_counter()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / META_FILE).unlink(missing_ok=True)
    plan = plan_utterances(n, seed, sessions)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=f".{WAV_DIR}-"))
    try:
        with Espeak() as tts:
            espeak_version = tts.version()
            for voice in dict.fromkeys(plan["voice"]):
                tts.speak("Hello.", voice, {})  # fail early, naming the voice, if one does not load
            spoken_rates, seconds = [], []
            for _, row in plan.iterrows():
                samples, spoken_rate = speech.speak_utterance(tts, row)
                (staging / f"{row['utt_id']}.wav").write_bytes(speech.wav_bytes(samples))
                spoken_rates.append(spoken_rate)
                seconds.append(len(samples) / SAMPLE_RATE)
        plan["spoken_rate"] = spoken_rates
        plan["seconds"] = seconds
        final = out / WAV_DIR
        if final.exists():
            old = Path(tempfile.mkdtemp(dir=out, prefix=f".{WAV_DIR}-old-"))
            os.replace(final, old / WAV_DIR)
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    table = label_table(plan, out / WAV_DIR)
    write_atomic(out / LATENT_FILE, plan.to_csv(index=False))
    write_atomic(out / LABELS_FILE, table.to_csv(index=False))
    meta = _meta(n, seed, sessions, espeak_version)
    meta.update({"generator": "ambinb.toy", "build_seconds": round(time.perf_counter() - start, 2),
                 "audio_seconds": {"min": float(np.min(seconds)), "mean": float(np.mean(seconds)),
                                   "max": float(np.max(seconds))},
                 "respoken_faster": int((plan["spoken_rate"] != plan["rate"]).sum()),
                 "ambiguous_share": float((table[[f"p_{c}" for c in CLASSES]].max(axis=1) < 0.8).mean()),
                 "vote_noise_floor_js": vote_noise_floor(plan, table)})
    write_json(out / META_FILE, meta)
    return table


def read_table(out_dir: str | os.PathLike) -> pd.DataFrame:
    """Read ``labels.csv`` of a built corpus with the schema's dtypes; ``audio_path`` is re-rooted
    at ``out_dir`` so a moved corpus still finds its audio."""
    out = Path(out_dir).resolve()
    dtypes = {"utt_id": str, "dataset": str, "speaker": str, "transcript": str, "audio_path": str, "consensus": str}
    table = pd.read_csv(out / LABELS_FILE, dtype=dtypes, keep_default_na=False)
    table["audio_path"] = [str(out / WAV_DIR / f"{u}.wav") for u in table["utt_id"]]
    return table


def read_latent(out_dir: str | os.PathLike) -> pd.DataFrame:
    """Read ``latent.csv``: the latent mixture, wording bank and eSpeak settings per utterance."""
    return pd.read_csv(Path(out_dir) / LATENT_FILE, dtype={"utt_id": str, "secondary": str}, keep_default_na=False)


def _reuse_reason(out: Path, n: int, seed: int, sessions: int) -> str:
    """``""`` when the corpus in ``out`` can be reused, else why not."""
    try:
        meta = json.loads((out / META_FILE).read_text())
    except FileNotFoundError:
        return "no meta.json"
    except (OSError, ValueError) as err:
        return f"unreadable meta.json ({err})"
    want = {"n": int(n), "seed": int(seed), "sessions": int(sessions), "version": GENERATOR_VERSION}
    diff = [f"{k} {meta.get(k)!r} != {v!r}" for k, v in want.items() if meta.get(k) != v]
    if diff:
        return "meta.json differs: " + ", ".join(diff)
    if not (out / LABELS_FILE).is_file():
        return f"{LABELS_FILE} missing"
    return ""


@contextlib.contextmanager
def _locked(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl  # posix
    except ImportError:  # pragma: no cover - Windows: no lock
        yield
        return
    with open(out / ".toy.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_toy(out_dir: str | os.PathLike, n: int = 800, seed: int = 0, sessions: int = 5) -> pd.DataFrame:
    """The toy corpus in ``out_dir``: reloaded when its ``meta.json`` matches ``(n, seed, sessions,
    version)`` and every wav is there, else (re)built. Prints one line saying which.

    Holds a file lock on ``out_dir`` so parallel notebooks build it once.
    """
    out = Path(out_dir).resolve()
    with _locked(out):
        reason = _reuse_reason(out, n, seed, sessions)
        if not reason:
            table = read_table(out)
            missing = [p for p in table["audio_path"] if not os.path.isfile(p)]
            if len(table) != n:
                reason = f"{LABELS_FILE} has {len(table)} rows, not {n}"
            elif missing:
                reason = f"{len(missing)} wav files missing, e.g. {missing[0]}"
            else:
                print(f"toy corpus: reusing {out} (n={n}, seed={seed}, sessions={sessions})")
                return table
        for stale in out.glob(f".{WAV_DIR}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        start = time.perf_counter()
        table = make_toy(out, n=n, seed=seed, sessions=sessions)
        print(f"toy corpus: built {out} (n={n}, seed={seed}, sessions={sessions}) in "
              f"{time.perf_counter() - start:.1f} s; {reason}")
        return table
