"""The training loop: a teacher, a hard-target baseline, or a pack of distilled students.

The loop follows the reference study's protocol (section IV.E) with every number from the
config: Adam, ReduceLROnPlateau on validation loss, early stopping on validation loss, and the
best-validation weights evaluated on the test set. A run owns one folder; it checkpoints every
epoch (kdsweep.checkpoint) and resumes from that checkpoint when started again, and it writes
metrics.json last, so a folder with metrics.json is finished.

A teacher from a checkpoint (kdsweep.teachers) is a teacher run too: fine-tuned, it trains as any run
starting from the checkpoint's weights; not fine-tuned, its job only evaluates it and writes its outputs
(0 epochs), so that every distillation, evaluation and table reads it as it reads a trained teacher.

Several sweep points of one student and seed train in one job (a pack): they share one
augmented data stream and one teacher forward pass per batch, and each keeps its own
optimiser, schedule, early stopping, torch RNG stream, checkpoint and folder, so that a point
trains exactly as it would alone.
"""

import contextlib
import csv
from dataclasses import dataclass
import io as _io
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, distributed, features, identity, io, lock, sources, split, teachers
from . import trained
from .board import EpochBoard
from .checkpoint import RunState
from .config import config_hash
from .errors import KdsweepError
from .methods import METHODS, Progress, total as total_loss
from .models import build_model, save_model
from .plan import Run
from .records import Metrics
from .layout import BEST, CHECKPOINT, HISTORY, METRICS, MODEL
from .runtime import Preempted, Runtime, SignalStop, environment, nondeterministic_op

__all__ = ["HISTORY_FIELDS", "Point", "train_epoch", "train_points"]

# A teacher or a hard-target baseline trains as kd at w = 0: cross-entropy on the labels alone (its
# history.csv has kd's columns, the soft term's empty).
HARD_TARGETS = ("kd", {"temperature": 1.0, "soft_weight": 0.0})


def history_fields(terms, records=()) -> list[str]:
    """history.csv's columns for a point whose loss has these terms and whose method records these values
    each epoch (kd, teacher and baselines: epoch, lr, train_loss, train_hard_loss, train_soft_loss,
    val_loss, val_acc, seconds)."""
    return ["epoch", "lr", "train_loss", *(f"train_{name}_loss" for name in terms), "val_loss", "val_acc",
            "seconds", *records]


HISTORY_FIELDS = history_fields(("hard", "soft"))


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


