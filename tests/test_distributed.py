"""Several processes per training job (kdsweep.distributed): shares of every batch, BatchNorm and dropout
over the whole batch, and a 2-process distillation (gloo, CPU) against one process, killed and resumed."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import run_kdsweep
from kdsweep import distributed
from kdsweep.distributed import GlobalBatchDropout, GlobalBatchNorm, Processes
from kdsweep.sources import Batch, epoch_batches


def test_the_processes_shares_of_a_batch_are_contiguous_and_cover_it():
    for world in (1, 2, 3, 4):
        for start, end in ((0, 64), (64, 101), (300, 302)):
            shares = [Processes(rank, world).share(start, end) for rank in range(world)]
            assert shares[0][0] == start and shares[-1][1] == end
            assert all(a[1] == b[0] for a, b in zip(shares, shares[1:]))
            assert max(h - lo for lo, h in shares) - min(h - lo for lo, h in shares) <= 1


def test_a_last_batch_smaller_than_the_processes_joins_the_one_before():
    assert epoch_batches(361, 60) == epoch_batches(361, 60, 1)  # one process: as always
    assert epoch_batches(361, 60, 1)[-2:] == [(240, 300), (300, 361)]
    assert epoch_batches(303, 60, 4)[-2:] == [(180, 240), (240, 303)]  # 3 images < 4 processes
    assert epoch_batches(304, 60, 4)[-1] == (300, 304)


def test_dropout_applies_the_rows_of_the_one_process_mask():
    """GlobalBatchDropout's rows offset..offset+n of a 10-image batch are F.dropout's on the whole batch,
    from the same RNG state (torch's CPU dropout: empty_like(x).bernoulli_(1 - p) / (1 - p))."""
    x = torch.randn(10, 7)
    torch.manual_seed(5)
    whole = F.dropout(x, 0.3, training=True)
    layer = GlobalBatchDropout(0.3)
    for offset, n in ((0, 5), (5, 5), (3, 4)):
        torch.manual_seed(5)
        with distributed.batch_share(Batch(torch.empty(0), torch.empty(n), offset, 10, processes=2)):
            share = layer(x[offset:offset + n])
        assert torch.equal(share, whole[offset:offset + n])
    # one process (no share): plain dropout
    torch.manual_seed(5)
    assert torch.equal(layer(x), whole)


def _global_batchnorm(rank, world, path, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    torch.manual_seed(0)
    x = (torch.randn(10, 3, 4, 5) * 3 + 1).requires_grad_()
    weight = torch.randn(10, 3, 4, 5)
    layer = GlobalBatchNorm(3, momentum=0.1)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5), layer.bias.uniform_(-1, 1)
    low, high = Processes(rank, world).share(0, 10)
    share = x[low:high].detach().requires_grad_()
    out = layer(share)
    (out * weight[low:high]).sum().backward()
    dist.all_reduce(layer.weight.grad), dist.all_reduce(layer.bias.grad)
    results[rank] = {"out": out.detach(), "x_grad": share.grad, "w_grad": layer.weight.grad, "b_grad": layer.bias.grad,
                     "mean": layer.running_mean.clone(), "var": layer.running_var.clone()}
    dist.destroy_process_group()


def test_batchnorm_over_the_processes_is_batchnorm_of_the_whole_batch(tmp_path):
    """Two gloo processes, each with half a batch: outputs, gradients and running statistics those of
    torch's BatchNorm2d on the whole batch."""
    import torch.multiprocessing as mp

    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_global_batchnorm, args=(2, tmp_path / "rendezvous", results), nprocs=2)
    torch.manual_seed(0)
    x = (torch.randn(10, 3, 4, 5) * 3 + 1).requires_grad_()
    weight = torch.randn(10, 3, 4, 5)
    layer = nn.BatchNorm2d(3, momentum=0.1)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5), layer.bias.uniform_(-1, 1)
    out = layer(x)
    (out * weight).sum().backward()
    close = {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(torch.cat([results[0]["out"], results[1]["out"]]), out.detach(), **close)
    torch.testing.assert_close(torch.cat([results[0]["x_grad"], results[1]["x_grad"]]), x.grad, **close)
    for rank in (0, 1):
        torch.testing.assert_close(results[rank]["w_grad"], layer.weight.grad, **close)
        torch.testing.assert_close(results[rank]["b_grad"], layer.bias.grad, **close)
        torch.testing.assert_close(results[rank]["mean"], layer.running_mean, **close)
        torch.testing.assert_close(results[rank]["var"], layer.running_var, **close)


# Points with a trainable state of their method, averaged over the processes by hand: CTKD's temperature
# (trained by its own SGD at the authors' settings), and FitNets' regressor, whose BatchNorm also normalises
# over the whole batch; MobileNetV3's dropout; 2 epochs of the tiny study's 360 images in batches of 64 (the
# last 40: 20 and 20). One job: the two in one pack.
POINTS = {"ctkd": "ctkd:soft_weight=0.9,t_start=1.0,t_end=20.0,lambda_max=0.0,lambda_min=-1.0,lambda_epochs=2,"
                  "t_lr=0.05,t_momentum=0.9,t_weight_decay=0.0005",
          "fitnets": "fitnets:hint_weight=100,hint_stage=2"}
# How far a 2-process run may be from the one-process run: the same arithmetic in another order (sums over
# halves, BatchNorm's statistics from sums), whose float32 rounding Adam's first steps amplify (an update
# is about lr x sign(gradient), also for a gradient that is 0 up to rounding). Measured: 1e-3 on the losses.
LOSS_TOLERANCE = 0.01


def _args(study, folder, processes=1):
    return [str(arg) for arg in (
        "distill", *study.config, "training.max_epochs=2", f"runtime.processes={processes}",
        "--student", "mobilenet_v3_small", "--seed", 0, "--teacher", study.teacher,
        *(arg for name, point in POINTS.items() for arg in ("--point", point, "--out", folder / name)),
        "--stats", study.stats, "--record", folder / "record.json")]


def _distill(study, folder, processes=1):
    return run_kdsweep(*_args(study, folder, processes), cwd=folder)


def _history(run):
    rows = (run / "history.csv").read_text().splitlines()
    seconds = rows[0].split(",").index("seconds")
    return [[float(v) for i, v in enumerate(row.split(",")) if i != seconds] for row in rows[1:]]


def test_two_processes_distil_as_one_and_resume_after_being_killed_mid_epoch(tiny_study, tmp_path):
    one = tiny_study.beside(tmp_path / "one")
    _distill(tiny_study, one)
    two = tiny_study.beside(tmp_path / "two")
    _distill(tiny_study, two, processes=2)
    for name in POINTS:
        a, b = (json.loads((f / name / "metrics.json").read_text()) for f in (one, two))
        assert a["config_hash"] == b["config_hash"] and a["epochs"] == b["epochs"] == 2
        for key in ("val_loss", "test_loss"):
            assert abs(a[key] - b[key]) < LOSS_TOLERANCE, (name, key)
        for key in ("val_acc", "test_acc"):  # at most one image of the 40 validation / 360 test images apart
            assert abs(a[key] - b[key]) <= 100 / 40 + 1e-9, (name, key)
        for row_a, row_b in zip(_history(one / name), _history(two / name), strict=True):
            assert all(abs(x - y) < LOSS_TOLERANCE for x, y in zip(row_a, row_b)), (name, row_a, row_b)
    # only the first process wrote: one record, one log line per epoch
    assert all(point["finished"] for point in json.loads((two / "record.json").read_text())["points"])

    # the same 2-process job, every process killed (SIGKILL) in its second epoch, then started again
    killed = tiny_study.beside(tmp_path / "killed")
    process = subprocess.Popen([sys.executable, "-m", "kdsweep", *_args(tiny_study, killed, 2)], cwd=killed,
                               stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in process.stdout:
        if "  epoch   1" in line:
            break
    time.sleep(1.0)
    _kill_all(process.pid)
    process.wait()
    for name in POINTS:
        assert not (killed / name / "metrics.json").exists()
        assert json.loads((killed / name / "checkpoint.json").read_text())["epoch"] == 1
    _distill(tiny_study, killed, processes=2)
    for name in POINTS:
        b, c = (json.loads((f / name / "metrics.json").read_text()) for f in (two, killed))
        assert c["resumed"] == 1
        # the same number of processes: the uninterrupted run, exactly
        assert _history(killed / name) == _history(two / name)
        assert (c["val_loss"], c["test_loss"], c["test_acc"]) == (b["val_loss"], b["test_loss"], b["test_acc"])


def _kill_all(pid):
    """SIGKILL a process and every process below it (torchrun's workers run in sessions of their own)."""
    import psutil

    parent = psutil.Process(pid)
    for process in [*parent.children(recursive=True), parent]:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
