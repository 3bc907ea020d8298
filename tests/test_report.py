"""make report: its stages, in order, through one hook (what bench/report_timing.py times)."""

import os

import pytest

from ambinb import report, sweep
from ambinb.paths import resolve_path


def test_the_report_runs_every_stage_in_order_through_the_hook(tmp_path):
    seen = []
    runs = report.run("params/sweeps/toy.yaml", str(tmp_path), on_stage=lambda stage: seen.append(stage.name))
    assert seen == ["tiny_model_start", "01_labels", "02_curate_cot", "tiny_model_wait", "sweep", "06_ablations",
                    "book_assemble", "book_build"]
    spec = sweep.load_sweep(resolve_path("params/sweeps/toy.yaml"))
    per_strategy = {s: len(spec.get("strategy_seeds", {}).get(s, [0])) for s in spec["strategies"]}
    assert len(runs) == sum(per_strategy.values()) * len(spec["folds"])  # 5 x 1 + 4 x 3 seeds, per fold
    assert per_strategy["dpo"] == 3 and per_strategy["sft"] == 1
    assert {r.run_root for r in runs} == {str(tmp_path)}
    seen.clear()
    report.run("params/sweeps/toy.yaml", str(tmp_path), with_book=False, on_stage=lambda stage: seen.append(stage.name))
    assert seen[-1] == "book_assemble"


def test_a_finished_notebook_stage_is_kept_unless_an_input_is_newer(tmp_path, monkeypatch):
    output = tmp_path / "06.ipynb"
    output.write_text("{}")
    newer = tmp_path / "metrics.json"
    newer.write_text("{}")
    os.utime(output, (1, 1))                                  # the output is older than an input
    calls = []
    monkeypatch.setattr(report.notebook, "execute", lambda *a, **k: calls.append(a))
    work = report.notebook_work("06_ablations", output, {}, newer_than=lambda: [newer])
    assert work() == {"kept": False} and len(calls) == 1
    os.utime(output, None)
    os.utime(newer, (1, 1))
    assert work() == {"kept": True} and len(calls) == 1


def test_the_stand_in_is_built_beside_the_first_notebooks(tmp_path, monkeypatch):
    from ambinb import standin

    built = []
    monkeypatch.setattr(standin, "ensure_tiny", lambda cfg: built.append(cfg["tiny_dir"]) or tmp_path / "tiny")
    spec = sweep.load_sweep(resolve_path("params/sweeps/toy.yaml"))
    stages = {s.name: s for s in report.stages(spec, sweep.expand(spec, str(tmp_path)))}
    assert stages["tiny_model_start"].work() == {"started": True}
    assert stages["tiny_model_wait"].work() == {"model": str(tmp_path / "tiny")} and len(built) == 1

    def broken(cfg):
        raise RuntimeError("no disk")
    monkeypatch.setattr(standin, "ensure_tiny", broken)
    stages = {s.name: s for s in report.stages(spec, sweep.expand(spec, str(tmp_path)))}
    stages["tiny_model_start"].work()
    with pytest.raises(RuntimeError, match="no disk"):          # a failed build stops the report before the sweep
        stages["tiny_model_wait"].work()
