"""Token log-probs: ambinb's row-wise log-softmax against TRL's selective_log_softmax, forward and backward.

    .venv/bin/python bench/logprobs.py                          # the toy GRPO step's shape and a batch of 8, CPU
    .venv/bin/python bench/logprobs.py --shapes 10240x1610 --repeats 9
    .venv/bin/python bench/logprobs.py --device cuda --shapes 2048x156032

:func:`ambinb.losses.token_logprobs` is the per-token log-prob of every strategy (SFT's CE, DPO's
sequence log-probs, GRPO's ratios). It takes ``log_softmax(row).gather(targets)`` one batch row at a
time; TRL's ``selective_log_softmax`` (trl/trainer/utils.py) takes ``gather - logsumexp``. Both keep one
(positions x vocabulary) tensor for the backward pass. Each shape ``PxV`` is a (1, P, V) float32
logits tensor with random targets: the forward, and the forward with the backward of a weighted sum,
each timed alternately on both paths, ``--repeats`` times; the table gives the medians and the ratio
TRL / ambinb of the medians (above 1: ambinb is faster). The default shapes: 10240 x 1610 (the toy
GRPO step: 8 utterances x 8 trajectories x about 160 completion tokens, the stand-in's vocabulary)
and 1280 x 1610 (an SFT batch). Results go to ``bench/results/logprobs_<device>.json``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ambinb import losses  # noqa: E402
from bench import common  # noqa: E402


def trl_path() -> Any:
    from trl.trainer.utils import selective_log_softmax  # heavy

    return selective_log_softmax


def seconds(fn: Any, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, backward: bool,
            device: str) -> float:
    """One timed call of ``fn(logits, targets)`` (with the backward of ``sum(weights * out)`` when asked)."""
    x = logits.detach().requires_grad_(backward)
    common.sync(device)
    start = time.perf_counter()
    if backward:
        (fn(x, targets) * weights).sum().backward()
    else:
        with torch.no_grad():
            fn(x, targets)
    common.sync(device)
    return time.perf_counter() - start


def measure(positions: int, vocab: int, repeats: int, device: str) -> dict[str, Any]:
    """Median seconds of both paths on one shape, alternating the order between repetitions."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn((1, positions, vocab), generator=g).to(device)
    targets = torch.randint(0, vocab, (1, positions), generator=g).to(device)
    weights = torch.randn((1, positions), generator=g).to(device)
    paths = {"ambinb": losses.token_logprobs, "trl": trl_path()}
    torch.testing.assert_close(paths["ambinb"](logits, targets), paths["trl"](logits, targets))
    times: dict[str, list[float]] = {f"{p}_{m}": [] for p in paths for m in ("forward", "forward_backward")}
    for rep in range(repeats + 1):  # the first round warms up and is not kept
        order = list(paths) if rep % 2 == 0 else list(reversed(paths))
        for name in order:
            for mode, backward in (("forward", False), ("forward_backward", True)):
                sec = seconds(paths[name], logits, targets, weights, backward, device)
                if rep:
                    times[f"{name}_{mode}"].append(sec)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"positions": positions, "vocab": vocab, "repeats": repeats, "median_seconds": med,
            "trl_over_ambinb": {m: med[f"trl_{m}"] / med[f"ambinb_{m}"] for m in ("forward", "forward_backward")}}


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--shapes", nargs="+", default=["10240x1610", "1280x1610"], help="PxV: positions x vocabulary")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    common.quiet_libraries(args.threads)
    rows = []
    for shape in args.shapes:
        positions, vocab = (int(v) for v in shape.lower().split("x"))
        row = measure(positions, vocab, args.repeats, args.device)
        rows.append(row)
        med, ratio = row["median_seconds"], row["trl_over_ambinb"]
        print(f"{positions:>7} x {vocab:<7} forward {med['ambinb_forward']:.4f} s (TRL {med['trl_forward']:.4f}, "
              f"x{ratio['forward']:.2f})  forward+backward {med['ambinb_forward_backward']:.4f} s "
              f"(TRL {med['trl_forward_backward']:.4f}, x{ratio['forward_backward']:.2f})")
    path = common.write("logprobs", args.device, {**common.header("logprobs", args.device), "rows": rows}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
