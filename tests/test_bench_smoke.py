"""The benchmark scripts run end to end in their smallest settings and write their JSON (no timing asserted).

Both scripts start together as subprocesses (one module fixture), so the pair costs about the
wall time of the slower one: mostly importing torch, transformers and TRL, and loading the tiny
stand-in (built once by ``ambinb.model.ensure_tiny``, as for the model-core tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ambinb import config
from ambinb import model as model_mod

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 300

COMMANDS = {
    "sft_vs_trl": ["bench/sft_vs_trl.py", "--smoke"],
    "rollouts": ["bench/rollouts.py", "--k", "2", "--utterances", "1", "--seconds", "1", "--max-new-tokens", "4",
                 "--skip-hf-batched"],
}


@pytest.fixture(scope="module")
def bench_runs(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Each benchmark's finished process and the JSON path it was told to write, run side by side."""
    model_mod.ensure_tiny(config.resolve())  # build once here, not in two racing subprocesses
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = {}
    for name, args in COMMANDS.items():
        path, log = out / f"{name}.json", (out / f"{name}.log").open("w")
        started[name] = (subprocess.Popen([sys.executable, *args, "--out", str(path)], cwd=ROOT, env=env,
                                          stdout=log, stderr=subprocess.STDOUT), path, log)
    done = {}
    for name, (proc, path, log) in started.items():
        try:
            proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        output = Path(log.name).read_text()
        done[name] = (subprocess.CompletedProcess(proc.args, proc.returncode, output, None), path)
    return done


def _finished(bench_runs, name: str) -> dict:
    result, path = bench_runs[name]
    command = " ".join(map(str, result.args))
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout[-3000:]}"
    assert path.exists(), f"{name} did not write {path}:\n{result.stdout[-3000:]}"
    return json.loads(path.read_text())


def test_sft_vs_trl_smoke_runs_both_paths_on_the_same_batches(bench_runs):
    data = _finished(bench_runs, "sft_vs_trl")
    assert data["smoke"] is True
    assert {row["mode"] for row in data["rows"]} == {"lora", "full"}
    for row in data["rows"]:
        for path in ("engine", "trl"):
            runs = row[path]["runs"]
            assert len(runs) == 1 and runs[0]["steps_per_s"] > 0
        # same initial weights, same first micro-batch, same loss function: the same first loss on both paths
        assert row["trl"]["runs"][0]["loss_first"] == pytest.approx(row["engine"]["runs"][0]["loss_first"], rel=1e-5)
        assert row["engine_over_trl"]["median"] > 0
    assert data["versions"]["trl"] and data["settings"]["steps"] == 2


def test_rollouts_smoke_writes_its_table(bench_runs):
    data = _finished(bench_runs, "rollouts")
    assert [row["k"] for row in data["rows"]] == [2]
    row = data["rows"][0]
    assert row["shared_tower_calls"] == 1  # the encoder ran once for the one utterance, not K times
    assert row["naive_tokens"] > 0 and row["shared_tokens"] > 0
