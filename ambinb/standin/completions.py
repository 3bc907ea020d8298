"""Think blocks and answers for the stand-in's synthetic chats.

:data:`P_TEMPLATE` of them are in the offline curator's wording (its template writer, for a
synthetic item), the rest free-form. What a pretrained model could know is grounded: the keyword
line and text step quote the emotion words that occur in the transcript, and the audio step
describes the prosody z-scores measured in the clip. The synthesis and the answer, which follows
it, are drawn at random: no emotion label exists for a synthetic item.
"""

from __future__ import annotations

import random

import numpy as np

from ambinb import cot, cues, curation, prosody
from ambinb.standin.words import ASPECT_WORDS, KEYWORDS, STRENGTH, TEXT_WORDS

P_TEMPLATE = 0.7  # share of warm-up think blocks in the curator's wording (the rest free-form)

# Free-form aspect words that agree with a dimension's direction (z >= NEAR, z <= -NEAR, in between).
_ASPECT_BY_DIRECTION = {
    "Volume": ("loudness", ("loud", "strong"), ("soft", "quiet", "weak"), ("moderate", "even")),
    "Speed": ("rate", ("fast", "hurried", "quick"), ("slow", "measured", "halting"), ("steady",)),
    "Pitch": ("pitch", ("high",), ("low",), ("varied", "flat")),
}


def _quote(rng: random.Random, transcript: str) -> str:
    """A quoted run of 2-4 consecutive words of ``transcript`` (fewer when it is shorter)."""
    words = transcript.rstrip(".?!").split()
    n = min(len(words), rng.randint(2, 4))
    start = rng.randint(0, len(words) - n)
    return '"' + " ".join(words[start: start + n]) + '"'


def _grounded_first_word(rng: random.Random, aspect: str, z: dict[str, float] | None) -> str | None:
    """A free-form word for ``aspect`` on the side of the reference voice where ``z`` lies, if grounded."""
    if z is None or aspect not in _ASPECT_BY_DIRECTION:
        return None
    dim, up, down, mid = _ASPECT_BY_DIRECTION[aspect]
    v = z.get(dim, 0.0)
    return rng.choice(up if v >= prosody.NEAR else down if v <= -prosody.NEAR else mid)


def free_completion(rng: random.Random, transcript: str, classes: list[str],
                    z: dict[str, float] | None = None) -> tuple[str, str]:
    """A free-form random think block and its answer drawn from ``classes`` (see :func:`synthetic_completion`)."""
    answer = rng.choice(classes)
    other = rng.choice([c for c in classes if c != answer])
    keywords = rng.sample(KEYWORDS, rng.randint(2, 4))
    found = [w for ws in cues.text_cues(transcript, classes).values() for w in ws]
    keywords.insert(0, f'"{found[0]}"' if found else "plain wording")
    text = rng.choice((
        "The words {q} are {a} in meaning.",
        "The wording {q} carries {s} emotion.",
        "The sentence {q} reads as {a}.",
        "Taken alone, {q} sounds {a}.",
    )).format(q=_quote(rng, transcript), a=rng.choice(TEXT_WORDS), s=rng.choice(STRENGTH))
    aspects = {}
    for aspect, words in ASPECT_WORDS.items():
        first, second = rng.sample(words, 2)
        grounded = _grounded_first_word(rng, aspect, z)
        if grounded is not None:
            first, second = grounded, rng.choice([w for w in words if w != grounded])
        aspects[aspect] = rng.choice((f"{first}.", f"{first} and {second}.", f"{first}, then {second}."))
    synthesis = rng.choice((
        "The cues point mostly to {a}, with some {o}.",
        "Text and voice together suggest {a}.",
        "The voice suggests {a} while the words stay {w}; overall {a}.",
        "Mostly {a}, though {o} is possible.",
        "The audio weighs more here: {a}.",
    )).format(a=answer, o=other, w=rng.choice(TEXT_WORDS))
    return cot.render_think(keywords, text, aspects, synthesis), answer


def template_completion(rng: random.Random, transcript: str, classes: list[str],
                        z: dict[str, float] | None = None) -> tuple[str, str]:
    """A think block in the offline curator's wording (``ambinb.curation.template_cot``) for a
    *synthetic* item: the prosody z-scores its audio was measured with (random ones when ``z`` is None)
    and a random target split, never a corpus label. The answer is the split's largest class."""
    np_rng = np.random.default_rng(rng.getrandbits(32))
    p = np_rng.dirichlet(np.full(len(classes), rng.choice((0.3, 1.0, 3.0))))
    z_scores = dict(z) if z is not None else {d: float(np_rng.normal()) for d in cues.SHORT_WORDS}
    item = curation.Item("synthetic", transcript, "", tuple(classes), tuple(float(v) for v in p), z_scores)
    return curation.template_cot(item, attempt=rng.randint(1, 3)), classes[int(np.argmax(p))]


def synthetic_completion(rng: random.Random, transcript: str, classes: list[str],
                         z: dict[str, float] | None = None) -> tuple[str, str]:
    """A think block (via :func:`ambinb.cot.render_think`) and its answer for a synthetic item.

    :data:`P_TEMPLATE` are in the offline curator's wording (:func:`template_completion`), the rest
    free-form (:func:`free_completion`), so the stand-in's tokenizer and fluency cover the text it is
    later fine-tuned on. The keywords and text step quote the emotion words that occur in the
    transcript; the audio step describes the prosody ``z`` measured in the recording
    (:mod:`ambinb.standin.recordings`). The synthesis and the answer are drawn at random,
    so the warm-up teaches the format, hearing and quoting, and self-consistency, never which emotion
    the cues mean.
    """
    if rng.random() < P_TEMPLATE:
        return template_completion(rng, transcript, classes, z)
    return free_completion(rng, transcript, classes, z)