class Point:
    """What `train_epoch` trains: a sweep point's model, Adam optimiser and torch RNG stream.

    Built as every training job builds it (the benchmark builds it too): seeded by the
    run's seed, normalisation inside the model, on the job's device and memory layout.
    `module` owns the weights (every state dict is saved and loaded through it); `model`
    runs the training step: the module itself, or torch.compile of it (runtime.compile).
    A point of a feature-based method also taps feature maps (`taps`, kdsweep.features): of
    its student, by hooks on `module`, and of `teacher` (the module, not a compiled wrapper),
    both found by a probe pass on images of image_size.
    """

    def __init__(self, run: Run, training: dict, num_classes, mean, std, runtime: Runtime, image_size=32,
                 origin=None, processes: distributed.Processes = distributed.Processes(), teacher=None):
        self.run = run
        name, hparams = (run.method, run.params) if run.distilled else HARD_TARGETS
        self.method, self.hparams = METHODS[name], hparams
        seed_everything(run.seed)
        model = build_model(run.model, num_classes, mean, std, bn_momentum=training["bn_momentum"],
                            image_size=image_size, stem_kernel=origin.fitted.stem_kernel if origin else None)
        if origin is not None:  # a teacher from a checkpoint: its weights (a fine-tuned head stays as drawn)
            teachers.load_into(model, origin.source, origin.fitted)
        # several processes (kdsweep.distributed): BatchNorm and dropout over the whole batch, DDP's averaging
        self.module = processes.prepare(runtime.place(model), runtime.device)
        self.model = runtime.compiled(processes.wrap(self.module, runtime.device))
        # the feature maps the loss reads (none for a logit method: no probe, no hook); the probes draw
        # nothing at random, so the adapters below start as they would in a job of this point alone
        self.taps = None
        if run.distilled and self.method.needs_features(hparams):
            image_shape = (len(mean), image_size, image_size)
            self.taps = features.plan_taps(
                self.method, hparams, features.stages(self.module, image_shape, runtime.device),
                features.stages(teacher, image_shape, runtime.device), run.model,
                getattr(teacher, "architecture", "network"), image_shape)
            self.recorder = features.recorder(self.module)
        # the method's trainable state (CTKD's temperature, a feature method's adapters): trained by the
        # point's optimiser beside the student, after its weights, or by an optimiser of its own (the
        # method's authors')
        self.method_state = (self.method.make_state(hparams) if self.taps is None
                             else self.method.make_state(hparams, self.taps.shapes))
        self.state_optimizer = None
        parameters = list(self.module.parameters())
        if self.method_state is not None:
            # a feature method's adapters normalise over the whole batch of every process, as the student does
            self.method_state = processes.prepare(self.method_state.to(runtime.device), runtime.device)
            self.state_optimizer = self.method.state_optimizer(self.method_state, hparams)
            if self.state_optimizer is None:
                parameters += list(self.method_state.parameters())
            else:
                self.state_lrs = [group["lr"] for group in self.state_optimizer.param_groups]
        self.lr = training["lr"]
        self.optimizer = runtime.adam(parameters, training["lr"], training["weight_decay"])
        self.terms = self.method.terms
        # Each point draws its dropout masks from its own torch RNG stream, so a point
        # trains exactly as it would alone, whatever else shares its job.
        self.rng = _torch_rng(runtime.device)

    def step_state(self):
        """Step the method state's own optimiser, its learning rates scaled as the student's schedule scales
        the student's (the authors train both with one optimiser and one schedule)."""
        scale = self.optimizer.param_groups[0]["lr"] / self.lr
        for group, lr in zip(self.state_optimizer.param_groups, self.state_lrs):
            group["lr"] = lr * scale
        self.state_optimizer.step()

    @contextlib.contextmanager
    def own_rng(self, device):
        _set_torch_rng(self.rng, device)
        yield
        self.rng = _torch_rng(device)


# (kept here by name: tests and the benchmark cut epochs with it)
epoch_batches = sources.epoch_batches


def train_epoch(points, teacher, source, generator, runtime: Runtime, stop=None, epoch: int = 1,
                processes: distributed.Processes | None = None):
    """One epoch (the epoch-th, from 1) of every point on one shared stream of augmented batches and
    teacher logits; each point's loss is its method's (kdsweep.methods).

    The batches come from `source` (kdsweep.sources: the split in memory, augmented on the device from
    draws made up front, or streamed from disk), which draws the epoch's order and augmentation from
    the CPU generator. With several processes each trains its share of every batch (kdsweep.distributed),
    and the sums of the losses are added up over them. Returns each point's mean losses {"total", <each
    term of its method>} (NaN for a term it does not use).
    """
    progress = Progress(epoch)
    device = runtime.device
    for point in points:
        point.model.train()
    totals = [{} for _ in points]
    needs_teacher = teacher is not None and any(point.run.needs_teacher or point.taps for point in points)
    # the teacher's maps that the points of feature-based methods read, from its one pass per batch
    teacher_taps = sorted({name for point in points if point.taps for name in point.taps.teacher})
    teacher_maps = {}
    n = len(source)
    for batch in source.epoch(generator, runtime, processes):
        if stop:
            stop.check()
        batch_labels = batch.labels
        teacher_logits = None
        if needs_teacher:
            # no_grad, not inference_mode: a method's loss may keep the teacher's logits for its
            # backward pass (a squared error does), which inference tensors refuse
            with torch.no_grad(), runtime.autocast(), _recording(teacher, teacher_taps) as teacher_maps:
                teacher_logits = teacher(batch.images).float()
        for point, total in zip(points, totals):
            run = point.run
            with point.own_rng(device), distributed.batch_share(batch):
                if point.taps is None:
                    with runtime.autocast():
                        logits = point.model(batch.images).float()
                    terms = point.method.loss(logits, teacher_logits if run.needs_teacher else None, batch_labels,
                                              point.hparams, progress, point.method_state)
                else:
                    with runtime.autocast(), point.recorder.recording(point.taps.student) as student_maps:
                        logits = point.model(batch.images).float()
                    # in fp32, as the logits: the adapters train outside autocast
                    maps = ([student_maps[name].float() for name in point.taps.student],
                            [teacher_maps[name].float() for name in point.taps.teacher])
                    terms = point.method.loss(logits, teacher_logits, batch_labels, point.hparams, progress,
                                              point.method_state, maps)
                loss = total_loss(terms)
                point.optimizer.zero_grad(set_to_none=True)
                if point.state_optimizer is not None:
                    point.state_optimizer.zero_grad(set_to_none=True)
                # (a process's share of a batch weighs as many images as it has: sources.Batch.weight)
                (loss if batch.weight == 1 else loss * batch.weight).backward()
                if processes is not None:
                    processes.average_gradients(point.method_state)
                point.optimizer.step()
                if point.state_optimizer is not None:
                    point.step_state()
            losses = {"total": loss, **{name: value for name, (_, value) in terms.items()}}
            for name, value in losses.items():
                # A term the point does not use (soft at w = 0) is None: logged as NaN.
                if value is not None:
                    total[name] = total.get(name, 0) + value.detach() * len(batch)
    if processes is not None and processes.world > 1:
        for total in totals:
            for name in sorted(total):
                processes.all_sum(total[name])
    return [{name: total[name].item() / n if name in total else math.nan
             for name in ("total", *point.terms)} for point, total in zip(points, totals)]


