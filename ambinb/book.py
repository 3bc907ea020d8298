"""Assemble and build the Jupyter Book from the run folders (it never trains anything).

``book/generated/`` is rebuilt from scratch each time: one page per chapter in ``CHAPTERS``
(the executed notebook when its run exists, else a page that says which command makes it) and a
reproducibility appendix listing, per run folder, the parameters, versions, git commit and wall
time recorded there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from ambinb.paths import project_root, resolve_path

# chapter page name -> the executed notebook it shows, relative to the run root
CHAPTERS = {
    "01_labels": "{dataset}/labels/01_labels.ipynb",
    "02_curate_cot": "{dataset}/curation/02_curate_cot.ipynb",
    "03_sft": "{dataset}/sft/fold{fold}/03_sft.ipynb",
    "04_dpo": "{dataset}/dpo/fold{fold}/04_dpo.ipynb",
    "05_grpo": "{dataset}/grpo_z/fold{fold}/05_grpo.ipynb",
    "06_ablations": "all/ablations/06_ablations.ipynb",
}


def book_dir() -> Path:
    return project_root() / "book"


def _placeholder(name: str, expected: Path) -> str:
    return (f"# {name}\n\nThis chapter shows the executed notebook `{expected}`, which does not exist yet.\n"
            f"Run `make report` (or `papermill notebooks/{name}.ipynb ...`) to produce it.\n")


def reproducibility_page(run_root: Path) -> str:
    """A Markdown table with one row per run folder that holds ``params.json`` or ``metrics.json``."""
    rows = []
    for params_file in sorted(run_root.glob("**/params.json")):
        folder = params_file.parent
        params = json.loads(params_file.read_text())
        metrics_file = folder / "metrics.json"
        info = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        env = info.get("env") or params.get("env") or {}
        pkgs = env.get("packages", {})
        versions = ", ".join(f"{k} {v}" for k, v in pkgs.items() if k in ("torch", "transformers", "peft") and v)
        wall = info.get("wall_time_s")
        rows.append(f"| `{folder.relative_to(run_root)}` | {params.get('model', '')} | {params.get('seed', '')} | "
                    f"`{env.get('git_commit', 'unknown')}` | {versions} | "
                    f"{'' if wall is None else f'{wall:.0f} s'} |")
    head = ("# Reproducibility\n\nEvery number in this book comes from one of these run folders (under "
            f"`{run_root.name}/`). Each holds `params.json` (the resolved parameters), and the evaluated ones "
            "`metrics.json` with the package versions, git commit and device, and `predictions.jsonl`.\n\n"
            "| run folder | model | seed | git commit | versions | wall time |\n|---|---|---|---|---|---|\n")
    return head + ("\n".join(rows) if rows else "| (no runs yet) | | | | | |") + "\n"


def assemble(run_root: str = "runs", dataset: str = "toy", fold: int = 0) -> Path:
    """Write ``book/generated/`` from the run folders (chapters 03-05 show fold ``fold``); return it."""
    root = resolve_path(run_root)
    gen = book_dir() / "generated"
    shutil.rmtree(gen, ignore_errors=True)
    gen.mkdir(parents=True)
    for name, pattern in CHAPTERS.items():
        executed = root / pattern.format(dataset=dataset, fold=fold)
        if executed.exists():
            shutil.copyfile(executed, gen / f"{name}.ipynb")
        else:
            (gen / f"{name}.md").write_text(_placeholder(name, executed.relative_to(project_root())
                                                         if executed.is_relative_to(project_root()) else executed))
    (gen / "reproducibility.md").write_text(reproducibility_page(root))
    return gen


def build(strict: bool = False) -> Path:
    """Run ``jupyter-book build book`` with the environment's own executable; return the HTML index."""
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(book_dir())]
    if strict:
        cmd.append("-W")
    subprocess.run(cmd, check=True)
    return book_dir() / "_build" / "html" / "index.html"
