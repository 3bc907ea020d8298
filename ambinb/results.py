"""Run-folder files: atomic writes, provenance, predictions and ``metrics.json``.

Every evaluation (a trained model, the base model, the ``classical`` reference) lands in its run
folder through :func:`write_evaluation`, so the sweeps, ``06_ablations`` and the book read one
format. A run is finished when its ``metrics.json`` exists and parses (:func:`is_finished`);
files are written through :func:`ambinb.files.write_atomic` (a temporary name, then a rename), so a
crash or a full disk never leaves half a file.

What the training chapters (03-05) show of a finished run comes from here too: the held-out table
beside the prior and the base model (:func:`held_out_table`, :func:`held_out_note`) and the clearest
and most ambiguous held-out utterances with what the model wrote (:func:`clearest_and_most_ambiguous`,
:func:`describe_examples`; :func:`ambinb.plots.save_examples` draws them).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ambinb import metrics
from ambinb.files import write_atomic  # every run-folder file is written through it
from ambinb.paths import project_root, run_folder

PACKAGES = ("ambinb", "torch", "transformers", "peft", "trl", "accelerate", "numpy", "pandas", "scipy",
            "opensmile", "papermill")
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"
TABLE_METRICS = ("js", "bc", "r2", "brier", "kl", "entropy_corr", "collapse_rate")  # a held-out table's columns
PARAMS_FILE = "params.json"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (numpy values converted, NaN -> null)."""
    return write_atomic(path, json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def git_commit() -> str:
    """The project's git commit, with ``+dirty`` when the tree has uncommitted changes; ``unknown`` outside a
    checkout. ``AMBINB_GIT_COMMIT`` in the environment wins: set it when the tree is copied to another
    machine (a rented GPU box), whose ``.git``, if any, need not be this commit's."""
    if os.environ.get("AMBINB_GIT_COMMIT"):
        return os.environ["AMBINB_GIT_COMMIT"]
    root = project_root()
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def env_info(device: str | None = None) -> dict[str, Any]:
    """Versions of Python and the key packages, the platform, the git commit and the device."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions,
            "git_commit": git_commit(), "device": device}


def prior_distribution(p_train: np.ndarray) -> np.ndarray:
    """The training-prior predictor's single answer: the mean training distribution, shape (C,)."""
    p_train = metrics.check_distributions(p_train, "p_train")
    mean = p_train.mean(axis=0)
    return mean / mean.sum()


def write_evaluation(run_dir: str | os.PathLike, utt_ids: list[str], classes: list[str],
                     p_gt: np.ndarray, p_hat: np.ndarray, p_prior: np.ndarray, cfg: dict[str, Any],
                     completions: list[str] | None = None, device: str | None = None,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``predictions.jsonl`` and ``metrics.json`` for one held-out evaluation.

    Args:
        run_dir: the run folder (``ambinb.paths.run_dir``).
        utt_ids, classes: row and column names of ``p_gt`` / ``p_hat`` (N, C).
        p_prior: the training folds' mean distribution (C,), scored as the ``prior`` row.
        cfg: the resolved parameters (saved as ``params``; also written to ``params.json``).
        completions: the generated text per utterance, if the model wrote any.
        extra: further entries for ``metrics.json`` (wall time, counts, ...).

    Returns:
        The ``metrics.json`` content.
    """
    run_dir = Path(run_dir)
    p_gt = metrics.check_distributions(p_gt, "p_gt")
    p_hat = metrics.check_distributions(p_hat, "p_hat")
    if len(utt_ids) != p_gt.shape[0] or len(classes) != p_gt.shape[1]:
        raise ValueError(f"{len(utt_ids)} utt_ids and {len(classes)} classes for arrays of shape {p_gt.shape}")
    prior = np.tile(np.asarray(p_prior, dtype=np.float64), (p_gt.shape[0], 1))
    seed = int(cfg["seed"])
    n_boot = int(cfg["bootstrap"])
    lines = []
    for i, utt in enumerate(utt_ids):
        row = {"utt_id": utt, "p_gt": p_gt[i].round(6).tolist(), "p_hat": p_hat[i].round(6).tolist()}
        if completions is not None:
            row["completion"] = completions[i]
        lines.append(json.dumps(row))
    write_atomic(run_dir / PREDICTIONS_FILE, "\n".join(lines) + "\n")
    write_json(run_dir / PARAMS_FILE, cfg)
    result = {
        "metrics": metrics.score(p_gt, p_hat),
        "ci95": metrics.bootstrap_ci(p_gt, p_hat, n_boot=n_boot, seed=seed),
        "prior": metrics.score(p_gt, prior),
        "prior_ci95": metrics.bootstrap_ci(p_gt, prior, n_boot=n_boot, seed=seed),
        "classes": list(classes),
        "dataset": cfg["dataset"], "strategy": cfg["strategy"], "fold": cfg["fold"],
        "params": cfg,
        "env": env_info(device),
        **(extra or {}),
    }
    write_json(run_dir / METRICS_FILE, result)
    return result


def is_finished(run_dir: str | os.PathLike) -> bool:
    """True when the run folder holds a complete, parseable ``metrics.json``."""
    path = Path(run_dir) / METRICS_FILE
    try:
        return "metrics" in json.loads(path.read_text())
    except (OSError, ValueError):
        return False


def read_metrics(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``metrics.json`` of a run folder."""
    return json.loads((Path(run_dir) / METRICS_FILE).read_text())


def read_predictions(run_dir: str | os.PathLike) -> pd.DataFrame:
    """The ``predictions.jsonl`` of a run folder as a DataFrame (one row per utterance)."""
    return pd.read_json(Path(run_dir) / PREDICTIONS_FILE, lines=True)


def held_out_table(cfg: dict[str, Any], metrics_: dict[str, Any]) -> pd.DataFrame:
    """A run's held-out scores (:data:`TABLE_METRICS`) beside the training-prior predictor's and, when
    the ``base`` run of the same fold and split has finished, the untrained model's.

    Args:
        cfg: the run's resolved params (for the ``base`` run folder).
        metrics_: the run's ``metrics.json`` content.

    Returns:
        One row per predictor (the strategy, ``prior``, and ``base`` if finished), one column per metric.
    """
    rows = {str(metrics_["strategy"]): metrics_["metrics"], "prior": metrics_["prior"]}
    base = run_folder(cfg, "base")
    if is_finished(base):
        rows["base"] = read_metrics(base)["metrics"]
    return pd.DataFrame(rows).T[list(TABLE_METRICS)]


def held_out_note(metrics_: dict[str, Any]) -> str:
    """One line under a held-out table: the bootstrap 95 % CI of JS and the format pass rate.

    Example: ``{"ci95": {"js": [0.1234, 0.2]}, "format_rate": 0.5}`` ->
    ``"95% CI of JS: [0.123, 0.200], format pass rate: 0.50"``.
    """
    low, high = metrics_["ci95"]["js"]
    return f"95% CI of JS: [{low:.3f}, {high:.3f}], format pass rate: {metrics_['format_rate']:.2f}"


def clearest_and_most_ambiguous(preds: pd.DataFrame, n: int = 2) -> pd.DataFrame:
    """The ``n`` predictions whose annotators agreed most (largest max p_gt) then the ``n`` whose
    annotators agreed least (smallest max p_gt); ties keep the file's order.

    Example: max p_gt of utterances a..e = (0.9, 0.4, 0.7, 0.3, 1.0) and n = 2 -> e, a, d, b.
    """
    agreement = preds["p_gt"].apply(max)
    return pd.concat([preds.loc[agreement.nlargest(n).index], preds.loc[agreement.nsmallest(n).index]])


def describe_examples(preds: pd.DataFrame) -> str:
    """Each prediction's utterance id and the completion the model wrote, one block per utterance."""
    return "\n".join(f"--- {row.utt_id}\n{getattr(row, 'completion', '')}\n" for row in preds.itertuples())


def bench_device(device: str) -> tuple[str, str]:
    """(readable device name, file-name slug) for a benchmark's results: ``cpu`` on the CPU, the card's
    name on a GPU (``NVIDIA H200`` -> ``nvidia_h200``)."""
    if device.startswith("cuda"):
        import torch  # heavy

        name = torch.cuda.get_device_name()
        return name, "".join(c if c.isalnum() else "_" for c in name.lower())
    return platform.processor() or platform.machine(), "cpu"


def write_bench(name: str, slug: str, result: dict[str, Any], out: str | os.PathLike | None = None) -> Path:
    """Write a benchmark's JSON to ``out`` or ``bench/results/<name>_<slug>.json`` (atomically); return the path."""
    path = Path(out) if out else project_root() / "bench" / "results" / f"{name}_{slug}.json"
    write_json(path, result)
    print(f"wrote {path}")
    return path
