"""The book's benchmark tables, written from ``bench/results/*.json`` when the book is assembled.

:func:`bench_tables` gives one section per benchmark (the command that runs it, then one table per
results file: the card, the date, the numbers), in the order of :data:`COMMANDS`; a results file of
a benchmark not listed there gets its own section without a table. ``book/benchmarks.md`` includes
the text that :func:`ambinb.book.assemble` writes from it::

    bench_tables("bench/results")   # -> Markdown
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ambinb.paths import project_root

# benchmark -> the one command that runs it (from the repository root)
COMMANDS = {
    "sft_vs_trl": ".venv/bin/python bench/sft_vs_trl.py --trl-tower",
    "dpo_vs_trl": ".venv/bin/python bench/dpo_vs_trl.py",
    "rollouts": ".venv/bin/python bench/rollouts.py",
    "grpo_step": ".venv/bin/python bench/grpo_step.py",
    "full_size": ".venv/bin/python bench/full_size.py",
    "report_timing": ".venv/bin/python bench/report_timing.py",
    "logprobs": ".venv/bin/python bench/logprobs.py",
}
TITLES = {
    "sft_vs_trl": "SFT: engine vs TRL's SFTTrainer (steps/s, tiny model)",
    "dpo_vs_trl": "DPO: engine vs TRL's DPOTrainer (steps/s, tiny model)",
    "rollouts": "Group rollouts: shared encoder and prefill vs naive (tiny model)",
    "grpo_step": "GRPO step: shared vs naive rollouts (tiny model)",
    "full_size": "Full size: a backbone's real architecture (the file says which), random weights, LoRA",
    "report_timing": "`make report`, stage by stage",
    "logprobs": "Token log-probs: row-wise log-softmax vs TRL's selective_log_softmax",
}


def fmt(x: Any, digits: int = 2) -> str:
    """A number for a table: ``digits`` decimals, thousands grouped from 1000 on; blank for None or NaN.

    Example: ``fmt(3.14159)`` -> ``"3.14"``; ``fmt(12345.6)`` -> ``"12,346"``; ``fmt(None)`` -> ``""``.
    """
    if x is None or isinstance(x, str):
        return x or ""
    x = float(x)
    if math.isnan(x):
        return ""
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.{digits}f}"


def ratio(r: dict[str, Any]) -> str:
    """A paired ratio ``{"median", "min", "max"}`` as ``1.09x (0.89-1.23)``."""
    return f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table. Example: ``table(["a"], [["1"]])`` -> ``"| a |\\n|---|\\n| 1 |\\n"``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def result_date(path: Path, data: dict[str, Any]) -> str:
    """When a result was measured: its ``date`` field, else the date git last committed the file, else its mtime."""
    if data.get("date"):
        return str(data["date"])[:10]
    try:
        done = subprocess.run(["git", "log", "-1", "--format=%cs", "--", path.name], cwd=path.parent,
                              capture_output=True, text=True, timeout=10)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip() + " (committed)"
    except (OSError, subprocess.SubprocessError):
        pass
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d") + " (file time)"


def _trainer_table(data: dict[str, Any], paths: list[str], names: dict[str, str]) -> str:
    present = [p for p in paths if p in data["rows"][0]]
    header = ["mode", *[f"{p} steps/s" for p in present], *[f"engine / {p}" for p in present if p != "engine"]]
    rows = [[row["mode"], *[fmt(row[p]["steps_per_s_median"]) for p in present],
             *[ratio(row[f"engine_over_{p}"]) for p in present if p != "engine"]] for row in data["rows"]]
    s = data.get("settings", {})
    note = (f"Median of {s.get('repeats', '?')} runs of {s.get('steps', '?')} timed steps, batch "
            f"{s.get('batch_size', '?')}, {data.get('torch_threads', '?')} torch thread(s); ratios: median (range) "
            "of the per-repetition ratios. " + " ".join(f"`{p}`: {names[p]}." for p in present if p in names))
    return table(header, rows) + "\n" + note + "\n"


def sft_vs_trl_table(data: dict[str, Any]) -> str:
    return _trainer_table(data, ["engine", "trl", "trl_tower"], {
        "trl": "SFTTrainer with ambinb's loss on the cached tower output",
        "trl_tower": "the same, running the frozen audio tower every step"})


def dpo_vs_trl_table(data: dict[str, Any]) -> str:
    return _trainer_table(data, ["engine", "trl", "trl_native"], {
        "trl": "DPOTrainer's loop with ambinb's DPO loss (same first loss)",
        "trl_native": "DPOTrainer's own loss (sigmoid + 0.1 NLL) and Qwen2-Audio's forward (tower every step)"})


def rollouts_table(data: dict[str, Any]) -> str:
    rows = [[str(r["k"]), str(r["utterances"]), fmt(r["naive_s"]), fmt(r.get("hf_batched_s")), fmt(r["shared_s"]),
             f"{fmt(r['speedup_wall'], 1)}x", f"{fmt(r['speedup_tokens_per_s'], 1)}x"] for r in data["rows"]]
    note = f"\n{data.get('max_new_tokens', '?')}-token budget, {data.get('seconds_audio', '?')} s audio.\n"
    return table(["K", "utterances", "naive s", "HF batched s", "shared s", "speed-up (wall)", "speed-up (tokens/s)"],
                 rows) + note


def grpo_step_table(data: dict[str, Any]) -> str:
    rows = [[str(r["k"]), str(r["utterances"]), fmt(r["naive_s"]), fmt(r["shared_s"]), f"{fmt(r['speedup_wall'], 1)}x",
             f"{fmt(r['speedup_tokens_per_s'], 1)}x", f"{r['naive_encoder_runs']} / {r['shared_encoder_runs']}"]
            for r in data["rows"]]
    return table(["K", "utterances", "naive step s", "shared step s", "speed-up (wall)", "speed-up (tokens/s)",
                  "encoder runs naive / shared"], rows) + (
        f"\nStrategy `{data.get('strategy', '?')}`, {data.get('max_new_tokens', '?')}-token budget.\n")


def _full_size_card(data: dict[str, Any]) -> list[str]:
    out = []
    if "matmul" in data:
        m = data["matmul"]
        out.append(f"Measured matmul rate ({m['dtype']}, {m['n']} x {m['n']}): **{fmt(m['tflops'], 1)} TFLOP/s** "
                   "(the MFU denominator).\n")
    if "bandwidth" in data:
        tbps = fmt(data["bandwidth"]["bytes_per_s"] / 1e12, 2)
        out.append(f"Measured copy bandwidth: **{tbps} TB/s** (read + write).\n")
    return out


def _full_size_decode(data: dict[str, Any]) -> list[str]:
    if "decode" not in data:
        return []
    rows = [[r["decode"], str(r["rows"]), str(r["steps"]), fmt(r["ms_per_step"]),
             ", ".join(f"{k} {fmt(v)}" for k, v in r["phases_ms_per_step"].items()), fmt(r.get("peak_gib"), 1)]
            if "error" not in r else [r["decode"], str(r["rows"]), "", "", f"failed: `{r['error'][:120]}`", ""]
            for r in data["decode"]]
    out = [table(["loop", "rows", "steps", "ms / step", "phases (ms / step)", "peak GiB"], rows)]
    floor = data.get("decode_floor")
    if floor:
        out.append(f"Memory floor of a step: {fmt(floor['bytes_per_step'] / 1e9, 2)} GB read (weights and the KV cache "
                   f"at a mean context of {fmt(floor['mean_context'], 0)}) at the measured bandwidth: "
                   f"**{fmt(floor['ms'], 2)} ms**.\n")
    return out


def _full_size_sft(data: dict[str, Any]) -> list[str]:
    if "sft" not in data:
        return []
    st = data.get("settings", {})
    prompt_tokens = data.get("prompt_tokens", st.get("prompt_tokens", "?"))
    completion_tokens = data.get("completion_tokens", st.get("completion_tokens", "?"))
    trainable = fmt(data.get("parameters", {}).get("trainable", 0) / 1e6, 1)
    return [f"SFT step on sequences of {data.get('sequence_tokens', '?')} tokens ({fmt(st.get('audio_seconds'), 1)} s "
            f"of audio = {data.get('audio_tokens', '?')} audio tokens, {prompt_tokens} prompt and {completion_tokens} "
            f"completion tokens), tower output cached; AdamW on the LoRA parameters ({trainable} M).\n",
            table(["activation checkpointing", "batch", "s / step", "tokens/s", "MFU", "peak GiB"],
                  [["on" if r["activation_checkpointing"] else "off", str(r["batch"]), fmt(r["seconds_per_step"], 3),
                    fmt(r["tokens_per_s"], 0), fmt(r["mfu"], 3), fmt(r["peak_memory_gib"], 1)] for r in data["sft"]])]


def _full_size_grpo(data: dict[str, Any]) -> list[str]:
    out = []
    if "grpo" in data:
        g = data["grpo"]
        parts = ", ".join(f"{k} {fmt(v)} s" for k, v in g["seconds"].items())
        loop = f", decode loop `{g['decode']}`" if g.get("decode") else ""
        out.append(f"GRPO step, K = {g['k']}, {g['utterances']} utterances, {g['max_new_tokens']}-token budget{loop}: "
                   f"{fmt(g['step_seconds'])} s ({parts}); rollout {fmt(g['rollout_tokens_per_s'], 0)} tokens/s; "
                   f"encoder share {fmt(100 * g['encoder_share'], 1)} %; peak {fmt(g.get('peak_memory_gib'), 1)} GiB"
                   + (", activation checkpointing on" if g.get("activation_checkpointing") else "") + ".\n")
    out += [f"{name} failed: `{data[f'{name}_error'][:160]}`\n" for name in ("decode", "sft", "grpo", "max_batch")
            if f"{name}_error" in data]
    return out


def full_size_table(data: dict[str, Any]) -> str:
    """One full-size result: the card's rates, the decode loops and their floor, SFT, GRPO, the largest batch."""
    out = _full_size_card(data) + _full_size_decode(data) + _full_size_sft(data) + _full_size_grpo(data)
    if "max_batch" in data:
        out.append(table(["activation checkpointing", "largest SFT batch"],
                         [["on" if r["activation_checkpointing"] else "off",
                           f"{r['largest']}{' (search capped: at least)' if r['capped'] else ''}"]
                          for r in data["max_batch"]]))
    if "total_seconds" in data:
        build = fmt(data.get("build_seconds"), 1)
        out.append(f"Whole run: {fmt(data['total_seconds'], 0)} s (model build {build} s).\n")
    return "\n".join(out)


