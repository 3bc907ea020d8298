"""The training loop: schedule, deterministic batches, and resume that matches a straight run."""

import math

import pytest
import torch

from ambinb import engine


def test_warmup_cosine_by_hand():
    # total 100, 3 % warm-up -> 3 warm-up steps: 1/3, 2/3, 1; then cosine over the remaining 97
    assert engine.warmup_cosine(0, 100, 0.03) == pytest.approx(1 / 3)
    assert engine.warmup_cosine(2, 100, 0.03) == pytest.approx(1.0)
    assert engine.warmup_cosine(3, 100, 0.03) == pytest.approx(1.0)
    assert engine.warmup_cosine(3 + 97 // 2, 100, 0.03) == pytest.approx(0.5 * (1 + math.cos(math.pi * 48 / 97)))
    assert engine.warmup_cosine(99, 100, 0.03) < 0.001


def test_micro_batches_cover_each_epoch_once_and_are_deterministic():
    n, bs = 10, 4
    stream = [i for g in range(5) for i in engine.micro_batch(g, n, bs, seed=3)]  # 20 items = 2 epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert stream[:10] != stream[10:]                       # a new permutation each epoch
    assert engine.micro_batch(2, n, bs, 3) == engine.micro_batch(2, n, bs, 3)
    assert engine.micro_batch(2, n, bs, 3) != engine.micro_batch(2, n, bs, 4)


class Regression:
    """y = w.x + noise; the loss uses dropout so that the RNG state matters for resume."""

    def __init__(self, n=32):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 5, generator=g)
        self.y = self.x @ torch.arange(5.0) + 0.1 * torch.randn(n, generator=g)

    def num_examples(self):
        return len(self.y)

    def loss(self, model, indices, step):
        pred = model(torch.nn.functional.dropout(self.x[indices], 0.1, training=True)).squeeze(-1)
        loss = ((pred - self.y[indices]) ** 2).mean()
        return loss, {"mse": float(loss.detach())}


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(5, 1)


def _tc(**kw):
    return engine.TrainConfig(lr=0.5, epochs=10, batch_size=8, grad_accum=2, checkpoint_every=3, seed=1, **kw)


def test_training_learns_and_logs(tmp_path):
    model = _model()
    history = engine.train(model, Regression(), _tc(), tmp_path, progress=False)
    assert len(history) == _tc().total_steps(32) == 20
    assert sum(r["loss"] for r in history[-5:]) / 5 < 0.2 * history[0]["loss"]
    assert [r["step"] for r in engine.read_log(tmp_path)] == list(range(1, 21))
    assert history[0]["lr"] == pytest.approx(0.5)  # ceil(20 * 0.03) = 1 warm-up step


def test_resume_after_a_stop_equals_a_straight_run(tmp_path):
    straight = _model()
    h1 = engine.train(straight, Regression(), _tc(), tmp_path / "a", progress=False)

    interrupted = _model()
    engine.train(interrupted, Regression(), _tc(), tmp_path / "b", progress=False, stop_at=8)  # dies after step 8
    assert [r["step"] for r in engine.read_log(tmp_path / "b")] == list(range(1, 7))  # last checkpoint: step 6
    resumed = _model()                                     # a fresh process: weights from the checkpoint
    h2 = engine.train(resumed, Regression(), _tc(), tmp_path / "b", progress=False)
    assert [r["step"] for r in h2] == list(range(1, 21))
    assert [r["loss"] for r in h2] == [r["loss"] for r in h1]   # bit-identical on the CPU
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_no_trainable_parameter_is_an_error(tmp_path):
    model = _model().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        engine.train(model, Regression(), _tc(), tmp_path, progress=False)


def test_a_checkpoint_from_another_model_is_refused(tmp_path):
    engine.train(_model(), Regression(), _tc(), tmp_path, progress=False, stop_at=4)
    other = torch.nn.Sequential(torch.nn.Linear(5, 1))
    with pytest.raises(ValueError, match="trainable parameters differ"):
        engine.train(other, Regression(), _tc(), tmp_path, progress=False)


def test_trackers_write_through_accelerate(tmp_path):
    acc = engine.make_accelerator({"device": "cpu", "trackers": "tensorboard"}, tmp_path)
    engine.train(_model(), Regression(), _tc(max_steps=3, trackers=["tensorboard"]), tmp_path, accelerator=acc,
                 progress=False)
    assert list(tmp_path.rglob("events.out.tfevents.*")), "no TensorBoard event file written"
