"""Files written whole or not at all, and a full disk said plainly.

What the library keeps (run-folder files, checkpoints, the audio feature cache, trained adapters,
figures, the stand-in's build) is written through :func:`atomic`: the writer writes a temporary name
beside the target, which is synced and renamed over the target only once the writer has returned. A
crash, an error or a full disk never leaves half a file, the temporary is removed, and what was
there before stays as it was. (The curation store appends line by line instead and repairs a torn
last line itself: :mod:`ambinb.curation.store`.)

A full disk reaches a writer in several forms: Python's own writes raise ``OSError`` with
``ENOSPC`` (``EDQUOT`` over a quota); ``torch.save`` raises
``RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598``, with no
error number; safetensors (``save_pretrained``) raises ``SafetensorError`` whose text ends in the
OS's ``(os error 28)``. :func:`atomic` turns each of them into one error,
``OSError(ENOSPC, "no space left on device while writing <path> ...")``. It goes by the error
number where the writer reports one (an ``OSError``'s, or the one safetensors prints:
:func:`error_number`) and, where it reports none (torch), by the space left on the target's file
system at the moment the write failed (:func:`is_full`, before the partial file is removed), not by
the wording of a message, which changes between versions. (A quota that torch runs into is not told
apart this way: ``statvfs`` does not see quotas, and torch's error goes up as it was.)

Worked example::

    with atomic(run / "checkpoint.pt") as tmp:   # tmp: run/.checkpoint.pt.<pid>-<n>.tmp
        torch.save(state, tmp)
    # a full disk: OSError "[Errno 28] no space left on device while writing run/checkpoint.pt (...)",
    # no temporary left, the earlier checkpoint.pt untouched
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
FULL_BELOW = 1 << 20  # bytes left under which a write that failed without an error number ran out of space
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how Rust's std::io::Error prints an errno (safetensors)
_serial = itertools.count()


def temporary(path: Path) -> Path:
    """A fresh temporary name beside ``path``: hidden, unique per process and call, and ending in
    ``.tmp``, so that what a killed writer leaves behind never matches a reader's ``*.json`` or ``*.png``.

    Example: ``temporary(Path("run/checkpoint.pt"))`` -> ``run/.checkpoint.pt.4242-0.tmp`` in process 4242.
    """
    return path.with_name(f".{path.name}.{os.getpid()}-{next(_serial)}.tmp")


def is_full(folder: Path) -> bool:
    """Whether the file system holding ``folder`` has less than :data:`FULL_BELOW` bytes left for this user.

    Example: a 256 KiB tmpfs that a ``torch.save`` has just filled -> True; a disk with 80 GB free -> False.
    """
    try:
        stats = os.statvfs(folder)
    except (OSError, AttributeError):  # no such folder, or no statvfs (Windows): cannot tell
        return False
    return stats.f_bavail * stats.f_frsize < FULL_BELOW


def error_number(err: BaseException) -> int | None:
    """The OS error number a failed write reports, searching its causes: an ``OSError``'s own, or the
    ``(os error N)`` that Rust's I/O errors print (safetensors); None when it reports none.

    Example: ``OSError(28, "No space left")`` -> 28; ``RuntimeError("... unexpected pos 704 vs 598")`` -> None.
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno is not None:
            return err.errno
        found = _RUST_OS_ERROR.search(str(err))
        if found:
            return int(found.group(1))
        err = err.__cause__ or err.__context__
    return None


def ran_out_of_space(err: BaseException, folder: Path) -> bool:
    """Whether a write into ``folder`` that raised ``err`` failed for lack of space: its error number is
    ``ENOSPC`` or ``EDQUOT``, or it has none and the file system is full now (:func:`is_full`). An
    interrupt (``KeyboardInterrupt``) never counts. Call it before the partial file is removed.

    Example: torch's ``RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos ...")``
    on a full tmpfs -> True; the same error with 80 GB free -> False; ``PermissionError`` -> False.
    """
    number = error_number(err)
    if number is not None:
        return number in FULL_ERRNOS
    return isinstance(err, Exception) and is_full(folder)


def remove(path: Path) -> None:
    """Remove a file, a link or a folder tree at ``path``; nothing there is fine.

    Example: ``remove(Path("run/.adapter.4242-1.tmp"))`` removes that half-written folder and all in it.
    """
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sync(path: Path) -> None:
    """Flush a written file, or every file of a written folder, to the disk (``os.fsync``), so that the
    rename that follows never publishes data still in memory only.

    Example: ``sync(Path("run/.adapter.4242-1.tmp"))`` syncs its ``adapter_config.json`` and
    ``adapter_model.safetensors``.
    """
    for file in ([path] if not path.is_dir() else [p for p in path.rglob("*") if p.is_file()]):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def replace(tmp: Path, path: Path) -> None:
    """Put ``tmp`` in the place of ``path`` by a rename. A folder that is there and not empty is moved
    aside first, put back if the rename fails, and removed once ``tmp`` is in place.

    Example: ``replace(Path("run/.adapter.4242-1.tmp"), Path("run/adapter"))``: ``run/adapter`` now holds
    the new files only; the old folder went to ``run/.adapter.4242-2.tmp`` and then away.
    """
    if not (tmp.is_dir() and path.is_dir() and any(path.iterdir())):
        os.replace(tmp, path)
        return
    aside = temporary(path)
    os.replace(path, aside)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(aside, path)
        raise
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def atomic(path: str | os.PathLike, install: Callable[[Path, Path], None] = replace) -> Iterator[Path]:
    """A temporary path for the block to write ``path`` at (a file, or a folder the writer makes), put
    in its place when the block ends without an error.

    Args:
        path: the file or folder to write; its parent folder is created.
        install: puts the finished, synced temporary in the place of ``path`` (default :func:`replace`).

    Raises:
        OSError: ``ENOSPC``, "no space left on device while writing <path> ...", when the block or the
            install ran out of space in any of the forms of the module docstring (the writer's own
            error is its ``__cause__``). Any other error of the block propagates as it was. Either
            way the temporary is removed and what was at ``path`` before is left as it was.

    Example::

        with atomic("runs/toy/sft/fold0/adapter") as tmp:
            model.save_pretrained(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)
    try:
        yield tmp
        sync(tmp)
        install(tmp, path)
    except BaseException as err:
        full = ran_out_of_space(err, path.parent)  # before the partial file is removed, which frees its space
        remove(tmp)
        if full:
            raise OSError(errno.ENOSPC, f"no space left on device while writing {path} (nothing was replaced: "
                                        "the partial file is removed and what was there before is as it was); "
                                        "free some space and rerun") from err
        raise


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text, or bytes) to ``path`` through :func:`atomic`; returns ``path``.

    Example: ``write_atomic("runs/toy/params.json", "{}\\n")`` -> ``Path("runs/toy/params.json")``.
    """
    with atomic(path) as tmp, open(tmp, "wb" if isinstance(data, bytes) else "w") as fh:
        fh.write(data)
    return Path(path)
