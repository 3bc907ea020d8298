"""The book's benchmark tables (ambinb.benchpage), on the results files in bench/results."""

from __future__ import annotations

import json

import pytest

from ambinb import benchpage
from ambinb.paths import project_root

RESULTS = project_root() / "bench" / "results"


def test_fmt_and_table_examples():
    assert benchpage.fmt(3.14159) == "3.14"
    assert benchpage.fmt(12345.6) == "12,346"
    assert benchpage.fmt(None) == "" and benchpage.fmt(float("nan")) == ""
    assert benchpage.table(["a"], [["1"]]) == "| a |\n|---|\n| 1 |\n"
    assert benchpage.ratio({"median": 1.0892, "min": 0.8864, "max": 1.2312}) == "1.09x (0.89-1.23)"


def test_every_results_file_gets_its_card_date_and_numbers():
    page = benchpage.bench_tables(RESULTS)
    files = sorted(RESULTS.glob("*.json"))
    assert files, "bench/results holds no JSON"
    for path in files:
        data = json.loads(path.read_text())
        assert f"From `bench/results/{path.name}`" in page
        card = data.get("device_name") or data["device"]
        assert f"### {card}, " in page
        for row in data.get("rows", []):
            if data["bench"] in ("sft_vs_trl", "dpo_vs_trl"):  # the median steps/s and the paired ratio, as measured
                assert f"| {row['mode']} | {row['engine']['steps_per_s_median']:.2f} |" in page
                r = row["engine_over_trl"]
                assert f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})" in page
            elif data["bench"] in ("rollouts", "grpo_step"):
                assert f"| {row['k']} | {row['utterances']} | {row['naive_s']:.2f} |" in page
    for command in benchpage.COMMANDS.values():
        assert f"Run: `{command}`" in page
        assert (project_root() / command.split()[1]).exists(), command


def test_missing_smoke_and_broken_results(tmp_path):
    assert benchpage.bench_tables(tmp_path).count("No results yet.") == len(benchpage.COMMANDS)
    (tmp_path / "rollouts_cpu.json").write_text(json.dumps({"bench": "rollouts", "smoke": True, "rows": []}))
    assert benchpage.load_results(tmp_path) == []  # smoke runs stay out of the book
    (tmp_path / "odd_cpu.json").write_text(json.dumps({"bench": "odd", "device": "cpu", "date": "2026-01-02T03:04"}))
    page = benchpage.bench_tables(tmp_path)
    assert "## odd" in page and "### cpu, 2026-01-02" in page and "no table for this benchmark" in page
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        benchpage.load_results(tmp_path)


def test_full_size_keys_old_and_new_layouts_side_by_side(tmp_path):
    """The H100 run of before the keys existed gives its GRPO and SFT numbers from its sections; a new
    run's keys are read as written; the comparison table puts both in one row per key, oldest first."""
    old_path = RESULTS / "full_size_nvidia_h100_80gb_hbm3.json"
    old = json.loads(old_path.read_text())
    keys = benchpage.full_size_keys(old)
    assert keys["grpo_step_s"] == old["grpo"]["step_seconds"] and keys["decode_ms_per_step"] is None
    assert keys["sft_tokens_per_s"] == max(r["tokens_per_s"] for r in old["sft"])
    new = {"bench": "full_size", "device_name": "NVIDIA H200", "date": "2027-01-02T00:00:00Z",
           "decode_ms_per_step": 12.34, "decode_floor_ms": 5.0, "rollout_tokens_per_s": 1500.0, "grpo_step_s": 6.5,
           "sft_tokens_per_s": 11000.0, "sft_mfu": 0.41, "peak_gib": {"decode": 20.0, "grpo": 40.0, "sft": 50.0}}
    new_path = tmp_path / "full_size_nvidia_h200.json"
    new_path.write_text(json.dumps(new))
    page = benchpage.full_size_comparison([(new_path, new), (old_path, old)])
    assert "| | NVIDIA H100 80GB HBM3, " in page.replace("|  |", "| |") and "NVIDIA H200, 2027-01-02 |" in page
    assert f"| GRPO step, s (K = 8, 2 utterances) | {old['grpo']['step_seconds']:.1f} | 6.5 |" in page
    assert "| decode step, ms (16 rows) |  | 12.3 |" in page and "| SFT MFU | 0.25 | 0.41 |" in page
