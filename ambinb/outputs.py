"""Cell outputs of an executed notebook, as the book shows them: no progress-bar refreshes, no
machine paths, and stderr summarised once.

:func:`clean_notebook` rewrites an executed notebook (a dict as in the ``.ipynb`` file) in place:

- stream outputs: each ``\\r``-redrawn line keeps its last state; progress-bar lines go (the
  details are in the run's log file, see :mod:`ambinb.progress`); on stderr, the source line Python
  echoes under a warning goes, repeated lines are kept once with their count
  (``"... (x12)"``) and at most ``MAX_STDERR_LINES`` lines stay;
- widget outputs (``application/vnd.jupyter.widget-view+json``, a tqdm widget) go;
- every text (sources, outputs, tracebacks): absolute paths become relative (:func:`relative_text`).

Example: ``clean_stream("a: 10%|#  | 1/10 [00:01<00:09]\\rdone\\n")`` -> ``"done\\n"``.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from ambinb.paths import display_bases

# a tqdm refresh: "desc:  15%|###   | 3/20 [00:01<00:05, 3.2it/s]" or, without a total, "desc: 5it [00:01, 3.2it/s]"
PROGRESS_LINE = re.compile(r"\d+%\|.*\|"
                           r"|\|\s*[\d.]+[kMGT]?/[\d.?]+[kMGT]?\s*\[\d+:\d\d"
                           r"|\b[\d.]+[kMGT]?\w* \[\d+:\d\d(?::\d\d)?, [\d.?]+\s?\w*/s")
# stderr lines that say nothing to a reader of the book
NOISE_LINE = re.compile(r"IProgress not found|^\s*$")
# the header Python's warnings module prints ("path.py:12: UserWarning: ..."), then it echoes a source line
WARNING_HEADER = re.compile(r":\d+: \w*Warning: ")
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
MAX_STDERR_LINES = 8
# absolute paths left after the known roots are replaced: shown as ".../<last two parts>"
_OTHER_ABSOLUTE = re.compile(r"(?<![\w.~/])/(?:tmp|work|home|root|Users|scratch|mnt|data|var|opt)/[^\s'\"`)\],;:]*")
_SITE_PACKAGES = re.compile(r"(?<![\w.])/[^\s'\"`]*?/(?:site-packages|dist-packages)/")
_STDLIB = re.compile(r"(?<![\w.])/[^\s'\"`]*?/lib/python3\.\d+/")


def relative_text(text: str, run_root: str | os.PathLike | None = None) -> str:
    """``text`` with absolute paths made relative: under the run root's parent or the project root ->
    relative to it; inside an installed package -> from the package on (``tqdm/auto.py``); under the
    home folder -> ``~/...``; any other absolute path under ``/tmp``, ``/work``, ``/home``, ... ->
    ``.../<last two parts>``.

    Example: with the project at ``/work/main``, ``"saved /work/main/runs/toy/x.png"`` ->
    ``"saved runs/toy/x.png"``.
    """
    bases = [base for base, prefix in display_bases(run_root) if not prefix]  # home is handled below
    for base in sorted({str(b).rstrip("/") for b in bases if str(b) != "/"}, key=len, reverse=True):
        text = re.sub(re.escape(base) + "/", "", text)
        text = re.sub(re.escape(base) + r"(?![\w.-])", ".", text)
    text = _SITE_PACKAGES.sub("", text)
    text = _STDLIB.sub("", text)
    home = str(Path.home()).rstrip("/")
    if home:
        text = re.sub(re.escape(home) + r"(?=/|(?![\w.-]))", "~", text)
    return _OTHER_ABSOLUTE.sub(lambda m: ".../" + "/".join(Path(m.group(0)).parts[-2:]), text)


def clean_stream(text: str, stderr: bool = False) -> str:
    """A stream output's text without progress-bar refreshes (and, for stderr, summarised): see the module."""
    lines, previous = [], ""
    for raw in text.split("\n"):
        line = raw.split("\r")[-1] if "\r" in raw.rstrip("\r") else raw.rstrip("\r")
        echo = stderr and line.startswith("  ") and WARNING_HEADER.search(previous)
        previous = line
        if PROGRESS_LINE.search(line) or (stderr and NOISE_LINE.search(line)) or echo:
            continue
        lines.append(line)
    if not stderr:
        kept = "\n".join(lines)
        return kept if kept.strip() else ""
    counts = Counter(lines)
    unique = [f"{line} (x{counts[line]})" if counts[line] > 1 else line for line in dict.fromkeys(lines)]
    if len(unique) > MAX_STDERR_LINES:
        more = len(unique) - MAX_STDERR_LINES
        unique = [*unique[:MAX_STDERR_LINES], f"... and {more} more line(s); the run's log file has them all"]
    return "\n".join(unique) + "\n" if unique else ""


