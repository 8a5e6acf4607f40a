"""Where and in which arithmetic a job runs: device, precision, memory layout, determinism, compilation.

Every job builds one `Runtime` from the config's `runtime:` section (`Runtime.from_config`) and
runs every pass of a model through it: training steps, validation, the test set, attacks and the
evaluate job all use the same autocast, the same memory layout and the same kernel settings, and
each JSON a job writes records them (`Runtime.record`). What the settings promise:

- `precision`: bf16 autocast with fp32 weights (auto on CUDA), or fp32. Under bf16 the classifier's
  last layer still computes in fp32 (`models.FullPrecisionLinear`), so the KD loss and the
  attacks see logits that were never rounded to bf16.
- `tf32`: false (default) keeps fp32 convolutions and matrix products IEEE fp32 on Ampere and
  later GPUs, where cuDNN would otherwise run fp32 convolutions in TF32 (10-bit mantissa).
- `deterministic`: true (default) makes a CUDA job pick deterministic kernels only
  (`torch.use_deterministic_algorithms`, cuDNN without autotuning, a fixed cuBLAS workspace), so
  that a resumed run, a packed run and a rerun give bit-identical results on the same GPU and
  software, as they do on the CPU. false lets cuDNN autotune (`cudnn.benchmark`): faster, with
  results that differ from run to run by floating-point noise.
- `channels_last`: NHWC images and weights (auto on CUDA).
- `compile`: torch.compile the training step's models (training jobs only: an attack or evaluate
  job makes one pass over the test set, which would not repay the compilation).

None of these is part of a run's identity (its config hash): a checkpoint written under one
runtime section resumes under any other, with results equal up to floating-point noise.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
from dataclasses import dataclass

import torch
from torch import nn

from .errors import KdsweepError

# cuBLAS is deterministic only with a fixed workspace (CUDA's "Results reproducibility" notes);
# read when the first cuBLAS handle is made, so it is set before any CUDA work.
CUBLAS_WORKSPACE = ":4096:8"
# Exit status of a run stopped by SLURM's warning signal, a SIGTERM or Ctrl-C: the checkpoint of the
# last finished epoch is on disk and a restart resumes it (EX_TEMPFAIL).
EXIT_PREEMPTED = 75


def resolve_device(wanted: str) -> torch.device:
    """runtime.device (auto | cuda | cpu) as a torch device; KdsweepError for cuda without a GPU."""
    if wanted == "cuda" and not torch.cuda.is_available():
        raise KdsweepError(
            "runtime.device is cuda but no GPU is visible to this job "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
            "run it on a GPU node or set runtime.device=cpu"
        )
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(wanted)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def environment() -> dict:
    """What a reader needs to go from a number in a table to the job and software that made it."""
    import torchvision

    from . import __version__

    return {
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "kdsweep": __version__,
                     "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()
                     if torch.backends.cudnn.is_available() else None},
        # an array task's own job id, and its array's (sacct shows it as <array_job_id>_<array_task>)
        "slurm": {"job_id": os.environ.get("SLURM_JOB_ID"),
                  "array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
                  "array_task": os.environ.get("SLURM_ARRAY_TASK_ID"),
                  "restart_count": os.environ.get("SLURM_RESTART_COUNT"),
                  "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")},
        "host": platform.node(),
    }


def to_device(tensor: torch.Tensor, device) -> torch.Tensor:
    """A host tensor on `device` without stalling the GPU queue: pinned and copied asynchronously.

    A plain `.to("cuda")` of pageable memory waits for every queued kernel first, so the CPU
    (one per SLURM GPU job) could never run ahead of the GPU.
    """
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


# ---------------------------------------------------------------- process-wide kernel settings


def _set_tf32(enabled: bool):
    value = "tf32" if enabled else "ieee"
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9
        conv.fp32_precision = value
        torch.backends.cuda.matmul.fp32_precision = value
    else:
        torch.backends.cudnn.allow_tf32 = enabled
        torch.backends.cuda.matmul.allow_tf32 = enabled


def _set_deterministic(enabled: bool):
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.backends.cudnn.benchmark = not enabled
    torch.backends.cudnn.deterministic = enabled
    torch.use_deterministic_algorithms(enabled)
    # Filling every fresh allocation with NaN guards against kernels that read memory nobody
    # wrote; none of ours does, and the fill is one more pass over every buffer.
    torch.utils.deterministic.fill_uninitialized_memory = False


@contextlib.contextmanager
def pytorch_defaults():
    """PyTorch's own kernel settings inside the block (the benchmark's reference loop), then ours again."""
    saved = _KernelSettings.read()
    try:
        _KernelSettings.DEFAULTS.apply()
        yield
    finally:
        saved.apply()


@dataclass(frozen=True)
class _KernelSettings:
    benchmark: bool
    deterministic: bool
    algorithms: bool
    conv_fp32: str
    matmul_fp32: str

    @classmethod
    def read(cls) -> "_KernelSettings":
        conv = getattr(torch.backends.cudnn, "conv", None)
        new_api = conv is not None and hasattr(conv, "fp32_precision")
        return cls(torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
                   torch.are_deterministic_algorithms_enabled(),
                   conv.fp32_precision if new_api else str(torch.backends.cudnn.allow_tf32),
                   torch.backends.cuda.matmul.fp32_precision if new_api else str(torch.backends.cuda.matmul.allow_tf32))

    def apply(self):
        torch.backends.cudnn.benchmark = self.benchmark
        torch.backends.cudnn.deterministic = self.deterministic
        torch.use_deterministic_algorithms(self.algorithms)
        conv = getattr(torch.backends.cudnn, "conv", None)
        if conv is not None and hasattr(conv, "fp32_precision"):
            conv.fp32_precision = self.conv_fp32
            torch.backends.cuda.matmul.fp32_precision = self.matmul_fp32
        else:
            torch.backends.cudnn.allow_tf32 = self.conv_fp32 == "True"
            torch.backends.cuda.matmul.allow_tf32 = self.matmul_fp32 == "True"


# What a fresh PyTorch process starts with: cuDNN convolutions in TF32, matmuls in fp32, no autotuning.
_KernelSettings.DEFAULTS = _KernelSettings(False, False, False, "tf32", "none")


# ---------------------------------------------------------------- the job's arithmetic


@dataclass(frozen=True)
class Runtime:
    """The resolved runtime section: one arithmetic for every pass a job makes over a model."""

    device: torch.device
    bf16: bool
    channels_last: bool
    deterministic: bool
    tf32: bool
    compile: bool = False

    @classmethod
    def from_config(cls, runtime: dict, training_job: bool = True) -> "Runtime":
        """Resolve `auto`s against the visible device and apply the process-wide settings.

        training_job=False (attacks, evaluate): never compile, whatever runtime.compile says.
        """
        if runtime["threads"] > 0:
            torch.set_num_threads(runtime["threads"])
        device = resolve_device(runtime["device"])
        cuda = device.type == "cuda"
        resolved = cls(
            device=device,
            bf16=runtime["precision"] == "bf16" or (runtime["precision"] == "auto" and cuda),
            channels_last=runtime["channels_last"] is True or (runtime["channels_last"] == "auto" and cuda),
            deterministic=runtime["deterministic"],
            tf32=runtime["tf32"],
            compile=runtime["compile"] and training_job,
        )
        if cuda:
            _set_tf32(resolved.tf32)
            _set_deterministic(resolved.deterministic)
        return resolved

    # ---- arithmetic

    @property
    def memory_format(self):
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self):
        """The context every forward pass of a model runs in (training, evaluation, attacks)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def layout(self, images: torch.Tensor) -> torch.Tensor:
        """Float images in the job's memory layout (the first convolution then needs no transpose)."""
        return images.contiguous(memory_format=self.memory_format)

    def pixels(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 images -> float [0, 1] on the device, in the job's layout."""
        return self.layout(images_uint8.to(self.device).float().div_(255))

    def place(self, model: nn.Module) -> nn.Module:
        """The model's weights on the device in the job's layout (the module that owns the state dict)."""
        return model.to(self.device, memory_format=self.memory_format)

    def compiled(self, model: nn.Module) -> nn.Module:
        """What runs the training step: torch.compile(model) with runtime.compile, else model itself.

        The weights stay those of `model`: save and load them through it, never through the
        compiled wrapper, whose state-dict keys carry an `_orig_mod.` prefix.
        """
        return torch.compile(model) if self.compile else model

    def adam(self, parameters, lr: float, weight_decay: float) -> torch.optim.Adam:
        # fused: one kernel for all parameters instead of several per tensor (CUDA only here:
        # the CPU keeps PyTorch's default there, the per-tensor loop the CPU results were
        # established with; foreach gives the same weights but was no faster on these models)
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay,
                                fused=True if self.device.type == "cuda" else None)

    # ---- records

    @property
    def precision(self) -> str:
        if self.bf16:
            return "bf16 autocast, fp32 logits"
        return "tf32" if self.tf32 and self.device.type == "cuda" else "fp32"

    def record(self) -> dict:
        """The arithmetic of a job, for the JSON it writes."""
        return {"device": describe_device(self.device), "precision": self.precision,
                "channels_last": self.channels_last, "compile": self.compile,
                "deterministic": self.deterministic if self.device.type == "cuda" else True}


