"""Sweeps: datasets x strategies x folds, each run into its own run folder.

Usage::

    python -m ambinb.sweep params/sweeps/toy.yaml [--dry-run] [--workers 2] [--executor local|slurm]
    ambinb-sweep params/sweeps/toy.yaml

A sweep file names ``datasets``, ``strategies`` and ``folds`` (and optionally ``workers``,
``run_root``, ``overrides`` applied to every run, ``strategy_overrides`` applied to one strategy's
runs (``{dpo: {max_steps: 8}}``), ``notebook_folds`` (the folds whose notebook runs stay notebooks: a
run of another fold whose runner is a notebook calls :data:`DIRECT_RUNNER`, the code the notebooks
are chapters over, which saves a kernel start where the book shows no notebook), ``variants`` that
repeat every run with other settings, each in its own run root ``<run_root>/<variant>``
(``{lr_x4: {lr_scale: 40}}``: choose settings with ``eval_split: validation``, never on the test
fold), ``executor`` and ``slurm`` options). Each
strategy's ``runner`` parameter says what runs it: a notebook name (executed through papermill
into ``<run>/<notebook>.ipynb``) or ``module:function`` called with the resolved config.

A run whose folder already holds a complete ``metrics.json`` is skipped, so a killed sweep
rerun finishes the rest and loses nothing; a failing run is reported and the others go on. A
finished run whose recorded parameters differ from what the sweep asks now is still skipped (it is
never overwritten), but marked ``stale`` with the keys that differ: delete its folder, or give the
sweep its own ``run_root``, to run it again.

Each run is made while its worker holds the run folder's lock (:mod:`ambinb.runlock`). A notebook's
kernel runs under its worker's lock. Two sweeps on one run root (or a sweep and a hand-run notebook)
therefore share the runs instead of training one twice. A run another process holds is skipped
(``running elsewhere``), and a run it finished meanwhile is not run again (``done elsewhere``).
Neither counts as a failure.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from ambinb import config, notebook, parameters, results, runlock
from ambinb.paths import init_run_folder, is_path_name, resolve_path, run_folder
from ambinb.progress import bar as progress_bar

SWEEP_KEYS = {"description", "datasets", "strategies", "folds", "seeds", "strategy_seeds", "seed_overrides",
              "notebook_folds", "workers",
              "run_root", "overrides", "strategy_overrides", "variants", "executor", "slurm", "threads_per_run"}
DIRECT_RUNNER = "ambinb.run:run"  # what a notebook runner's run outside ``notebook_folds`` calls instead
# recorded parameters that say where or how a run was launched, not what it computed
LAUNCH_KEYS = {"run_root", "layers", "description", "runner", "device"}  # device: each process records its own
EXECUTORS = ("local", "slurm", "submitit-local")


@dataclass
class Run:
    """One (dataset, strategy, fold, seed) of a sweep; the seed, when the sweep sets one, is in ``overrides``."""

    dataset: str
    strategy: str
    fold: int
    run_root: str
    overrides: dict[str, Any] = field(default_factory=dict)
    variant: str = ""
    status: str = "pending"
    seconds: float = 0.0
    error: str = ""

    @property
    def folder(self) -> Path:
        return run_folder(self.config())

    @property
    def label(self) -> str:
        """``dataset/strategy/fold<k>`` (``fold1-seed2`` for seed 2; ``/<variant>`` when there is one), as the
        terminal shows a run."""
        seed = f"-seed{self.seed}" if self.seed else ""
        return f"{self.dataset}/{self.strategy}/fold{self.fold}{seed}" + (f"/{self.variant}" if self.variant else "")

    @property
    def seed(self) -> int:
        return int(self.overrides.get("seed", 0))

    def needs(self) -> Path | None:
        """The run folder this run starts from (``init_from``: that strategy's seed-0 run of the same fold), or None."""
        return init_run_folder(self.config())

    def config(self) -> dict[str, Any]:
        return config.resolve(dataset=self.dataset, strategy=self.strategy, fold=self.fold,
                              run_root=self.run_root, overrides=self.overrides)


def load_sweep(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a sweep file; errors name the file and the key.

    Checked before anything resolves: known keys only, the type of each (``folds`` a list of
    non-negative integers, ``workers`` a positive integer, ...), and every override (``overrides``,
    ``strategy_overrides``, ``variants``) as a params layer is checked (:func:`ambinb.config.check_layer`).
    """
    path = Path(path)
    spec = config.load_yaml(path)
    unknown = set(spec) - SWEEP_KEYS
    if unknown:
        raise config.ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(SWEEP_KEYS)}")
    for key in ("datasets", "strategies", "folds"):
        if not isinstance(spec.get(key), list) or not spec[key]:
            raise config.ConfigError(f"{path}: '{key}' must be a non-empty list")
    for key in ("datasets", "strategies"):
        bad = [v for v in spec[key] if not isinstance(v, str) or not is_path_name(v)]
        if bad:
            raise config.ConfigError(f"{path}: '{key}' must list lower-case snake_case names, got {bad}")
    _check_counts(spec, path)
    for key in ("run_root", "description"):
        if key in spec and not isinstance(spec[key], str):
            raise config.ConfigError(f"{path}: '{key}' must be a string, got {spec[key]!r}")
    if spec.get("executor", "local") not in EXECUTORS:
        raise config.ConfigError(f"{path}: 'executor' must be one of {list(EXECUTORS)}, got {spec['executor']!r}")
    _check_overrides(spec, path)
    return spec


def _check_counts(spec: dict[str, Any], path: Path) -> None:
    """``folds``, ``seeds``, ``notebook_folds``: integers >= 0; ``workers``, ``threads_per_run``: integers >= 1
    (or absent)."""
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    lists = {"folds": spec["folds"], "seeds": spec.get("seeds", [0]), "notebook_folds": spec.get("notebook_folds", [0]),
             **{f"strategy_seeds.{k}": v for k, v in (spec.get("strategy_seeds") or {}).items()}}
    for key, values in lists.items():
        bad = values if not isinstance(values, list) or not values else [v for v in values if not is_int(v) or v < 0]
        if bad:
            raise config.ConfigError(f"{path}: '{key}' must list non-negative integers, got {bad}")
    extra = sorted(set(spec.get("strategy_seeds") or {}) - set(spec["strategies"]))
    if extra:
        raise config.ConfigError(f"{path}: strategy_seeds names {extra}, which the sweep does not run")
    for key in ("workers", "threads_per_run"):
        if spec.get(key) is not None and (not is_int(spec[key]) or spec[key] < 1):
            raise config.ConfigError(f"{path}: '{key}' must be an integer >= 1, got {spec[key]!r}")


def _check_overrides(spec: dict[str, Any], path: Path) -> None:
    """The three kinds of overrides: their shape, their names, and each pair as a params layer."""
    def mapping_of_mappings(key: str, what: str) -> dict[str, Any]:
        value = spec.get(key) or {}
        if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
            raise config.ConfigError(f"{path}: '{key}' must map {what} to its key: value pairs")
        return value

    overrides = spec.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise config.ConfigError(f"{path}: 'overrides' must be a mapping of key: value pairs")
    if "slurm" in spec and not isinstance(spec["slurm"], dict):
        raise config.ConfigError(f"{path}: 'slurm' must be a mapping of submitit parameters")
    per_strategy = mapping_of_mappings("strategy_overrides", "a strategy")
    extra = sorted(set(per_strategy) - set(spec["strategies"]))
    if extra:
        raise config.ConfigError(f"{path}: strategy_overrides names {extra}, which the sweep does not run")
    variants = mapping_of_mappings("variants", "a variant name")
    for name in variants:
        if not is_path_name(name):
            raise config.ConfigError(f"{path}: variant {name!r}: names become folders, use lower-case snake_case")
    config.check_layer(overrides, f"{path}: overrides")
    per_seed = mapping_of_mappings("seed_overrides", "a seed")
    bad = [k for k in per_seed if not isinstance(k, int) or isinstance(k, bool) or k < 0]
    if bad:
        raise config.ConfigError(f"{path}: seed_overrides must be keyed by non-negative integer seeds, got {bad}")
    for kind, table in (("strategy_overrides", per_strategy), ("variants", variants), ("seed_overrides", per_seed)):
        for name, layer in table.items():
            config.check_layer(layer, f"{path}: {kind}.{name}")


def run_overrides(spec: dict[str, Any], strategy: str) -> dict[str, Any]:
    """The overrides of one strategy's runs: the sweep's ``overrides``, then its ``strategy_overrides``."""
    return {**(spec.get("overrides") or {}), **((spec.get("strategy_overrides") or {}).get(strategy) or {})}


def seed_overrides(spec: dict[str, Any], strategy: str) -> list[dict[str, int]]:
    """One override per seed a strategy runs with: ``strategy_seeds[strategy]``, else ``seeds``, else none
    (the params' seed), each with that seed's ``seed_overrides`` (e.g. another ``runner`` for the seeds whose
    notebook the book does not show). Example: ``seeds: [0, 1]`` -> ``[{"seed": 0}, {"seed": 1}]``; neither
    key -> ``[{}]``."""
    seeds = (spec.get("strategy_seeds") or {}).get(strategy, spec.get("seeds"))
    per_seed = spec.get("seed_overrides") or {}
    return [{**per_seed.get(int(s), {}), "seed": int(s)} for s in seeds] if seeds else [{}]


def stale_keys(run: Run) -> list[str]:
    """Keys whose value in a finished run's ``params.json`` differs from what the sweep resolves now."""
    path = run.folder / results.PARAMS_FILE
    if not path.exists():
        return []
    recorded = json.loads(path.read_text())
    now = run.config()
    return sorted(k for k in now if k not in LAUNCH_KEYS and k in recorded and recorded[k] != now[k])


def expand(spec: dict[str, Any], run_root: str | None = None) -> list[Run]:
    """Every run of a sweep, checked before anything runs: each config resolves (its fold exists for its
    dataset, its values fit their rules) and each runner exists.

    Raises:
        ConfigError: naming the run (``toy/sft/fold7``) and the key.
    """
    root = run_root or spec.get("run_root") or config.resolve()["run_root"]
    variants = spec.get("variants") or {"": {}}
    runs = [Run(d, s, int(f), str(Path(root) / v) if v else str(root), {**run_overrides(spec, s), **extra, **seed}, v)
            for v, extra in variants.items()
            for d in spec["datasets"] for s in spec["strategies"] for f in spec["folds"]
            for seed in seed_overrides(spec, s)]
    shown = spec.get("notebook_folds")
    for run in runs:
        try:
            runner = run.config()["runner"]
        except config.ConfigError as err:
            raise config.ConfigError(f"{run.label}: {err}") from None
        if shown is not None and runner and ":" not in runner and run.fold not in shown:
            run.overrides = {**run.overrides, "runner": DIRECT_RUNNER}
            runner = DIRECT_RUNNER
        if not runner:
            raise config.ConfigError(f"strategy {run.strategy!r} declares no runner")
        if ":" not in runner:
            parameters.check_given(notebook.notebook_path(runner), _notebook_params(run))
    return runs


def _notebook_params(run: Run) -> dict[str, Any]:
    params = {"dataset": run.dataset, "strategy": run.strategy, "fold": run.fold, "run_root": run.run_root}
    if run.overrides:
        params["overrides"] = run.overrides
    return params


def limit_threads(threads: int) -> None:
    """Hold this process and the kernels it starts to ``threads`` CPU threads.

    ``OMP_NUM_THREADS`` reaches a notebook's kernel (a new process) but not a torch this process has
    already imported, and a worker process may have imported torch before its first run (a spawned
    worker re-imports the caller's main module): torch is told directly as well. Two workers of two
    threads each on two cores ran ten to twenty times slower than two of one.
    """
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch  # heavy

    torch.set_num_threads(threads)


def execute_run(run: Run, threads: int | None = None) -> Run:
    """Run one (dataset, strategy, fold) holding its run folder; never raises: the error lands in ``run.error``.

    A run folder that another process holds (another sweep, a notebook) is left to it: ``running
    elsewhere``, with the line ``toy/sft/fold0 is running in process 4242; skipped``. One that another
    process finished while this sweep got to it is ``done elsewhere``, and is not run again.
    """
    start = time.time()
    if threads:
        limit_threads(threads)
    before = runlock.last_holder(run.folder)  # who finished it, should it be finished once held
    try:
        with runlock.hold(run.folder):  # its runner and its notebook's kernel run under this lock
            _execute_held(run, before)
    except runlock.RunningElsewhere as err:
        run.status, run.error = "running elsewhere", f"in process {err.pid}"
        print(f"{run.label} is running in process {err.pid}; skipped", flush=True)
    run.seconds = time.time() - start
    return run


def _execute_held(run: Run, finisher: int | None) -> None:
    """The body of :func:`execute_run`, once the run folder is held (``finisher``: its holder before)."""
    if results.is_finished(run.folder):
        run.status, run.error = "done elsewhere", f"by process {finisher}"
        print(f"{run.label} was finished by process {finisher} meanwhile; skipped", flush=True)
        return
    try:
        runner = run.config()["runner"]
        if ":" in runner:
            module, func = runner.split(":")
            getattr(importlib.import_module(module), func)(run.config())
        else:
            notebook.execute(runner, run.folder / f"{runner}.ipynb", _notebook_params(run))
        run.status = "done" if results.is_finished(run.folder) else "failed"
        if run.status == "failed":
            run.error = "finished without writing metrics.json"
    except Exception as err:  # a failing run is reported; the sweep goes on
        run.status, run.error = "failed", first_line(err)
        log = run.folder / "error.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(traceback.format_exc())


def first_line(err: BaseException) -> str:
    """The error as the status table shows it: its type and the first non-empty line of its message.

    Example: ``first_line(NotebookError("\\n03_sft.ipynb failed at In [4]: ValueError: x\\n..."))``
    -> ``"NotebookError: 03_sft.ipynb failed at In [4]: ValueError: x"``.
    """
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]


def status_table(runs: list[Run]) -> str:
    """A plain-text table: one line per run with its status, wall time, held-out JS or error.

    A run that another process holds shows ``running elsewhere  in process 4242``; one that another
    process finished meanwhile shows ``done elsewhere`` with its JS and that process.
    """
    width = max([len(r.variant) for r in runs] + [7]) if any(r.variant for r in runs) else 0
    column = (lambda text: f"{text:<{width}}  ") if width else (lambda text: "")
    seeded = any(r.seed for r in runs)
    seed = (lambda text: f"{text:>4}  ") if seeded else (lambda text: "")
    status_w = max([len(r.status) for r in runs] + [8])
    lines = [f"{'dataset':<10} {'strategy':<11} {'fold':>4}  {seed('seed')}{column('variant')}"
             f"{'status':<{status_w}} {'time':>7}  result"]
    for r in runs:
        result = r.error
        if r.status in ("done", "skipped", "stale", "done elsewhere"):
            m = results.read_metrics(r.folder)["metrics"]
            result = f"JS {m['js']:.3f}  BC {m['bc']:.3f}" + (f"  ({r.error})" if r.error else "")
        lines.append(f"{r.dataset:<10} {r.strategy:<11} {r.fold:>4}  {seed(r.seed)}{column(r.variant)}"
                     f"{r.status:<{status_w}} {r.seconds:>6.0f}s  {result}")
    return "\n".join(lines)


def best_variants(runs: list[Run]) -> str:
    """Per dataset and strategy, each variant's mean JS over its finished runs, best first: the choice a
    validation sweep exists to make. Empty when the sweep has no variants."""
    scores: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in runs:
        if r.variant and results.is_finished(r.folder):
            js = results.read_metrics(r.folder)["metrics"]["js"]
            scores.setdefault((r.dataset, r.strategy), {}).setdefault(r.variant, []).append(js)
    lines = []
    for (dataset, strategy), by_variant in sorted(scores.items()):
        ranked = sorted(by_variant.items(), key=lambda kv: sum(kv[1]) / len(kv[1]))
        lines.append(f"{dataset}/{strategy}: " + ", ".join(
            f"{v} {sum(js) / len(js):.4f} (n={len(js)})" for v, js in ranked))
    return "\n".join(lines)


def run_sweep(runs: list[Run], workers: int = 1, executor: str = "local", slurm: dict[str, Any] | None = None,
              threads_per_run: int | None = None, progress: bool = True) -> list[Run]:
    """Run every unfinished run (skipping finished ones), ``workers`` at a time; return them with status."""
    todo = []
    for run in runs:
        if results.is_finished(run.folder):
            stale = stale_keys(run)
            run.status = "stale" if stale else "skipped"
            if stale:
                run.error = f"finished with other values of {', '.join(stale[:6])}: kept; delete the folder to redo"
        else:
            todo.append(run)
    if executor == "slurm" or executor == "submitit-local":
        return _run_submitit(runs, todo, executor, slurm or {})

    bar = progress_bar(total=len(todo), desc="sweep", disable=not progress or not todo)
    waiting = order_by_needs(todo)
    if workers <= 1:
        for run in waiting:
            bar.set_postfix_str(run.label)
            execute_run(run, threads_per_run)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures: dict[Any, Run] = {}
            needs = {id(r): r.needs() for r in waiting}
            while waiting or futures:
                busy = {r.folder for r in waiting} | {r.folder for r in futures.values()}
                ready = [r for r in waiting if needs[id(r)] not in busy - {r.folder}]
                ready = ready or ([] if futures else waiting[:1])  # a cycle of needs: its runs fail plainly
                for run in ready[:max(workers - len(futures), 0)]:  # a run waits for the run it starts from
                    waiting.remove(run)
                    futures[pool.submit(execute_run, run, threads_per_run)] = run
                fut = next(as_completed(futures))
                run = futures.pop(fut)
                run.__dict__.update(fut.result().__dict__)
                bar.set_postfix_str(f"{run.label} {run.status}")
                bar.update()
    bar.close()
    return runs


def order_by_needs(todo: list[Run]) -> list[Run]:
    """The runs in sweep order, except that a run another run starts from (``init_from``) goes first.

    Example: ``[dpo fold0 (init_from: sft), sft fold0]`` -> ``[sft fold0, dpo fold0]``. With several
    workers, :func:`run_sweep` also holds a run back until the run it needs has finished.
    """
    needed = {r.needs() for r in todo} - {None}
    return [r for r in todo if r.folder in needed] + [r for r in todo if r.folder not in needed]


def _run_submitit(runs: list[Run], todo: list[Run], executor: str, slurm: dict[str, Any]) -> list[Run]:
    """Submit each unfinished run as a job (SLURM, or submitit's local executor for testing)."""
    import submitit  # optional

    folder = resolve_path(runs[0].run_root) / "_submitit" if runs else Path("_submitit")
    ex = submitit.LocalExecutor(folder=folder) if executor == "submitit-local" else submitit.AutoExecutor(folder=folder)
    ex.update_parameters(**({"timeout_min": 60} | slurm))
    jobs = [ex.submit(execute_run, run) for run in todo]
    for run, job in zip(todo, jobs):
        run.__dict__.update(job.result().__dict__)
    return runs


def main(argv: list[str] | None = None) -> int:
    """The ``ambinb-sweep`` command: 0 when every run finished, 1 when one failed, 2 for a bad sweep file."""
    parser = argparse.ArgumentParser(prog="ambinb-sweep", description="Run a sweep of notebooks into run folders.")
    parser.add_argument("sweep", help="a sweep file, e.g. params/sweeps/toy.yaml")
    parser.add_argument("--dry-run", action="store_true", help="list what would run, run nothing")
    parser.add_argument("--workers", type=int, default=None, help="runs at a time (default: the sweep's)")
    parser.add_argument("--run-root", default=None, help="where run folders go (default: the sweep's or params')")
    parser.add_argument("--executor", choices=["local", "slurm", "submitit-local"], default=None)
    args = parser.parse_args(argv)
    path = resolve_path(args.sweep) if not Path(args.sweep).exists() else Path(args.sweep)
    try:
        spec = load_sweep(path)
        runs = expand(spec, args.run_root)
    except (config.ConfigError, FileNotFoundError) as err:  # a bad sweep file or run: one line, no traceback
        print(f"ambinb-sweep: {err}" if str(err).startswith(str(path)) else f"ambinb-sweep: {path}: {err}",
              file=sys.stderr)
        return 2
    if args.dry_run:
        for run in runs:
            stale = stale_keys(run) if results.is_finished(run.folder) else []
            state = ("would run" if not results.is_finished(run.folder) else
                     f"finished with other {', '.join(stale[:6])}, kept" if stale else "finished, skip")
            print(f"{run.label}: {state}  ({run.config()['runner']}) -> {run.folder}")
        return 0
    run_sweep(runs, workers=args.workers or int(spec.get("workers", 1)),
              executor=args.executor or spec.get("executor", "local"), slurm=spec.get("slurm"),
              threads_per_run=spec.get("threads_per_run"))
    print(status_table(runs))
    if any(r.variant for r in runs):
        print("mean JS per variant, best first:\n" + best_variants(runs))
    failed = [r for r in runs if r.status == "failed"]
    if failed:
        print(f"{len(failed)} run(s) failed; see error.log in their run folders.", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
