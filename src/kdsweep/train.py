"""One training run of the study: a teacher, a hard-target baseline or a distilled student.

The loop follows the reference study's protocol (section IV.E) with every number from the
config: Adam, ReduceLROnPlateau on validation loss, early stopping on validation
loss, and the best-validation weights evaluated on the test set. A run owns one
folder; it checkpoints every epoch and resumes from that checkpoint when started
again, and it writes metrics.json last, so a folder with metrics.json is finished.
"""

import contextlib
import csv
import io as _io
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from . import data, io
from .config import config_hash
from .errors import KdsweepError
from .losses import kd_losses
from .models import MODELS, build_model, load_model, save_model
from .runtime import EXIT_PREEMPTED, Preempted, Runtime, SignalStop, environment, nondeterministic_op, to_device

__all__ = ["EXIT_PREEMPTED", "Preempted", "RunSpec", "train_points", "train_epoch", "evaluate", "Point"]

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"

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


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _torch_rng(device) -> dict:
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_torch_rng(state: dict, device):
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


@torch.inference_mode()
def evaluate(model, images, labels, batch_size, runtime: Runtime | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (%) of the model on uint8 images, in the job's arithmetic."""
    model.eval()
    loss_sum = torch.zeros((), device=images.device, dtype=torch.float64)
    correct = torch.zeros((), device=images.device, dtype=torch.int64)
    for batch_images, batch_labels in data.batches(images, labels, batch_size):
        with runtime.autocast() if runtime else contextlib.nullcontext():
            pixels = runtime.pixels(batch_images) if runtime else batch_images.float().div_(255)
            logits = model(pixels).float()
        loss_sum += F.cross_entropy(logits, batch_labels, reduction="sum").double()
        correct += (logits.argmax(1) == batch_labels).sum()
    n = len(labels)
    return loss_sum.item() / n, 100.0 * correct.item() / n


class _TensorBoard:
    """TensorBoard event files when the tensorboard package is installed (the reference study monitored with it)."""

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


class Point:
    """What `train_epoch` trains: a sweep point's model, Adam optimiser and torch RNG stream.

    Built as every training job builds it (the benchmark builds it too): seeded by the
    run's seed, normalisation inside the model, on the job's device and memory layout.
    `module` owns the weights (every state dict is saved and loaded through it); `model`
    runs the training step: the module itself, or torch.compile of it (runtime.compile).
    """

    def __init__(self, spec, training, num_classes, mean, std, runtime: Runtime):
        self.spec = spec
        seed_everything(spec.seed)
        self.module = runtime.place(build_model(spec.model, num_classes, mean, std,
                                                bn_momentum=training["bn_momentum"]))
        self.model = runtime.compiled(self.module)
        self.optimizer = runtime.adam(self.module.parameters(), training["lr"], training["weight_decay"])
        # Each point draws its dropout masks from its own torch RNG stream, so a point
        # trains exactly as it would alone, whatever else shares its job.
        self.rng = _torch_rng(runtime.device)

    @property
    def needs_teacher(self):
        return self.spec.role == "kd" and self.spec.soft_weight > 0

    @contextlib.contextmanager
    def own_rng(self, device):
        _set_torch_rng(self.rng, device)
        yield
        self.rng = _torch_rng(device)


def _weights(state_dict: dict) -> dict:
    """A model state dict without torch.compile's `_orig_mod.` prefix (checkpoints of earlier versions had it)."""
    state_dict = dict(state_dict)
    consume_prefix_in_state_dict_if_present(state_dict, "_orig_mod.")
    return state_dict


def _match_layouts(optimizer: torch.optim.Optimizer):
    """Give every optimiser state tensor its parameter's memory layout (strides).

    Adam's state is saved with the strides it had; resumed under another runtime.channels_last
    (or on another device) it would keep them, and CUDA's fused Adam refuses a parameter and a
    state of different layouts. The values are copied unchanged.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


class _RunPoint(Point):
    """A Point of a training job: its schedule, early stopping, checkpoint and run folder."""

    def __init__(self, config, spec, out_dir, teacher_hash, num_classes, stats, runtime, log):
        training = config["training"]
        super().__init__(spec, training, num_classes, stats["mean"], stats["std"], runtime)
        self.out_dir, self.log = Path(out_dir), log
        self.run_config = run_slice(config, spec, teacher_hash)
        self.run_hash = config_hash(self.run_config)
        self.failed = None
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=training["lr_factor"], patience=training["lr_patience"])
        self.data_state = torch.Generator().manual_seed(spec.seed).get_state()
        self.state = {"epoch": 0, "best_val_loss": math.inf, "best_epoch": 0, "bad_epochs": 0,
                      "history": [], "train_seconds": 0.0, "resumed": 0}
        self.done = (self.out_dir / "metrics.json").exists()
        if not self.done and (self.out_dir / CHECKPOINT).exists():
            checkpoint = _load_checkpoint(self.out_dir / CHECKPOINT, self.run_hash)
            self.module.load_state_dict(_weights(checkpoint["model"]))
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            _match_layouts(self.optimizer)
            self.scheduler.load_state_dict(checkpoint["scheduler"])
            self.rng, self.data_state, self.state = checkpoint["rng"], checkpoint["data"], checkpoint["state"]
            self.state["resumed"] += 1
            log(f"resuming {self.out_dir} after epoch {self.state['epoch']}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.board = None if self.done else _TensorBoard(self.out_dir / "tensorboard")
        self.stopping = (training["max_epochs"], training["early_stopping_patience"])

    def end_epoch(self, sums, val_loss, val_acc, seconds, data_state):
        epoch = self.state["epoch"] + 1
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step(val_loss)
        if val_loss < self.state["best_val_loss"]:
            self.state.update(best_val_loss=val_loss, best_epoch=epoch, bad_epochs=0)
            io.torch_save(self.module.state_dict(), self.out_dir / BEST)
        else:
            self.state["bad_epochs"] += 1
        row = {"epoch": epoch, "lr": lr, "train_loss": sums["total"], "train_hard_loss": sums["hard"],
               "train_soft_loss": sums["soft"], "val_loss": val_loss, "val_acc": val_acc, "seconds": seconds}
        self.state["history"].append(row)
        self.state["epoch"] = epoch
        self.state["train_seconds"] += seconds
        self.data_state = data_state
        max_epochs, patience = self.stopping
        self.state["stopped"] = epoch >= max_epochs or self.state["bad_epochs"] >= patience
        io.torch_save({"config_hash": self.run_hash, "model": self.module.state_dict(),
                       "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                       "rng": self.rng, "data": data_state, "state": self.state}, self.out_dir / CHECKPOINT)
        self.board.epoch(row)
        self.log(f"{self.out_dir.name}  epoch {epoch:3d}  lr {lr:.2e}  train loss {sums['total']:.4f}  "
                 f"val loss {val_loss:.4f}  val acc {val_acc:6.2f}%  {seconds:6.1f}s")
        return self.state["stopped"]


def train_epoch(points, teacher, augment, images, labels, batch_size, generator, runtime: Runtime, stop=None):
    """One epoch of every point on one shared stream of augmented batches and teacher logits.

    The epoch's shuffle and augmentation parameters are drawn up front from the CPU generator
    (the same draws on any device) and moved to the device in one asynchronous copy; after that
    no step waits for the host, so the CPU queues work ahead of the GPU. Returns each point's
    mean losses {"total", "hard", "soft"} (NaN for a term it does not use).
    """
    device = images.device
    for point in points:
        point.model.train()
    totals = [{} for _ in points]
    needs_teacher = teacher is not None and any(point.needs_teacher for point in points)
    n = len(labels)
    order = to_device(torch.randperm(n, generator=generator), device)
    draws = augment.sample(n, generator).to(device)
    for start in range(0, n, batch_size):
        if stop:
            stop.check()
        index = order[start:start + batch_size]
        batch = runtime.layout(augment.apply(images[index], draws[start:start + batch_size]))
        batch_labels = labels[index]
        teacher_logits = None
        if needs_teacher:
            with torch.inference_mode(), runtime.autocast():
                teacher_logits = teacher(batch).float()
        for point, total in zip(points, totals):
            spec = point.spec
            with point.own_rng(device):
                with runtime.autocast():
                    logits = point.model(batch).float()
                losses = kd_losses(logits, teacher_logits if point.needs_teacher else None, batch_labels,
                                   spec.temperature or 1.0, spec.soft_weight or 0.0)
                point.optimizer.zero_grad(set_to_none=True)
                losses["total"].backward()
                point.optimizer.step()
            for name, value in losses.items():
                # A term the point does not use (soft at w = 0) is None: logged as NaN.
                if value is not None:
                    total[name] = total.get(name, 0) + value.detach() * len(index)
    return [{name: total[name].item() / n if name in total else math.nan
             for name in ("total", "hard", "soft")} for total in totals]


def train_points(config: dict, specs, stats_path, out_dirs, teacher_dir=None, log=print) -> list:
    """Train (or resume) sweep points of one student and seed in one job; return their metrics.

    The points share one augmented data stream and one teacher forward pass per batch:
    for one student and seed these are the same whatever the temperature and weight.
    Each keeps its own optimiser, schedule, early stopping, checkpoint and folder; a
    point that stops early is finished, and the job goes on while any point trains.
    """
    try:
        return _train_points(config, specs, stats_path, out_dirs, teacher_dir, log)
    except RuntimeError as err:
        if refused := nondeterministic_op(err):
            raise refused from err
        raise


def _train_points(config, specs, stats_path, out_dirs, teacher_dir, log):
    specs, out_dirs = list(specs), [Path(d) for d in out_dirs]
    if len({(spec.model, spec.seed, spec.role) for spec in specs}) != 1 or len(specs) != len(out_dirs):
        raise KdsweepError("the points of one job must share student, seed and role, one output folder each")
    training = config["training"]
    runtime = Runtime.from_config(config["runtime"])
    device = runtime.device
    stats = data.read_stats(stats_path, config["dataset"])

    teacher, teacher_hash = None, None
    if specs[0].role == "kd":
        if teacher_dir is None:
            raise KdsweepError("distillation needs the teacher's run folder; pass --teacher RUN_DIR")
        teacher, teacher_hash = _load_teacher(Path(teacher_dir), device)
        teacher = runtime.compiled(runtime.place(teacher))
    splits = data.load_splits(config["dataset"], device, stats)
    points = [_RunPoint(config, spec, out_dir, teacher_hash, splits.num_classes, stats, runtime, log)
              for spec, out_dir in zip(specs, out_dirs)]
    augment = data.Augment.from_config(config["augmentation"])
    generator = torch.Generator()
    results = {point.out_dir: io.read_json(point.out_dir / "metrics.json") for point in points if point.done}
    try:
        for point in points:
            if not point.done and point.state.get("stopped"):
                # Finished in an earlier attempt of this job that died before the job ended;
                # Snakemake removes a failed job's outputs, so they are written again from the
                # kept best weights, without training the point any further.
                results[point.out_dir] = _finish(point, splits, training, runtime, teacher_dir)
                point.done = True
        with SignalStop() as stop:
            while active := [point for point in points if not point.done]:
                # Points resumed from checkpoints of different epochs catch up one group at a time.
                epoch = min(point.state["epoch"] for point in active)
                group = [point for point in active if point.state["epoch"] == epoch]
                generator.set_state(group[0].data_state)
                started = time.perf_counter()
                losses = train_epoch(group, teacher, augment, splits.train.images, splits.train.labels,
                                     training["batch_size"], generator, runtime, stop)
                for point, sums in zip(group, losses):
                    if not math.isfinite(sums["total"]):
                        point.done, point.failed = True, (
                            f"the training loss became non-finite ({sums['total']}) in epoch {epoch + 1} of "
                            f"{point.out_dir}; lower training.lr or check the data, then delete that folder and rerun")
                        log(point.failed)
                        continue
                    # Validation on the module itself, never its compiled wrapper: every evaluation of
                    # a run (validation, test, attacks, evaluate) then runs the same kernels.
                    val_loss, val_acc = evaluate(point.module, splits.val.images, splits.val.labels,
                                                 training["eval_batch_size"], runtime)
                    if point.end_epoch(sums, val_loss, val_acc, time.perf_counter() - started, generator.get_state()):
                        results[point.out_dir] = _finish(point, splits, training, runtime, teacher_dir)
                        point.done = True
    except Preempted as signal_name:
        log(f"received {signal_name}: stopped; each point resumes from the checkpoint of its last finished epoch")
        raise
    finally:
        for point in points:
            if point.board:
                point.board.close()
    failed = [point.failed for point in points if point.failed]
    if failed:
        raise KdsweepError(failed[0] if len(failed) == 1 else f"{len(failed)} points failed; first: {failed[0]}")
    _remove_scratch(points)
    return [results[out_dir] for out_dir in out_dirs]


def _remove_scratch(points):
    """Checkpoints and best weights go once the whole job has finished, not when each point
    does: a finished point of a pack whose job then dies is written again, not retrained."""
    for point in points:
        for scratch in (CHECKPOINT, BEST):
            (point.out_dir / scratch).unlink(missing_ok=True)


def _finish(point, splits, training, runtime: Runtime, teacher_dir):
    """Evaluate the best-validation weights on the test set and write the run's outputs, metrics.json last."""
    out_dir, state, spec = point.out_dir, point.state, point.spec
    point.module.load_state_dict(_weights(torch.load(out_dir / BEST, map_location=runtime.device, weights_only=True)))
    best = state["history"][state["best_epoch"] - 1]
    test_loss, test_acc = evaluate(point.module, splits.test.images, splits.test.labels,
                                   training["eval_batch_size"], runtime)
    save_model(out_dir / "model.pt", point.module, spec.model, splits.num_classes)
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(state["history"])
    io.write_text(out_dir / "history.csv", buffer.getvalue())
    record = runtime.record()
    metrics = {
        **asdict(spec),
        "dataset": point.run_config["dataset"]["name"],
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
        "device": record["device"],
        "precision": record["precision"],
        "runtime": record,
        **environment(),
        "config": point.run_config,
        "config_hash": point.run_hash,
    }
    io.write_json(out_dir / "metrics.json", metrics)
    point.log(f"finished {out_dir}: best epoch {state['best_epoch']} of {state['epoch']}, "
              f"val acc {best['val_acc']:.2f}%, test acc {test_acc:.2f}%")
    return metrics