def _recording(teacher, names):
    """The teacher's maps of these names, kept while its forward pass runs (nothing: no hook, no map)."""
    return features.recorder(teacher).recording(names) if names else contextlib.nullcontext({})


@dataclass
class Origin:
    """Where a teacher from a checkpoint comes from (kdsweep.teachers): the teacher, its weights, how they fit
    the network built here, and its provenance as the run's identity records it."""

    teacher: teachers.Teacher
    source: teachers.Source
    fitted: teachers.Fitted
    provenance: dict

    @classmethod
    def of(cls, run: Run, checkpoint: str, fine_tune: bool, splits, config: dict) -> "Origin":
        teacher = teachers.Teacher(run.teacher or run.model, run.model, run.seed, checkpoint, fine_tune)
        source = teachers.read(checkpoint)
        channels, side = split.train_geometry(splits, config)
        fitted = teachers.fit(teacher, source, channels, side, splits.num_classes)
        return cls(teacher, source, fitted, teachers.provenance(teacher, source))


class _JobPoint(Point):
    """A Point of a training job: its run folder, schedule, early stopping and checkpoint."""

    def __init__(self, config, run, out_dir, teacher_hash, splits, stats, runtime, log, rerun_stale, origin=None,
                 processes: distributed.Processes = distributed.Processes(), teacher=None):
        training = config["training"]
        super().__init__(run, training, splits.num_classes, stats["mean"], stats["std"], runtime,
                         image_size=split.train_geometry(splits, config)[1], origin=origin, processes=processes,
                         teacher=teacher)
        self.origin = origin
        # only the first process writes (kdsweep.distributed); the others keep the same state beside it
        self.out_dir, self.writes = Path(out_dir), processes.main
        self.log = log if processes.main else (lambda line: None)
        skipped = len(stats["skipped"]) if "skipped" in stats else None
        self.identity = identity.run_identity(config, run, teacher_hash, splits.digest,
                                              origin.provenance if origin else None, skipped)
        self.run_hash = config_hash(self.identity)
        self.failed = None
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=training["lr_factor"], patience=training["lr_patience"])
        self.data_state = torch.Generator().manual_seed(run.seed).get_state()
        self.state = RunState()
        self.stopping = (training["max_epochs"], training["early_stopping_patience"])
        # the hashes a checkpoint of this run may carry: its own, and that of an earlier version's
        self.accepted = {self.run_hash}
        if origin is None:  # (a teacher from a checkpoint has no earlier version)
            self.accepted.add(identity.legacy_hash(config, run, teacher_hash))
        # the first process settles the folder (and starts a damaged run over) before the others read it
        found = processes.first(lambda: self._resume_from(rerun_stale))
        if found:
            self.rng, self.data_state, self.state = checkpoint.restore(found, self.module, self.optimizer,
                                                                       self.scheduler, self.method_state)
            self.state.resumed += 1
            self.log(f"resuming {self.out_dir} after epoch {self.state.epoch}")
        if self.writes:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.board = None if self.done or not self.writes else EpochBoard(self.out_dir / "tensorboard")

    def _resume_from(self, rerun_stale) -> dict | None:
        """The checkpoint the run resumes from (None: it starts, or is finished: self.done), its folder settled
        by the first process."""
        if self.writes:
            self._settle_folder(rerun_stale)
        self.done = (self.out_dir / METRICS).exists()
        if self.done or not (self.out_dir / CHECKPOINT).exists():
            return None
        if self.writes:
            return self._checkpoint(rerun_stale)
        # the first process accepted the checkpoint's hash (checkpoint.json records it) before the others read it
        held = identity.held(self.out_dir)
        return checkpoint.load(self.out_dir / CHECKPOINT, self.accepted | ({held[2]} if held and held[2] else set()))

    def _is_this_run(self, held) -> bool:
        _, recorded, found_hash = held
        if found_hash is None:
            return True  # a checkpoint alone: checkpoint.load tells
        if found_hash in self.accepted or (recorded is not None and identity.same_run(recorded, self.identity)):
            self.accepted.add(found_hash)
            return True
        return False

    def _settle_folder(self, rerun_stale):
        """Leave the folder holding this run or nothing: a run of another configuration there is refused,
        or (rerun_stale: the workflow, whose config changed) kept aside; then a kept version of this
        run comes back (kdsweep.identity)."""
        held = identity.held(self.out_dir)
        if held and not self._is_this_run(held):
            kind, _, found_hash = held
            if not rerun_stale:
                raise KdsweepError(
                    f"{self.out_dir} holds a {kind} run of another configuration (hash {found_hash}, this run is "
                    f"{self.run_hash}); move that folder away, or pass --rerun-stale to keep it aside and train "
                    "this one")
            kept = identity.put_aside(self.out_dir, found_hash)
            self.log(f"{self.out_dir} held a {kind} run of another configuration: kept aside in {kept}")
        if identity.held(self.out_dir) is None:
            back = identity.bring_back(self.out_dir, self.identity)
            if back is not None:
                self.log(f"{self.out_dir}: brought back this configuration's run, kept aside in {back}")
                self._is_this_run(identity.held(self.out_dir))

    def _checkpoint(self, rerun_stale):
        try:
            found = checkpoint.load(self.out_dir / CHECKPOINT, self.accepted)
            checkpoint.check_fits(self.out_dir / CHECKPOINT, found, self.module, self.optimizer, self.method_state)
            checkpoint.check_best(self.out_dir / BEST, found, self.module)
            return found
        except KdsweepError:
            if not rerun_stale:
                raise
            self.log(f"the checkpoint of {self.out_dir} is damaged: starting the run over")
            checkpoint.remove_scratch(self.out_dir)
            return None

    def end_epoch(self, sums, val_loss, val_acc, seconds, data_state) -> bool:
        """Record a finished epoch (schedule, early stopping, best weights, checkpoint); True once stopped."""
        state = self.state
        epoch = state.epoch + 1
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step(val_loss)
        if val_loss < state.best_val_loss:
            state.best_val_loss, state.best_epoch, state.bad_epochs = val_loss, epoch, 0
            if self.writes:
                io.torch_save(self.module.state_dict(), self.out_dir / BEST)
        else:
            state.bad_epochs += 1
        row = {"epoch": epoch, "lr": lr, "train_loss": sums["total"],
               **{f"train_{name}_loss": sums[name] for name in self.terms},
               "val_loss": val_loss, "val_acc": val_acc, "seconds": seconds,
               **(self.method.epoch_record(self.method_state) if self.method_state is not None else {})}
        state.history.append(row)
        state.epoch = epoch
        state.train_seconds += seconds
        self.data_state = data_state
        max_epochs, patience = self.stopping
        state.stopped = epoch >= max_epochs or state.bad_epochs >= patience
        if not self.writes:
            return state.stopped
        checkpoint.save(self.out_dir, self.run_hash, self.identity, self.module, self.optimizer, self.scheduler,
                        self.rng, data_state, state, self.method_state)
        self.board.epoch(row)
        self.log(f"{self.out_dir.name}  epoch {epoch:3d}  lr {lr:.2e}  train loss {sums['total']:.4f}  "
                 f"val loss {val_loss:.4f}  val acc {val_acc:6.2f}%  {seconds:6.1f}s")
        return state.stopped