# the numbers compared turn over turn (issue 17): key -> (label, digits)
KEYS = {"decode_ms_per_step": ("decode step, ms (16 rows)", 1), "decode_floor_ms": ("its memory floor, ms", 1),
        "rollout_tokens_per_s": ("rollout tokens/s", 0), "grpo_step_s": ("GRPO step, s (K = 8, 2 utterances)", 1),
        "sft_tokens_per_s": ("SFT tokens/s", 0), "sft_mfu": ("SFT MFU", 2)}


def full_size_keys(data: dict[str, Any]) -> dict[str, Any]:
    """The :data:`KEYS` of a full-size result and ``peak_gib`` per section; from the sections of a file
    written before the keys existed (None where it did not measure one: the decode step and its floor).

    Example: a file with ``grpo.step_seconds`` 38.3 and no ``grpo_step_s`` -> ``{"grpo_step_s": 38.3, ...}``.
    """
    if "grpo_step_s" in data or "decode_ms_per_step" in data:
        return {**{k: data.get(k) for k in KEYS}, "peak_gib": data.get("peak_gib") or {}}
    g, sft = data.get("grpo") or {}, data.get("sft") or []
    fast = max(sft, key=lambda r: r["tokens_per_s"]) if sft else {}
    return {"decode_ms_per_step": None, "decode_floor_ms": None,
            "rollout_tokens_per_s": g.get("rollout_tokens_per_s"), "grpo_step_s": g.get("step_seconds"),
            "sft_tokens_per_s": fast.get("tokens_per_s"), "sft_mfu": fast.get("mfu"),
            "peak_gib": {"grpo": g.get("peak_memory_gib"), "sft": fast.get("peak_memory_gib")}}


