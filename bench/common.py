"""What every benchmark script shares: the device and its clock, memory peaks, versions, the common
command-line options, the result header, writing the JSON, and the small test signals.

A script imports this module (``from bench import common``), never another script::

    parser = common.parser(__doc__)                      # --device, --threads, --out
    args = parser.parse_args(argv)
    common.quiet_libraries(args.threads)
    seconds, out = common.timed(lambda: work(), args.device)   # synchronised on a GPU
    result = {**common.header("rollouts", args.device), "rows": rows}
    common.write("rollouts", args.device, result, args.out)  # bench/results/rollouts_<card>.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ambinb import audio as A  # noqa: E402
from ambinb import results  # noqa: E402

CLASSES = ["anger", "happiness", "sadness", "neutral"]
TRANSCRIPTS = ["I told you a hundred times!", "The train leaves at seven.", "I miss her so much.",
               "Sure, whenever you're ready.", "We got the house!", "The door was open."]
LIBRARIES = ("torch", "transformers", "peft", "trl", "accelerate", "tokenizers")


# --- the device ------------------------------------------------------------------------------

def is_cuda(device: str | torch.device | None = None) -> bool:
    """Whether ``device`` is a CUDA device (None: whether this machine has one)."""
    if device is None:
        return torch.cuda.is_available()
    return torch.device(device).type == "cuda"


def sync(device: str | torch.device | None = None) -> None:
    """Wait for the GPU's queued work (a no-op on the CPU), so a clock read after it is honest."""
    if is_cuda(device):
        torch.cuda.synchronize()