def _print(line):
    # flushed: a SLURM job's log is followed while it trains (tail -f), not when the job ends
    print(line, flush=True)


def train_points(config: dict, runs, stats_path, out_dirs, teacher_dir=None, log=_print, rerun_stale=False,
                 wait_for_lock=False, until_epoch: int | None = None, teacher_checkpoint: str | None = None,
                 fine_tune: bool = False, histories: dict | None = None) -> list[Metrics]:
    """Train (or resume) the runs of one job, each into its folder; return their metrics (metrics.json).

    One run (a teacher or a baseline), or a pack of distillation runs of one student and seed.
    A point that stops early is finished, and the job goes on while any point trains.
    rerun_stale: a folder holding a finished run (or a checkpoint) of another configuration is kept
    aside and this run trained, instead of refused (the workflow passes it: Snakemake reran the job
    because the config changed); a version of this run kept aside comes back (kdsweep.identity), and
    a damaged checkpoint is started over. Each folder is locked for the job (kdsweep.lock): a second process
    for it stops with one sentence, or with wait_for_lock (the workflow's jobs) waits for the holder.
    until_epoch (a successive-halving rung): a point trains to that epoch at most and is paused there, its
    checkpoint kept, so that a later job continues it exactly as an uninterrupted run; its metrics are
    those of its best validation epoch so far, without test numbers (`paused`), and no metrics.json.
    A job of several processes (kdsweep.distributed: this one is one of them) trains the same runs with
    its share of every batch; only the first process locks the folders, writes and logs.
    teacher_checkpoint (a teacher run): the teacher's checkpoint (kdsweep.teachers), fine-tuned with `training` where
    fine_tune, else only evaluated.
    histories: a dict that gets each point's validation epochs so far, {out_dir: [{epoch, val_loss, val_acc}]}
    (what its job's record keeps: a halving rung reads a point's state at its own epoch from it).
    """
    out_dirs = [Path(d) for d in out_dirs]
    _check_folders(out_dirs)
    processes = distributed.Processes.from_environment()
    try:
        with lock.run_folders(out_dirs, wait=wait_for_lock, log=log) if processes.main else contextlib.nullcontext():
            return _train_points(config, list(runs), stats_path, out_dirs, teacher_dir,
                                 log if processes.main else (lambda line: None), rerun_stale, until_epoch,
                                 teacher_checkpoint, fine_tune, {} if histories is None else histories, processes)
    except RuntimeError as err:
        if refused := nondeterministic_op(err):
            raise refused from err
        raise
    finally:
        processes.close()


