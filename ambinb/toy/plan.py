"""The latent plan of a toy corpus (pure, deterministic for a seed): per utterance a mixture, votes,
a transcript and the eSpeak prosody it is spoken with; then the dataset table built from the plan."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ambinb import metrics
from ambinb.toy.design import (
    AMBIGUOUS_SPLIT,
    CLASS_PRIOR,
    CLASSES,
    DATASET,
    DIRICHLET_BACKGROUND,
    DIRICHLET_DOMINANT,
    ESPEAK_LIMITS,
    N_VOTES,
    P_AMBIGUOUS,
    P_PLAIN_WORDING,
    PROSODY,
    PROSODY_JITTER,
    SENTENCES,
    Speaker,
    speakers_for,
)


def draw_mixture(rng: np.random.Generator) -> tuple[np.ndarray, str, str]:
    """Draw one latent mixture over :data:`CLASSES`.

    Returns ``(m, primary, secondary)`` where ``secondary`` is ``""`` for a clear utterance. The
    Dirichlet has concentration :data:`DIRICHLET_BACKGROUND` everywhere plus
    :data:`DIRICHLET_DOMINANT` on the primary class, or split :data:`AMBIGUOUS_SPLIT` /
    ``1 - AMBIGUOUS_SPLIT`` between two classes; e.g. clear anger has mean
    ``(8.25, .25, .25, .25) / 9 = (.92, .03, .03, .03)``.
    """
    prior = np.array([CLASS_PRIOR[c] for c in CLASSES], dtype=np.float64)
    prior /= prior.sum()
    first = int(rng.choice(len(CLASSES), p=prior))
    alpha = np.full(len(CLASSES), DIRICHLET_BACKGROUND)
    second = -1
    if rng.random() < P_AMBIGUOUS:
        rest = prior.copy()
        rest[first] = 0.0
        second = int(rng.choice(len(CLASSES), p=rest / rest.sum()))
        alpha[first] += DIRICHLET_DOMINANT * AMBIGUOUS_SPLIT
        alpha[second] += DIRICHLET_DOMINANT * (1.0 - AMBIGUOUS_SPLIT)
    else:
        alpha[first] += DIRICHLET_DOMINANT
    m = rng.dirichlet(alpha)
    return m, CLASSES[first], CLASSES[second] if second >= 0 else ""


def draw_votes(rng: np.random.Generator, mixture: np.ndarray) -> np.ndarray:
    """Votes of ``N_VOTES[0]..N_VOTES[1]`` simulated annotators, each drawing a class from ``mixture``."""
    n_votes = int(rng.integers(N_VOTES[0], N_VOTES[1] + 1))
    return rng.multinomial(n_votes, mixture)


def consensus_of(votes: np.ndarray) -> str:
    """The class with most votes; ties go to the first in :data:`CLASSES` order.

    Example: votes ``[2, 0, 2, 1]`` -> ``'anger'``; ``[0, 1, 3, 1]`` -> ``'sadness'``.
    """
    return CLASSES[int(np.argmax(votes))]


def draw_transcript(rng: np.random.Generator, mixture: np.ndarray) -> tuple[str, str]:
    """Pick a sentence: from the ``plain`` bank with probability :data:`P_PLAIN_WORDING`, else from
    the bank of a class drawn from ``mixture``. Returns ``(sentence, bank name)``."""
    if rng.random() < P_PLAIN_WORDING:
        bank = "plain"
    else:
        bank = CLASSES[int(rng.choice(len(CLASSES), p=mixture))]
    sentences = SENTENCES[bank]
    return sentences[int(rng.integers(len(sentences)))], bank


def draw_prosody(rng: np.random.Generator, mixture: np.ndarray, speaker: Speaker) -> dict[str, int]:
    """eSpeak NG settings for one utterance: mixture-weighted prototypes + speaker + jitter, clipped.

    Example (no jitter): an even anger/sadness mix has rate ``(210 + 125) / 2 = 167.5`` before the
    speaker's ``rate_factor``, and volume ``(170 + 55) / 2 = 112.5`` before the speaker's offset.
    """
    out = {}
    for key, sd in PROSODY_JITTER.items():
        value = float(sum(w * PROSODY[c][key] for w, c in zip(mixture, CLASSES, strict=True)))
        if key == "rate":
            value *= speaker.rate_factor
        elif key in ("pitch", "range", "volume"):
            value += getattr(speaker, key)
        value += sd * rng.standard_normal()
        lo, hi = ESPEAK_LIMITS[key]
        out[key] = int(np.clip(round(value), lo, hi))
    return out


def plan_utterances(n: int = 800, seed: int = 0, sessions: int = 5) -> pd.DataFrame:
    """Everything about the corpus except the audio: one row per utterance, deterministic for a seed.

    Columns: ``utt_id``, ``speaker``, ``session``, ``voice``, ``primary``, ``secondary``,
    ``latent_<class>``, ``votes_<class>``, ``wording``, ``transcript`` and the eSpeak settings
    ``rate``, ``pitch``, ``range``, ``volume``, ``wordgap`` and ``noise_seed`` (for eSpeak's breath
    noise). Speakers take turns (utterance ``i``
    belongs to speaker ``i mod 2*sessions``) and utterance ``i`` draws from ``default_rng([seed, i])``,
    so a smaller corpus of the same seed is a prefix of a larger one.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n={n!r}: expected a positive number of utterances")
    speakers = speakers_for(sessions)
    width = max(4, len(str(n - 1)))
    rows = []
    for i in range(int(n)):
        rng = np.random.default_rng([int(seed), i])
        spk = speakers[i % len(speakers)]
        mixture, primary, secondary = draw_mixture(rng)
        votes = draw_votes(rng, mixture)
        transcript, wording = draw_transcript(rng, mixture)
        prosody = draw_prosody(rng, mixture, spk)
        noise_seed = int(rng.integers(2**31 - 1))
        row = {"utt_id": f"{spk.speaker}_{DATASET}{i:0{width}d}", "speaker": spk.speaker, "session": spk.session,
               "voice": spk.voice, "primary": primary, "secondary": secondary}
        row.update({f"latent_{c}": float(w) for c, w in zip(CLASSES, mixture, strict=True)})
        row.update({f"votes_{c}": int(v) for c, v in zip(CLASSES, votes, strict=True)})
        row.update({"wording": wording, "transcript": transcript, **prosody, "noise_seed": noise_seed})
        rows.append(row)
    return pd.DataFrame(rows)


