"""One writer per run folder (ambinb.runlock), with real processes: two sweeps on one run root share
the runs, a killed holder leaves no lock, a sweep's notebook kernel runs under its worker's lock,
and a plain papermill call of a notebook whose folder is held is refused."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from ambinb import notebook, results, runlock, sweep
from ambinb.paths import params_dir, project_root

TESTS = Path(__file__).resolve().parent
HOLDER = "import sys, time\nfrom ambinb import runlock\nwith runlock.hold(sys.argv[1]):\n" \
         "    print('held', flush=True)\n    time.sleep(60)\n"
NB = "98_lock_probe"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project root with the real params, fake strategies that sweep_runners runs, and a notebook
    ``98_lock_probe`` whose kernel calls ``sweep_runners.fake_run`` (which holds its run folder)."""
    shutil.copytree(params_dir(), tmp_path / "params")
    for name, runner in (("counted", "sweep_runners:counted_run"), ("blocked", "sweep_runners:blocked_run"),
                         ("nbprobe", NB)):
        (tmp_path / "params" / "strategies" / f"{name}.yaml").write_text(f"runner: {runner}\n")
    params = nbformat.v4.new_code_cell('dataset = "toy"\nstrategy = "nbprobe"\nfold = 0\nrun_root = ""\noverrides = {}')
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(
        "import sweep_runners\nfrom ambinb import config\n"
        "cfg = config.resolve(dataset=dataset, strategy=strategy, fold=fold, run_root=run_root or None, "
        "overrides=overrides)\nsweep_runners.fake_run(cfg)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (tmp_path / "notebooks").mkdir()
    nbformat.write(nb, tmp_path / "notebooks" / f"{NB}.ipynb")
    monkeypatch.setenv("AMBINB_ROOT", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), str(project_root())]))
    return tmp_path


def sweep_file(root: Path, strategy: str, folds: list[int]) -> Path:
    path = root / f"{strategy}.yaml"
    path.write_text(f"datasets: [toy]\nstrategies: [{strategy}]\nfolds: {folds}\nrun_root: {root / 'runs'}\n")
    return path


def start_holder(folder: Path) -> subprocess.Popen:
    """Another process that holds ``folder`` for a minute; returns once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_hold_is_reentrant_and_a_second_process_is_refused_with_the_holders_pid(tmp_path):
    folder = tmp_path / "toy" / "sft" / "fold0"
    with runlock.hold(folder) as held, runlock.hold(folder):  # nested in one process: nothing more happens
        assert held == folder and runlock.last_holder(folder) == os.getpid()
    holder = start_holder(folder)
    try:
        with pytest.raises(runlock.RunningElsewhere, match=rf"fold0 is running in process {holder.pid}; skipped"):
            with runlock.hold(folder):
                pass
        with pytest.raises(runlock.RunningElsewhere, match="gave up after waiting 0 s"):
            with runlock.hold(folder, wait_s=0.3):
                pass
        with pytest.raises(runlock.RunningElsewhere, match=f"in process {holder.pid}; skipped"):
            notebook.execute("03_sft", folder / "03_sft.ipynb", {"fold": 0})  # refused before a kernel starts
    finally:
        holder.kill()
        holder.wait()
    with runlock.hold(folder):  # the killed holder left no lock behind
        pass


def test_two_sweeps_on_one_run_root_train_each_run_once(project):
    root = project
    path = sweep_file(root, "counted", [0, 1, 2, 3])
    procs = [subprocess.Popen([sys.executable, "-m", "ambinb.sweep", str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    logs = [out for out, _ in outputs]  # what each printed; its progress bar went to stderr
    folders = [root / "runs" / "toy" / "counted" / f"fold{k}" for k in range(4)]
    assert all(results.is_finished(f) for f in folders)
    trainers = [(f / "trained.txt").read_text().split() for f in folders]
    assert all(len(t) == 1 for t in trainers), f"a run was trained twice: {trainers}"
    pids = [p.pid for p in procs]
    assert {int(t[0]) for t in trainers} == set(pids), "both sweeps trained"
    for me, (log, other) in enumerate(zip(logs, reversed(pids))):
        statuses = dict(re.findall(r"^toy\s+counted\s+(\d)\s+(done elsewhere|running elsewhere|done|skipped)",
                                   log, re.M))
        mine = {k for k, t in enumerate(trainers) if int(t[0]) == pids[me]}
        assert {int(k) for k, s in statuses.items() if s == "done"} == mine, log   # nothing counted twice
        theirs = sorted(set(range(4)) - mine)
        said = sorted(int(k) for k in re.findall(rf"^toy/counted/fold(\d) (?:is running in|was finished by) "
                                                 rf"process {other}", log, re.M))
        assert said == theirs, log  # its log says which runs the other took


def test_a_killed_holder_leaves_no_lock_and_the_next_sweep_takes_the_run_over(project, capsys):
    root = project
    path = sweep_file(root, "blocked", [0])
    (root / "runs").mkdir()
    (root / "runs" / "hold").touch()
    folder = root / "runs" / "toy" / "blocked" / "fold0"
    proc = subprocess.Popen([sys.executable, "-m", "ambinb.sweep", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (folder / "trained.txt").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert runlock.last_holder(folder) == proc.pid
        (run,) = sweep.run_sweep(sweep.expand(sweep.load_sweep(path)), progress=False)
        assert (run.status, run.error) == ("running elsewhere", f"in process {proc.pid}")
        assert re.search(rf"running elsewhere\s+\d+s  in process {proc.pid}", sweep.status_table([run]))
        assert f"toy/blocked/fold0 is running in process {proc.pid}; skipped" in capsys.readouterr().out
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    (root / "runs" / "hold").unlink()
    (run,) = sweep.run_sweep(sweep.expand(sweep.load_sweep(path)), progress=False)
    assert run.status == "done" and results.is_finished(folder)
    assert (folder / "trained.txt").read_text().split() == [str(proc.pid), str(os.getpid())]


def test_a_sweeps_kernel_runs_under_its_lock_and_plain_papermill_is_refused(project):
    """The kernel that the sweep's papermill starts holds the run folder through its worker (not locked
    out); a kernel that papermill starts for anyone else, while another process holds it, raises."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    root = project
    (run,) = sweep.run_sweep(sweep.expand(sweep.load_sweep(sweep_file(root, "nbprobe", [0]))), progress=False)
    assert run.status == "done", run.error
    folder = root / "runs" / "toy" / "nbprobe" / "fold1"
    holder = start_holder(folder)
    try:
        with pytest.raises(PapermillExecutionError, match=f"fold1 is running in process {holder.pid}; skipped"):
            papermill.execute_notebook(str(root / "notebooks" / f"{NB}.ipynb"), str(root / "out.ipynb"),
                                       parameters={"fold": 1, "run_root": str(root / "runs")}, progress_bar=False,
                                       kernel_name="python3", cwd=str(root / "notebooks"))
    finally:
        holder.kill()
        holder.wait()
    assert not results.is_finished(folder)