def _check_folders(out_dirs):
    """One folder per point, none inside another: else one point's results would overwrite another's."""
    resolved = [Path(d).resolve() for d in out_dirs]
    for i, folder in enumerate(resolved):
        for other in resolved[:i]:
            if folder == other or folder.is_relative_to(other) or other.is_relative_to(folder):
                raise KdsweepError(f"the points of one job need folders of their own, but {out_dirs[i]} "
                                   f"{'is' if folder == other else 'overlaps'} {out_dirs[resolved.index(other)]}; "
                                   "give each --out a folder of its own")


def _train_points(config, runs, stats_path, out_dirs, teacher_dir, log, rerun_stale, until_epoch=None,
                  teacher_checkpoint=None, fine_tune=False, histories=None,
                  processes: distributed.Processes = distributed.Processes()):
    # one student and seed; sweep points of any methods (their roles are their methods) or confirm points
    kinds = {(run.model, run.seed, run.role == "confirm") for run in runs}
    if len(kinds) != 1 or len(runs) != len(out_dirs):
        raise KdsweepError("the points of one job must share student and seed (and be all of the sweep or all "
                           "of a confirmation), one output folder each")
    training = config["training"]
    runtime = processes.start(Runtime.from_config(config["runtime"]))
    stats = split.read_stats(stats_path, config["dataset"], config["imagefolder"])

    splits = split.load_splits(config["dataset"], runtime.device, stats)
    teacher, teacher_hash, teacher_module = None, None, None
    if runs[0].distilled:
        if teacher_dir is None:
            raise KdsweepError("distillation needs the teacher's run folder; pass --teacher RUN_DIR")
        record, teacher = trained.load(teacher_dir, config["dataset"], runtime.device, splits.num_classes,
                                       "teacher run", data_digest=splits.digest)
        teacher_hash = record.config_hash
        teacher_module = runtime.place(teacher.eval().requires_grad_(False))
        teacher = runtime.compiled(teacher_module)
    origin = None
    if teacher_checkpoint is not None:
        if runs[0].role != "teacher":
            raise KdsweepError("--checkpoint is for a teacher: give --role teacher")
        origin = Origin.of(runs[0], teacher_checkpoint, fine_tune, splits, config)
    points = [_JobPoint(config, run, out_dir, teacher_hash, splits, stats, runtime, log, rerun_stale, origin,
                        processes, teacher_module)
              for run, out_dir in zip(runs, out_dirs)]
    source = sources.for_split(splits.train, config, runtime, processes)
    generator = torch.Generator()
    results = {point.out_dir: Metrics.read(point.out_dir / METRICS) for point in points if point.done}
    if origin is not None and not fine_tune:
        for point in points:
            if not point.done:  # distilled from as it is: evaluated, never trained
                val_loss, val_acc = processes.loss_and_accuracy(point.module, splits.val,
                                                                training["eval_batch_size"], runtime)
                results[point.out_dir] = _finish(point, splits, training, runtime, teacher_dir,
                                                 imported={"val_loss": val_loss, "val_acc": val_acc},
                                                 processes=processes)
                point.done = True
            if point.board:
                point.board.close()
        return [results[out_dir] for out_dir in out_dirs]
    try:
        for point in points:
            if not point.done and point.state.stopped:
                # Finished in an earlier attempt of this job that died before the job ended
                # (its outputs may since have been removed): written again from the kept best
                # weights, without training the point any further.
                results[point.out_dir] = _finish(point, splits, training, runtime, teacher_dir, processes=processes)
                point.done = True
        with SignalStop() as signals:
            stop = processes.stop(signals)
            while active := [point for point in points
                             if not point.done and (until_epoch is None or point.state.epoch < until_epoch)]:
                # Points resumed from checkpoints of different epochs catch up one group at a time.
                epoch = min(point.state.epoch for point in active)
                group = [point for point in active if point.state.epoch == epoch]
                generator.set_state(group[0].data_state)
                started = time.perf_counter()
                losses = train_epoch(group, teacher, source, generator, runtime, stop, epoch=epoch + 1,
                                     processes=processes)
                for point, sums in zip(group, losses):
                    if not math.isfinite(sums["total"]):
                        point.done, point.failed = True, (
                            f"the training loss became non-finite ({sums['total']}) in epoch {epoch + 1} of "
                            f"{point.out_dir}; lower training.lr or check the data, then delete that folder and rerun")
                        log(point.failed)
                        continue
                    # Validation on the module itself, never its compiled wrapper: every evaluation of
                    # a run (validation, test, attacks, evaluate) then runs the same kernels.
                    val_loss, val_acc = processes.loss_and_accuracy(point.module, splits.val,
                                                                    training["eval_batch_size"], runtime)
                    if not math.isfinite(val_loss):
                        point.done, point.failed = True, (
                            f"the validation loss became non-finite ({val_loss}) in epoch {epoch + 1} of "
                            f"{point.out_dir}; lower training.lr or check the data, then delete that folder and rerun")
                        log(point.failed)
                        continue
                    if point.end_epoch(sums, val_loss, val_acc, time.perf_counter() - started, generator.get_state()):
                        results[point.out_dir] = _finish(point, splits, training, runtime, teacher_dir,
                                                         processes=processes)
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
    for point in points:
        if point.done:
            if point.writes:
                checkpoint.remove_scratch(point.out_dir)
        else:
            results[point.out_dir] = paused(point)
            log(f"paused {point.out_dir} after epoch {point.state.epoch} (val acc {results[point.out_dir].val_acc:.2f}% "
                f"at its best epoch {point.state.best_epoch}): its checkpoint is kept")
    if histories is not None:
        histories.update({point.out_dir: validation_history(point) for point in points})
    return [results[out_dir] for out_dir in out_dirs]


