"""The benchmark scripts run end to end in their smallest settings and write their JSON (no timing asserted).

The scripts start together as subprocesses (one module fixture), so they cost about the wall
time of the slowest one: mostly importing torch, transformers and TRL, and loading the tiny
stand-in (built once by ``ambinb.standin.ensure_tiny``, as for the model-core tests). The book's
benchmark tables (:mod:`ambinb.benchpage`) are rendered from the JSON they write.
``bench/report_timing.py`` is not run here (it runs ``make report``'s stages); its memory probe is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ambinb import benchpage, config, standin, vocab

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 300
sys.path.insert(0, str(ROOT))  # the bench scripts import bench.common

COMMANDS = {
    "sft_vs_trl": ["bench/sft_vs_trl.py", "--smoke"],
    "dpo_vs_trl": ["bench/dpo_vs_trl.py", "--smoke", "--modes", "lora"],
    "full_size": ["bench/full_size.py", "--smoke"],
    "full_size_omni_3b": ["bench/full_size.py", "--smoke", "--model", "qwen2_5_omni_3b"],
    "rollouts": ["bench/rollouts.py", "--k", "2", "--utterances", "1", "--seconds", "1", "--max-new-tokens", "4",
                 "--skip-hf-batched"],
    "logprobs": ["bench/logprobs.py", "--shapes", "64x50", "--repeats", "1"],
}


@pytest.fixture(scope="module")
def bench_runs(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Each benchmark's finished process and the JSON path it was told to write, run side by side."""
    standin.ensure_tiny(config.resolve())  # build once here, not in two racing subprocesses
    vocab.cached_vocab_and_merges()  # likewise the real vocabulary's cache (full_size)
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


def test_logprobs_smoke_times_both_paths_and_renders(bench_runs):
    data = _finished(bench_runs, "logprobs")
    row = data["rows"][0]
    assert (row["positions"], row["vocab"], row["repeats"]) == (64, 50, 1)
    assert all(v > 0 for v in row["median_seconds"].values()) and len(row["median_seconds"]) == 4
    assert "TRL / ambinb" in benchpage.logprobs_table(data)


def test_dpo_vs_trl_smoke_runs_every_path_on_the_same_pairs(bench_runs):
    data = _finished(bench_runs, "dpo_vs_trl")
    assert data["smoke"] is True and [row["mode"] for row in data["rows"]] == ["lora"]
    row = data["rows"][0]
    for path in ("engine", "trl", "trl_native"):
        assert len(row[path]["runs"]) == 1 and row[path]["runs"][0]["steps_per_s"] > 0
    # same weights, same first pairs, same loss: TRL's loop with ambinb's loss starts where the engine does
    assert row["trl"]["runs"][0]["loss_first"] == pytest.approx(row["engine"]["runs"][0]["loss_first"], rel=1e-5)
    # TRL's own loss is Eq. 5 + 0.1 NLL without the KL term: a different number, but a DPO loss near log 2 at the
    # start (policy = reference, so the sigmoid term is exactly log 2) plus a positive NLL share
    native = row["trl_native"]["runs"][0]["loss_first"]
    assert native > 0.6931 and native != pytest.approx(row["engine"]["runs"][0]["loss_first"], rel=1e-6)
    assert "engine / trl_native" in benchpage.dpo_vs_trl_table(data)


