"""The decode loops on a CUDA device (marker ``gpu``, which ``make test`` deselects): the static and
the compiled loop give the dynamic loop's greedy tokens, seeded sampling is reproducible and its
first tokens follow the same distribution, and a step reads one value back to the host.

    .venv/bin/python -m pytest -m gpu tests/test_rollout_gpu.py

``AMBINB_TEST_DEVICE=cpu`` runs the same checks on the CPU (to check the test itself; the compiled
loop then compiles for the CPU, which takes minutes).
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest_model import CLASSES, encode_waves, tone

from ambinb import config, rollout, standin
from ambinb import model as model_mod

DEVICE = os.environ.get("AMBINB_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                                 reason="needs a CUDA device")]
TRANSCRIPTS = ["No way, not again.", "The train leaves at seven.", "I miss her so much."]


@pytest.fixture(scope="module")
def loaded():
    model, processor = model_mod.load_checkpoint(standin.ensure_tiny(config.resolve()), dtype="float32", device=DEVICE)
    waves = [tone(1.0, 180), tone(2.0, 320), tone(1.5, 500)]
    return model, processor, encode_waves(model, processor, waves, TRANSCRIPTS, CLASSES)


def _run(loaded, decode, greedy, budget=60, k=4, seed=5):
    model, processor, enc = loaded
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    return rollout.generate_group(model, processor.tokenizer, enc, k, budget, greedy, 1.0, 1.0, gen, decode=decode)


@pytest.mark.parametrize("decode", ["static", "compiled"])
def test_greedy_tokens_equal_the_dynamic_loops(loaded, decode):
    assert _run(loaded, decode, True) == _run(loaded, "dynamic", True)


@pytest.mark.parametrize("decode", ["dynamic", "static", "compiled"])
def test_seeded_sampling_is_reproducible_and_alike(loaded, decode):
    """Same seed, same tokens; and the first sampled token over 64 rows per utterance has the dynamic
    loop's distribution (kernels may differ between loops on a GPU, so equality is not asked)."""
    a, b = _run(loaded, decode, False, budget=20), _run(loaded, decode, False, budget=20)
    assert a == b
    firsts = [[ids[0] for ids, _ in group] for group in _run(loaded, decode, False, budget=1, k=64, seed=1)]
    ref = [[ids[0] for ids, _ in group] for group in _run(loaded, "dynamic", False, budget=1, k=64, seed=2)]
    for got, want in zip(firsts, ref):
        top = max(set(want), key=want.count)
        assert abs(got.count(top) - want.count(top)) <= 24  # binomial spread of 64 draws, generously


def _syncs(loaded, budget: int) -> int:
    """Synchronising calls CUDA's sync debug mode reports during one sampled rollout of ``budget`` tokens."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with pytest.warns(UserWarning) as seen:
            _run(loaded, "dynamic", False, budget=budget)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return len([w for w in seen if "synchroniz" in str(w.message)])


def test_one_host_sync_per_step_on_the_device(loaded):
    """Twelve more decode steps cost at most twelve more synchronising calls (the rows' stop codes),
    with a little slack for a row leaving the batch; the prefill's own calls cancel out."""
    if not DEVICE.startswith("cuda"):
        pytest.skip("CUDA's sync debug mode")
    _run(loaded, "dynamic", False, budget=16)  # warm-up
    short, long = _syncs(loaded, 4), _syncs(loaded, 16)
    assert long - short <= 12 + 2, f"{long - short} synchronising calls for 12 more steps"
