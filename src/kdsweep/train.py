"""One training run of the study: a teacher, a hard-target baseline or a distilled student.

The loop follows the seed's protocol (section IV.E) with every number from the
config: Adam, ReduceLROnPlateau on validation loss, early stopping on validation
loss, and the best-validation weights evaluated on the test set. A run owns one
folder; it checkpoints every epoch and resumes from that checkpoint when started
again, and it writes metrics.json last, so a folder with metrics.json is finished.
"""

import csv
import io as _io
import math
import os
import platform
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__, data, io
from .config import config_hash
from .errors import KdsweepError
from .losses import kd_losses
from .models import MODELS, build_model, load_model, save_model

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
# Exit status of a run stopped by SLURM's warning signal or a SIGTERM: the
# checkpoint of the last finished epoch is on disk and a restart resumes it.
EXIT_PREEMPTED = 75

HISTORY_FIELDS = ["epoch", "lr", "train_loss", "train_hard_loss", "train_soft_loss",
                  "val_loss", "val_acc", "seconds"]


@dataclass(frozen=True)
class RunSpec:
    """Where a run sits in the study: its role and sweep coordinates."""

    role: str  # teacher | baseline | kd
    model: str
    seed: int
    temperature: float | None = None
    soft_weight: float | None = None

    def __post_init__(self):
        if self.model not in MODELS:
            raise KdsweepError(f"model '{self.model}' is unknown; choose one of {', '.join(MODELS)}")
        if self.role not in ("teacher", "baseline", "kd"):
            raise KdsweepError(f"role '{self.role}' is unknown; use teacher, baseline or kd")
        if self.role == "kd":
            if self.temperature is None or not self.temperature > 0:
                raise KdsweepError(f"temperature {self.temperature} must be a positive number, e.g. --temperature 4")
            if self.soft_weight is None or not 0 <= self.soft_weight <= 1:
                raise KdsweepError(f"soft weight {self.soft_weight} must lie in [0, 1] (0 = hard targets only, 1 = teacher only)")


class Preempted(Exception):
    """SLURM asked the job to stop (time limit near, preemption): resume later from the checkpoint."""


def resolve_device(runtime: dict) -> torch.device:
    wanted = runtime["device"]
    if wanted == "cuda" and not torch.cuda.is_available():
        raise KdsweepError(
            "runtime.device is cuda but no GPU is visible to this job "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
            "run it on a GPU node or set runtime.device=cpu"
        )
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(wanted)


def setup_runtime(runtime: dict) -> torch.device:
    if runtime["threads"] > 0:
        torch.set_num_threads(runtime["threads"])
    device = resolve_device(runtime)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def environment() -> dict:
    """What a reader needs to go from a number in a table to the job and software that made it."""
    return {
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": _torchvision_version(), "kdsweep": __version__},
        "slurm": {"job_id": os.environ.get("SLURM_JOB_ID"),
                  "array_task": os.environ.get("SLURM_ARRAY_TASK_ID"),
                  "restart_count": os.environ.get("SLURM_RESTART_COUNT"),
                  "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")},
        "host": platform.node(),
    }


def _torchvision_version():
    import torchvision

    return torchvision.__version__


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state(generator: torch.Generator) -> dict:
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "data": generator.get_state(),
    }


