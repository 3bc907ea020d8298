"""Ambiguity-aware chain-of-thought curation (the paper's Table 1), validated and stored resumably.

For each training utterance a *writer* sees the transcript, the measured prosody (and, for models
that take it, the audio) and the target distribution p_gt, and writes a think block in the format
of :func:`ambinb.cot.render_think`. A *reader* then sees only the transcript and that think block,
and returns the distribution it implies. The think block is accepted when
``JS(p_gt, reader) <= accept_js``; otherwise it is written again, up to ``curation_attempts``
times, and every attempt is kept in the record.

The protocol, in our words (the writer's instructions for every backend):

- **Keywords**: a short list of the salient acoustic and linguistic cues.
- **Step 1, text**: what the words mean in context, read for meaning only, and whether they are
  ambiguous on their own.
- **Step 2, audio**: the delivery in professional terms, one sentence each for Volume, Speed,
  Pitch and Tone, naming the cues that support the majority label and, where listeners
  disagreed, the cues that support the minority label(s).
- **Step 3, synthesis**: weigh the evidence so that a reader who sees only this analysis would
  predict how listeners split, naming the majority and minority labels with hedges that match
  their shares (never numbers).

The package, one noun per module:

- :mod:`~ambinb.curation.items`: what a backend is handed (:class:`Item`) and hands back (:class:`Reply`);
- :mod:`~ambinb.curation.errors`: :class:`CurationError` (stops the run), :class:`AttemptError` (uses up an attempt);
- :mod:`~ambinb.curation.hedges`: the hedge phrases of a synthesis, and how a reader reads them back;
- :mod:`~ambinb.curation.template`: the offline, deterministic ``template`` writer and reader;
- :mod:`~ambinb.curation.chat`: the LLM writer's and reader's messages and answer schemas;
- :mod:`~ambinb.curation.transport`: retries with back-off, and the :class:`Outage` watch that stops
  a run whose server refuses the key or cannot be reached;
- :mod:`~ambinb.curation.openai_backend`: the ``openai`` backend (any OpenAI-compatible server);
- :mod:`~ambinb.curation.attempts`: write, read and judge one utterance into one record;
- :mod:`~ambinb.curation.store`: the resumable JSONL store and what training reads from it;
- :mod:`~ambinb.curation.run`: :func:`curate`, the run over a fold's utterances, and its summary.

The cue vocabulary the template writer uses is :mod:`ambinb.cues`; the curation figure is
:func:`ambinb.plots.acceptance`.
"""

from ambinb.curation.attempts import add_tokens, curate_one
from ambinb.curation.chat import (
    READER_INSTRUCTIONS,
    WRITER_INSTRUCTIONS,
    generation_messages,
    parse_generation,
    parse_validation,
    validation_messages,
)
from ambinb.curation.errors import AttemptError, CurationError
from ambinb.curation.hedges import HEDGES, MIN_SHARE, hedge, read_hedges, synthesis_sentence
from ambinb.curation.items import Item, Reply, make_items
from ambinb.curation.openai_backend import OpenAIBackend, api_key
from ambinb.curation.run import (
    BACKENDS,
    SUBSETS,
    SUMMARY_FILE,
    clear_and_ambiguous,
    closing_line,
    cost_usd,
    curate,
    make_backend,
    select_utterances,
    summarize,
    to_curate,
)
from ambinb.curation.store import STORE_FILE, CotStore, accepted_cots, load_curated, store_path
from ambinb.curation.template import (
    READER_CUE_PRIOR,
    READER_RESOLVED_WEIGHT,
    READER_SYNTHESIS_WEIGHT,
    RESOLVED_SENTENCE,
    TemplateBackend,
    cited_cues,
    read_template_cot,
    template_cot,
    template_parts,
)
from ambinb.curation.transport import Outage, backoff_delay, call_with_retries

__all__ = [
    "BACKENDS", "HEDGES", "MIN_SHARE", "READER_CUE_PRIOR",
    "READER_INSTRUCTIONS", "READER_RESOLVED_WEIGHT", "READER_SYNTHESIS_WEIGHT", "RESOLVED_SENTENCE",
    "STORE_FILE", "SUBSETS", "SUMMARY_FILE", "WRITER_INSTRUCTIONS", "AttemptError", "CotStore", "CurationError",
    "Item", "OpenAIBackend", "Outage", "Reply", "TemplateBackend", "accepted_cots", "add_tokens",
    "api_key", "backoff_delay", "call_with_retries", "cited_cues", "clear_and_ambiguous",
    "closing_line", "cost_usd", "curate", "curate_one", "generation_messages", "hedge",
    "load_curated", "make_backend", "make_items", "parse_generation", "parse_validation", "read_hedges",
    "read_template_cot", "select_utterances", "store_path", "summarize", "synthesis_sentence",
    "template_cot", "template_parts", "to_curate", "validation_messages",
]
