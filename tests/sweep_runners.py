"""Stand-in runners for the sweep tests: they write a run folder like a real strategy would."""

import numpy as np

from ambinb import results
from ambinb.paths import run_folder


def fake_run(cfg):
    if cfg["seed"] == 13:
        raise RuntimeError("planned failure")
    rng = np.random.default_rng(cfg["fold"])
    p = rng.dirichlet(np.ones(4), size=6)
    q = rng.dirichlet(np.ones(4), size=6)
    out = run_folder(cfg)
    results.write_evaluation(out, [f"u{i}" for i in range(6)], cfg["classes"], p, q, p.mean(0),
                             cfg)


def slow_run(cfg):
    """fake_run after a pause, so that a test can kill the sweep between two runs."""
    import time

    time.sleep(0.5)
    fake_run(cfg)


def threads_run(cfg):
    """fake_run that records how many threads torch would use in this run's process."""
    import torch

    fake_run(cfg)
    (run_folder(cfg) / "threads.txt").write_text(str(torch.get_num_threads()))
