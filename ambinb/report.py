"""``make report``: the built-in default job, ending in the built book.

Stages: 01_labels -> 02_curate_cot -> the sweep (every strategy and fold) -> 06_ablations -> book.
Usage: ``python -m ambinb.report [--sweep params/sweeps/toy.yaml] [--no-book]``.

Nothing finished is redone: an executed notebook in its run folder is kept, a run with a complete
``metrics.json`` is skipped, and 06_ablations reruns only when some run is newer than it. Delete a
run folder to redo it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ambinb import book, notebook, sweep
from ambinb.paths import resolve_path, run_dir


def _stage(name: str, output: Path, params: dict[str, Any], newer_than: list[Path] | None = None) -> None:
    stale = output.exists() and any(p.stat().st_mtime > output.stat().st_mtime for p in newer_than or [])
    if output.exists() and not stale:
        print(f"[report] {name}: kept {output}")
        return
    start = time.time()
    print(f"[report] {name}: running -> {output}")
    notebook.execute(name, output, params, progress=True)
    print(f"[report] {name}: done in {time.time() - start:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the default job and build the book.")
    parser.add_argument("--sweep", default="params/sweeps/toy.yaml")
    parser.add_argument("--run-root", default=None, help="default: the sweep's run_root, else params'")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--no-book", action="store_true", help="run the notebooks only")
    args = parser.parse_args(argv)
    start = time.time()

    spec = sweep.load_sweep(resolve_path(args.sweep))
    runs = sweep.expand(spec, args.run_root)
    root = runs[0].run_root
    dataset, fold = spec["datasets"][0], int(spec["folds"][0])
    common = {"dataset": dataset, "run_root": root}

    _stage("01_labels", run_dir(dataset, "labels", None, root) / "01_labels.ipynb", common)
    _stage("02_curate_cot", run_dir(dataset, "curation", None, root) / "02_curate_cot.ipynb",
           {**common, "fold": fold, "subset": "all"})  # every fold trains on its own share
    sweep_start = time.time()
    sweep.run_sweep(runs, workers=args.workers or int(spec.get("workers", 1)),
                    threads_per_run=spec.get("threads_per_run"))
    print(sweep.status_table(runs))
    print(f"[report] sweep: {len(runs)} runs in {time.time() - sweep_start:.0f} s")
    metrics_files = [r.folder / "metrics.json" for r in runs if (r.folder / "metrics.json").exists()]
    _stage("06_ablations", run_dir("all", "ablations", None, root) / "06_ablations.ipynb",
           {"run_root": root, "datasets": list(spec["datasets"]), "folds": [int(f) for f in spec["folds"]]},
           newer_than=metrics_files)
    book.assemble(root, dataset, fold)
    if not args.no_book:
        book_start = time.time()
        print(f"[report] book: {book.build()} in {time.time() - book_start:.0f} s")
    failed = [r for r in runs if r.status == "failed"]
    print(f"[report] finished in {time.time() - start:.0f} s; {len(failed)} failed run(s)")


if __name__ == "__main__":
    main()
