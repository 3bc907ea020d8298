"""``make report``: run the built-in default job and build the book.

Usage: ``python -m ambinb.report [--dataset toy] [--run-root runs] [--no-book]``.
Steps already finished are not redone: an executed notebook that exists in its run folder
is kept (delete the run folder to redo it).
"""

from __future__ import annotations

import argparse
import time

from ambinb import book, notebook
from ambinb.paths import resolve_path, run_dir


def run_labels(dataset: str, run_root: str) -> None:
    out = run_dir(dataset, "labels", None, run_root) / "01_labels.ipynb"
    if out.exists():
        print(f"[report] 01_labels: {out} exists, kept")
        return
    start = time.time()
    notebook.execute("01_labels", out, {"dataset": dataset, "run_root": str(resolve_path(run_root))})
    print(f"[report] 01_labels: done in {time.time() - start:.0f} s -> {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="toy")
    parser.add_argument("--run-root", default="runs")
    parser.add_argument("--no-book", action="store_true", help="run the notebooks only")
    args = parser.parse_args(argv)
    run_labels(args.dataset, args.run_root)
    book.assemble(args.run_root, args.dataset)
    if not args.no_book:
        index = book.build()
        print(f"[report] book: {index}")


if __name__ == "__main__":
    main()
