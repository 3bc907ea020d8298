"""The tiny stand-in: a small, locally built Qwen2-Audio that every notebook runs on when
``model_name_or_path`` is empty, so nothing has to be downloaded.

What it is:

* the real classes at tiny sizes: a randomly initialised ``Qwen2AudioForConditionalGeneration``
  (width, depth and heads from the ``tiny_*`` params), a ``Qwen2Tokenizer`` holding a byte-level
  BPE trained on the project's own text (the think-block vocabulary, the class names, the prompt,
  transcript words) with Qwen's pre-tokeniser and special tokens, and a real
  ``Qwen2AudioProcessor`` (Whisper features, 128 mel bins, 16 kHz, 3,000 frames) carrying
  Qwen2-Audio-7B-Instruct's chat template;
* pretrained briefly and deterministically (the warm-up) on synthetic chats only: speech-like
  clips whose loudness, rate, pitch, pitch variation, tension and roughness are drawn at random as
  z-scores; random transcripts (the toy corpus's *words*, never its sentences) into which words of
  the curator's emotion lexicon are inserted at random; a random class list; and think blocks
  (most in the curator's wording) whose keywords and text step quote the transcript's emotion
  words and whose audio step describes the clip's z-scores. Their synthesis names a random class
  split and the answer follows it: no emotion label exists for a synthetic item, so the stand-in
  learns the format, to quote and to hear, and self-consistency, never which emotion a cue means.
  Two aids make quoting learnable in a few hundred steps: each word token starts from the
  embedding of its space-prefixed twin, and every step adds a batch of text-only quoting drills.
  The audio tower stays at its random initialisation and frozen (the paper's setting); everything
  else trains;
* saved as an ordinary checkpoint folder (``from_pretrained`` loads it) under ``tiny_dir``, with
  ``ambinb_tiny.json`` recording the build spec; :func:`ensure_tiny` rebuilds when the spec
  differs. A build is bit-identical across rebuilds with the same spec on one machine.

The package, by noun:

* :mod:`~ambinb.standin.words`: class names and lists, think-block words, transcript vocabulary;
* :mod:`~ambinb.standin.transcripts`: random transcripts, some carrying emotion words;
* :mod:`~ambinb.standin.completions`: think blocks and answers for synthetic items;
* :mod:`~ambinb.standin.speech`: speech-like audio of given prosody, and its Whisper features;
* :mod:`~ambinb.standin.tokenizer`: the BPE, its training text, and the processor;
* :mod:`~ambinb.standin.architecture`: the tiny ``Qwen2AudioConfig`` and the word-embedding prior;
* :mod:`~ambinb.standin.batches`: padding and target logits, shared by the pretraining tasks;
* :mod:`~ambinb.standin.chats` and :mod:`~ambinb.standin.drills`: the pretraining tasks;
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
from ambinb.standin.speech import draw_prosody, synthetic_speech, synthetic_wave
from ambinb.standin.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS
from ambinb.standin.transcripts import cued_transcript, synthetic_transcript

__all__ = [
    "CHAT_TEMPLATE", "SPECIAL_TOKENS", "TINY_BUILDER_VERSION", "TINY_KEYS", "TINY_SPEC_FILE", "build_tiny",
    "built_spec", "cued_transcript", "draw_prosody", "ensure_tiny", "make_tiny", "synthetic_completion",
    "synthetic_speech", "synthetic_transcript", "synthetic_wave", "tiny_spec", "warm_up",
]
