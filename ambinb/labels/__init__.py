"""Soft labels: one table per corpus (IEMOCAP, CREMA-D, the toy corpus), built from annotator votes.

Every loader returns a pandas DataFrame with the same schema (:mod:`ambinb.labels.table`), one
row per utterance:

``utt_id, dataset, speaker, session, fold, transcript, audio_path, consensus, n_votes``,
then ``votes_<class>`` (int) for every class, then ``p_<class>`` (float, each row sums to 1),
then loader-specific extra columns (``n_raters``, ``fallback``; CREMA-D adds ``sex``,
``intended``, ``level``). ``p_<class> = votes_<class> / n_votes`` (Eq. 1 of the paper), except
for the rows marked ``fallback`` (``n_votes == 0``), whose ``p`` is one-hot at the consensus
label. ``fold`` is the 0-based test fold; ``TRAIN_ONLY_FOLD`` (-1) marks rows that are never
tested (CREMA-D ``emobox``).

Bad input never vanishes. Problems (malformed lines, unknown categories, duplicate IDs, zero-vote
rows, empty or unreadable files, missing audio or transcripts, ...) are counted: by default the
offending line, row or file is skipped and one :class:`LabelWarning` summarises every kind, one
line each with the count and the first places (file and line, or CSV row and column); with
``strict=True`` the first one raises :class:`LabelError` instead. Things left out by design (other
consensus codes, votes outside the classes, self-ratings, face-only CREMA-D rows) are counted too.
The counts travel with the table:

- ``df.attrs["skipped"]``: reason -> count of utterances, rows, votes, lines or files not used;
- ``df.attrs["warnings"]``: problem kind -> count; ``df.attrs["examples"]``: kind -> its first
  ``[where, message]`` pairs;
- ``df.attrs["notes"]``: plain-language notes (label-only loading, one-hot fallbacks, ...);
- ``df.attrs["fallback"]``: number of one-hot fallback rows; ``df.attrs["source"]``: the root read.

Modules: :mod:`~ambinb.labels.table` (schema, checks, file), :mod:`~ambinb.labels.tally` (the
problems and their summary), :mod:`~ambinb.labels.iemocap_files` and :mod:`~ambinb.labels.iemocap`
(IEMOCAP), :mod:`~ambinb.labels.crema_d` (CREMA-D and its folds), :mod:`~ambinb.labels.dataset`
(the dataset a config names, folds and splits), :mod:`~ambinb.labels.summary` (the chapter's tables).
"""

from ambinb.labels.crema_d import (
    CREMA_D_FOLD_SCHEMES,
    CREMA_D_INTENDED,
    CREMA_D_SENTENCES,
    CREMA_D_VOTE_COLUMNS,
    EMOBOX_TEST_SHARE,
    crema_d_emobox_split,
    crema_d_speaker_folds,
    load_crema_d,
)
from ambinb.labels.dataset import DEFAULT_ROOTS, load_and_report, load_dataset, make_toy, split, split_for_run
from ambinb.labels.iemocap import IEMOCAP_OTHER_CODES, IEMOCAP_SUBSET, load_iemocap
from ambinb.labels.iemocap_files import IEMOCAP_CATEGORIES, parse_emo_evaluation, parse_transcriptions
from ambinb.labels.summary import describe
from ambinb.labels.table import (
    ATTRS_SUFFIX,
    CLASSES,
    SCHEMA_COLUMNS,
    TRAIN_ONLY_FOLD,
    build_table,
    class_names,
    p_matrix,
    read_labels,
    save_labels,
    validate_table,
    vote_matrix,
)
from ambinb.labels.tally import LabelError, LabelNote, LabelWarning, problem_summary

__all__ = [
    "ATTRS_SUFFIX", "CLASSES", "CREMA_D_FOLD_SCHEMES", "CREMA_D_INTENDED", "CREMA_D_SENTENCES",
    "CREMA_D_VOTE_COLUMNS", "DEFAULT_ROOTS", "EMOBOX_TEST_SHARE", "IEMOCAP_CATEGORIES", "IEMOCAP_OTHER_CODES",
    "IEMOCAP_SUBSET", "SCHEMA_COLUMNS", "TRAIN_ONLY_FOLD", "LabelError", "LabelNote", "LabelWarning",
    "build_table", "class_names", "crema_d_emobox_split", "crema_d_speaker_folds", "describe", "load_and_report",
    "load_crema_d", "load_dataset", "load_iemocap", "make_toy", "p_matrix", "parse_emo_evaluation",
    "parse_transcriptions", "problem_summary", "read_labels", "save_labels", "split", "split_for_run",
    "validate_table", "vote_matrix",
]
