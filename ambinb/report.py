"""``make report``: the built-in default job, ending in the built book.

Stages (:func:`stages`): the tiny stand-in's build starts (in a thread, when the sweep uses it) ->
01_labels -> 02_curate_cot -> the build is waited for -> the sweep (every strategy and fold) ->
06_ablations -> book assembly -> book build.
Usage: ``python -m ambinb.report [--sweep params/sweeps/toy.yaml] [--run-root DIR] [--no-book]``.

Nothing finished is redone: an executed notebook in its run folder is kept, a run with a complete
``metrics.json`` is skipped, and 06_ablations reruns only when some run is newer than it. Delete a
run folder to redo it. ``bench/report_timing.py`` times the same stages one by one through
:func:`run` 's ``on_stage`` hook.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ambinb import book, config, notebook, standin, sweep
from ambinb.paths import display_path, resolve_path, run_dir


@dataclass
class Stage:
    """One step of the report: ``work()`` does it (and returns a small dict of what happened)."""

    name: str
    work: Callable[[], dict[str, Any]]


def notebook_work(name: str, output: Path, params: dict[str, Any],
                  newer_than: Callable[[], list[Path]] | None = None) -> Callable[[], dict[str, Any]]:
    """Execute notebook ``name`` into ``output`` unless it is there already and no input is newer."""
    def work() -> dict[str, Any]:
        inputs = newer_than() if newer_than else []
        stale = output.exists() and any(p.stat().st_mtime > output.stat().st_mtime for p in inputs)
        if output.exists() and not stale:
            print(f"[report] {name}: kept {display_path(output)}")
            return {"kept": True}
        print(f"[report] {name}: running -> {display_path(output)}")
        notebook.execute(name, output, params, progress=True)
        return {"kept": False}
    return work


class StandInBuild:
    """The tiny stand-in's build: :meth:`start` runs it in a thread beside 01 and 02 (one core each),
    :meth:`wait` joins it before the sweep and re-raises what the build raised."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.thread: threading.Thread | None = None
        self.path = ""
        self.error: BaseException | None = None

    def _build(self) -> None:
        try:
            self.path = str(standin.ensure_tiny(self.cfg))
        except BaseException as err:  # re-raised where the report waits for it
            self.error = err

    def start(self) -> dict[str, Any]:
        """Start the build unless params name a model of their own (then there is nothing to build)."""
        if self.cfg["model_name_or_path"]:
            return {"model": self.cfg["model_name_or_path"]}
        self.thread = threading.Thread(target=self._build, name="tiny-stand-in", daemon=True)
        self.thread.start()
        return {"started": True}

    def wait(self) -> dict[str, Any]:
        """Wait for the build; raise its error, else return the model folder (``""`` when none was built)."""
        if self.thread is not None:
            self.thread.join()
        if self.error is not None:
            raise self.error
        return {"model": self.path}


def sweep_work(spec: dict[str, Any], runs: list[sweep.Run], workers: int | None) -> Callable[[], dict[str, Any]]:
    """Run the sweep's unfinished runs (``workers`` at a time, default the sweep's), then print its status table."""
    def work() -> dict[str, Any]:
        sweep.run_sweep(runs, workers=workers or int(spec.get("workers") or 1),
                        threads_per_run=spec.get("threads_per_run"))
        print(sweep.status_table(runs))
        return {"runs": [{"run": r.label, "status": r.status,
                          "seconds": round(r.seconds, 1)} for r in runs]}
    return work


def finished_metrics(runs: list[sweep.Run]) -> list[Path]:
    """The ``metrics.json`` of every run that has one (what 06_ablations reads)."""
    return [r.folder / "metrics.json" for r in runs if (r.folder / "metrics.json").exists()]


def notebook_stages(spec: dict[str, Any], runs: list[sweep.Run]) -> dict[str, Stage]:
    """01_labels and 02_curate_cot (first dataset, every fold curated), and 06_ablations over every run."""
    root = runs[0].run_root
    dataset, fold = spec["datasets"][0], int(spec["folds"][0])
    common = {"dataset": dataset, "run_root": root}
    ablations = {"run_root": root, "datasets": list(spec["datasets"]), "folds": [int(f) for f in spec["folds"]]}
    return {
        "01_labels": Stage("01_labels", notebook_work(
            "01_labels", run_dir(dataset, "labels", None, root) / "01_labels.ipynb", common)),
        "02_curate_cot": Stage("02_curate_cot", notebook_work(  # every fold trains on its own share: curate all
            "02_curate_cot", run_dir(dataset, "curation", None, root) / "02_curate_cot.ipynb",
            {**common, "fold": fold, "subset": "all"})),
        "06_ablations": Stage("06_ablations", notebook_work(
            "06_ablations", run_dir("all", "ablations", None, root) / "06_ablations.ipynb", ablations,
            newer_than=lambda: finished_metrics(runs))),
    }


def book_stages(spec: dict[str, Any], root: str, with_book: bool,
                book_folder: str | Path | None) -> list[Stage]:
    """Assemble the book from the run folders (chapters 03-05 show the first dataset and fold), then build it."""
    dataset, fold = spec["datasets"][0], int(spec["folds"][0])
    out = [Stage("book_assemble", lambda: {"path": str(book.assemble(root, dataset, fold, book=book_folder))})]
    if with_book:
        out.append(Stage("book_build", lambda: {"path": str(book.build(book=book_folder))}))
    return out


def stages(spec: dict[str, Any], runs: list[sweep.Run], workers: int | None = None, with_book: bool = True,
           book_folder: str | Path | None = None) -> list[Stage]:
    """The report's stages for a sweep ``spec`` and its expanded ``runs`` (all under one run root)."""
    root = runs[0].run_root
    stand_in = StandInBuild(config.resolve(dataset=spec["datasets"][0], run_root=root))
    notebooks = notebook_stages(spec, runs)
    return [Stage("tiny_model_start", stand_in.start), notebooks["01_labels"], notebooks["02_curate_cot"],
            Stage("tiny_model_wait", stand_in.wait), Stage("sweep", sweep_work(spec, runs, workers)),
            notebooks["06_ablations"], *book_stages(spec, root, with_book, book_folder)]


def timed(stage: Stage) -> dict[str, Any]:
    """The default ``on_stage``: run the stage and print its wall time."""
    start = time.time()
    outcome = stage.work()
    print(f"[report] {stage.name}: {time.time() - start:.0f} s")
    return outcome


def run(sweep_file: str = "params/sweeps/toy.yaml", run_root: str | None = None, workers: int | None = None,
        with_book: bool = True, book_folder: str | Path | None = None,
        on_stage: Callable[[Stage], dict[str, Any]] = timed) -> list[sweep.Run]:
    """Run every stage in order through ``on_stage(stage)``; return the sweep's runs with their status."""
    start = time.time()
    spec = sweep.load_sweep(resolve_path(sweep_file))
    runs = sweep.expand(spec, run_root)
    for stage in stages(spec, runs, workers, with_book, book_folder):
        on_stage(stage)
    failed = [r for r in runs if r.status == "failed"]
    print(f"[report] finished in {time.time() - start:.0f} s; {len(failed)} failed run(s)")
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the default job and build the book.")
    parser.add_argument("--sweep", default="params/sweeps/toy.yaml")
    parser.add_argument("--run-root", default=None, help="default: the sweep's run_root, else params'")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--no-book", action="store_true", help="run the notebooks only")
    args = parser.parse_args(argv)
    run(args.sweep, args.run_root, args.workers, with_book=not args.no_book)


if __name__ == "__main__":
    main()