def test_full_size_smoke_runs_every_section(bench_runs):
    data = _finished(bench_runs, "full_size")
    assert data["smoke"] is True and data["spec"]["text"]["hidden_size"] < 100
    assert data["spec"]["text"]["vocab_size"] == 156_032  # the real vocabulary at tiny widths
    assert data["matmul"]["tflops"] > 0 and data["bandwidth"]["bytes_per_s"] > 0
    # real token counts: the chat template's prompt around 25 audio tokens (1 s), a think block and the answer
    assert data["audio_tokens"] == 25 and data["prompt_tokens"] > 100 and data["completion_tokens"] >= 12
    assert [r["decode"] for r in data["decode"]] == ["dynamic", "static"]
    assert all(r["rows"] == 4 and r["ms_per_step"] > 0 for r in data["decode"])
    assert set(data["decode"][0]["phases_ms_per_step"]) == {"sample", "stop", "forward"}
    assert [r["activation_checkpointing"] for r in data["sft"]] == [False, True]
    assert all(r["tokens_per_s"] > 0 and r["steps_timed"] >= 1 for r in data["sft"])
    g = data["grpo"]
    assert 0 < g["rollout_tokens"] <= g["utterances"] * g["k"] * g["max_new_tokens"]
    assert 0 < g["encoder_share"] < 1
    for r in data["max_batch"]:  # the smoke run's limit is 2, which a tiny model fits, unless the time cap hit first
        assert r["largest"] == 2 or (r["capped"] and r["largest"] == 1)
    # the keys compared turn over turn
    assert data["decode_ms_per_step"] == min(r["ms_per_step"] for r in data["decode"])
    assert data["decode_floor_ms"] == pytest.approx(1000 * data["decode_floor"]["bytes_per_step"]
                                                    / data["bandwidth"]["bytes_per_s"])
    assert data["grpo_step_s"] == g["step_seconds"] and data["rollout_tokens_per_s"] == g["rollout_tokens_per_s"]
    assert data["sft_tokens_per_s"] == max(r["tokens_per_s"] for r in data["sft"]) and data["sft_mfu"] > 0
    assert set(data["peak_gib"]) == {"decode", "grpo", "sft"}
    page = benchpage.full_size_table(data)
    assert "TFLOP/s" in page and "largest SFT batch" in page and "Memory floor" in page
    assert benchpage.full_size_keys(data)["grpo_step_s"] == g["step_seconds"]
    _estimate_beside_the_run(data)


def _estimate_beside_the_run(data: dict) -> None:
    """The smoke run's memory estimate: at its SFT batch's token counts, which the model-free count gives too."""
    from bench import full_size

    est = data["memory_estimate"]
    assert est["batch"] == data["settings"]["batch"] and est["total_gib"] > est["fixed_gib"] > 0
    assert est["measured_peak_gib"] is None  # no CUDA peak on the CPU
    ckpt = [r for r in data["max_batch"] if r["activation_checkpointing"]]
    assert est["measured_largest_batch"] == ckpt[0]["largest"]
    processor = full_size.PROCESSORS[data["spec"]["family"]]()
    counted = full_size.token_counts(processor, est["batch"], data["settings"]["audio_seconds"],
                                     data["settings"]["completion_tokens"])
    assert counted == (est["sequence_tokens"], est["completion_tokens"])  # the tower's audio count, without a tower


def test_full_size_smoke_runs_qwen2_5_omni_3b(bench_runs):
    data = _finished(bench_runs, "full_size_omni_3b")
    assert data["smoke"] is True and data["model"] == "qwen2_5_omni_3b" and data["spec"]["family"] == "qwen2_5_omni"
    assert data["spec"]["text"]["vocab_size"] == 151_936 and data["spec"]["text"]["hidden_size"] < 100
    assert data["parameters"]["other"] > 0  # the vision tower, built (never run)
    assert data["audio_tokens"] == 25 and data["prompt_tokens"] > 100 and data["completion_tokens"] >= 12
    assert all(r["ms_per_step"] > 0 for r in data["decode"]) and len(data["sft"]) == 2
    assert data["grpo"]["rollout_tokens"] > 0 and data["grpo_step_s"] == data["grpo"]["step_seconds"]
    assert data["sft_mfu"] > 0 and data["decode_floor_ms"] > 0
    _estimate_beside_the_run(data)


def _lora_by_shapes(text: dict, r: int = 8) -> int:
    """r x (in + out) of q, k, v, o, gate, up, down in every layer."""
    h, inter = text["hidden_size"], text["intermediate_size"]
    head_dim = h // text["num_attention_heads"]
    q, kv = text["num_attention_heads"] * head_dim, text["num_key_value_heads"] * head_dim
    per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + inter) + (inter + h)
    return r * per_layer * text["num_hidden_layers"]


