"""The tally of problems: what a loader skipped and why, and its summary in one line per kind.

A loader records every problem it meets in a :class:`Tally` (``kind``, where: ``file:line``,
``file row k`` or a file, and a message). By default the offending line, row or file is skipped
and counted; with ``strict=True`` the first problem raises :class:`LabelError` instead. When the
table is built, :meth:`Tally.attach` raises one :class:`LabelWarning` that summarises every kind
(:func:`problem_summary`), however many times each occurred, and puts the counts in ``df.attrs``.

Example summary (a ``tabulatedVotes.csv`` cut off after 2,679 voice rows)::

    4763 problem(s) in /data/crema-d, skipped and counted in df.attrs["warnings"]:
      4763 x missing_votes: /data/crema-d/SentenceFilenames.csv clip 2680: 1033_TSI_FEA_XX has no
        voice-only row (102680) in .../tabulatedVotes.csv (also clip 2681, clip 2682; +4760 more)
    strict=True (the `strict` parameter or config key) stops at the first problem instead.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

MAX_EXAMPLES = 3  # places shown per problem kind
STRICT_HINT = "strict=True (the `strict` parameter or config key) stops at the first problem instead."
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_WHERE_RE = re.compile(r"^(?P<file>.*?)(?::(?P<line>\d+)| (?P<what>row|clip) (?P<id>\S+))$")


class LabelError(ValueError):
    """Bad label input (or a bad label table); the message names the file and line, or the row."""


class LabelWarning(UserWarning):
    """Counted problems in the input that were skipped (``strict=True`` raises instead)."""


class LabelNote(UserWarning):
    """Information about how a corpus was loaded (e.g. label-only, no audio); not a problem."""


def caller_level() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside the ``labels`` package."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == _PACKAGE_DIR:
        frame, level = frame.f_back, level + 1
    return level


class Tally:
    """Collects what a loader skipped and why; raises at the first problem when ``strict``."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.skipped: Counter[str] = Counter()
        self.warnings: Counter[str] = Counter()
        self.examples: dict[str, list[list[str]]] = defaultdict(list)
        self.notes: list[str] = []

    def problem(self, kind: str, where: str, message: str, skipped: str | None = None) -> None:
        """Record one problem at ``where`` (``file:line``, ``file row k`` or a file); raise when strict."""
        if self.strict:
            raise LabelError(f"{where}: {message} [{kind}; strict=True]")
        self.warnings[kind] += 1
        if len(self.examples[kind]) < MAX_EXAMPLES:
            self.examples[kind].append([where, message])
        if skipped:
            self.skipped[skipped] += 1

    def skip(self, reason: str, n: int = 1) -> None:
        """Count ``n`` things left out by design (not a problem), under ``reason``."""
        if n:
            self.skipped[reason] += n

    def note(self, message: str) -> None:
        """Record a plain-language note about the loading and raise it as a :class:`LabelNote`."""
        self.notes.append(message)
        warnings.warn(message, LabelNote, stacklevel=caller_level())

    def attach(self, df: pd.DataFrame, fallback: int, source: Path) -> pd.DataFrame:
        """Put the counts in ``df.attrs``; when there were problems, raise one summarising :class:`LabelWarning`."""
        df.attrs["skipped"] = dict(sorted(self.skipped.items()))
        df.attrs["warnings"] = dict(sorted(self.warnings.items()))
        df.attrs["examples"] = {kind: [list(e) for e in self.examples[kind]] for kind in df.attrs["warnings"]}
        df.attrs["notes"] = list(self.notes)
        df.attrs["fallback"] = int(fallback)
        df.attrs["source"] = str(source)
        if self.warnings:
            warnings.warn(problem_summary(df.attrs), LabelWarning, stacklevel=caller_level())
        return df


def _place(where: str, first: str) -> str:
    """``where`` shortened against ``first`` when both name the same file: ``"f.csv row 9"`` -> ``"row 9"``."""
    m, m_first = _WHERE_RE.match(where), _WHERE_RE.match(first)
    if not (m and m_first and m["file"] == m_first["file"]):
        return where
    return f"line {m['line']}" if m["line"] else f"{m['what']} {m['id']}"


def kind_line(kind: str, count: int, examples: list[list[str]]) -> str:
    """One line for one problem kind: the count, the first place in full, the next few places.

    Example: ``kind_line("zero_votes", 5, [["f.csv row 3", "x has no votes"], ["f.csv row 9", "..."]])``
    -> ``"5 x zero_votes: f.csv row 3: x has no votes (also row 9; +3 more)"``.
    """
    if not examples:
        return f"{count} x {kind}"
    (where, message), rest = examples[0], examples[1:]
    also = [_place(w, where) for w, _ in rest]
    more = count - len(examples)
    tail = "; ".join(([", ".join(also)] if also else []) + ([f"+{more} more"] if more > 0 else []))
    return f"{count} x {kind}: {where}: {message}" + (f" (also {tail})" if tail else "")


def problem_summary(attrs: dict[str, Any]) -> str:
    """The problems counted in a table's ``attrs``: a heading, one line per kind, the ``strict`` hint.

    Returns "" when there was no problem. See the module docstring for an example.
    """
    counts: dict[str, int] = attrs.get("warnings", {})
    if not counts:
        return ""
    examples: dict[str, list[list[str]]] = attrs.get("examples", {})
    source = attrs.get("source", "the input")
    lines = [f"{sum(counts.values())} problem(s) in {source}, skipped and counted in df.attrs[\"warnings\"]:"]
    lines += [f"  {kind_line(kind, n, examples.get(kind, []))}" for kind, n in sorted(counts.items())]
    lines.append(STRICT_HINT)
    return "\n".join(lines)


def write_report(text: str, stream: TextIO | None = None, log_path: str | os.PathLike | None = None) -> None:
    """Write ``text`` (and a newline) where a user looks, and append it to the log file ``log_path`` when given.

    ``stream`` None: ``sys.stderr``, which in a Jupyter kernel is the notebook's output (in order
    with the cell's other output); in a kernel the text also goes to the stderr the kernel was
    started with, i.e. the terminal or log of whoever runs it (papermill, ``make report``).
    """
    if not text:
        return
    text += "\n"
    out = stream or sys.stderr
    out.write(text)
    out.flush()
    if stream is None and sys.stderr is not sys.__stderr__:
        _write_to_launcher(text)
    if log_path:
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(text)


def _write_to_launcher(text: str) -> None:
    """Write to the stderr this process was started with, from inside a Jupyter kernel.

    ipykernel's ``sys.stderr.fileno()`` is a copy of that original stream (its fd 2 is a pipe
    into the notebook); without one, ``sys.__stderr__`` is that stream itself.
    """
    try:
        fd = sys.stderr.fileno()
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both OSError and ValueError
        fd = None
    if fd is not None:
        os.write(fd, text.encode("utf-8", errors="replace"))
    elif sys.__stderr__ is not None:
        sys.__stderr__.write(text)
        sys.__stderr__.flush()
