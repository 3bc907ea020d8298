"""End to end: wall time and peak memory of ``make report``, stage by stage, in a scratch run root and book.

    .venv/bin/python bench/report_timing.py                           # the toy sweep, from nothing
    .venv/bin/python bench/report_timing.py --reuse                   # again on the same scratch folder: what is kept
    .venv/bin/python bench/report_timing.py --sweep my_tiny.yaml --no-book

The stages are those of :mod:`ambinb.report` (01_labels -> 02_curate_cot -> the sweep -> 06_ablations
-> book assembly -> book build): :func:`ambinb.report.run` runs them, and its ``on_stage`` hook times
each one, so this benchmark measures exactly what ``make report`` does. Everything goes to a scratch
folder (``--root``, default ``/tmp/ambinb_report_timing``):
``<root>/runs`` as the run root (also exported as ``AMBINB_RUN_ROOT`` for the notebooks' kernels) and
``<root>/book``, a copy of the book's sources (``AMBINB_BOOK_DIR``), so the user's ``runs/`` and
``book/`` stay untouched. Without ``--reuse`` the scratch folder is emptied first (a cold run); with
it, what an earlier run finished is kept, as ``make report`` keeps it.

Memory per stage: the peak over the stage of the summed resident set size (RSS) of this process and
all its descendants (papermill kernels, sweep workers, jupyter-book), sampled every ``--interval``
seconds with psutil (:class:`StagePeak`); beside it, ``getrusage``'s high-water marks of this process
(``ru_maxrss``) and of its waited-for children (``RUSAGE_CHILDREN``: the largest single child so
far), read after each stage. Results go to ``bench/results/report_timing_cpu.json``.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ambinb import config  # noqa: E402
from bench import common  # noqa: E402

DEFAULT_ROOT = Path("/tmp/ambinb_report_timing")


def tree_rss(proc: psutil.Process) -> int:
    """Bytes resident in ``proc`` and all its live descendants (processes that vanish mid-read count 0)."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


class StagePeak:
    """Samples :func:`tree_rss` of this process every ``interval`` seconds in a thread; ``peak`` is the maximum.

    Usage: ``with StagePeak(0.2) as m: work()`` then ``m.peak`` (bytes) and ``m.samples``.
    """

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._proc = psutil.Process()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        self.peak = max(self.peak, tree_rss(self._proc))
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> StagePeak:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def maxrss_mib() -> dict[str, float]:
    """getrusage high-water marks in MiB (Linux reports KiB): this process, and its largest waited-for child."""
    return {"self_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "children_maxrss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def time_stage(name: str, work: Callable[[], Any], interval: float = 0.5) -> dict[str, Any]:
    """Run ``work()`` and return its wall seconds, peak tree RSS (MiB) and getrusage marks; prints one line."""
    start = time.perf_counter()
    with StagePeak(interval) as peak:
        outcome = work()
    row = {"stage": name, "seconds": time.perf_counter() - start, "peak_tree_rss_mib": peak.peak / 2**20,
           "rss_samples": peak.samples, **maxrss_mib()}
    if isinstance(outcome, dict):
        row.update(outcome)
    print(f"[timing] {name:<14} {row['seconds']:8.1f} s  peak RSS {row['peak_tree_rss_mib']:8.0f} MiB", flush=True)
    return row


def prepare_root(root: Path, reuse: bool) -> tuple[Path, Path]:
    """``<root>/runs`` and ``<root>/book`` (the book's sources copied in); emptied first unless ``reuse``."""
    from ambinb import book

    if root.exists() and not reuse:
        shutil.rmtree(root)
    runs, book_dir = root / "runs", root / "book"
    runs.mkdir(parents=True, exist_ok=True)
    book.copy_sources(book_dir)
    return runs, book_dir


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.parser(__doc__)
    parser.add_argument("--sweep", default="params/sweeps/toy.yaml")
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="scratch folder for the run root and the book")
    parser.add_argument("--reuse", action="store_true", help="keep what an earlier run left in --root")
    parser.add_argument("--workers", type=int, default=None, help="default: the sweep file's")
    parser.add_argument("--no-book", action="store_true", help="stop after assembling the book (no jupyter-book)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between RSS samples")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    runs_root, book_dir = prepare_root(root, args.reuse)
    os.environ[config.RUN_ROOT_ENV] = str(runs_root)
    os.environ["AMBINB_BOOK_DIR"] = str(book_dir)
    from ambinb import report

    result = common.header("report_timing", "cpu", sweep=args.sweep, reuse=args.reuse, root=str(root))
    started = time.perf_counter()
    stages: list[dict[str, Any]] = []
    runs = report.run(args.sweep, str(runs_root), args.workers, with_book=not args.no_book, book_folder=book_dir,
                      on_stage=lambda stage: stages.append(time_stage(stage.name, stage.work, args.interval)))
    failed = [f"{r.dataset}/{r.strategy}/fold{r.fold}" for r in runs if r.status == "failed"]
    total = time.perf_counter() - started
    print(f"[timing] {'total':<14} {total:8.1f} s  peak RSS {max(s['peak_tree_rss_mib'] for s in stages):8.0f} MiB")
    result.update(total_seconds=total, failed_runs=failed, stages=stages,
                  peak_tree_rss_mib=max(s["peak_tree_rss_mib"] for s in stages))
    common.write("report_timing", "cpu", result, args.out)
    return result



if __name__ == "__main__":
    main()
