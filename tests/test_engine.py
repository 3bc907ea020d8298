"""The training loop: schedule, deterministic batches, resume that matches a straight run, the micro-batch
index it passes, and the faults it stops on (a non-finite step, a full disk while checkpointing)."""

import math
import re

import pytest
import torch
from full_disk import small_disk  # noqa: F401

from ambinb import config, engine


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

    def utt_ids(self, indices):
        return [f"u{i}" for i in indices]

    def loss(self, model, indices, step, micro):
        pred = model(torch.nn.functional.dropout(self.x[indices], 0.1, training=True)).squeeze(-1)
        loss = ((pred - self.y[indices]) ** 2).mean()
        return loss, {"mse": float(loss.detach())}


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(5, 1)


def _tc(**kw):
    return engine.TrainConfig.with_defaults(lr=0.5, epochs=10, batch_size=8, grad_accum=2, checkpoint_every=3, seed=1,
                                            **kw)


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
    acc = engine.make_accelerator({**config.defaults(), "device": "cpu", "trackers": "tensorboard"}, tmp_path)
    engine.train(_model(), Regression(), _tc(max_steps=3, trackers=["tensorboard"]), tmp_path, accelerator=acc,
                 progress=False)
    assert list(tmp_path.rglob("events.out.tfevents.*")), "no TensorBoard event file written"


class Recording(Regression):
    """Records the (step, micro) of every call; ``poison`` makes the loss or only the gradient NaN at a step."""

    def __init__(self, poison_step=None, where="loss"):
        super().__init__()
        self.calls, self.poison_step, self.where = [], poison_step, where

    def loss(self, model, indices, step, micro):
        self.calls.append((step, micro))
        loss, stats = super().loss(model, indices, step, micro)
        if step == self.poison_step:
            if self.where == "loss":
                loss = loss * float("nan")
            else:  # finite value, NaN gradient: d sqrt(x)/dx at 0 is inf, times 0 is NaN
                w = next(model.parameters())
                loss = loss + 0.0 * torch.sqrt((w - w.detach()).sum())
        return loss, stats


def test_the_engine_passes_each_micro_batch_its_index(tmp_path):
    model, strategy = _model(), Recording()
    tc = engine.TrainConfig.with_defaults(lr=0.1, max_steps=3, batch_size=4, grad_accum=3)
    engine.train(model, strategy, tc, tmp_path, progress=False)
    assert strategy.calls == [(s, m) for s in range(3) for m in range(3)]


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_a_non_finite_step_stops_before_the_optimizer_and_the_checkpoint(tmp_path, where):
    """Step 5 (0-based 4) goes NaN; checkpoints every 3 steps. The error names the step and the batch's
    utterances, the weights stay finite (no optimizer step on NaN gradients), and the checkpoint and
    the log still hold step 3; a resume after fixing the data carries on from there."""
    model = _model()
    message = r"step 5: the loss is (nan|[\d.e+-]+) and the gradient norm nan"
    with pytest.raises(engine.NonFiniteError, match=message) as err:
        engine.train(model, Recording(poison_step=4, where=where), _tc(), tmp_path, progress=False)
    batch = [f"u{i}" for m in range(2) for i in engine.micro_batch(4 * 2 + m, 32, 8, seed=1)]
    assert str(sorted(set(batch))) in str(err.value)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    state = torch.load(tmp_path / engine.CHECKPOINT, weights_only=False)
    assert state["step"] == 3 and all(torch.isfinite(v).all() for v in state["params"].values())
    assert [r["step"] for r in engine.read_log(tmp_path)] == [1, 2, 3]
    resumed = engine.train(_model(), Recording(), _tc(), tmp_path, progress=False)
    assert [r["step"] for r in resumed] == list(range(1, 21))


class Padded(torch.nn.Module):
    """The regression's Linear(5, 1) beside 14,000 trainable zeros that the loss weighs by 0: a checkpoint
    (weights and Adam's two moments) of ~180 KB, so a 256 KiB disk holds one but not a second beside it."""

    def __init__(self):
        super().__init__()
        self.linear = _model()
        self.pad = torch.nn.Parameter(torch.zeros(14_000))

    def forward(self, x):
        return self.linear(x) + 0.0 * self.pad.sum()


def test_a_full_disk_while_checkpointing_says_so_and_leaves_the_last_checkpoint(small_disk):  # noqa: F811
    """The run folder is a 256 KiB tmpfs: the checkpoint of step 3 fits, the temporary one of step 6 fills
    the disk inside torch.save, which raises "RuntimeError: [enforce fail at inline_container.cc:672] .
    unexpected pos ...". The user reads that the disk is full, with the path; no temporary file is left,
    and checkpoint.pt and the log still hold step 3."""
    run = small_disk
    with pytest.raises(OSError, match=re.escape(f"no space left on device while writing {run / engine.CHECKPOINT}")) \
            as info:
        engine.train(Padded(), Regression(), _tc(), run, progress=False)
    assert "unexpected pos" in str(info.value.__cause__), "torch.save's own error, not an ENOSPC"
    assert sorted(p.name for p in run.iterdir()) == [engine.CHECKPOINT, engine.TRAIN_LOG]
    assert torch.load(run / engine.CHECKPOINT, weights_only=False)["step"] == 3
    assert [r["step"] for r in engine.read_log(run)] == [1, 2, 3]


def test_train_config_reads_every_key_from_the_params():
    cfg = config.resolve(overrides={"lr": 1e-3, "lr_scale": 2.0, "trackers": "tensorboard, wandb", "grad_accum": 3})
    tc = engine.TrainConfig.from_cfg(cfg)
    assert tc.lr == pytest.approx(2e-3) and tc.grad_accum == 3 and tc.trackers == ["tensorboard", "wandb"]
    assert engine.tracker_names({"trackers": ""}) == []


def test_train_config_takes_its_defaults_from_defaults_yaml():
    """TrainConfig declares no defaults of its own; with_defaults reads params/defaults.yaml."""
    import dataclasses

    assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               for f in dataclasses.fields(engine.TrainConfig))
    declared = config.defaults()
    tc = engine.TrainConfig.with_defaults(lr=0.25)
    assert tc.lr == 0.25 and tc.batch_size == declared["batch_size"] and tc.grad_accum == declared["grad_accum"]
    assert tc.warmup_ratio == declared["warmup_ratio"] and tc.checkpoint_every == declared["checkpoint_every"]