def validation_history(point) -> list[dict]:
    """A point's validation epochs so far, [{epoch, val_loss, val_acc}]: from its training state, or, for a run
    finished before this job, from its history.csv (written with metrics.json)."""
    rows, path = point.state.history, point.out_dir / HISTORY
    if not rows and path.is_file():
        rows = list(csv.DictReader(_io.StringIO(io.read_text(path, "history file", "delete the run folder so "
                                                                 "that its job trains it again"))))
    try:
        return [{"epoch": int(row["epoch"]), "val_loss": float(row["val_loss"]), "val_acc": float(row["val_acc"])}
                for row in rows]
    except (KeyError, TypeError, ValueError):
        raise KdsweepError(f"history file {path} lacks an epoch's validation loss or accuracy; delete the run "
                           "folder so that its job trains it again") from None


def paused(point) -> Metrics:
    """The metrics of a point paused at a rung: its best validation epoch's so far, no test numbers."""
    state, run = point.state, point.run
    best = state.history[state.best_epoch - 1]
    return Metrics(role=run.role, model=run.model, seed=run.seed, temperature=run.temperature,
                   soft_weight=run.soft_weight, method=run.method, hparams=run.params if run.distilled else None,
                   epochs=state.epoch, best_epoch=state.best_epoch, val_loss=best["val_loss"], val_acc=best["val_acc"],
                   train_seconds=state.train_seconds, config_hash=point.run_hash)


