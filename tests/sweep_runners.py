"""Stand-in runners for the sweep tests: they write a run folder like a real strategy would."""

import os
import time

import numpy as np

from ambinb import results, runlock
from ambinb.paths import resolve_path, run_folder


def fake_run(cfg):
    """Like a real runner: holds its run folder (ambinb.runlock), then writes it."""
    if cfg["seed"] == 13:
        raise RuntimeError("planned failure")
    rng = np.random.default_rng(cfg["fold"])
    p = rng.dirichlet(np.ones(4), size=6)
    q = rng.dirichlet(np.ones(4), size=6)
    with runlock.hold_run(run_folder(cfg)) as out:
        results.write_evaluation(out, [f"u{i}" for i in range(6)], cfg["classes"], p, q, p.mean(0),
                                 cfg)


def trained(cfg):
    """Record in the run folder's ``trained.txt`` that this process trained it (one line per training)."""
    with open(run_folder(cfg) / "trained.txt", "a") as fh:
        fh.write(f"{os.getpid()}\n")


def counted_run(cfg):
    """fake_run, counted in ``trained.txt``; the first run of each process waits (up to 30 s) until two
    processes have arrived (``<run_root>/arrivals``), so that two sweeps started together overlap."""
    trained(cfg)
    arrivals = resolve_path(cfg["run_root"]) / "arrivals"
    with open(arrivals, "a") as fh:
        fh.write(f"{os.getpid()}\n")
    deadline = time.monotonic() + 30
    while len(set(arrivals.read_text().split())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    fake_run(cfg)


def blocked_run(cfg):
    """fake_run, counted, after waiting while ``<run_root>/hold`` exists (up to 60 s)."""
    trained(cfg)
    hold = resolve_path(cfg["run_root"]) / "hold"
    deadline = time.monotonic() + 60
    while hold.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    fake_run(cfg)


def slow_run(cfg):
    """fake_run after a pause, so that a test can kill the sweep between two runs."""
    time.sleep(0.5)
    fake_run(cfg)


def threads_run(cfg):
    """fake_run that records how many threads torch would use in this run's process."""
    import torch

    fake_run(cfg)
    (run_folder(cfg) / "threads.txt").write_text(str(torch.get_num_threads()))