def nondeterministic_op(err: RuntimeError) -> KdsweepError | None:
    """The sentence for a kernel that deterministic mode refuses, or None for any other error."""
    if "does not have a deterministic implementation" not in str(err):
        return None
    op = str(err).split(" does not have", 1)[0].strip()
    return KdsweepError(f"{op} has no deterministic CUDA kernel, which runtime.deterministic=true requires; "
                        "set runtime.deterministic=false (faster, results equal up to floating-point noise)")


# ---------------------------------------------------------------- stopping on request


class Preempted(Exception):
    """SLURM asked the job to stop (time limit near, preemption), or Ctrl-C did: resume later from the checkpoint."""


class SignalStop:
    """Turn SLURM's warning signal, SIGTERM and Ctrl-C (SIGINT) into a clean stop at the next batch.

    profiles/default (the workflow profile) asks for SIGURG before the time limit: snakemake and the shells
    between SLURM and this process ignore it, whereas SIGUSR1 would kill the
    snakemake that runs inside the job. SIGTERM is what SLURM sends at the limit
    itself and on preemption. Ctrl-C stops a run by hand the same way: the checkpoint of
    its last finished epoch is kept and the next start resumes it. A second Ctrl-C does not
    wait for the batch: it raises KeyboardInterrupt at once (what is on disk is still only
    whole files). A SIGINT that this process was started with ignored (a background job of a
    shell, nohup) stays ignored.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGURG, signal.SIGINT)

    def __init__(self):
        self.received = None
        self._previous = {}

    def __enter__(self):
        for sig in self.SIGNALS:
            if sig == signal.SIGINT and signal.getsignal(sig) == signal.SIG_IGN:
                continue
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.received == "SIGINT":
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def check(self):
        if self.received:
            raise Preempted(self.received)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False