def _relative(value: Any, run_root: str | os.PathLike | None) -> Any:
    """Apply :func:`relative_text` to a string or to each string of a list (other values unchanged)."""
    if isinstance(value, str):
        return relative_text(value, run_root)
    if isinstance(value, list):
        return [_relative(v, run_root) for v in value]
    return value


def clean_output(output: dict[str, Any], run_root: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """One cell output as the book shows it, or None when nothing of it is left to show."""
    kind = output.get("output_type")
    if kind == "stream":
        text = clean_stream("".join(output.get("text", "")), stderr=output.get("name") == "stderr")
        return {**output, "text": relative_text(text, run_root)} if text else None
    if kind == "error":
        return {**output, "traceback": _relative(output.get("traceback", []), run_root),
                "evalue": _relative(output.get("evalue", ""), run_root)}
    if kind in ("display_data", "execute_result"):
        data = {mime: value if mime.startswith("image/") else _relative(value, run_root)
                for mime, value in output.get("data", {}).items() if mime != WIDGET_MIME}
        if WIDGET_MIME in output.get("data", {}) and set(data) <= {"text/plain"}:
            return None  # a widget's text fallback ("HBox(children=...)", a bar): nothing for a reader
        return {**output, "data": data} if data else None
    return output


def clean_notebook(nb: dict[str, Any], run_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Clean every cell of an executed notebook (see the module) in place; drop saved widget state. Returns ``nb``."""
    nb.get("metadata", {}).pop("widgets", None)
    for cell in nb.get("cells", []):
        cell["source"] = _relative("".join(cell.get("source", "")), run_root)
        if cell.get("cell_type") != "code":
            continue
        kept = [clean_output(out, run_root) for out in cell.get("outputs", [])]
        cell["outputs"] = [out for out in kept if out is not None]
    return nb


# a results cell of aggregate.format_table: "[**]mean ± sd [lo, hi] (k/n folds)[**]"
_RESULT_CELL = re.compile(r"^(?P<bold>\*\*)?(?P<head>[^\[*]+?)(?: (?P<ci>\[[^\]]+\]))?(?P<tail> \([^)]*\))?(?:\*\*)?$")


def stacked_cell(cell: Any) -> Any:
    """A results cell with its CI on a second, smaller line, so a table of them fits the page.

    Example: ``"**0.120 ± 0.010 [0.100, 0.140]**"`` -> ``"**0.120 ± 0.010**<br><small>[0.100, 0.140]</small>"``.
    Cells without a CI (``missing``, the paper's numbers) stay as they are.
    """
    match = _RESULT_CELL.match(cell) if isinstance(cell, str) else None
    if not match or not (match["ci"] or match["tail"]):
        return cell
    bold = match["bold"] or ""
    second = f"{match['ci'] or ''}{match['tail'] or ''}".strip()
    return f"{bold}{match['head']}{bold}<br><small>{second}</small>"


def results_markdown(table: pd.DataFrame) -> str:
    """A results table (``aggregate.table2`` / ``table3``: index dataset and strategy) as Markdown for
    the book, narrow enough for the page: every ``mean ± sd [CI]`` cell stacked by :func:`stacked_cell`,
    and a ``<metric> (paper)`` column folded into its metric's cells (``paper 0.38`` on a last line).

    Example: a ``js`` cell ``"0.120 ± 0.010 [0.100, 0.140]"`` with ``js (paper)`` ``"0.38"`` ->
    ``"0.120 ± 0.010<br><small>[0.100, 0.140]</small><br><small>paper 0.38</small>"``.
    """
    out = table.map(stacked_cell)
    for column in [c for c in table.columns if f"{c} (paper)" in table.columns]:
        paper = table[f"{column} (paper)"].astype(str)
        out[column] = [_with_paper(cell, value) for cell, value in zip(out[column], paper)]
        out = out.drop(columns=f"{column} (paper)")
    return out.reset_index().to_markdown(index=False)


def _with_paper(cell: Any, paper: str) -> Any:
    """Append the paper's value to a (stacked) results cell, on a line of its own."""
    return f"{cell}<br><small>paper {paper}</small>" if paper else cell