def full_size_comparison(found: list[tuple[Path, dict[str, Any]]]) -> str:
    """One table of the :data:`KEYS` (and peak memory) with a column per full-size results file, oldest first."""
    runs = sorted((result_date(p, d), d.get("device_name") or d.get("device"), full_size_keys(d)) for p, d in found)
    header = ["", *[f"{card}, {date[:10]}" for date, card, _ in runs]]
    rows = [[label, *[fmt(keys[k], digits) for _, _, keys in runs]] for k, (label, digits) in KEYS.items()]
    for part in ("decode", "grpo", "sft"):
        rows.append([f"peak GiB ({part})", *[fmt(keys["peak_gib"].get(part), 1) for _, _, keys in runs]])
    return "### Turn over turn\n\n" + table(header, rows) + (
        "\nA blank cell: not measured by that run (the decode step and its floor were added later).\n")


def report_timing_table(data: dict[str, Any]) -> str:
    rows = [[s["stage"], fmt(s["seconds"], 1), fmt(s["peak_tree_rss_mib"], 0), "yes" if s.get("kept") else ""]
            for s in data["stages"]]
    rows.append(["**total**", fmt(data["total_seconds"], 1), fmt(data["peak_tree_rss_mib"], 0), ""])
    return table(["stage", "seconds", "peak RSS MiB (process tree)", "kept from before"], rows) + (
        f"\nSweep `{data.get('sweep', '?')}`{', reusing an earlier run' if data.get('reuse') else ', from nothing'}.\n")


