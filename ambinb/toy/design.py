"""The toy corpus's design, as data: classes, mixture and vote settings, prosody prototypes, speakers
and transcript banks, and the names of the files a corpus folder holds."""

from __future__ import annotations

from dataclasses import dataclass

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


def speakers_for(sessions: int) -> list[Speaker]:
    """The speakers of the first ``sessions`` sessions (two each), in table order.

    Example: ``[s.speaker for s in speakers_for(3)]`` -> ``['Ses01F', 'Ses01M', ..., 'Ses03M']``.
    """
    max_sessions = max(s.session for s in SPEAKERS)
    if int(sessions) != sessions or not MIN_SESSIONS <= sessions <= max_sessions:
        raise ValueError(f"sessions={sessions!r}: the toy corpus has {MIN_SESSIONS} to {max_sessions} sessions "
                         f"(two speakers each, at least 4 training speakers per fold)")
    return [s for s in SPEAKERS if s.session <= sessions]

