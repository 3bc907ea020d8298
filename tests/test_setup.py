"""The project's contract: dependencies agree, the README's commands exist, notebooks are clean."""

import ast
import json
import os
import re
from pathlib import Path

import pytest
import tomllib
import yaml

from ambinb import notebook, parameters, sweep
from ambinb.paths import project_root

ROOT = project_root()
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _pyproject_deps() -> set[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(data["project"]["dependencies"]) | set(data["project"]["optional-dependencies"]["dev"])


def test_environment_yml_agrees_with_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert set(pip) == _pyproject_deps()


def test_dependencies_are_pinned_and_torch_is_the_cpu_wheel_version():
    deps = _pyproject_deps()
    assert all("==" in d for d in deps), [d for d in deps if "==" not in d]
    assert "torch==2.13.0" in deps
    assert any(d.startswith("jupyter-book==1.") for d in deps)


def test_readme_commands_and_ci():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make report" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("test", "report", "lab"):
        assert re.search(rf"^{target}:", makefile, re.M), target


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_thin_and_clean(path):
    nb = json.loads(path.read_text())
    params = parameters.declared(path)  # raises unless one literal-only parameters cell
    assert params, "the parameters cell declares something"
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        assert not cell.get("outputs") and cell.get("execution_count") is None, "committed with outputs"
        tree = ast.parse("".join(cell["source"]))
        defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))]
        assert not defs, f"def/class in a notebook cell: {[d.name for d in defs]} (move it into ambinb/)"
    assert nb["metadata"]["kernelspec"]["name"] == "ambinb"  # the kernel `make install` registers (make lab)


def test_every_parameter_passed_to_a_notebook_exists():
    """What the report and the sweeps pass must be declared in the notebook's parameters cell."""
    passed = {"01_labels": {"dataset", "run_root"}, "02_curate_cot": {"dataset", "run_root", "fold", "subset"},
              "06_ablations": {"run_root", "datasets", "folds"}}
    for nb_name, names in passed.items():
        parameters.check_given(notebook.notebook_path(nb_name), {n: None for n in names})


@pytest.mark.parametrize("path", sorted((ROOT / "params" / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_sweep_expands(path):
    """Every run of every sweep resolves its params, and notebook runners accept what the sweep passes."""
    runs = sweep.expand(sweep.load_sweep(path))
    assert runs


def test_check_parameters_names_the_unknown_one():
    with pytest.raises(ValueError, match="no parameter \\['nope'\\]"):
        parameters.check_given(NOTEBOOKS[0], {"nope": 1})


def test_no_secret_in_tracked_text():
    pattern = re.compile(r"sk-[A-Za-z0-9]{20,}")
    skipped = {".venv", ".git", "runs", "data", "models", "_build", "node_modules"}
    checked = 0
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skipped]  # never descend into them (.venv alone holds ~50k files)
        for name in files:
            path = Path(folder) / name
            if path.suffix in {".py", ".yaml", ".yml", ".ipynb", ".md", ".json", ".toml"}:
                assert not pattern.search(path.read_text(errors="ignore")), path
                checked += 1
    assert checked > 50  # the library, tests, params and notebooks were read
