"""One writer per folder: an exclusive lock that the operating system lets go of when its holder ends.

A run folder (``runs/<dataset>/<strategy>/fold<k>/``) and the curation folder that holds the CoT
store (``runs/<dataset>/curation/``) have one writer at a time. The writer holds an ``flock`` on
``<folder>/.lock`` for the whole run and writes its pid into that file. The kernel drops the lock
when the process ends, however it ends (SIGKILL included), so no stale lock is ever left behind.
The file itself stays, and names the last holder.

Who holds what:

* **The runners** that a strategy names (``run.run``, ``evaluate.run_base``,
  ``evaluate.run_cross_domain``, ``classical.run_classical``) hold their run folder
  (:func:`hold_run`). A plain ``papermill notebooks/04_dpo.ipynb out.ipynb -p fold 2`` is covered by
  this: its kernel calls the runner.
* **``notebook.execute``** holds the folder it writes into (the output notebook's folder, which for a
  sweep is the run folder) while papermill runs. **The sweep** holds each run folder around its
  runner (``sweep.execute_run``).
* **Nesting.** Within one process, holding is re-entrant: when the sweep worker holds
  ``toy/sft/fold0`` and its ``run.run`` asks for it again, nothing more happens.
* **A holder's children.** While it holds a lock, the holder names it in ``$AMBINB_LOCKS``
  (``{lock file: holder pid}``), and the processes it starts inherit that variable. The kernel that
  papermill starts is one of them. A process that finds a folder locked goes on without the lock
  when that variable names this lock file together with the pid the lock file records. The holder
  wrote that pid after taking the lock, so its child runs under the parent's lock and does not lock
  itself out. This design was chosen over "the sweep only probes, the kernel takes the lock":
  papermill writes the executed notebook and its log into the run folder from its first cell, and
  with a probe two sweeps could both pass it and write there side by side until one kernel lost.
  If the holder is killed, its lock goes with it, and its kernel exits within about a second
  (ipykernel polls its parent).
* **A second writer.** :func:`hold` raises :class:`RunningElsewhere`
  (``runs/toy/sft/fold0 is running in process 4242; skipped``). The sweep catches it, prints that line
  and lists the run as ``running elsewhere``; a notebook raises it. With ``wait_s`` the second writer
  waits for the lock instead. Curation does this: the second run then reads what the first wrote
  and curates only what is still missing.
* **One run over several processes** (accelerate or torchrun, ``$RANK`` set): process 0 holds the
  run folder for all of them (:func:`hold_run`). The others write nothing there.

Locks are per process, not per thread. On a shared filesystem they hold where it supports
``flock`` (NFSv4, Lustre mounted with ``flock``). Without ``fcntl`` (Windows) nothing is locked.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock
    fcntl = None  # type: ignore[assignment]

from ambinb.paths import display_path, resolve_path

LOCK_FILE = ".lock"
INHERIT_ENV = "AMBINB_LOCKS"  # {lock file: pid} of the locks held by this process or an ancestor
POLL_S = 0.2  # how often a waiting writer tries again

_held: dict[str, IO[str] | None] = {}  # lock file -> its open file (None: a parent process holds it for us)


class RunningElsewhere(RuntimeError):
    """A folder that another process holds: ``<folder> is running in process <pid>; skipped``."""

    def __init__(self, folder: str | os.PathLike, pid: int | None, waited_s: float = 0.0):
        self.folder, self.pid, self.waited_s = Path(folder), pid, waited_s
        who = f"process {pid}" if pid else "another process"
        then = f"gave up after waiting {waited_s:.0f} s" if waited_s else "skipped"
        super().__init__(f"{display_path(self.folder)} is running in {who}; {then}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across a process pool
        return type(self), (self.folder, self.pid, self.waited_s)


def read_pid(lock: Path) -> int | None:
    """The pid written in a lock file: the holder's while it is held, else the last holder's.

    Example: a file that holds ``"4242\\n"`` -> 4242; a missing or empty one -> None.
    """
    try:
        text = lock.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def last_holder(folder: str | os.PathLike) -> int | None:
    """The pid of the process that holds ``folder``, or that held it last (None: never held)."""
    return read_pid(resolve_path(folder) / LOCK_FILE)


def _take(lock: Path) -> IO[str] | None:
    """The lock file opened and locked with this pid written in it, or None when another process holds it."""
    fh = open(lock, "a+", encoding="utf-8")  # never truncated before the lock is ours
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def _granted() -> dict[str, int]:
    """``$AMBINB_LOCKS``: the locks that this process or one of its ancestors holds."""
    return json.loads(os.environ.get(INHERIT_ENV) or "{}")


def _inherited(lock: Path) -> bool:
    """Whether a parent holds ``lock`` for this process: ``$AMBINB_LOCKS`` names it with the pid the file records.

    Example: ``$AMBINB_LOCKS = {"/r/toy/sft/fold0/.lock": 4242}`` and the file says 4242 -> True;
    the file says 5151 (someone else took it since) -> False.
    """
    pid = _granted().get(str(lock))
    return pid is not None and pid != os.getpid() and pid == read_pid(lock)


def _acquire(folder: Path, lock: Path, wait_s: float) -> IO[str] | None:
    """Take ``lock`` (its open file), or None when a parent holds it for us; waits up to ``wait_s``.

    Raises:
        RunningElsewhere: another process holds it (after ``wait_s`` seconds of trying).
    """
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        fh = _take(lock)
        if fh is not None or _inherited(lock):
            return fh
        pid = read_pid(lock)
        if time.monotonic() >= deadline:
            raise RunningElsewhere(folder, pid, wait_s)
        if not said:
            print(f"{display_path(folder)} is running in process {pid}; waiting for it (at most {wait_s:.0f} s)",
                  flush=True)
            said = True
        time.sleep(POLL_S)


@contextmanager
def hold(folder: str | os.PathLike, wait_s: float = 0.0) -> Iterator[Path]:
    """Hold ``folder`` (created if missing) exclusively for the ``with`` block; yield its path.

    Re-entrant within a process, and inherited by the processes it starts while held (see the module
    docstring). Example: ``with hold("runs/toy/sft/fold0"): ...`` -> a second process that tries the same
    raises ``RunningElsewhere("runs/toy/sft/fold0 is running in process <first pid>; skipped")``.

    Args:
        folder: the folder (relative paths against the project root).
        wait_s: how long to wait for another holder to finish before giving up (0: raise at once).

    Raises:
        RunningElsewhere: another process holds it, naming the folder and that process's pid.
    """
    folder = resolve_path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder.resolve() / LOCK_FILE
    key = str(lock)
    if key in _held or fcntl is None:
        yield folder
        return
    fh = _acquire(folder, lock, wait_s)
    before = os.environ.get(INHERIT_ENV)
    _held[key] = fh
    if fh is not None:  # children inherit what this process holds itself
        os.environ[INHERIT_ENV] = json.dumps({**_granted(), key: os.getpid()})
    try:
        yield folder
    finally:
        if before is None:
            os.environ.pop(INHERIT_ENV, None)
        else:
            os.environ[INHERIT_ENV] = before
        del _held[key]
        if fh is not None:
            fh.close()  # closing the file drops the lock


def hold_run(folder: str | os.PathLike) -> AbstractContextManager[Path]:
    """:func:`hold` for a run folder, taken by process 0 alone of a run that spans several processes.

    Under accelerate or torchrun (``$RANK`` set), process 0 writes the run folder and holds it; the
    others hold nothing (they write nothing there). Example: ``RANK=1`` -> a no-op context.
    """
    if os.environ.get("RANK", "0") != "0":
        return nullcontext(resolve_path(folder))
    return hold(folder)
