"""The cue vocabulary shared by the offline curator and the stand-in's pretraining corpus.

Emotion words of the text (:data:`LEXICON`, :func:`text_cues`), the direction of each prosody
dimension typical of each class (:data:`PROTOTYPES`, :func:`supported_classes`), and the words
that describe a voice per audio aspect (:data:`ASPECT_DIMENSIONS`, :data:`SHORT_WORDS`,
:func:`describe_prosody`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from ambinb import prosody

# Words and short phrases that carry an emotion on their own (lower case, matched on word bounds).
LEXICON: dict[str, tuple[str, ...]] = {
    "anger": ("angry", "furious", "hate", "sick of", "how dare", "unacceptable", "shut up", "get out",
              "stop", "enough", "ruined", "lying", "liar", "never listen", "no right", "last straw",
              "ridiculous", "damn", "mad at", "annoyed", "told you"),
    "happiness": ("happy", "glad", "love", "wonderful", "amazing", "great", "fantastic", "perfect",
                  "thrilled", "excited", "fun", "beautiful", "won", "best", "thank you", "can't wait",
                  "married", "passed", "surprise", "awesome", "yay", "did it"),
    "sadness": ("sad", "miss", "alone", "lost", "crying", "cry", "sorry", "fault", "empty", "tired of",
                "no hope", "goodbye", "wish", "not good enough", "nothing ever", "isn't coming back",
                "nobody", "anymore", "died", "gone", "put the dog down"),
    "fear": ("afraid", "scared", "terrified", "frightened", "worried", "nervous", "panic", "help me",
             "what was that", "someone is"),
    "disgust": ("disgusting", "gross", "revolting", "nasty", "yuck", "sickening", "vile", "filthy"),
    "neutral": (),
}

# Which direction of each prosody dimension is typical of each class (+1 above the reference voice
# of ambinb.prosody.REFERENCES, -1 below, 0 close to it). After the vocal-emotion literature (e.g.
# Juslin & Laukka 2003): hot anger is loud, fast, tense and rough; joy high, varied and fast;
# sadness soft, slow, low, flat and breathy; fear fast, high and breathy; disgust slow, low and
# rough; neutral unremarkable.
PROTOTYPES: dict[str, dict[str, int]] = {
    "anger": {"loudness": 1, "rate": 1, "pitch_var": 1, "tension": 1, "roughness": 1},
    "happiness": {"loudness": 1, "rate": 1, "pitch": 1, "pitch_var": 1},
    "sadness": {"loudness": -1, "rate": -1, "pitch": -1, "pitch_var": -1, "tension": -1},
    "neutral": {"loudness": 0, "rate": 0, "pitch_var": 0},
    "fear": {"rate": 1, "pitch": 1, "tension": -1, "roughness": 1},
    "disgust": {"rate": -1, "pitch": -1, "roughness": 1},
}
ASPECT_DIMENSIONS = {"Volume": ("loudness",), "Speed": ("rate",), "Pitch": ("pitch", "pitch_var"),
                     "Tone": ("tension", "roughness")}
SHORT_WORDS = {"loudness": ("loud", "soft"), "rate": ("fast", "slow"), "pitch": ("high pitch", "low pitch"),
               "pitch_var": ("lively pitch", "flat pitch"), "tension": ("tense voice", "breathy voice"),
               "roughness": ("rough voice", "steady voice")}


def text_cues(transcript: str, classes: Iterable[str]) -> dict[str, list[str]]:
    """Emotion words of :data:`LEXICON` found in a transcript, per class (classes without hits omitted).

    Example: ``text_cues("Stop lying to me!", ["anger", "sadness"])`` -> ``{"anger": ["stop", "lying"]}``.
    """
    low = transcript.lower().replace("’", "'")
    spans = []  # (start, end, class, word)
    for c in classes:
        for w in LEXICON.get(c, ()):
            spans += [(m.start(), m.end(), c, w) for m in re.finditer(rf"(?<![a-z']){re.escape(w)}(?![a-z'])", low)]
    # a phrase inside a longer phrase of the lexicon ("enough" in "not good enough") is not a cue of its own
    kept = [s for s in spans if not any(o[0] <= s[0] and s[1] <= o[1] and o[1] - o[0] > s[1] - s[0] for o in spans)]
    found: dict[str, list[str]] = {}
    for c in classes:
        words = list(dict.fromkeys(w for _, _, k, w in sorted(kept, key=lambda s: LEXICON[s[2]].index(s[3]))
                                   if k == c))
        if words:
            found[c] = words
    return found


def supported_classes(dim: str, z: float, classes: Iterable[str]) -> list[str]:
    """Classes whose prototype agrees with a measured dimension (:data:`PROTOTYPES`).

    A dimension at least :data:`ambinb.prosody.NEAR` from the reference voice supports the classes
    with that direction; a dimension close to it supports the classes marked 0 (neutral).
    Example: ``supported_classes("loudness", 1.2, ["anger", "sadness", "neutral"])`` -> ``["anger"]``.
    """
    if z is None or not math.isfinite(z):
        return []
    sign = 0 if abs(z) < prosody.NEAR else (1 if z > 0 else -1)
    return [c for c in classes if PROTOTYPES.get(c, {}).get(dim) == sign]


def describe_prosody(zscores: dict[str, float], reference: str = "corpus") -> dict[str, str]:
    """One plain sentence per audio aspect (Volume, Speed, Pitch, Tone) from the z-scores against
    ``reference`` (:data:`ambinb.prosody.REFERENCES`).

    Example: ``describe_prosody({"loudness": 1.4})["Volume"]`` -> ``"much louder than a typical voice"``.
    """
    out = {}
    for aspect, dims in ASPECT_DIMENSIONS.items():
        words = [prosody.describe(d, zscores.get(d, float("nan")), reference) for d in dims]
        words = list(dict.fromkeys(words))
        out[aspect] = "; ".join(words)
    return out
