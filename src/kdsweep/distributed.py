"""Several processes per training job (DDP): who they are, how they start, and what they agree on.

A training or distillation job runs as N processes, one GPU each (or N CPU processes with gloo), each
the same `python -m kdsweep train|distill ...`:
- in a SLURM job of N tasks (the profile's resources: profiles/default), `launch` starts them with
  `srun --ntasks N` (SLURM_PROCID and SLURM_NTASKS tell each its place);
- elsewhere, with runtime.processes = N, with torchrun (torch.distributed.run, standalone: RANK,
  WORLD_SIZE, LOCAL_RANK).
A process started either way is one of them (`Processes.from_environment`) and launches nothing.

What makes N processes one run, the one a single process with the same batch would train (up to
floating-point noise; tests/test_distributed.py compares them):
- Data: every process draws the same epoch (kdsweep.sources: one data generator, one permutation)
  and trains on a contiguous share of every batch (`share`); an imagefolder image's crop and flip
  follow from (epoch seed, image) alone, whichever process decodes it.
- Gradients: DDP averages them over the processes, and each share's loss is weighted
  (sources.Batch.weight) so that the average is the gradient of the whole batch's mean loss, also for
  a last batch that does not divide evenly. A KD method's own trainable state (CTKD's temperature, a
  feature method's adapters) is averaged the same way (`average_gradients`). This needs a method's
  loss to be a mean over the batch's images, as every method's is.
- BatchNorm (the student's, and a feature method's adapter's) normalises with the statistics of the
  whole batch, not of a process's share: torch.nn.SyncBatchNorm on the GPU, `GlobalBatchNorm` on the
  CPU (where torch's refuses to run).
  The running statistics are then the same in every process, and so are the weights.
- Dropout draws its mask for the whole batch from the point's RNG stream (the same in every process)
  and applies the process's rows (`GlobalBatchDropout`): on the CPU the masks of a one-process run,
  exactly. (Other random layers, e.g. timm's DropPath, draw per process: equal in distribution only.)
- Validation and test: each process evaluates a share of the images; the sums are added up.
Every decision (early stopping, the schedule, a non-finite loss, a stop signal) follows from these
sums, so every process makes it at the same batch. Only the first process (rank 0) writes: run
folders, checkpoints, TensorBoard, logs, records; it settles the run folders first (kdsweep.identity)
and tells the others whether that failed (`first`). A checkpoint is the one-process run's,
whatever N: a run resumes under any number of processes.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass, replace
from datetime import timedelta

import torch
from torch import nn

from .errors import KdsweepError

# How long a collective waits for the other processes: also a first process settling run folders, or
# evaluating a test set alone, while the others wait; a process that died is noticed by torchrun or srun
# (--kill-on-bad-exit), which end the others, long before.
TIMEOUT = timedelta(hours=1)
# The SLURM variables of an allocation's identity, kept for the inner srun (the slurm jobstep plugin keeps
# the same); a job step's own (SLURM_NTASKS=1 of the step snakemake runs in) would make srun inherit them.
_SLURM_IDENTITY = ("SLURM_JOB_ID", "SLURM_JOBID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_CLUSTER_NAME",
                   "SLURM_SUBMIT_DIR", "SLURM_SUBMIT_HOST")

_share: tuple | None = None  # (offset, total) of the batch being trained, for GlobalBatchDropout


class Echoed(KdsweepError):
    """The first process's failure, raised in the others too (Processes.first): it says it, they do not."""


