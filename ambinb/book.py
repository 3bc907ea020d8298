"""Assemble and build the Jupyter Book from the run folders (it never trains anything).

``<book>/generated/`` is rebuilt from scratch each time: one page per chapter in ``CHAPTERS``
(the executed notebook when its run exists, its outputs cleaned by :mod:`ambinb.outputs`: no
progress-bar refreshes, stderr once, no absolute paths; else a page that says which command makes
it), a reproducibility appendix listing, per run folder, the parameters, versions, git commit and
wall time recorded there (paths in it relative too), and the tables that hand-written pages include:
``standin_perception.md`` (``book/standin.md``, :func:`standin_perception`) and
``benchmark_tables.md`` (``book/benchmarks.md``).

The book folder is ``book/`` in the checkout, or ``$AMBINB_BOOK_DIR`` when set (a test builds a
copy made by :func:`copy_sources` there, so it never overwrites the user's built book)::

    assemble("runs", "toy", 0)   # writes book/generated/
    build()                      # jupyter-book build book -> book/_build/html/index.html
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from ambinb import aggregate, benchpage, config, outputs
from ambinb.paths import display_path, project_root, resolve_path

BOOK_DIR_ENV = "AMBINB_BOOK_DIR"
# the hand-written part of a book folder (files, and folders copied whole); generated/ and _build/
# are made from the run folders
SOURCE_PATTERNS = ("*.md", "_config.yml", "_toc.yml")
SOURCE_FOLDERS = ("_static",)

# chapter page name -> the executed notebook it shows, relative to the run root
CHAPTERS = {
    "01_labels": "{dataset}/labels/01_labels.ipynb",
    "02_curate_cot": "{dataset}/curation/02_curate_cot.ipynb",
    "03_sft": "{dataset}/sft/fold{fold}/03_sft.ipynb",
    "04_dpo": "{dataset}/dpo/fold{fold}/04_dpo.ipynb",
    "05_grpo": "{dataset}/grpo_z/fold{fold}/05_grpo.ipynb",
    "06_ablations": "all/ablations/06_ablations.ipynb",
}
# package versions shown per software environment in the appendix
ENV_PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate")
# keys shown in the appendix's tables or headings, left out of each run's list of non-default parameters
_COLUMN_KEYS = ("dataset", "strategy", "fold", "model", "seed", "run_root", "layers", "runner", "description")


def book_dir(book: str | os.PathLike | None = None) -> Path:
    """The book folder: ``book`` if given, else ``$AMBINB_BOOK_DIR``, else ``<project root>/book``.

    Relative paths are taken against the project root, like every path in params.
    """
    chosen = book or os.environ.get(BOOK_DIR_ENV)
    return resolve_path(chosen) if chosen else project_root() / "book"


def copy_sources(dest: str | os.PathLike, source: str | os.PathLike | None = None) -> Path:
    """Copy a book's hand-written pages and configuration (``*.md``, ``_config.yml``, ``_toc.yml``,
    ``_static/``) from ``source`` (default: the checkout's ``book/``) into ``dest``; return ``dest``.

    ``generated/`` and ``_build/`` are not copied: :func:`assemble` and :func:`build` make them.
    """
    src = Path(source) if source else project_root() / "book"
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for pattern in SOURCE_PATTERNS:
        for path in src.glob(pattern):
            shutil.copyfile(path, dest / path.name)
    for name in SOURCE_FOLDERS:
        if (src / name).is_dir():
            shutil.copytree(src / name, dest / name, dirs_exist_ok=True)
    if not (dest / "_toc.yml").exists():
        raise FileNotFoundError(f"{src}: no _toc.yml; not a book folder")
    return dest


def chapter_notebook(executed: Path, dest: Path, run_root: str | os.PathLike | None = None) -> Path:
    """Copy an executed notebook into the book, hiding its default ``parameters`` cell when papermill
    injected the values it ran with (the ``injected-parameters`` cell stays, so the page shows them).

    Its outputs are cleaned by :func:`ambinb.outputs.clean_notebook`: no progress-bar refreshes,
    stderr summarised once, paths relative to ``run_root``'s parent or the project root.
    """
    nb = outputs.clean_notebook(json.loads(executed.read_text()), run_root)
    tags = [cell.get("metadata", {}).get("tags", []) for cell in nb.get("cells", [])]
    if any("injected-parameters" in t for t in tags):
        for cell, cell_tags in zip(nb["cells"], tags):
            if "parameters" in cell_tags and "remove-cell" not in cell_tags:
                cell.setdefault("metadata", {})["tags"] = [*cell_tags, "remove-cell"]
    dest.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return dest


def chapter_title(name: str) -> str:
    """The title of ``notebooks/<name>.ipynb`` (its first Markdown heading), else ``name``.

    Example: ``chapter_title("03_sft")`` -> ``"03 · Supervised fine-tuning with the distribution loss"``.
    """
    path = project_root() / "notebooks" / f"{name}.ipynb"
    try:
        cells = json.loads(path.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return name
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell.get("source", "")).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return name


def _placeholder(name: str, expected: str) -> str:
    return (f"# {chapter_title(name)}\n\n:::{{note}}\nNot run yet: this chapter shows the executed notebook "
            f"`{expected}`, which does not exist yet.\nRun `make report` (or `papermill notebooks/{name}.ipynb ...` "
            "into that path) to produce it.\n:::\n")


def _wall_time(info: dict[str, Any]) -> float | None:
    """Seconds a run took: ``wall_time_s`` (training runs), else the evaluation's ``seconds.total``."""
    wall = info.get("wall_time_s")
    if wall is None:
        wall = (info.get("seconds") or {}).get("total") if isinstance(info.get("seconds"), dict) else None
    return None if wall is None else float(wall)


def _changed_params(params: dict[str, Any], declared: dict[str, Any]) -> dict[str, Any]:
    """The run's parameters that differ from ``params/defaults.yaml`` (and the keys not declared there)."""
    return {k: v for k, v in params.items()
            if k not in _COLUMN_KEYS and (k not in declared or declared[k] != v) and k != "env"}


def _params_block(folder: str, params: dict[str, Any], declared: dict[str, Any]) -> str:
    changed = _changed_params(params, declared)
    body = "\n".join(f"{k}: {json.dumps(v)}" for k, v in sorted(changed.items())) or "(all defaults)"
    layers = " < ".join(params.get("layers") or []) or "unknown"
    return f":::{{dropdown}} {folder}\nLayers: {layers}.\n\n```yaml\n{body}\n```\n:::\n"


def _short_commit(commit: str) -> str:
    """``"73001f978ada83e...+dirty"`` -> ``"73001f9+dirty"`` (git's short form; the Software table has
    the full one); ``"unknown"`` stays."""
    sha, plus, rest = str(commit).partition("+")
    return (sha[:7] if len(sha) == 40 else sha) + plus + rest


def _environment(env: dict[str, Any]) -> tuple[str, ...]:
    """The software a run used, as a hashable row: commit, Python, platform and the key packages."""
    pkgs = env.get("packages") or {}
    return (str(env.get("git_commit", "unknown")), str(env.get("python", "")), str(env.get("platform", "")),
            *(str(pkgs.get(k) or "") for k in ENV_PACKAGES))


def software_table(envs: dict[tuple[str, ...], list[str]]) -> str:
    """The appendix's Software section: one row per field (runs, git commit, Python, platform, the
    packages of ``ENV_PACKAGES``) and one column per environment, so it stays narrow for a few of them.

    ``envs`` maps an environment (as :func:`_environment` makes it) to the run folders that used it.
    """
    fields = ("git commit", "Python", "platform", *ENV_PACKAGES)
    head = " | ".join(f"environment {i + 1}" for i in range(len(envs)))
    rows = [f"| runs | {' | '.join(str(len(folders)) for folders in envs.values())} |"]
    for k, name in enumerate(fields):
        cells = [f"`{env[k]}`" if k == 0 else env[k] for env in envs]
        rows.append(f"| {name} | {' | '.join(cells)} |")
    return ("\n## Software\n\nThe environments the runs above used (from their `metrics.json`).\n\n"
            f"| | {head} |\n|---|{'---|' * len(envs)}\n" + "\n".join(rows) + "\n")


def reproducibility_page(run_root: Path) -> str:
    """The appendix: one table row per run folder that holds ``params.json`` (model, seed, git commit,
    device, wall time, status), one row per software environment the runs used (full commit, Python,
    platform, package versions), then each run's parameters that differ from the defaults."""
    try:
        declared = config.defaults()
    except (OSError, config.ConfigError):
        declared = {}
    rows, blocks, envs = [], [], {}
    for params_file in sorted(run_root.glob("**/params.json")):
        folder = params_file.parent
        rel = folder.relative_to(run_root).as_posix()
        try:
            params = json.loads(params_file.read_text())
        except ValueError:
            rows.append(f"| `{rel}` | | | | | | unreadable params.json |")
            continue
        metrics_file = folder / "metrics.json"
        try:
            info = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        except ValueError:
            info = {}  # still being written
        env = info.get("env") or params.get("env") or {}
        if env:
            envs.setdefault(_environment(env), []).append(rel)
        wall = _wall_time(info)
        status = "evaluated" if "metrics" in info else "no metrics.json"
        rows.append(f"| `{rel}` | {params.get('model', '')} | {params.get('seed', '')} | "
                    f"`{_short_commit(env.get('git_commit', 'unknown'))}` | {env.get('device') or ''} | "
                    f"{'' if wall is None else f'{wall:.0f} s'} | {status} |")
        blocks.append(_params_block(rel, params, declared))
    head = ("# Reproducibility\n\nEvery number in this book comes from one of these run folders (under "
            f"`{run_root.name}/`). Each holds `params.json` (the resolved parameters), and the evaluated ones "
            "`metrics.json` with the package versions, git commit and device, and `predictions.jsonl`. "
            "A commit ending in `+dirty` ran with uncommitted changes.\n\n## Runs\n\n"
            "| run folder | model | seed | git commit | device | wall time | status |\n"
            "|---|---|---|---|---|---|---|\n")
    page = head + ("\n".join(rows) if rows else "| (no runs yet) | | | | | | |") + "\n"
    if envs:
        page += software_table(envs)
    if blocks:
        page += ("\n## Parameters per run\n\nThe resolved parameters of each run that differ from "
                 "`params/defaults.yaml` (the full set is in the run folder's `params.json`).\n\n" + "\n".join(blocks))
    return page


def standin_perception(run_root: Path, dataset: str) -> str:
    """The table of ``book/standin.md``: what the untrained stand-in hears, :func:`ambinb.aggregate.perception`
    over every finished fold of ``<run_root>/<dataset>/base/``, or a note saying which runs make it."""
    folds = aggregate.finished_folds(str(run_root), dataset, "base")
    table = aggregate.perception(str(run_root), dataset, folds) if folds else None
    if table is None or table.empty or not table["n"].any():
        return (f":::{{note}}\nNo finished base run of `{dataset}` whose think blocks can be compared with the "
                f"curated ones yet. `make report` makes them (`{dataset}/base/fold<k>/` under the run root, "
                "and the curated store of the training runs).\n:::\n")
    shown = table.reset_index().round({"agree": 2, "chance": 2, "unstated": 2})
    return (f"Base runs of `{dataset}`, held-out folds {', '.join(map(str, folds))} pooled; `n` counts the "
            "utterances whose curated think block states the dimension.\n\n"
            + shown.to_markdown(index=False) + "\n")


def assemble(run_root: str = "runs", dataset: str = "toy", fold: int = 0,
             book: str | os.PathLike | None = None) -> Path:
    """Write ``<book>/generated/`` from the run folders (chapters 03-05 show fold ``fold``); return it."""
    root = resolve_path(run_root)
    gen = book_dir(book) / "generated"
    shutil.rmtree(gen, ignore_errors=True)
    gen.mkdir(parents=True)
    for name, pattern in CHAPTERS.items():
        executed = root / pattern.format(dataset=dataset, fold=fold)
        if executed.exists():
            chapter_notebook(executed, gen / f"{name}.ipynb", root)
        else:
            (gen / f"{name}.md").write_text(_placeholder(name, display_path(executed, root)))
    (gen / "reproducibility.md").write_text(outputs.relative_text(reproducibility_page(root), root))
    (gen / "benchmark_tables.md").write_text(benchpage.bench_tables())  # included by benchmarks.md
    (gen / "standin_perception.md").write_text(standin_perception(root, dataset))  # included by standin.md
    return gen


def build(strict: bool = False, book: str | os.PathLike | None = None, quiet: bool = False) -> Path:
    """Run ``jupyter-book build <book>`` with the environment's own executable; return the HTML index.

    Args:
        strict: turn Sphinx warnings into errors (``-W``).
        book: the book folder (default :func:`book_dir`).
        quiet: capture the build's output (shown in the error when the build fails).
    """
    folder = book_dir(book)
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(folder)]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    done = subprocess.run(cmd, capture_output=quiet, text=True)
    if done.returncode:
        tail = (done.stdout or "")[-3000:] + (done.stderr or "")[-3000:]
        raise RuntimeError(f"`{' '.join(cmd)}` failed with exit code {done.returncode}\n{tail}")
    return folder / "_build" / "html" / "index.html"
