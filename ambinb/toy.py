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
"""

from __future__ import annotations

import _ctypes
import contextlib
import ctypes
import io
import json
import os
import shutil
import tempfile
import threading
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.signal import resample_poly

from ambinb import metrics
from ambinb.results import write_atomic, write_json

# --- the corpus, as data ----------------------------------------------------------------------

GENERATOR_VERSION = 1  # bump whenever a change below alters the wav bytes or the table
DATASET = "toy"
CLASSES = ("anger", "happiness", "sadness", "neutral")
SAMPLE_RATE = 16_000
MIN_SECONDS = 1.0  # shorter speech is padded with trailing silence
MAX_SECONDS = 3.0  # longer speech is re-spoken faster (see MAX_RESPEAKS)
MAX_RESPEAKS = 4

# How often each class is the (first) dominant one; mildly unbalanced, neutral most common, as in
# the 4-class IEMOCAP subset.
CLASS_PRIOR = {"anger": 0.22, "happiness": 0.26, "sadness": 0.22, "neutral": 0.30}
P_AMBIGUOUS = 0.4  # share of utterances with two dominant classes
DIRICHLET_BACKGROUND = 0.25  # concentration every class gets
DIRICHLET_DOMINANT = 8.0  # extra concentration on the dominant class(es)
AMBIGUOUS_SPLIT = 0.55  # share of DIRICHLET_DOMINANT the first of two dominant classes gets
N_VOTES = (3, 10)  # annotators per utterance, uniform, inclusive
P_PLAIN_WORDING = 0.5  # share of transcripts drawn from the emotion-free bank

# Prosody prototypes in eSpeak NG units: rate in words per minute (80-450), pitch and range 0-100
# (50 = the voice's own), volume 0-200 (100 = normal), wordgap in units of 10 ms. An utterance is
# spoken with the mixture-weighted average of these, plus its speaker's offsets and jitter.
PROSODY = {
    "anger":     {"rate": 210, "pitch": 55, "range": 80, "volume": 170, "wordgap": 0},
    "happiness": {"rate": 195, "pitch": 75, "range": 95, "volume": 125, "wordgap": 0},
    "sadness":   {"rate": 125, "pitch": 25, "range": 15, "volume": 55, "wordgap": 4},
    "neutral":   {"rate": 165, "pitch": 45, "range": 35, "volume": 95, "wordgap": 1},
}
PROSODY_JITTER = {"rate": 12.0, "pitch": 6.0, "range": 10.0, "volume": 12.0, "wordgap": 1.0}  # Gaussian sd
ESPEAK_LIMITS = {"rate": (80, 450), "pitch": (0, 100), "range": (0, 100), "volume": (0, 200), "wordgap": (0, 30)}


@dataclass(frozen=True)
class Speaker:
    """A toy speaker: an eSpeak NG voice plus a personal prosody baseline.

    Offsets add to the prosody in eSpeak units; ``rate_factor`` multiplies the rate.
    """

    speaker: str
    session: int
    voice: str
    pitch: int = 0
    range: int = 0
    rate_factor: float = 1.0
    volume: int = 0


# Two speakers per session (female voice first). All voices are checked to load (eSpeak returns
# non-zero and silently keeps the previous voice for an unknown name; we raise instead).
SPEAKERS = (
    Speaker("Ses01F", 1, "en-us+f2", pitch=4, range=5, rate_factor=1.00, volume=-5),
    Speaker("Ses01M", 1, "en-us", pitch=-3, range=0, rate_factor=1.05, volume=5),
    Speaker("Ses02F", 2, "en+f3", pitch=-2, range=8, rate_factor=0.95, volume=0),
    Speaker("Ses02M", 2, "en+m3", pitch=6, range=-5, rate_factor=1.00, volume=-10),
    Speaker("Ses03F", 3, "en+f4", pitch=6, range=-6, rate_factor=1.08, volume=8),
    Speaker("Ses03M", 3, "en-gb-scotland", pitch=0, range=6, rate_factor=0.92, volume=0),
    Speaker("Ses04F", 4, "en+f1", pitch=-5, range=0, rate_factor=1.03, volume=-8),
    Speaker("Ses04M", 4, "en-029", pitch=3, range=10, rate_factor=0.97, volume=10),
    Speaker("Ses05F", 5, "en-gb-x-rp+f5", pitch=0, range=-4, rate_factor=0.94, volume=4),
    Speaker("Ses05M", 5, "en+m7", pitch=-6, range=-8, rate_factor=1.06, volume=-4),
    Speaker("Ses06F", 6, "en-029+f2", pitch=2, range=3, rate_factor=1.02, volume=-3),
    Speaker("Ses06M", 6, "en-us+m1", pitch=4, range=-3, rate_factor=0.98, volume=6),
)
MIN_SESSIONS = 3  # at least 4 training speakers in every fold

# Transcript banks. "plain" is emotion-free wording used for P_PLAIN_WORDING of utterances whatever
# their mixture; the class banks carry their class's wording (neutral: flat, matter-of-fact).
SENTENCES = {
    "plain": (
        "The train leaves at seven.", "I put the keys on the table.", "We need to talk about the report.",
        "She called me this morning.", "The meeting is on Thursday.", "He bought a new car last week.",
        "The store closes at nine.", "I read the letter you sent.", "They moved to another city.",
        "The package arrived today.", "We drove past the old school.", "My sister works at the hospital.",
        "The bus stops near the bridge.", "I left my coat in the hall.", "The results came in yesterday.",
        "He told me about the plan.", "We have dinner at eight.", "The phone rang twice.",
        "She opened the window.", "The door was open.", "I saw him at the station.",
        "They changed the schedule.", "The water is in the kitchen.", "We talked for an hour.",
        "You can park behind the house.", "The email is in your inbox.", "He sold the old piano.",
        "I will see you on Monday.", "The dog is in the garden.", "That is exactly what happened.",
    ),
    "anger": (
        "I can't believe you did that!", "Get out of my way right now.", "This is completely unacceptable.",
        "Stop lying to me!", "You never listen to me.", "I am sick of your excuses.",
        "How dare you say that to me?", "Don't you ever touch my things!", "I told you a hundred times!",
        "You ruined everything, again.", "This is the last straw.", "Shut up and let me talk.",
        "I hate it when you do this.", "Who do you think you are?", "Give me back my money now!",
        "You had no right to do that.", "I'm furious with all of you.", "Enough, I don't want to hear it.",
    ),
    "happiness": (
        "This is the best day ever!", "I'm so happy for you.", "We got the house!",
        "I love this song so much.", "You made my whole week.", "That's wonderful news!",
        "I can't wait to see you!", "We won the championship!", "Thank you, this is perfect.",
        "I passed the exam!", "What a beautiful surprise.", "You look amazing tonight.",
        "I'm getting married!", "This is so much fun.", "We did it, we really did it!",
        "I'm thrilled to be here.", "Everything worked out great.", "Oh, I love it, thank you!",
    ),
    "sadness": (
        "I miss her so much.", "He isn't coming back.", "Nothing ever works out for me.",
        "I lost my job today.", "I feel so alone.", "It's all my fault.",
        "We had to put the dog down.", "I wish things were different.", "Nobody remembered my birthday.",
        "I don't know what to do anymore.", "She left without saying goodbye.", "I'm so tired of everything.",
        "I really thought he loved me.", "The house feels empty now.", "I can't stop crying.",
        "Maybe I'm just not good enough.", "They said there is no hope.", "I never got to say sorry.",
    ),
    "neutral": (
        "Okay, that works for me.", "I don't mind either way.", "Sure, we can do that.",
        "Fine, just let me know.", "It is what it is.", "I suppose that makes sense.",
        "Whatever you think is best.", "Yes, I got your message.", "Alright, I'll check on it.",
        "That seems reasonable enough.", "No, I haven't decided yet.", "Let me think about it.",
        "It doesn't really matter.", "I guess we'll see tomorrow.", "Right, noted.",
        "Maybe, we'll see.", "Sure, whenever you're ready.", "I have no strong opinion.",
    ),
}

LABELS_FILE = "labels.csv"
LATENT_FILE = "latent.csv"
META_FILE = "meta.json"
WAV_DIR = "wav"


# --- latent plan: mixtures, votes, words, prosody (pure) ---------------------------------------

def speakers_for(sessions: int) -> list[Speaker]:
    """The speakers of the first ``sessions`` sessions (two each), in table order.

    Example: ``[s.speaker for s in speakers_for(3)]`` -> ``['Ses01F', 'Ses01M', ..., 'Ses03M']``.
    """
    max_sessions = max(s.session for s in SPEAKERS)
    if int(sessions) != sessions or not MIN_SESSIONS <= sessions <= max_sessions:
        raise ValueError(f"sessions={sessions!r}: the toy corpus has {MIN_SESSIONS} to {max_sessions} sessions "
                         f"(two speakers each, at least 4 training speakers per fold)")
    return [s for s in SPEAKERS if s.session <= sessions]


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


# --- audio: eSpeak NG through ctypes -----------------------------------------------------------

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAMETER_IDS = {"rate": 1, "volume": 2, "pitch": 3, "range": 4, "wordgap": 7}
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_ESPEAK_LOCK = threading.Lock()


class Espeak:
    """eSpeak NG from the ``espeakng-loader`` wheel, with fresh state for every utterance.

    eSpeak keeps static state (pitch flutter phase, gain control, random generator) across calls,
    even across ``espeak_Terminate``/``espeak_Initialize``, and seeds its random generator (breath
    noise of some voices) from the clock. So the library is copied once into a private temporary
    folder and loaded, used and unloaded (``dlclose``) for each utterance, with the random generator
    seeded explicitly: an utterance's samples then depend only on its text, voice, settings and
    noise seed (about 10 ms each).

    Use as a context manager::

        with Espeak() as tts:
            samples, rate = tts.speak("Hello there.", "en-us", {"rate": 175})
    """

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as err:  # pragma: no cover - a declared dependency
            raise ImportError("the toy corpus needs the espeakng-loader wheel: pip install espeakng-loader") from err
        self._tmp = tempfile.TemporaryDirectory(prefix="ambinb-espeak-")
        source = Path(espeakng_loader.get_library_path())
        self._lib_path = str(Path(self._tmp.name) / f"private-{source.name}")
        shutil.copyfile(source, self._lib_path)
        self._data_path = espeakng_loader.get_data_path().encode()
        self._chunks: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._collect)

    def __enter__(self) -> Espeak:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the private copy of the library."""
        self._tmp.cleanup()

    def _collect(self, wav: ctypes.POINTER(ctypes.c_short), n: int, events: int) -> int:
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    @contextlib.contextmanager
    def _fresh_library(self):
        lib = ctypes.CDLL(self._lib_path)
        try:
            lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            lib.espeak_Initialize.restype = ctypes.c_int
            rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self._data_path, _INITIALIZE_DONT_EXIT)
            if rate <= 0:
                raise RuntimeError(f"eSpeak NG failed to initialise with data {self._data_path.decode()!r}")
            try:
                yield lib, rate
            finally:
                lib.espeak_Terminate()
        finally:
            _ctypes.dlclose(lib._handle)

    def version(self) -> str:
        """The eSpeak NG version string, e.g. ``'1.52.0'``."""
        with _ESPEAK_LOCK, self._fresh_library() as (lib, _):
            lib.espeak_Info.argtypes = [ctypes.c_void_p]
            lib.espeak_Info.restype = ctypes.c_char_p
            return lib.espeak_Info(None).decode()

    def speak(self, text: str, voice: str, settings: dict[str, int], noise_seed: int = 0) -> tuple[np.ndarray, int]:
        """Speak ``text`` with ``voice`` and eSpeak ``settings`` (keys of ``_PARAMETER_IDS``).

        ``noise_seed`` seeds eSpeak's own random generator (breath noise of some voices), which it
        otherwise seeds from the clock.

        Returns:
            ``(samples, sample_rate)``: int16 mono samples at eSpeak's rate (22050 Hz).

        Raises:
            ValueError: an unknown voice or setting (eSpeak itself would keep the previous voice).
            RuntimeError: any other non-zero eSpeak return code, or no audio.
        """
        unknown = set(settings) - set(_PARAMETER_IDS)
        if unknown:
            raise ValueError(f"unknown eSpeak settings {sorted(unknown)}; known: {sorted(_PARAMETER_IDS)}")
        with _ESPEAK_LOCK, self._fresh_library() as (lib, rate):
            lib.espeak_SetSynthCallback(self._callback)
            lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
            lib.espeak_ng_SetRandSeed(int(noise_seed))
            lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
            code = lib.espeak_SetVoiceByName(voice.encode())
            if code != 0:
                raise ValueError(f"eSpeak NG cannot load voice {voice!r} (code {code})")
            lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
            for key, value in settings.items():
                code = lib.espeak_SetParameter(_PARAMETER_IDS[key], int(value), 0)
                if code != 0:
                    raise RuntimeError(f"eSpeak NG rejected {key}={value} (code {code})")
            lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                         ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
            encoded = text.encode("utf-8")
            self._chunks = []
            code = lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if code != 0:
                raise RuntimeError(f"eSpeak NG failed to speak {text!r} with {voice!r} (code {code})")
            lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if not chunks:
            raise RuntimeError(f"eSpeak NG returned no audio for {text!r} with {voice!r}")
        return np.concatenate(chunks).astype(np.int16), rate


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
    settings = {k: int(row[k]) for k in _PARAMETER_IDS}
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


# --- building and reusing a corpus -------------------------------------------------------------

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
        n: number of utterances (TOY-NOTES: 600-1,200 for a learnable corpus; tests use fewer).
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
                samples, spoken_rate = speak_utterance(tts, row)
                (staging / f"{row['utt_id']}.wav").write_bytes(wav_bytes(samples))
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
        import fcntl
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
