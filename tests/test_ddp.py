"""Several processes: two gloo processes through ``engine.train`` take the same steps as one process.

The engine gives process r of W the micro-batch g = (step * grad_accum + micro) * W + r, each a
fixed slice of ``batch_size`` items of the seeded example stream (``engine.micro_batch``). With
W = 2, grad_accum = 1 and batch b, step s therefore covers stream items [2sb, 2sb + 2b): rank 0 the
first b, rank 1 the next b. One process with grad_accum = 2 and batch b draws the same two slices
(g = 2s, 2s + 1) in one step, and one process with batch 2b draws the same 2b items as one slice
(g = s). The strategy's loss is a per-example mean, so the mean of the two ranks' gradients equals
the gradient of the mean over the 2b items: all three runs must log the same losses and end with
the same parameters (up to float32 summation order). A run of one process with batch b (half the
data per step) is the control that the comparison can fail.
"""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from ambinb import config, engine
from ambinb.paths import params_dir

N, B, STEPS = 24, 3, 4


class MeanSquares:
    """A deterministic per-example mean loss on fixed data (no dropout, no sampling)."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(N, 5, generator=g)
        self.y = torch.sin(self.x @ torch.arange(1.0, 6.0)) + 0.1 * torch.randn(N, generator=g)

    def num_examples(self):
        return N

    def utt_ids(self, indices):
        return [f"u{i}" for i in indices]

    def loss(self, model, indices, step, micro):
        err = model(self.x[indices]).squeeze(-1) - self.y[indices]
        loss = (err ** 2).mean()
        return loss, {"abs_err": float(err.abs().mean().detach())}


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def _tc(batch_size, grad_accum):
    # max_grad_norm is set low enough that clipping is active on some steps: it must act on the averaged gradient
    return engine.TrainConfig.with_defaults(lr=0.2, max_steps=STEPS, batch_size=batch_size, grad_accum=grad_accum,
                              max_grad_norm=0.5, checkpoint_every=100, seed=7)


def _worker(rank, world, port, out_dir, result_dir):
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world),
                       "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)
    accelerator = engine.make_accelerator({**config.defaults(), "device": "cpu"}, out_dir)
    assert accelerator.num_processes == world and accelerator.process_index == rank
    # rank 1 starts from other weights: the engine must broadcast process 0's before the first step
    model = _model(0 if rank == 0 else 123)
    history = engine.train(model, MeanSquares(), _tc(B, 1), out_dir, accelerator, resume=False, progress=False)
    torch.save({"history": history, "params": {n: p.detach().clone() for n, p in model.named_parameters()},
                "device": engine.place({"device": "auto"}, accelerator)["device"]},
               os.path.join(result_dir, f"rank{rank}.pt"))
    accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single(tmp_path, name, batch_size, grad_accum):
    model = _model(0)
    history = engine.train(model, MeanSquares(), _tc(batch_size, grad_accum), tmp_path / name, resume=False,
                           progress=False)
    return history, dict(model.named_parameters())


def test_two_gloo_processes_take_the_steps_of_one(tmp_path):
    out, res = tmp_path / "ddp", tmp_path / "res"
    res.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(out), str(res)), nprocs=2, join=True)
    ranks = [torch.load(res / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["device"] for r in ranks] == ["cpu", "cpu"]

    for name, (hist, params) in {"grad_accum 2": _single(tmp_path, "accum", B, 2),
                                 "batch 2b": _single(tmp_path, "wide", 2 * B, 1)}.items():
        for r in ranks:
            assert len(r["history"]) == STEPS
            for got, want in zip(r["history"], hist):
                for key in ("loss", "abs_err", "grad_norm", "lr"):
                    assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), (name, key, got["step"])
            for n, p in params.items():
                torch.testing.assert_close(r["params"][n], p.detach(), rtol=1e-5, atol=1e-6, msg=f"{name}: {n}")
    # the log and the checkpoint are written once, by process 0, and hold the averaged losses
    assert [row["loss"] for row in engine.read_log(out)] == pytest.approx([row["loss"] for row in ranks[0]["history"]])
    assert (out / engine.CHECKPOINT).exists()

    # control: one process with batch b sees half of each step's data and ends elsewhere
    hist, params = _single(tmp_path, "half", B, 1)
    assert hist[0]["loss"] != pytest.approx(ranks[0]["history"][0]["loss"], rel=1e-3)
    assert not torch.allclose(params["2.weight"].detach(), ranks[0]["params"]["2.weight"], rtol=1e-3, atol=1e-4)


def test_process_device_gives_each_process_its_own():
    assert engine.process_device("auto", 1, "cuda:0") == "auto"          # one process: as given
    assert engine.process_device("cuda:1", 1, "cuda:0") == "cuda:1"
    assert engine.process_device("auto", 4, "cuda:2") == "cuda:2"        # several: the process's own GPU
    assert engine.process_device("cuda", 4, "cuda:3") == "cuda:3"
    assert engine.process_device("cuda:2", 4, "cuda:2") == "cuda:2"
    assert engine.process_device("cpu", 4, "cuda:2") == "cpu"
    assert engine.process_device("auto", 2, "cpu:0") == "cpu"            # gloo on CPUs
    with pytest.raises(ValueError, match="device='cuda:0' but this is one of 4 processes, whose own device is cuda:2"):
        engine.process_device("cuda:0", 4, "cuda:2")


def test_sharded_launch_is_refused(tmp_path):
    from accelerate.utils import DistributedType

    class FakeDeepSpeed:
        distributed_type = DistributedType.DEEPSPEED

    with pytest.raises(NotImplementedError, match="DEEPSPEED.*params/accelerate/ddp.yaml"):
        engine.train(_model(0), MeanSquares(), _tc(B, 1), tmp_path, FakeDeepSpeed(), progress=False)


def _sft_worker(rank, world, port, root, result_dir):
    from ambinb import run

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world),
                       "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)
    out = run.run(_sft_cfg(root, "ddp", grad_accum=1), progress=False)
    torch.save({"history": out["history"], "metrics": out["metrics"]}, os.path.join(result_dir, f"sft{rank}.pt"))


def _sft_cfg(root, name, grad_accum):
    return config.resolve(dataset="toy", strategy="sft_nocot", fold=1, data_root=str(root / "toy"),
                          run_root=str(root / name), overrides={
                              "toy_n": 100, "toy_seed": 1, "max_steps": 3, "batch_size": 2, "grad_accum": grad_accum,
                              "lora_dropout": 0.0, "eval_max_utterances": 4, "device": "auto"})


@pytest.mark.slow
def test_two_processes_run_sft_once_and_evaluate_on_process_0(tmp_path):
    """The real run (run.train_and_evaluate on the tiny model): two gloo processes log the losses of one
    process with grad_accum 2, and only process 0 saves the adapter and writes metrics.json."""
    from ambinb import results, run

    res = tmp_path / "res"
    res.mkdir()
    mp.spawn(_sft_worker, args=(2, _free_port(), tmp_path, str(res)), nprocs=2, join=True)
    ranks = [torch.load(res / f"sft{r}.pt", weights_only=False) for r in range(2)]
    assert ranks[0]["metrics"] is not None and ranks[1]["metrics"] is None
    assert results.is_finished(tmp_path / "ddp" / "toy" / "sft_nocot" / "fold1")
    torch.set_num_threads(1)
    single = run.run(_sft_cfg(tmp_path, "one", grad_accum=2), progress=False)
    for r in ranks:
        assert [row["loss"] for row in r["history"]] == pytest.approx([row["loss"] for row in single["history"]],
                                                                      rel=1e-4)
    assert ranks[0]["metrics"]["metrics"]["js"] == pytest.approx(single["metrics"]["metrics"]["js"], abs=1e-4)


def _launch_args(name, *extra):
    """What ``accelerate launch --config_file params/accelerate/<name>.yaml *extra x.py`` resolves to,
    through accelerate's own parser and validation (nothing is started)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(params_dir() / "accelerate" / f"{name}.yaml"),
                                               *extra, "x.py"])
    return _validate_launch_command(args)


def test_ddp_config_launches_data_parallel_with_the_given_process_count():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType
    from accelerate.utils.launch import prepare_multi_gpu_env

    loaded = load_config_from_file(str(params_dir() / "accelerate" / "ddp.yaml"))
    assert loaded.distributed_type == DistributedType.MULTI_GPU and loaded.deepspeed_config == {}
    args, _, _ = _launch_args("ddp", "--num_processes", "4")
    assert args.multi_gpu and not args.use_deepspeed and not args.use_fsdp and args.num_processes == 4
    assert prepare_multi_gpu_env(args)["ACCELERATE_MIXED_PRECISION"] == "bf16"
    with pytest.raises(ValueError, match="--num_processes"):  # no silent default GPU count
        _launch_args("ddp")
