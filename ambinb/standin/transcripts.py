"""Random transcripts for the stand-in's pretraining: word salads from the stand-in's vocabulary, half
of them carrying words of the curator's emotion lexicon (:data:`ambinb.cues.LEXICON`)."""

from __future__ import annotations

import random

from ambinb import cues
from ambinb.standin.words import TRANSCRIPT_WORDS


def synthetic_transcript(rng: random.Random, vocabulary: tuple[str, ...] = TRANSCRIPT_WORDS,
                         max_words: int = 10) -> str:
    """A random sequence of 3 to ``max_words`` words from ``vocabulary`` (no corpus sentence, no label)."""
    words = [rng.choice(vocabulary) for _ in range(rng.randint(3, max_words))]
    return (" ".join(words).capitalize() + rng.choice((".", ".", "?", "!"))).replace(" i ", " I ")


P_CUED = 0.5  # share of warm-up transcripts with emotion words of the curator's lexicon inserted
P_CUE_IN_LIST = 0.8  # ... drawn from the prompt's classes (else from any class: not a cue there)


def cued_transcript(rng: random.Random, classes: list[str],
                    vocabulary: tuple[str, ...] = TRANSCRIPT_WORDS, max_words: int = 10) -> str:
    """A random transcript (:func:`synthetic_transcript`) that, for :data:`P_CUED` of calls, carries
    1-2 words or phrases of the curator's emotion lexicon (x) at random
    places, so that the warm-up's think blocks practise quoting them. No corpus sentence, no label:
    which emotion words appear is random and the think block's answer does not depend on them.
    """
    words = synthetic_transcript(rng, vocabulary, max_words).split()
    if rng.random() >= P_CUED:
        return " ".join(words)
    end = words[-1][-1]
    words[-1] = words[-1][:-1]
    words[0] = words[0].lower()
    listed = [c for c in classes if cues.LEXICON.get(c)]
    others = [c for c, entries in cues.LEXICON.items() if entries]
    for _ in range(rng.choice((1, 1, 2))):
        c = rng.choice(listed if listed and rng.random() < P_CUE_IN_LIST else others)
        words.insert(rng.randint(0, len(words)), rng.choice(cues.LEXICON[c]))
    return (" ".join(words).capitalize() + end).replace(" i ", " I ")