@dataclass
class Processes:
    """This process's place among a job's processes; one process (the default) makes every method a no-op."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    control: object = None  # a gloo group for flags on the host (the CPU never waits for a GPU's queue)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, environ=os.environ) -> "Processes":
        """torchrun's RANK / WORLD_SIZE / LOCAL_RANK, or srun's SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID
        (a step of more than one task); one process otherwise."""
        if "RANK" in environ and "WORLD_SIZE" in environ:
            return cls(int(environ["RANK"]), int(environ["WORLD_SIZE"]), int(environ.get("LOCAL_RANK", 0)),
                       int(environ.get("LOCAL_WORLD_SIZE", environ["WORLD_SIZE"])))
        if int(environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in environ and "SLURM_STEP_ID" in environ:
            per_node = environ.get("SLURM_STEP_TASKS_PER_NODE", environ["SLURM_NTASKS"]).split("(")[0].split(",")[0]
            return cls(int(environ["SLURM_PROCID"]), int(environ["SLURM_NTASKS"]), int(environ.get("SLURM_LOCALID", 0)),
                       int(per_node))
        return cls()

    # ---- start and end

    def start(self, runtime):
        """Join the job's process group (NCCL on GPUs, gloo on the CPU); the runtime on this process's device."""
        if self.world == 1:
            return runtime
        import torch.distributed as dist

        _die_with_launcher(os.environ)
        _rendezvous(os.environ)
        if runtime.device.type == "cuda":
            device = torch.device("cuda", self.local_rank % torch.cuda.device_count())
            torch.cuda.set_device(device)
            runtime = replace(runtime, device=device)
        dist.init_process_group("nccl" if runtime.device.type == "cuda" else "gloo", rank=self.rank,
                                world_size=self.world, timeout=TIMEOUT)
        self.control = dist.new_group(backend="gloo", timeout=TIMEOUT)
        return runtime

    def close(self):
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    # ---- what the processes agree on

    def share(self, start: int, end: int) -> tuple[int, int]:
        """This process's contiguous share [low, high) of the images start..end of a batch."""
        n = end - start
        return start + n * self.rank // self.world, start + n * (self.rank + 1) // self.world

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of `tensor` over the processes, in place."""
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor

    def any(self, flag: bool) -> bool:
        """Whether any process says `flag` (on the host, through the control group)."""
        if self.world == 1:
            return bool(flag)
        import torch.distributed as dist

        value = torch.tensor([int(bool(flag))])
        dist.all_reduce(value, group=self.control)
        return bool(value.item())

    def first(self, work):
        """work() in the first process, then (if it did not fail) in the others: what the first does to the
        run folders (settling them, starting a damaged run over) the others then find done. A failure
        in the first is raised in every process, as the same sentence."""
        if self.world == 1:
            return work()
        import torch.distributed as dist

        failure = [None]
        if self.main:
            try:
                result = work()
            except KdsweepError as err:
                failure = [str(err)]
                dist.broadcast_object_list(failure, src=0, group=self.control)
                raise
            dist.broadcast_object_list(failure, src=0, group=self.control)
            return result
        dist.broadcast_object_list(failure, src=0, group=self.control)
        if failure[0] is not None:
            raise Echoed(failure[0])
        return work()

    def stop(self, stop):
        """A SignalStop whose check() stops every process at the same batch, once any has been signalled."""
        return stop if self.world == 1 else _AnyStop(stop, self)

    # ---- the model

    def prepare(self, module: nn.Module, device) -> nn.Module:
        """The module's BatchNorm and Dropout layers over the whole batch (module docstring); unchanged for
        one process. Its state dict keeps its keys."""
        if self.world == 1:
            return module
        if torch.device(device).type == "cuda":
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        else:
            module = _swap(module, nn.modules.batchnorm._BatchNorm, GlobalBatchNorm)
        return _swap(module, nn.Dropout, GlobalBatchDropout)

    def wrap(self, module: nn.Module, device) -> nn.Module:
        """What runs the training step: DDP of the module (its gradients averaged over the processes)."""
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device = torch.device(device)
        # the buffers (BatchNorm's running statistics) are equal in every process already: nothing to broadcast
        # at each forward pass (newer torch names that forward_sync_buffers)
        import inspect

        options = inspect.signature(DistributedDataParallel).parameters
        sync = "forward_sync_buffers" if "forward_sync_buffers" in options else "broadcast_buffers"
        return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None, **{sync: False})

    def average_gradients(self, module: nn.Module | None):
        """Average the gradients of a module DDP does not wrap (a KD method's trainable state) over the processes."""
        if self.world == 1 or module is None:
            return
        for parameter in module.parameters():
            if parameter.grad is not None:
                self.all_sum(parameter.grad).div_(self.world)

    # ---- evaluation

    def loss_and_accuracy(self, module, split, batch_size: int, runtime) -> tuple[float, float]:
        """Mean cross-entropy and accuracy (%) of a split (evaluation.loss_and_accuracy), each process on its
        share of the images."""
        from .evaluation import loss_and_accuracy

        n = len(split.labels)
        if self.world == 1:
            return loss_and_accuracy(module, split.images, split.labels, batch_size, runtime)
        low, high = self.share(0, n)
        sums = torch.zeros(2, dtype=torch.float64, device=split.labels.device)
        if high > low:
            loss, accuracy = loss_and_accuracy(module, split.images[low:high], split.labels[low:high], batch_size,
                                               runtime)
            sums += torch.tensor([loss * (high - low), round(accuracy * (high - low) / 100)], dtype=torch.float64,
                                 device=sums.device)
        self.all_sum(sums)
        return sums[0].item() / n, 100.0 * sums[1].item() / n


class _AnyStop:
    def __init__(self, stop, processes):
        self.stop, self.processes = stop, processes

    def check(self):
        from .runtime import Preempted

        if self.processes.any(self.stop.received is not None):
            raise Preempted(self.stop.received or "a signal to another process of the job")


# ---------------------------------------------------------------- layers over the whole batch


@contextlib.contextmanager
def batch_share(batch):
    """Tell GlobalBatchDropout which rows of the whole batch the process trains (sources.Batch)."""
    global _share
    previous, _share = _share, ((batch.offset, batch.total) if batch.processes > 1 else None)
    try:
        yield
    finally:
        _share = previous


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the whole batch of every process (a CPU stand-in for torch.nn.SyncBatchNorm, which runs
    on GPUs only): the per-channel sums are added up over the processes (differentiably), so forward,
    backward and the running statistics are those of one process with the whole batch."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x):
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        channels = x.shape[1]
        wide = x.double()
        local = torch.cat([wide.sum(dims), wide.square().sum(dims),
                           torch.tensor([x.numel() / channels], dtype=torch.float64)])
        sums = _SumOverProcesses.apply(local)
        count = sums[-1]
        mean = sums[:channels] / count
        var = sums[channels:2 * channels] / count - mean.square()
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.item()
                self.running_mean.mul_(1 - momentum).add_(mean.to(self.running_mean.dtype), alpha=momentum)
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_var.mul_(1 - momentum).add_(unbiased.to(self.running_var.dtype), alpha=momentum)
        shape = [1, channels] + [1] * (x.dim() - 2)
        out = (x - mean.to(x.dtype).view(shape)) * torch.rsqrt(var.to(x.dtype) + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


class _SumOverProcesses(torch.autograd.Function):
    """all_reduce (sum) whose gradient is the sum of the processes' gradients: each process's sums reach
    every process's output."""

    @staticmethod
    def forward(ctx, tensor):
        import torch.distributed as dist

        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchDropout(nn.Dropout):
    """Dropout whose mask is drawn for the whole batch, of which the process applies its rows: every process
    draws the same mask (one RNG stream), and on the CPU it is the mask a one-process run draws
    (torch's CPU dropout: empty_like(input).bernoulli_(1 - p), divided by 1 - p)."""

    def forward(self, x):
        if not self.training or _share is None or self.p == 0:
            return super().forward(x)
        offset, total = _share
        if self.p == 1:
            return x * 0
        noise = torch.empty((total, *x.shape[1:]), dtype=x.dtype, device=x.device).bernoulli_(1 - self.p)
        noise.div_(1 - self.p)
        return x * noise[offset:offset + len(x)]


def _swap(module: nn.Module, kind, replacement) -> nn.Module:
    """Every layer of `kind` (exactly that class, or a subclass for BatchNorm) as `replacement`, with the same
    settings, parameters and buffers."""
    for name, child in list(module.named_children()):
        if isinstance(child, kind) and not isinstance(child, replacement) and (
                kind is not nn.Dropout or type(child) is nn.Dropout):
            setattr(module, name, _replaced(child, replacement))
        else:
            _swap(child, kind, replacement)
    return module


def _replaced(layer, replacement):
    if replacement is GlobalBatchDropout:
        return GlobalBatchDropout(layer.p, layer.inplace)
    new = replacement(layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats)
    new.load_state_dict(layer.state_dict())
    new.train(layer.training)
    return new.to(next(iter(layer.buffers()), torch.empty(0)).device)


# ---------------------------------------------------------------- starting the processes


def _die_with_launcher(environ):
    """A process torchrun started runs in a session of its own: were torchrun killed (SIGKILL: the job's
    process group killed, Ctrl-C on `kdsweep`), it would train on. Linux sends it SIGTERM instead, which
    stops it at the next batch as a SLURM signal does (runtime.SignalStop), its last checkpoint kept."""
    if "TORCHELASTIC_RUN_ID" not in environ or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the launcher died before the call
        os.kill(os.getpid(), signal.SIGTERM)


def _rendezvous(environ):
    """MASTER_ADDR / MASTER_PORT for processes srun started (torchrun sets them itself): the first node of
    the step, and the port the launcher chose (KDSWEEP_PORT)."""
    if "MASTER_ADDR" in environ and "MASTER_PORT" in environ:
        return
    nodes = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or socket.gethostname()
    if any(c in nodes for c in "[,"):
        nodes = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True,
                               check=True).stdout.split()[0]
    os.environ.setdefault("MASTER_ADDR", nodes)
    os.environ.setdefault("MASTER_PORT", environ.get("KDSWEEP_PORT", "29500"))


def slurm_tasks(environ=os.environ) -> tuple[int, int]:
    """(tasks, CPUs per task) of the SLURM job this process runs in, (1, 0) outside one or where scontrol
    cannot tell (the job then runs as one process, as before)."""
    job = environ.get("SLURM_JOB_ID")
    if not job:
        return 1, 0
    try:
        shown = subprocess.run(["scontrol", "show", "job", "--oneliner", job], capture_output=True, text=True,
                               timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return 1, 0
    fields = dict(item.split("=", 1) for item in shown.split() if "=" in item)
    try:
        return int(fields.get("NumTasks", 1)), int(fields.get("CPUs/Task", 0))
    except ValueError:
        return 1, 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def launch_command(argv, processes: int, environ=os.environ) -> tuple[list[str], dict] | None:
    """The command that runs `python -m kdsweep ARGV` as the job's processes, and its environment; None
    where this process is to train itself (one process, or one of several already started)."""
    if Processes.from_environment(environ).world > 1:
        return None
    tasks, cpus = slurm_tasks(environ)
    python = [sys.executable, "-m", "kdsweep", *argv]
    if tasks > 1:
        env = {key: value for key, value in environ.items()
               if not key.startswith(("SLURM_", "SRUN_", "SBATCH_")) or key in _SLURM_IDENTITY}
        env["KDSWEEP_PORT"] = str(_free_port())
        # --overlap: snakemake's job step (srun -n1) may hold the allocation's CPUs; the tasks share them
        command = ["srun", "--overlap", f"--ntasks={tasks}", "--kill-on-bad-exit=1", "--export=ALL"]
        if cpus:
            command.append(f"--cpus-per-task={cpus}")
        return [*command, *python], env
    if processes > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                "-m", "kdsweep", *argv], {"OMP_NUM_THREADS": "1", **environ}
    return None


def launch(argv, processes: int, log=print) -> int | None:
    """Run the job as its processes (launch_command) and return their exit status; None where this process
    trains itself."""
    found = launch_command(argv, processes)
    if found is None:
        return None
    command, env = found
    log(f"starting the job's processes: {shlex.join(command[:command.index('-m') + 2])} ...")
    try:
        return subprocess.run(command, env=env).returncode
    except OSError as err:
        raise KdsweepError(f"cannot start the job's processes with {command[0]} ({err.strerror}); run it where "
                           f"{command[0]} is on PATH, or set runtime.processes=1") from err