def timed(work: Callable[[], Any], device: str | torch.device | None = None) -> tuple[float, Any]:
    """``(seconds, result)`` of ``work()``, the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = work()
    sync(device)
    return time.perf_counter() - t0, out


def reset_peak(device: str | torch.device | None = None) -> None:
    """Empty the CUDA cache and restart the peak-memory count (no-op on the CPU)."""
    if is_cuda(device):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str | torch.device | None = None) -> float | None:
    """The CUDA peak memory since :func:`reset_peak`, GiB; None on the CPU."""
    return torch.cuda.max_memory_allocated() / 2**30 if is_cuda(device) else None


def is_oom(err: BaseException) -> bool:
    """True for a CUDA out-of-memory error (``torch.OutOfMemoryError`` or its message)."""
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


# --- options, header, output -----------------------------------------------------------------

def parser(doc: str | None, device: str = "cpu") -> argparse.ArgumentParser:
    """A parser described by the script's docstring's first line, with ``--device``, ``--threads``, ``--out``."""
    p = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    p.add_argument("--device", default=device, help=f"cpu or cuda (default {device or 'chosen by the script'})")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", default="", help="JSON path (default bench/results/<benchmark>_<device>.json)")
    return p


def group_parser(doc: str | None) -> argparse.ArgumentParser:
    """:func:`parser` with the group-rollout options: ``--k``, ``--utterances``, ``--seconds``, ``--max-new-tokens``."""
    p = parser(doc)
    p.add_argument("--k", type=int, nargs="+", default=[8], help="trajectories per utterance (several: one row each)")
    p.add_argument("--utterances", type=int, default=4)
    p.add_argument("--seconds", type=float, default=2.0, help="audio length per utterance")
    p.add_argument("--max-new-tokens", type=int, default=128)
    return p


def quiet_libraries(threads: int) -> None:
    """Set the torch threads and silence transformers' progress bars and notices, for a clean table."""
    torch.set_num_threads(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' renamed-argument notices


def versions() -> dict[str, str | None]:
    """The versions of the libraries a benchmark depends on (None for one not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def header(bench: str, device: str, **extra: Any) -> dict[str, Any]:
    """The fields every result starts with: benchmark, device and card, date, CPU, threads, load, versions, env."""
    return {"bench": bench, "device": device, "device_name": results.bench_device(device)[0],
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "load_average_before": list(os.getloadavg()),
            "versions": versions(), "env": results.env_info(device), **extra}


def write(bench: str, device: str, result: dict[str, Any], out: str = "") -> Path:
    """Write ``result`` to ``out`` or ``bench/results/<bench>_<card slug>.json`` (load average after added)."""
    result["load_average_after"] = list(os.getloadavg())
    return results.write_bench(bench, results.bench_device(device)[1], result, out)


# --- test signals ----------------------------------------------------------------------------

def waves(n: int, seconds: float) -> list[np.ndarray]:
    """``n`` distinct 16 kHz test signals (vibrato tones) of ``seconds`` each."""
    t = np.arange(int(seconds * A.SAMPLE_RATE)) / A.SAMPLE_RATE
    return [(0.3 * np.sin(2 * np.pi * (150 + 60 * i) * t + 3 * np.sin(2 * np.pi * 5 * t))).astype(np.float32)
            for i in range(n)]


# --- the card ----------------------------------------------------------------------------------

def _median_seconds(work: Callable[[], Any], device: str, cap_s: float, repeat: int = 10, runs: int = 50
                    ) -> tuple[float, int]:
    """Median seconds of one ``work()`` over timed groups of ``repeat`` calls (3 untimed calls first)."""
    for _ in range(3):
        work()
    times, start = [], time.perf_counter()
    while len(times) < runs and (not times or time.perf_counter() - start < cap_s):
        seconds, _ = timed(lambda: [work() for _ in range(repeat)], device)
        times.append(seconds / repeat)
    return float(np.median(times)), len(times)


def matmul_tflops(n: int, device: str, dtype: torch.dtype, cap_s: float) -> dict[str, Any]:
    """Measured dense matmul rate: 2 n^3 FLOPs per ``torch.matmul`` of two n x n matrices, median of runs.

    Example: n = 8192 takes 2 * 8192^3 = 1.1e12 FLOPs; done in 1.4 ms that is 785 TFLOP/s.
    """
    a = torch.randn((n, n), device=device, dtype=dtype)
    b = torch.randn((n, n), device=device, dtype=dtype)
    sec, runs = _median_seconds(lambda: torch.matmul(a, b), device, cap_s)
    return {"n": n, "dtype": str(dtype), "seconds_per_matmul": sec, "tflops": 2 * n**3 / sec / 1e12, "runs": runs}


def copy_bandwidth(n_bytes: int, device: str, cap_s: float) -> dict[str, Any]:
    """Measured memory bandwidth of a device-to-device copy: 2 x ``n_bytes`` moved (read + write) per copy.

    Example: copying 2 GiB in 1.3 ms moves 4 GiB: 3.3 TB/s.
    """
    src = torch.empty(n_bytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    sec, runs = _median_seconds(lambda: dst.copy_(src), device, cap_s)
    return {"bytes": n_bytes, "seconds_per_copy": sec, "bytes_per_s": 2 * n_bytes / sec, "runs": runs}


def largest_batch(try_batch: Callable[[int], bool], start: int, limit: int, cap_s: float) -> dict[str, Any]:
    """The largest batch in [start, limit] for which ``try_batch(b)`` is True: doubling, then bisection.

    Stops when ``cap_s`` seconds have passed; ``capped`` then says the answer is a lower bound.
    Example: with fits(b) = b <= 20, start 1, limit 64: tries 1, 2, 4, 8, 16, 32, 24, 20, 22, 21 -> 20.
    """
    t0 = time.perf_counter()
    tried: dict[int, bool] = {}
    good, bad = 0, limit + 1
    b = start
    while b <= limit:
        if time.perf_counter() - t0 > cap_s:
            return {"largest": good, "capped": True, "tried": tried}
        tried[b] = try_batch(b)
        if not tried[b]:
            bad = b
            break
        good, b = b, b * 2
    while bad - good > 1:
        if time.perf_counter() - t0 > cap_s:
            return {"largest": good, "capped": True, "tried": tried}
        mid = (good + bad) // 2
        tried[mid] = try_batch(mid)
        good, bad = (mid, bad) if tried[mid] else (good, mid)
    return {"largest": good, "capped": False, "tried": tried}


def tiny_model(cfg: dict[str, Any], device: str) -> tuple[Path, Any, Any]:
    """``(folder, model, processor)``: the tiny stand-in (built once by ``ensure_tiny``), float32 on ``device``."""
    from ambinb import model as model_mod
    from ambinb import standin

    folder = standin.ensure_tiny(cfg)
    model, processor = model_mod.load_checkpoint(folder, dtype="float32", device=device)
    return folder, model, processor


def train_step(strategy: Any, model: Any, optimizer: torch.optim.Optimizer, indices: list[int], step: int,
               device: str | torch.device | None = None) -> tuple[float, dict[str, float]]:
    """One optimizer step on ``strategy.loss(model, indices, step)``: its seconds (synchronised) and stats."""
    def work() -> dict[str, float]:
        loss, stats = strategy.loss(model, indices, step)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return stats

    return timed(work, device)