@pytest.mark.parametrize("model", ["qwen2_audio_7b", "qwen2_5_omni_7b", "qwen2_5_omni_3b"])
def test_full_size_estimate_adds_up(model, tmp_path):
    """``--estimate`` on the CPU (the full-size model on the meta device): positive parts that sum to the total."""
    from bench import full_size

    path = tmp_path / "estimate.json"
    full_size.main(["--estimate", "--model", model, "--out", str(path)])
    data = json.loads(path.read_text())
    est = data["memory_estimate"]
    assert data["bench"] == "full_size_estimate" and data["model"] == model and est["batch"] == 8
    fixed, per_sequence = est["fixed"], est["per_sequence"]
    assert set(fixed) == {"parameters_bf16", "lora_fp32_grad_adamw", "head_fp32_copy"}
    assert set(per_sequence) == {"checkpointed_layer_inputs", "recomputed_layer", "completion_logits_fp32"}
    assert all(v > 0 for v in [*fixed.values(), *per_sequence.values()])
    assert est["fixed_gib"] == pytest.approx(sum(fixed.values()))
    assert est["per_sequence_gib"] == pytest.approx(sum(per_sequence.values()))
    assert est["total_gib"] == pytest.approx(est["fixed_gib"] + 8 * est["per_sequence_gib"])
    assert fixed["parameters_bf16"] * 2**30 == pytest.approx(2 * sum(est["parameters"].values()))
    assert fixed["head_fp32_copy"] * 2**30 == pytest.approx(4 * est["parameters"]["head"])
    text = full_size.SPECS[model]["text"]
    assert est["lora_parameters"] == _lora_by_shapes(text)  # peft on the meta model = the shapes' count
    assert est["parameters"]["head"] == text["vocab_size"] * text["hidden_size"]
    # the benchmark's real counts: 5 s of audio (125 positions) in the prompt, a completion of at least 200 tokens
    assert est["completion_tokens"] >= 200 and est["sequence_tokens"] > est["completion_tokens"] + 125
    assert 5 < est["total_gib"] < 40


def test_memory_estimate_by_hand():
    """Qwen2-Audio-7B at 427 tokens, 200 of them completion (the docstring's example), batch 8."""
    from bench import full_size

    est = full_size.memory_estimate(full_size.FULL, 8, 427, 200)
    fixed = 8_397_094_912 * 2 + 19_988_480 * 16 + 639_107_072 * 4
    per_sequence = 32 * 427 * 4096 * 2 + 427 * (10 * 4096 + 3 * 11008) * 2 + 3 * 201 * 156_032 * 4
    assert est["fixed_gib"] == pytest.approx(fixed / 2**30)
    assert est["per_sequence_gib"] == pytest.approx(per_sequence / 2**30)
    assert est["total_gib"] == pytest.approx((fixed + 8 * per_sequence) / 2**30)
    assert round(est["total_gib"], 1) == 22.4
    assert full_size.memory_estimate(full_size.FULL, 8, 427, 200, card_gib=80.0)["largest_batch"] == \
        int((80.0 - est["fixed_gib"]) // est["per_sequence_gib"])


def test_decode_bytes_by_hand():
    """The 7B in bf16, 16 rows at a mean context of 400: weights plus K and V of 32 layers x 32 heads x 128."""
    from bench import full_size

    counts = {"body": 6_500_000_000, "head": 640_000_000}
    expected = (6.5e9 + 6.4e8) * 2 + 32 * 2 * 32 * 128 * 400 * 16 * 2
    assert full_size.decode_bytes(counts, full_size.FULL["text"], 16, 400, 2) == pytest.approx(expected)


def test_full_size_config_is_the_published_one():
    """The values of Qwen/Qwen2-Audio-7B-Instruct's config.json, as transformers reads them."""
    from bench import full_size

    conf = full_size.qwen2_audio_config(full_size.FULL)
    a, t = conf.audio_config, conf.text_config
    assert (a.d_model, a.encoder_layers, a.encoder_attention_heads, a.encoder_ffn_dim, a.num_mel_bins) == \
        (1280, 32, 20, 5120, 128)
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads, t.intermediate_size,
            t.vocab_size) == (4096, 32, 32, 32, 11008, 156032)
    assert conf.audio_token_id == 151646 and t.rope_parameters["rope_theta"] == 10000.0


def test_largest_batch_search_finds_the_limit_with_few_tries():
    from bench import common

    tried = []

    def fits(b):
        tried.append(b)
        return b <= 20

    found = common.largest_batch(fits, 1, 64, cap_s=60)
    assert found["largest"] == 20 and not found["capped"]
    assert tried == [1, 2, 4, 8, 16, 32, 24, 20, 22, 21]
    assert common.largest_batch(lambda b: True, 1, 64, cap_s=60)["largest"] == 64


def test_report_timing_probe_sees_a_child_process_memory():
    from bench import report_timing

    mib = 150
    code = f"b = bytearray({mib} * 2**20); import time; time.sleep(0.6)"
    row = report_timing.time_stage("child", lambda: subprocess.run([sys.executable, "-c", code], check=True)
                                   and None, interval=0.05)
    assert row["peak_tree_rss_mib"] > mib  # the child's buffer, counted while it lived
    assert row["children_maxrss_mib"] > mib and row["seconds"] >= 0.6
