"""The stand-in's word stock: class names and the class lists of its prompts, free-form think-block
words, and the words random transcripts are drawn from (general words plus the words, never the
sentences, of the toy corpus's banks)."""

from __future__ import annotations

import random

from ambinb.toy.design import SENTENCES

ALL_CLASSES = ("anger", "happiness", "sadness", "neutral", "disgust", "fear")
CLASS_SETS = (("anger", "happiness", "sadness", "neutral"),
              ("anger", "disgust", "fear", "happiness", "neutral", "sadness"))
KEYWORDS = ("raised voice", "soft voice", "fast pace", "slow pace", "trembling", "flat tone", "sharp stress",
            "long pauses", "sigh", "laughter", "clipped words", "rising pitch", "falling pitch", "bright tone",
            "harsh tone", "quiet", "loud", "steady rhythm", "emphatic", "breathy", "tense", "warm", "shaky",
            "monotone", "lively", "hesitant", "abrupt", "drawn out")
ASPECT_WORDS = {
    "Volume": ("loud", "soft", "moderate", "quiet", "rising", "falling", "even", "strong", "weak"),
    "Speed": ("fast", "slow", "steady", "hurried", "measured", "uneven", "quick", "halting"),
    "Pitch": ("high", "low", "rising", "falling", "flat", "varied", "wide", "narrow", "tight"),
    "Tone": ("harsh", "warm", "flat", "tense", "bright", "gentle", "shaky", "calm", "cold", "heavy", "light"),
}
TEXT_WORDS = ("neutral", "positive", "negative", "tense", "plain", "friendly", "hostile", "sad", "hopeful",
              "worried", "calm", "bitter", "cheerful", "matter of fact")
STRENGTH = ("little", "some", "clear", "strong", "mild", "no")
TRANSCRIPT_WORDS = (
    "i", "you", "we", "they", "he", "she", "it", "this", "that", "what", "where", "when", "why", "how", "is",
    "are", "was", "were", "be", "have", "has", "had", "do", "did", "not", "no", "yes", "really", "just",
    "never", "always", "again", "now", "today", "tomorrow", "yesterday", "here", "there", "home", "work",
    "time", "day", "night", "way", "thing", "people", "friend", "money", "car", "door", "phone", "letter",
    "meeting", "train", "dinner", "house", "job", "told", "said", "know", "think", "want", "need", "like",
    "love", "hate", "feel", "believe", "wait", "go", "come", "leave", "stay", "stop", "look", "hear", "see",
    "find", "lost", "won", "got", "give", "take", "make", "call", "again", "all", "everything", "nothing",
    "something", "anything", "very", "so", "too", "much", "more", "little", "good", "bad", "great", "fine",
    "okay", "sorry", "please", "thank", "thanks", "well", "oh", "wow", "right", "sure", "maybe", "can",
    "could", "would", "should", "will", "going", "to", "the", "a", "an", "and", "but", "or", "of", "in", "on",
    "at", "for", "with", "about", "my", "your", "our", "their", "me", "him", "her", "us", "them", "late",
    "early", "new", "old", "long", "happy", "sad", "angry", "afraid", "tired", "late", "again", "believe",
    "seriously", "honestly", "exactly", "happened", "eleven", "o'clock", "airplane", "almost", "full",
    "tomorrow", "cold", "alarm", "clock", "doctor's", "appointment", "forget", "jacket", "seen", "before",
    "surface", "slick", "stop", "couple", "minutes", "wonder", "about", "way", "meeting", "would", "like")


def extra_corpus_words() -> list[str]:
    """The words of the toy corpus's transcript banks (``ambinb.toy.SENTENCES``), lower-cased and sorted.

    Only the words reach the tiny model (its tokenizer and the random warm-up transcripts), never a
    bank's sentence with its class, and never a label.
    """
    words = {w.strip('.,!?"').lower() for bank in SENTENCES.values() for sentence in bank for w in sentence.split()}
    return sorted(w for w in words if w)


def transcript_vocabulary() -> tuple[str, ...]:
    """The words random warm-up transcripts are drawn from: :data:`TRANSCRIPT_WORDS` and the toy's words."""
    return tuple(sorted(set(TRANSCRIPT_WORDS) | set(extra_corpus_words())))


def synthetic_class_list(rng: random.Random) -> list[str]:
    """The class list of a warm-up prompt: one of the datasets' lists, or a random subset."""
    r = rng.random()
    if r < 0.4:
        return list(CLASS_SETS[0])
    if r < 0.8:
        return list(CLASS_SETS[1])
    return rng.sample(ALL_CLASSES, rng.randint(2, 5))