def logprobs_table(data: dict[str, Any]) -> str:
    def row(r: dict[str, Any]) -> list[str]:
        med, ratio = r["median_seconds"], r["trl_over_ambinb"]
        return [f"{r['positions']:,} x {r['vocab']:,}", fmt(med["ambinb_forward"], 4), fmt(med["trl_forward"], 4),
                f"{ratio['forward']:.2f}x", fmt(med["ambinb_forward_backward"], 4),
                fmt(med["trl_forward_backward"], 4), f"{ratio['forward_backward']:.2f}x"]

    repeats = data["rows"][0]["repeats"] if data["rows"] else "?"
    return table(["positions x vocabulary", "forward s", "TRL forward s", "TRL / ambinb", "with backward s",
                  "TRL with backward s", "TRL / ambinb"], [row(r) for r in data["rows"]]) + (
        f"\nMedians of {repeats} alternating calls, {data.get('torch_threads', '?')} torch thread(s).\n")


TABLES: dict[str, Callable[[dict[str, Any]], str]] = {
    "sft_vs_trl": sft_vs_trl_table, "dpo_vs_trl": dpo_vs_trl_table, "rollouts": rollouts_table,
    "grpo_step": grpo_step_table, "full_size": full_size_table, "report_timing": report_timing_table,
    "logprobs": logprobs_table,
}


def load_results(folder: str | os.PathLike) -> list[tuple[Path, dict[str, Any]]]:
    """Every ``*.json`` in ``folder`` that names its ``bench``, sorted by file name; smoke runs left out.

    Raises:
        ValueError: a file that is not valid JSON, naming it.
    """
    out = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except ValueError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        if isinstance(data, dict) and data.get("bench") and not data.get("smoke"):
            out.append((path, data))
    return out


def bench_tables(folder: str | os.PathLike | None = None) -> str:
    """The Markdown of every benchmark's section (see the module docstring); ``folder`` default ``bench/results``."""
    folder = Path(folder) if folder else project_root() / "bench" / "results"
    found = load_results(folder) if folder.is_dir() else []
    names = list(COMMANDS) + sorted({d["bench"] for _, d in found} - set(COMMANDS))
    parts = []
    for name in names:
        mine = [(p, d) for p, d in found if d["bench"] == name]
        section = f"## {TITLES.get(name, name)}\n\nRun: `{COMMANDS.get(name, f'bench/{name}.py')}`\n"
        if not mine:
            section += "\nNo results yet.\n"
        if name == "full_size" and mine:
            section += "\n" + full_size_comparison(mine)
        for path, data in mine:
            card = data.get("device_name") or data.get("device") or "unknown device"
            section += f"\n### {card}, {result_date(path, data)}\n\nFrom `bench/results/{path.name}`.\n\n"
            maker = TABLES.get(name)
            try:
                section += maker(data) if maker else "(no table for this benchmark; see the JSON file)\n"
            except (KeyError, IndexError, TypeError) as err:
                section += f"(this file's layout is not the one the table expects: {type(err).__name__} {err})\n"
        parts.append(section)
    return "\n".join(parts)