def label_table(plan: pd.DataFrame, wav_dir: str | os.PathLike) -> pd.DataFrame:
    """The dataset table (``ambinb.labels`` schema) from a plan: folds, consensus, soft labels.

    ``fold = session - 1``; ``p_<class> = votes_<class> / n_votes``; ``audio_path`` is the absolute
    path ``<wav_dir>/<utt_id>.wav``.
    """
    wav_dir = Path(wav_dir).resolve()
    votes = plan[[f"votes_{c}" for c in CLASSES]].to_numpy(dtype=np.int64)
    n_votes = votes.sum(axis=1)
    table = pd.DataFrame({
        "utt_id": plan["utt_id"].astype(str),
        "dataset": DATASET,
        "speaker": plan["speaker"].astype(str),
        "session": plan["session"].astype(np.int64),
        "fold": plan["session"].astype(np.int64) - 1,
        "transcript": plan["transcript"].astype(str),
        "audio_path": [str(wav_dir / f"{u}.wav") for u in plan["utt_id"]],
        "consensus": [consensus_of(v) for v in votes],
        "n_votes": n_votes.astype(np.int64),
    })
    for j, c in enumerate(CLASSES):
        table[f"votes_{c}"] = votes[:, j]
    for j, c in enumerate(CLASSES):
        table[f"p_{c}"] = votes[:, j] / n_votes
    return table


def vote_noise_floor(latent: pd.DataFrame, table: pd.DataFrame) -> float:
    """Mean JS (base 2) between each utterance's latent mixture and its vote shares: the best any
    predictor can expect, since the votes are a finite sample of the mixture."""
    merged = table[["utt_id"]].merge(latent, on="utt_id", how="left", validate="one_to_one")
    m = merged[[f"latent_{c}" for c in CLASSES]].to_numpy(dtype=np.float64)
    p = table[[f"p_{c}" for c in CLASSES]].to_numpy(dtype=np.float64)
    return float(np.mean(metrics.js(p, m)))