def _finish(point, splits, training, runtime: Runtime, teacher_dir, imported=None,
            processes: distributed.Processes = distributed.Processes()) -> Metrics | None:
    """Evaluate the best-validation weights on the test set and write the run's outputs, metrics.json last
    (the first process; the others evaluate their shares of the test set, and return None).
    imported: the validation loss and accuracy of a teacher from a checkpoint, distilled from as it is (its
    weights are the model's own, no epoch trained)."""
    out_dir, state, run = point.out_dir, point.state, point.run
    if imported is None:
        # every process reads best.pt only once the first has written it (its last end_epoch)
        point.module.load_state_dict(processes.first(lambda: checkpoint.best_weights(out_dir, runtime.device)))
    best = imported or state.history[state.best_epoch - 1]
    test_loss, test_acc = processes.loss_and_accuracy(point.module, splits.test, training["eval_batch_size"], runtime)
    if not point.writes:
        return None
    save_model(out_dir / MODEL, point.module, run.model, splits.num_classes)
    model_digest = identity.file_digest(out_dir / MODEL)
    records = list(point.method.epoch_record(point.method_state)) if point.method_state is not None else []
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=history_fields(point.terms, records), lineterminator="\n")
    writer.writeheader()
    writer.writerows(state.history)
    io.write_text(out_dir / HISTORY, buffer.getvalue())
    record = runtime.record()
    metrics = Metrics(
        role=run.role, model=run.model, seed=run.seed,
        # a distilled run's method and hyperparameters; kd's T and w (their names) also as before
        temperature=run.temperature, soft_weight=run.soft_weight,
        method=run.method, hparams=run.params if run.distilled else None,
        # what the method learned, epoch by epoch (CTKD: its temperature)
        learned={name: [row[name] for row in state.history] for name in records} if records else None,
        dataset=point.identity["dataset"]["name"],
        num_classes=splits.num_classes,
        teacher_run=str(teacher_dir) if teacher_dir else None,
        teacher=run.teacher,
        checkpoint=({"checkpoint": point.origin.teacher.checkpoint, **point.origin.provenance}
                    if point.origin else None),
        params=sum(parameter.numel() for parameter in point.module.parameters()),
        train_images=len(splits.train.labels),
        epochs=state.epoch,
        best_epoch=state.best_epoch,
        stopped_early=state.bad_epochs >= training["early_stopping_patience"],
        val_loss=best["val_loss"],
        val_acc=best["val_acc"],
        test_loss=test_loss,
        test_acc=test_acc,
        train_seconds=state.train_seconds,
        resumed=state.resumed,
        device=record["device"],
        precision=record["precision"],
        runtime=record,
        **environment(),
        config=point.identity,
        config_hash=point.run_hash,
        model_digest=model_digest,
    )
    metrics.write(out_dir / METRICS)
    point.log(f"finished {out_dir}: best epoch {state.best_epoch} of {state.epoch}, "
              f"val acc {best['val_acc']:.2f}%, test acc {test_acc:.2f}%")
    return metrics
