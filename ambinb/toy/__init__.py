"""The built-in toy corpus: real synthetic speech whose prosody follows a known emotion mixture.

A newcomer runs every notebook on this corpus with nothing downloaded. Each utterance has a latent
emotion mixture ``m`` over the four classes (anger, happiness, sadness, neutral), drawn from a
Dirichlet around one dominant class (clear) or two (ambiguous). ``m`` drives:

- the audio: eSpeak NG (the ``espeakng-loader`` wheel, through ``ctypes``) speaks the transcript
  with rate, pitch, pitch range, volume and word gap set to the mixture-weighted average of strong
  per-class prototypes (:data:`PROSODY`), plus a per-speaker baseline (:data:`SPEAKERS`) and
  per-utterance jitter (:data:`PROSODY_JITTER`);
- the wording: half the transcripts come from an emotion-free bank, the other half from the bank
  of one class drawn from ``m`` (:data:`SENTENCES`), so neither text nor audio alone has it all;
- the labels: 3 to 10 simulated annotators vote from ``m`` (a multinomial), so
  ``p_<class> = votes_<class> / n_votes`` and ``consensus`` is the class with most votes (ties go
  to the first class in :data:`CLASSES` order).

Ten voices form five sessions of two speakers (one female, one male voice), like IEMOCAP: session
``k+1`` is test fold ``k``, so folds are speaker-disjoint and every fold 0-4 exists.

Everything is deterministic for a seed: utterance ``i`` uses its own generator ``default_rng([seed,
i])`` and a fresh eSpeak NG instance (eSpeak keeps pitch-flutter and gain state between calls, so
a reused instance makes an utterance's samples depend on what was spoken before it; it also seeds
its breath noise from the clock unless told a seed).

Files written by :func:`make_toy` into ``out_dir``::

    wav/<utt_id>.wav   16 kHz mono PCM16, 1-3 s
    labels.csv         the dataset table (schema of ``ambinb.labels``)
    latent.csv         the latent mixture and the prosody each utterance was spoken with
    meta.json          n, seed, sessions, generator version, voices, ... (written last)

Example::

    >>> df = ensure_toy("runs/toy/corpus", n=800, seed=0)          # doctest: +SKIP
    toy corpus: built /.../runs/toy/corpus (n=800, seed=0, sessions=5) in 11.0 s; no meta.json

The package, by noun:

- :mod:`ambinb.toy.design`: the corpus as data (classes, prototypes, speakers, transcript banks);
- :mod:`ambinb.toy.plan`: the latent plan per utterance and the dataset table built from it;
- :mod:`ambinb.toy.espeak`: eSpeak NG through ``ctypes``, fresh state for every utterance;
- :mod:`ambinb.toy.speech`: one planned utterance's 16 kHz samples and WAV bytes;
- :mod:`ambinb.toy.corpus`: building a corpus folder, reading it back, reusing it under a lock.
"""

from ambinb.toy.corpus import ensure_toy, make_toy, read_latent, read_table
from ambinb.toy.design import (
    CLASSES,
    DATASET,
    GENERATOR_VERSION,
    LABELS_FILE,
    LATENT_FILE,
    META_FILE,
    PROSODY,
    SAMPLE_RATE,
    SENTENCES,
    SPEAKERS,
    WAV_DIR,
    Speaker,
    speakers_for,
)
from ambinb.toy.espeak import Espeak
from ambinb.toy.plan import (
    consensus_of,
    draw_mixture,
    draw_prosody,
    draw_transcript,
    draw_votes,
    label_table,
    plan_utterances,
    vote_noise_floor,
)
from ambinb.toy.speech import speak_utterance, to_sample_rate, wav_bytes

__all__ = [
    "CLASSES", "DATASET", "GENERATOR_VERSION", "LABELS_FILE", "LATENT_FILE", "META_FILE", "PROSODY",
    "SAMPLE_RATE", "SENTENCES", "SPEAKERS", "WAV_DIR", "Espeak", "Speaker", "consensus_of", "draw_mixture",
    "draw_prosody", "draw_transcript", "draw_votes", "ensure_toy", "label_table", "make_toy",
    "plan_utterances", "read_latent", "read_table", "speak_utterance", "speakers_for", "to_sample_rate",
    "vote_noise_floor", "wav_bytes",
]
