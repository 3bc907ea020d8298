"""Running notebooks: parameters checked before and inside the kernel, kernels without the TCP warning,
a failing notebook's real error in the sweep's status table."""

import os
import shutil
from pathlib import Path

import nbformat
import pytest

from ambinb import notebook, parameters, sweep
from ambinb.paths import params_dir, project_root

TCP_WARNING = "Kernel is running over TCP without encryption"
PROBE = "99_probe"
REPO_NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.fixture(scope="module")
def probe_project(tmp_path_factory):
    """A project root with the real params, a strategy ``probe`` and a small notebook that runs it:
    it resolves its config, fails on ``seed: 13`` with a two-line error, else writes a run folder."""
    root = tmp_path_factory.mktemp("probe")
    shutil.copytree(params_dir(), root / "params")
    (root / "params" / "strategies" / "probe.yaml").write_text(f"runner: {PROBE}\n")
    params = nbformat.v4.new_code_cell('dataset = "toy"\nstrategy = "probe"\nfold = 0\nrun_root = ""\noverrides = {}')
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(
        "import sweep_runners\nfrom ambinb import config\n"
        "cfg = config.resolve(dataset=dataset, strategy=strategy, fold=fold, run_root=run_root or None, "
        "overrides=overrides)"), nbformat.v4.new_code_cell(
        'if cfg["seed"] == 13:\n    raise ValueError("planned failure in the notebook\\nits second line")\n'
        "sweep_runners.fake_run(cfg)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (root / "notebooks").mkdir()
    nbformat.write(nb, root / "notebooks" / f"{PROBE}.ipynb")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMBINB_ROOT", str(root))
        mp.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), str(project_root())]))
        yield root


def test_a_notebook_sweep_reports_the_real_error_and_no_kernel_warning(probe_project, capfd):
    root = probe_project
    sweep_file = root / "sweep.yaml"
    sweep_file.write_text(f"datasets: [toy]\nstrategies: [probe]\nfolds: [0]\nrun_root: {root / 'runs'}\n"
                          "overrides: {seed: 13}\n")
    assert sweep.main([str(sweep_file)]) == 1
    out, err = capfd.readouterr()
    assert TCP_WARNING not in out + err  # the kernel ran (and failed in its third cell) over IPC
    line = next(line for line in out.splitlines() if line.startswith("toy "))
    assert "failed" in line and "NotebookError: 99_probe.ipynb failed at In [" in line
    assert line.endswith("ValueError: planned failure in the notebook")  # the first line of the real error
    assert "its second line" in (root / "runs" / "toy" / "probe" / "fold0-seed13" / "error.log").read_text()


def test_execute_refuses_an_unknown_parameter_before_starting(probe_project, tmp_path):
    with pytest.raises(ValueError, match=rf"{PROBE}.ipynb: no parameter \['seeed'\]"):
        notebook.execute(PROBE, tmp_path / "out.ipynb", {"seeed": 1})
    assert not (tmp_path / "out.ipynb").exists()


def test_papermill_itself_refuses_an_unknown_parameter(probe_project, tmp_path):
    """What ``papermill notebooks/x.ipynb out.ipynb -p seeed 1`` does, without ambinb's runner in front."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    with pytest.raises(PapermillExecutionError, match=r"this notebook has no parameter \['seeed'\]"):
        papermill.execute_notebook(str(probe_project / "notebooks" / f"{PROBE}.ipynb"), str(tmp_path / "out.ipynb"),
                                   parameters={"seeed": 1}, progress_bar=False, kernel_name="python3",
                                   cwd=str(probe_project / "notebooks"))


def test_check_injected_parameters_by_hand():
    declared = 'dataset = "toy"\nfold = 0\noverrides = {}'
    parameters.check_injected([declared, '# Parameters\nfold = 1\noverrides = {"seed": 2}\n', "x = 1"])
    parameters.check_injected(["import os", declared])  # no injected cell: JupyterLab, nbval
    parameters.check_injected(['# Parameters\nfold = 1\n'])  # papermill put it first: nothing to compare
    with pytest.raises(ValueError, match=r"no parameter \['send_audio'\] .* \['dataset', 'fold', 'overrides'\]"):
        parameters.check_injected([declared, "# Parameters\nsend_audio = True\n"])


def test_every_notebook_takes_extra_keys_as_overrides():
    for name in notebook.NOTEBOOKS:
        declared = parameters.declared(REPO_NOTEBOOKS / f"{name}.ipynb")
        assert declared.get("overrides") == {}, f"{name}: no `overrides = {{}}` in its parameters cell"


def test_every_notebook_listed_exists_and_has_literal_parameters():
    on_disk = sorted(p.stem for p in REPO_NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    assert sorted(notebook.NOTEBOOKS) == on_disk
    for name in on_disk:
        assert parameters.declared(REPO_NOTEBOOKS / f"{name}.ipynb"), name