def _set_rng_state(state: dict, generator: torch.Generator):
    random.setstate(_as_tuple(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["data"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


@torch.inference_mode()
def evaluate(model, images, labels, batch_size) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (%) of the model on uint8 images."""
    model.eval()
    loss_sum = torch.zeros((), device=images.device, dtype=torch.float64)
    correct = torch.zeros((), device=images.device, dtype=torch.int64)
    for batch_images, batch_labels in data.batches(images, labels, batch_size):
        logits = model(batch_images.float().div_(255)).float()
        loss_sum += F.cross_entropy(logits, batch_labels, reduction="sum").double()
        correct += (logits.argmax(1) == batch_labels).sum()
    n = len(labels)
    return loss_sum.item() / n, 100.0 * correct.item() / n


class _SignalStop:
    """Turn SLURM's warning signal and SIGTERM into a clean stop.

    profiles/slurm asks for SIGURG before the time limit: snakemake and the shells
    between SLURM and this process ignore it, whereas SIGUSR1 would kill the
    snakemake that runs inside the job. SIGTERM is what SLURM sends at the limit
    itself and on preemption.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGURG)

    def __init__(self):
        self.received = None
        self._previous = {}

    def __enter__(self):
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def check(self):
        if self.received:
            raise Preempted(self.received)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


class _TensorBoard:
    """TensorBoard event files when the tensorboard package is installed (the seed monitored with it)."""

    def __init__(self, log_dir):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.writer = None
        else:
            self.writer = SummaryWriter(log_dir=str(log_dir))

    def epoch(self, row):
        if self.writer:
            for key, value in row.items():
                if key != "epoch" and value is not None and not (isinstance(value, float) and math.isnan(value)):
                    self.writer.add_scalar(key, value, row["epoch"])
            self.writer.flush()

    def close(self):
        if self.writer:
            self.writer.close()


def run_slice(config: dict, spec: RunSpec, teacher_hash: str | None) -> dict:
    """The part of the config a run depends on; its hash guards the checkpoint against a changed config."""
    return {
        "dataset": config["dataset"],
        "training": config["training"],
        "augmentation": config["augmentation"],
        "run": {**asdict(spec), "teacher_config_hash": teacher_hash},
    }


def _load_teacher(teacher_dir: Path, device):
    metrics_path = teacher_dir / "metrics.json"
    if not metrics_path.exists():
        raise KdsweepError(
            f"teacher run {teacher_dir} is not finished (no metrics.json); train it first with "
            "`python -m kdsweep train --role teacher ...` or let snakemake run the teacher rule"
        )
    teacher = load_model(teacher_dir / "model.pt", device)
    teacher.eval().requires_grad_(False)
    return teacher, io.read_json(metrics_path)["config_hash"]


def _load_checkpoint(path: Path, expected_hash: str) -> dict:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise KdsweepError(
            f"checkpoint {path} is corrupt or truncated ({err.__class__.__name__}); delete it to start the run over"
        ) from err
    if not isinstance(checkpoint, dict) or "config_hash" not in checkpoint:
        raise KdsweepError(f"{path} is not a kdsweep checkpoint; delete it to start the run over")
    if checkpoint["config_hash"] != expected_hash:
        raise KdsweepError(
            f"checkpoint {path} was written for another configuration (hash {checkpoint['config_hash']}, "
            f"this run is {expected_hash}); delete it, or rerun with the settings it was made with"
        )
    return checkpoint


def train_run(config: dict, spec: RunSpec, stats_path, out_dir, teacher_dir=None, log=print) -> dict:
    """Train (or resume) one run into out_dir and return its metrics."""
    out_dir = Path(out_dir)
    training, augmentation = config["training"], config["augmentation"]
    device = setup_runtime(config["runtime"])
    stats = data.read_stats(stats_path, config["dataset"])

    teacher, teacher_hash = None, None
    if spec.role == "kd":
        if teacher_dir is None:
            raise KdsweepError("distillation needs the teacher's run folder; pass --teacher RUN_DIR")
        teacher, teacher_hash = _load_teacher(Path(teacher_dir), device)
    run_config = run_slice(config, spec, teacher_hash)
    run_hash = config_hash(run_config)

    splits = data.load_splits(config["dataset"], device, stats)
    seed_everything(spec.seed)
    generator = torch.Generator().manual_seed(spec.seed)
    model = build_model(spec.model, splits.num_classes, stats["mean"], stats["std"],
                        bn_momentum=training["bn_momentum"]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=training["lr"], weight_decay=training["weight_decay"])
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=training["lr_factor"], patience=training["lr_patience"])
    augment = data.Augment.from_config(augmentation)

    state = {"epoch": 0, "best_val_loss": math.inf, "best_epoch": 0, "bad_epochs": 0,
             "history": [], "train_seconds": 0.0, "resumed": 0}
    checkpoint_path = out_dir / CHECKPOINT
    if checkpoint_path.exists():
        checkpoint = _load_checkpoint(checkpoint_path, run_hash)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        _set_rng_state(checkpoint["rng"], generator)
        state = checkpoint["state"]
        state["resumed"] += 1
        log(f"resuming {out_dir} after epoch {state['epoch']}")
    out_dir.mkdir(parents=True, exist_ok=True)

    board = _TensorBoard(out_dir / "tensorboard")
    train_images, train_labels = splits.train.images, splits.train.labels
    try:
        with _SignalStop() as stop:
            while state["epoch"] < training["max_epochs"] and state["bad_epochs"] < training["early_stopping_patience"]:
                started = time.perf_counter()
                epoch = state["epoch"] + 1
                model.train()
                totals = {}
                permutation = torch.randperm(len(train_labels), generator=generator).to(device)
                for index in permutation.split(training["batch_size"]):
                    stop.check()
                    images = augment(train_images[index], generator)
                    labels = train_labels[index]
                    teacher_logits = None
                    if teacher is not None and spec.soft_weight > 0:
                        with torch.inference_mode():
                            teacher_logits = teacher(images)
                    losses = kd_losses(model(images), teacher_logits, labels,
                                       spec.temperature or 1.0, spec.soft_weight or 0.0)
                    optimizer.zero_grad(set_to_none=True)
                    losses["total"].backward()
                    optimizer.step()
                    for name, value in losses.items():
                        # A term the run does not use (soft at w = 0) is None: logged as NaN.
                        if value is not None:
                            totals[name] = totals.get(name, 0) + value.detach() * len(index)
                sums = {name: totals[name].item() / len(train_labels) if name in totals else math.nan
                        for name in ("total", "hard", "soft")}
                if not math.isfinite(sums["total"]):
                    raise KdsweepError(
                        f"the training loss became non-finite ({sums['total']}) in epoch {epoch} of {out_dir}; "
                        "lower training.lr or check the data, then delete the run folder and rerun"
                    )
                val_loss, val_acc = evaluate(model, splits.val.images, splits.val.labels, training["eval_batch_size"])
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step(val_loss)
                if val_loss < state["best_val_loss"]:
                    state.update(best_val_loss=val_loss, best_epoch=epoch, bad_epochs=0)
                    io.torch_save(model.state_dict(), out_dir / BEST)
                else:
                    state["bad_epochs"] += 1
                seconds = time.perf_counter() - started
                row = {"epoch": epoch, "lr": lr, "train_loss": sums["total"], "train_hard_loss": sums["hard"],
                       "train_soft_loss": sums["soft"], "val_loss": val_loss, "val_acc": val_acc, "seconds": seconds}
                state["history"].append(row)
                state["epoch"] = epoch
                state["train_seconds"] += seconds
                io.torch_save({"config_hash": run_hash, "model": model.state_dict(),
                               "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                               "rng": _rng_state(generator), "state": state}, checkpoint_path)
                board.epoch(row)
                log(f"epoch {epoch:3d}  lr {lr:.2e}  train loss {sums['total']:.4f}  "
                    f"val loss {val_loss:.4f}  val acc {val_acc:6.2f}%  {seconds:6.1f}s")
    except Preempted as signal_name:
        log(f"received {signal_name}: stopped; the checkpoint of epoch {state['epoch']} resumes the run")
        raise
    finally:
        board.close()

    return _finish(model, spec, splits, training, state, run_config, run_hash, out_dir, device, teacher_dir, log)


def _finish(model, spec, splits, training, state, run_config, run_hash, out_dir, device, teacher_dir, log):
    """Evaluate the best-validation weights on the test set and write the run's outputs, metrics.json last."""
    model.load_state_dict(torch.load(out_dir / BEST, map_location=device, weights_only=True))
    best = state["history"][state["best_epoch"] - 1]
    test_loss, test_acc = evaluate(model, splits.test.images, splits.test.labels, training["eval_batch_size"])
    save_model(out_dir / "model.pt", model, spec.model, splits.num_classes)
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(state["history"])
    io.write_text(out_dir / "history.csv", buffer.getvalue())
    metrics = {
        **asdict(spec),
        "dataset": run_config["dataset"]["name"],
        "teacher_run": str(teacher_dir) if teacher_dir else None,
        "epochs": state["epoch"],
        "best_epoch": state["best_epoch"],
        "stopped_early": state["bad_epochs"] >= training["early_stopping_patience"],
        "val_loss": best["val_loss"],
        "val_acc": best["val_acc"],
        "test_loss": test_loss,
        "test_acc": test_acc,
        "train_seconds": state["train_seconds"],
        "resumed": state["resumed"],
        "device": describe_device(device),
        **environment(),
        "config": run_config,
        "config_hash": run_hash,
    }
    io.write_json(out_dir / "metrics.json", metrics)
    for scratch in (CHECKPOINT, BEST):
        (out_dir / scratch).unlink(missing_ok=True)
    log(f"finished {out_dir}: best epoch {state['best_epoch']} of {state['epoch']}, "
        f"val acc {best['val_acc']:.2f}%, test acc {test_acc:.2f}%")
    return metrics
