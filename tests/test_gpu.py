"""Checks that need a CUDA device (marker ``gpu``, which ``make test`` deselects): each training
strategy's whole run on the toy corpus (load, feature cache, rollouts, training steps, save,
evaluation) with the model on the GPU.

    .venv/bin/python -m pytest -m gpu tests/test_gpu.py

``AMBINB_TEST_DEVICE=cpu`` runs the same checks on the CPU (to check the test itself).
"""

import math
import os
import shutil

import pytest
import torch

from ambinb import config, results, run
from ambinb.paths import project_root

DEVICE = os.environ.get("AMBINB_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                                 reason="needs a CUDA device")]


@pytest.mark.parametrize("strategy", ["sft", "dpo", "grpo_z"])
def test_a_training_run_on_the_device(strategy, tmp_path):
    store = project_root() / "runs" / "toy" / "curation"
    if store.is_dir():  # the default run root's curated CoTs, else the run curates its own
        shutil.copytree(store, tmp_path / "toy" / "curation")
    cfg = config.resolve(strategy=strategy, fold=0, overrides={
        "device": DEVICE, "run_root": str(tmp_path), "max_steps": 2, "eval_max_utterances": 16, "bootstrap": 50})
    on_gpu = DEVICE.startswith("cuda")
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    out = run.run(cfg, progress=False)
    assert len(out["history"]) == 2 and all(math.isfinite(h["loss"]) for h in out["history"])
    folder = tmp_path / "toy" / strategy / "fold0"
    assert results.is_finished(folder) and (folder / "adapter").is_dir()
    m = results.read_metrics(folder)
    assert len(results.read_predictions(folder)) == 16 and 0.0 <= m["metrics"]["js"] <= 1.0
    if on_gpu:  # the weights really lived on the card: its peak holds at least the saved model's bytes
        assert torch.cuda.max_memory_allocated() >= (folder / "adapter" / "model.safetensors").stat().st_size
