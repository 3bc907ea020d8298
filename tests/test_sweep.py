"""Sweeps: expansion, skipping finished runs, failures reported without stopping, dry run, submitit."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ambinb import results, sweep
from ambinb.paths import params_dir


@pytest.fixture
def project(tmp_path, monkeypatch):
    shutil.copytree(params_dir(), tmp_path / "params")
    (tmp_path / "params" / "strategies" / "fake.yaml").write_text("runner: sweep_runners:fake_run\n")
    (tmp_path / "params" / "strategies" / "slow.yaml").write_text("runner: sweep_runners:slow_run\n")
    (tmp_path / "params" / "strategies" / "threads.yaml").write_text("runner: sweep_runners:threads_run\n")
    (tmp_path / "params" / "strategies" / "nonb.yaml").write_text("runner: 99_missing\n")
    monkeypatch.setenv("AMBINB_ROOT", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # job processes import sweep_runners
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text("datasets: [toy]\nstrategies: [fake]\nfolds: [0, 1, 2]\n"
                          f"run_root: {tmp_path / 'runs'}\n")
    return tmp_path, sweep_file


def test_runs_skips_finished_and_reports(project, capsys):
    root, sweep_file = project
    assert sweep.main([str(sweep_file)]) == 0
    assert all(results.is_finished(root / "runs" / "toy" / "fake" / f"fold{k}") for k in range(3))
    first = (root / "runs/toy/fake/fold1/metrics.json").stat().st_mtime_ns
    shutil.rmtree(root / "runs/toy/fake/fold2")            # as if killed during fold 2
    runs = sweep.run_sweep(sweep.expand(sweep.load_sweep(sweep_file)), progress=False)
    assert [r.status for r in runs] == ["skipped", "skipped", "done"]
    assert (root / "runs/toy/fake/fold1/metrics.json").stat().st_mtime_ns == first
    table = sweep.status_table(runs)
    assert "JS" in table and "done" in table
    sweep.main([str(sweep_file), "--dry-run"])
    assert capsys.readouterr().out.count("finished, skip") == 3


def test_threads_per_run_holds_a_worker_that_imported_torch_already(project):
    """A worker's torch was imported (here: by the test process itself) before OMP_NUM_THREADS was set."""
    import torch

    root, sweep_file = project
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        sweep_file.write_text(sweep_file.read_text().replace("[fake]", "[threads]").replace("[0, 1, 2]", "[0]"))
        runs = sweep.run_sweep(sweep.expand(sweep.load_sweep(sweep_file)), threads_per_run=1, progress=False)
        assert [r.status for r in runs] == ["done"]
        assert (root / "runs/toy/threads/fold0/threads.txt").read_text() == "1"
    finally:
        torch.set_num_threads(before)


def test_a_failing_run_does_not_stop_the_others(project):
    root, sweep_file = project
    sweep_file.write_text(sweep_file.read_text() + "overrides: {seed: 13}\n")
    spec = sweep.load_sweep(sweep_file)
    runs = sweep.run_sweep(sweep.expand(spec), workers=2, progress=False)
    assert [r.status for r in runs] == ["failed"] * 3
    assert runs[0].error == "RuntimeError: planned failure"  # the first line that says something
    assert (root / "runs/toy/fake/fold0-seed13/error.log").exists()  # a seed of its own: its own folder
    assert sweep.main([str(sweep_file)]) == 1


def test_bad_sweep_files_fail_before_running(project):
    root, sweep_file = project
    sweep_file.write_text("datasets: [toy]\nstrategies: [fake]\nfolds: [0]\nworkerz: 2\n")
    with pytest.raises(ValueError, match="unknown key"):
        sweep.load_sweep(sweep_file)
    sweep_file.write_text("datasets: [toy]\nstrategies: [nonb]\nfolds: [0]\n")
    with pytest.raises(FileNotFoundError):
        sweep.expand(sweep.load_sweep(sweep_file))


def test_submitit_local_executor(project):
    root, sweep_file = project
    runs = sweep.expand(sweep.load_sweep(sweep_file))[:1]
    assert [r.status for r in sweep.run_sweep(runs, executor="submitit-local", progress=False)] == ["done"]
    assert results.is_finished(root / "runs" / "toy" / "fake" / "fold0")


