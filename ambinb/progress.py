"""Progress of long loops, shown in the way that suits where the code runs.

:func:`bar` is a drop-in for ``tqdm.auto.tqdm`` that every long loop of the library uses:

- in a terminal: tqdm's live text bar (on stderr);
- in JupyterLab (a Jupyter kernel with ``ipywidgets`` installed): tqdm's widget; without
  ``ipywidgets``, the text bar (and no "IProgress not found" warning);
- in a notebook run by papermill (``$AMBINB_RUN_LOG`` names the run's log file; :func:`logging_to`
  sets it around an execution): the bar's refreshes go to that log file, one line every
  ``LOG_INTERVAL_S`` seconds, and the notebook gets one line when the loop ends, e.g.
  ``train: 40/40 step in 00:12``. Third-party bars are switched off there (``TQDM_DISABLE``, and
  ``HF_HUB_DISABLE_PROGRESS_BARS`` for transformers' and the Hub's).

Example::

    for batch in bar(batches, desc="encode", unit="batch", disable=not progress):
        ...
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm.std import tqdm as text_tqdm

RUN_LOG_ENV = "AMBINB_RUN_LOG"
# seconds between two refreshes written to the run's log file
LOG_INTERVAL_S = 10.0
# the one line a logged bar leaves in the notebook when it ends
SUMMARY_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} in {elapsed}{postfix}"
# environment that switches other libraries' bars off in a logged run (tqdm's own; transformers and the Hub)
THIRD_PARTY_OFF = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


class _Discard:
    """A text stream that drops what is written to it (tqdm's own terminal drawing, unused here)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class LoggedBar(text_tqdm):
    """A tqdm bar whose refreshes are lines of a log file and whose end is one line on stdout."""

    def __init__(self, iterable: Iterable | None = None, *, log_path: str | os.PathLike, **kwargs: Any) -> None:
        self.log_path = Path(log_path)
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.setdefault("disable", False)  # explicit: TQDM_DISABLE switches off third-party bars only
        super().__init__(iterable, file=_Discard(), **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """Append the bar's current state to the log file (tqdm clears with ``msg=""``: ignored)."""
        if msg != "":
            self._log(str(self) if msg is None else msg)
        return True

    def summary(self) -> str:
        """The bar's end state in one line: ``"train: 40/40 step in 00:12, loss=0.31"``."""
        fmt = dict(self.format_dict)
        fmt["bar_format"] = SUMMARY_FORMAT
        fmt["desc"] = (fmt.get("prefix") or "progress").rstrip(": ")
        return self.format_meter(**fmt)

    def close(self) -> None:
        """Close the bar; the first time, print :meth:`summary` (and log it)."""
        line = None if self.disable else self.summary()
        super().close()
        if line is not None:
            print(line, file=sys.stdout, flush=True)
            self._log(f"done: {line}")

    def _log(self, text: str) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")


def in_jupyter_kernel() -> bool:
    """Whether this code runs in a Jupyter kernel (JupyterLab, papermill, nbval), not a terminal."""
    shell = sys.modules.get("IPython")
    get = getattr(shell, "get_ipython", None)
    ip = get() if get else None
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def where() -> str:
    """``"log"`` (a papermill run with a run log), ``"widget"`` (a kernel with ipywidgets) or ``"terminal"``."""
    if os.environ.get(RUN_LOG_ENV):
        return "log"
    if in_jupyter_kernel() and importlib.util.find_spec("ipywidgets") is not None:
        return "widget"
    return "terminal"


def bar(iterable: Iterable | None = None, **kwargs: Any) -> text_tqdm:
    """A progress bar for ``iterable`` (or for manual ``update``), drawn as :func:`where` says.

    Takes tqdm's keyword arguments (``desc``, ``total``, ``unit``, ``initial``, ``disable``, ...).
    """
    mode = where()
    if mode == "log":
        return LoggedBar(iterable, log_path=os.environ[RUN_LOG_ENV], **kwargs)
    if mode == "widget":
        from tqdm.notebook import tqdm as widget_tqdm  # optional

        return widget_tqdm(iterable, **kwargs)
    return text_tqdm(iterable, **kwargs)


def log_path(executed: str | os.PathLike) -> Path:
    """The log file of an executed notebook: ``runs/toy/sft/fold0/03_sft.ipynb`` -> ``.../03_sft.log``."""
    return Path(executed).with_suffix(".log")


@contextmanager
def logging_to(path: str | os.PathLike) -> Iterator[Path]:
    """Within the block, kernels started from this process log progress to ``path`` (see :func:`bar`).

    Sets ``$AMBINB_RUN_LOG``, ``TQDM_DISABLE=1`` and ``HF_HUB_DISABLE_PROGRESS_BARS=1`` (read by a
    kernel when it starts) and restores them afterwards.
    """
    path = Path(path)
    saved = {name: os.environ.get(name) for name in (RUN_LOG_ENV, *THIRD_PARTY_OFF)}
    os.environ[RUN_LOG_ENV] = str(path)
    os.environ.update(THIRD_PARTY_OFF)
    try:
        yield path
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
