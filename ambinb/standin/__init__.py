"""The tiny stand-in: a small, locally built Qwen2-Audio that every notebook runs on when
``model_name_or_path`` is empty, so nothing has to be downloaded.

What it is:

* the real classes at tiny sizes: a randomly initialised ``Qwen2AudioForConditionalGeneration``
  (width, depth and heads from the ``tiny_*`` params), a ``Qwen2Tokenizer`` holding a byte-level
  BPE trained on the project's own text (the think-block vocabulary, the class names, the prompt,
  transcript words) with Qwen's pre-tokeniser and special tokens, and a real
  ``Qwen2AudioProcessor`` (Whisper features, 128 mel bins, 16 kHz, 3,000 frames) carrying
  Qwen2-Audio-7B-Instruct's chat template;
* pretrained deterministically, before any strategy touches it, as a small audio-language model
  (:mod:`~ambinb.standin.pretrain`) on a speech corpus of its own (:mod:`~ambinb.standin.recordings`):
  eSpeak NG recordings of random word strings (the toy corpus's *words*, never its sentences) in
  voices no toy speaker uses, at random prosody settings, each measured as the curator measures a
  dataset (eGeMAPS, six dimensions against a typical voice of the corpus). It learns to hear (a
  listening head on the tower predicts each recording's acoustics), to describe a voice in the
  curator's words, to quote a transcript, and to answer the emotion prompt in the think/answer
  format, where the audio step describes the recording and the synthesis and answer are random: no
  emotion label or distribution exists for a recording, so it never learns which emotion a cue
  means. The audio tower trains in this stage only and is frozen afterwards, as in the paper;
  word tokens start from the embedding of their space-prefixed twin;
* saved as an ordinary checkpoint folder (``from_pretrained`` loads it) under ``tiny_dir``, with
  ``ambinb_tiny.json`` recording the build spec; :func:`ensure_tiny` rebuilds when the spec
  differs. A build is bit-identical across rebuilds with the same spec on one machine.

The package, by noun:

* :mod:`~ambinb.standin.words`: class names and lists, think-block words, transcript vocabulary;
* :mod:`~ambinb.standin.transcripts`: random transcripts, some carrying emotion words;
* :mod:`~ambinb.standin.completions`: think blocks and answers for synthetic items;
* :mod:`~ambinb.standin.recordings`: the stand-in's own speech corpus, spoken and measured;
* :mod:`~ambinb.standin.speech`: test signals, and the Whisper features of short clips;
* :mod:`~ambinb.standin.tokenizer`: the BPE, its training text, and the processor;
* :mod:`~ambinb.standin.architecture`: the tiny ``Qwen2AudioConfig`` and the word-embedding prior;
* :mod:`~ambinb.standin.batches`: padding and target logits, shared by the pretraining tasks;
* :mod:`~ambinb.standin.listening`, :mod:`~ambinb.standin.descriptions`,
  :mod:`~ambinb.standin.chats` and :mod:`~ambinb.standin.drills`: the pretraining tasks;
* :mod:`~ambinb.standin.pretrain`: the warm-up loop over the tasks;
* :mod:`~ambinb.standin.build`: the spec, the build, its folder and the cache with its lock.

Example::

    >>> from ambinb import config, standin
    >>> folder = standin.ensure_tiny(config.resolve())   # doctest: +SKIP
"""

from ambinb.standin.build import (
    TINY_BUILDER_VERSION,
    TINY_KEYS,
    TINY_SPEC_FILE,
    build_tiny,
    built_spec,
    ensure_tiny,
    make_tiny,
    tiny_spec,
)
from ambinb.standin.completions import synthetic_completion
from ambinb.standin.pretrain import warm_up
from ambinb.standin.recordings import Recordings, ensure_recordings, pretraining_voices
from ambinb.standin.speech import synthetic_wave
from ambinb.standin.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS
from ambinb.standin.transcripts import cued_transcript, synthetic_transcript

__all__ = [
    "CHAT_TEMPLATE", "SPECIAL_TOKENS", "TINY_BUILDER_VERSION", "TINY_KEYS", "TINY_SPEC_FILE", "Recordings",
    "build_tiny", "built_spec", "cued_transcript", "ensure_recordings", "ensure_tiny", "make_tiny",
    "pretraining_voices", "synthetic_completion", "synthetic_transcript", "synthetic_wave", "tiny_spec", "warm_up",
]