def test_killing_a_sweep_and_rerunning_finishes_the_rest_and_loses_nothing(project):
    root, sweep_file = project
    sweep_file.write_text(f"datasets: [toy]\nstrategies: [slow]\nfolds: [0, 1, 2, 3]\nrun_root: {root / 'runs'}\n")
    folders = [root / "runs" / "toy" / "slow" / f"fold{k}" for k in range(4)]
    proc = subprocess.Popen([sys.executable, "-m", "ambinb.sweep", str(sweep_file)], env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not results.is_finished(folders[0]) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    finished = [results.is_finished(f) for f in folders]
    assert finished[0] and not all(finished), "the sweep was not killed part-way"
    kept = {f: (f / "metrics.json").stat().st_mtime_ns for f, done in zip(folders, finished) if done}
    runs = sweep.run_sweep(sweep.expand(sweep.load_sweep(sweep_file)), progress=False)
    assert [r.status for r in runs] == ["skipped" if done else "done" for done in finished]
    assert all(results.is_finished(f) for f in folders)
    assert {f: (f / "metrics.json").stat().st_mtime_ns for f in kept} == kept      # nothing finished was redone


def test_per_strategy_overrides_and_stale_runs(project, capsys):
    root, sweep_file = project
    sweep_file.write_text(sweep_file.read_text() + "overrides: {bootstrap: 30}\n"
                          "strategy_overrides: {fake: {seed: 4}}\n")
    runs = sweep.expand(sweep.load_sweep(sweep_file))
    assert runs[0].overrides == {"bootstrap": 30, "seed": 4}
    assert sweep.run_sweep(runs[:1], progress=False)[0].status == "done"
    sweep_file.write_text(sweep_file.read_text().replace("bootstrap: 30", "bootstrap: 40"))
    again = sweep.run_sweep(sweep.expand(sweep.load_sweep(sweep_file))[:1], progress=False)[0]
    assert again.status == "stale" and "bootstrap" in again.error      # kept, never overwritten
    sweep.main([str(sweep_file), "--dry-run"])
    assert "finished with other bootstrap, kept" in capsys.readouterr().out
    sweep_file.write_text(sweep_file.read_text().replace("seed: 4", "seed: 5"))  # another seed: another run
    assert sweep.expand(sweep.load_sweep(sweep_file))[0].folder.name == "fold0-seed5"
    sweep_file.write_text(sweep_file.read_text() + "strategy_overrides: {sft: {seed: 1}}\n")
    with pytest.raises(ValueError):
        sweep.load_sweep(sweep_file)


def test_variants_run_apart_and_validation_runs_stay_out_of_the_tables(project, capsys):
    from ambinb import aggregate

    root, sweep_file = project
    sweep_file.write_text(sweep_file.read_text().replace("folds: [0, 1, 2]", "folds: [0]")
                          + "overrides: {eval_split: validation}\n"
                            "variants: {seed_a: {seed: 1}, seed_b: {seed: 2}}\n")
    runs = sweep.expand(sweep.load_sweep(sweep_file))
    assert [(r.variant, r.overrides["seed"]) for r in runs] == [("seed_a", 1), ("seed_b", 2)]
    assert runs[1].folder == root / "runs" / "seed_b" / "toy" / "fake" / "validation" / "fold0-val1-seed2"
    assert sweep.main([str(sweep_file)]) == 0
    out = capsys.readouterr().out
    assert "seed_a" in out and "mean JS per variant, best first:\ntoy/fake: seed_" in out
    assert aggregate.collect(str(root / "runs" / "seed_a")).empty  # validation runs never reach Table 2
    sweep_file.write_text(sweep_file.read_text() + "variants: {Seed-C: {seed: 3}}\n")
    with pytest.raises(ValueError, match="variant 'Seed-C'"):
        sweep.load_sweep(sweep_file)


@pytest.mark.parametrize(("text", "match"), [
    ("folds: [0.5, 1.9]", r"sweep.yaml: 'folds' must list non-negative integers, got \[0.5, 1.9\]"),
    ("folds: [0, true]", "'folds' must list non-negative integers"),
    ("folds: [-1]", "'folds' must list non-negative integers"),
    ("folds: [0]\nworkers: 0", "'workers' must be an integer >= 1"),
    ("folds: [0]\nthreads_per_run: 1.5", "'threads_per_run' must be an integer >= 1"),
    ("folds: [0]\nexecutor: slurmm", "'executor' must be one of"),
    ("folds: [0]\noverrides: {batch_size: 0}", r"sweep.yaml: overrides: key 'batch_size' = 0: must be >= 1"),
    ("folds: [0]\noverrides: {lerning_rate: 0.1}", r"sweep.yaml: overrides: unknown key 'lerning_rate'"),
    ("folds: [0]\nstrategy_overrides: {fake: {lr: -1.0}}", r"sweep.yaml: strategy_overrides.fake: key 'lr'"),
    ("folds: [0]\nvariants: {a: {seed: two}}", r"sweep.yaml: variants.a: key 'seed' must be int"),
    ("folds: [0]\nrun_root: 3", "'run_root' must be a string"),
])
def test_sweep_files_get_the_checks_of_params(project, text, match):
    root, sweep_file = project
    sweep_file.write_text(f"datasets: [toy]\nstrategies: [fake]\n{text}\n")
    with pytest.raises(ValueError, match=match):
        sweep.load_sweep(sweep_file)
    assert sweep.main([str(sweep_file), "--dry-run"]) == 2


def test_a_fold_the_dataset_lacks_is_refused_by_the_dry_run_and_the_run(project, capsys):
    root, sweep_file = project
    sweep_file.write_text(sweep_file.read_text().replace("folds: [0, 1, 2]", "folds: [0, 7]"))
    for args in ([str(sweep_file), "--dry-run"], [str(sweep_file)]):
        assert sweep.main(args) == 2
        err = capsys.readouterr().err
        assert "sweep.yaml: toy/fake/fold7: key 'fold' = 7" in err and "has 5 fold(s)" in err
    assert not (root / "runs" / "toy" / "fake" / "fold0").exists()  # refused before anything ran


def test_seeds_run_apart_and_a_run_waits_for_the_run_it_starts_from(project):
    """``seeds``/``strategy_seeds`` give each seed its own folder; a run with ``init_from`` goes after the run
    it starts from (its seed-0 run of the same fold), with one worker and with several."""
    root, sweep_file = project
    (root / "params" / "strategies" / "fake_rl.yaml").write_text(
        "runner: sweep_runners:fake_run\ninit_from: fake\n")
    sweep_file.write_text("datasets: [toy]\nstrategies: [fake_rl, fake]\nfolds: [0, 1]\n"
                          f"strategy_seeds: {{fake_rl: [0, 2]}}\nrun_root: {root / 'runs'}\n")
    runs = sweep.expand(sweep.load_sweep(sweep_file))
    assert [r.label for r in runs] == ["toy/fake_rl/fold0", "toy/fake_rl/fold0-seed2", "toy/fake_rl/fold1",
                                       "toy/fake_rl/fold1-seed2", "toy/fake/fold0", "toy/fake/fold1"]
    assert runs[1].needs() == runs[4].folder and runs[4].needs() is None
    assert [r.label for r in sweep.order_by_needs(runs)][:2] == ["toy/fake/fold0", "toy/fake/fold1"]
    for workers in (1, 2):
        done = sweep.run_sweep(sweep.expand(sweep.load_sweep(sweep_file)), workers=workers, progress=False)
        assert all(r.status in ("done", "skipped") for r in done)
        mtime = {r.label: (r.folder / "metrics.json").stat().st_mtime_ns for r in done}
        assert all(mtime[f"toy/fake/fold{r.fold}"] < mtime[r.label] for r in done if r.strategy == "fake_rl")
        table = sweep.status_table(done)
        assert table.splitlines()[0].split()[:4] == ["dataset", "strategy", "fold", "seed"]
        for r in done:
            (r.folder / "metrics.json").unlink()
    sweep_file.write_text(sweep_file.read_text() + "seed_overrides: {2: {runner: 'sweep_runners:slow_run'}}\n")
    runs = sweep.expand(sweep.load_sweep(sweep_file))
    assert [r.config()["runner"] for r in runs[:2]] == ["sweep_runners:fake_run", "sweep_runners:slow_run"]
    assert runs[1].overrides == {"runner": "sweep_runners:slow_run", "seed": 2}
    plain = sweep_file.read_text()
    (root / "params" / "strategies" / "fake_nb.yaml").write_text("runner: 03_sft\n")
    (root / "notebooks").mkdir(exist_ok=True)  # expand checks a notebook run's parameters against its notebook
    shutil.copy(Path(__file__).parents[1] / "notebooks" / "03_sft.ipynb", root / "notebooks")
    sweep_file.write_text(plain.replace("strategies: [fake_rl, fake]", "strategies: [fake_rl, fake, fake_nb]")
                          + "notebook_folds: [0]\n")  # fold 1's notebook run calls the same code directly
    runners = {r.label: r.config()["runner"] for r in sweep.expand(sweep.load_sweep(sweep_file))}
    assert runners["toy/fake_nb/fold0"] == "03_sft" and runners["toy/fake_nb/fold1"] == sweep.DIRECT_RUNNER
    assert runners["toy/fake/fold1"] == "sweep_runners:fake_run"  # a module runner stays as it is
    sweep_file.write_text(plain.replace("folds: [0, 1]", "folds: [0, 1]\nnotebook_folds: [zero]"))
    with pytest.raises(ValueError, match="'notebook_folds' must list non-negative integers"):
        sweep.load_sweep(sweep_file)
    bad = plain.replace("{2: {", "{two: {")
    sweep_file.write_text(bad)
    with pytest.raises(ValueError, match="seed_overrides must be keyed by non-negative integer seeds"):
        sweep.load_sweep(sweep_file)
    sweep_file.write_text(bad.replace("{two: {", "{2: {") + "seeds: [-1]\n")
    with pytest.raises(ValueError, match="'seeds' must list non-negative integers"):
        sweep.load_sweep(sweep_file)
