"""A finished run read by another job (a distillation's teacher, an attack's or an evaluation's run), and
the one check that it belongs to the job's data: the same dataset, subset and train/validation split,
and as many classes. Without it a digits student distilled from a CIFAR-10 teacher would finish
and look done.
"""

from __future__ import annotations

from pathlib import Path

from . import io
from .errors import KdsweepError

# What a run folder holds, named once: torch-free readers (the status view) use these too.
METRICS = "metrics.json"  # written last: a run is finished when it exists
MODEL = "model.pt"
HISTORY = "history.csv"
CHECKPOINT = "checkpoint.pt"  # after every epoch, for resuming
BEST = "best.pt"  # best-validation weights so far
PROGRESS = "checkpoint.json"  # checkpoint.pt's RunState as JSON, without the history

# The dataset settings that make a run's data what it is (dataset.root may differ between machines).
IDENTITY = ("name", "subset", "val_fraction", "split_seed")
_REQUIRED = ("role", "model", "seed", "config_hash", "config")


def finished(run_dir, what: str = "run") -> dict:
    """metrics.json of a finished run folder; KdsweepError naming the fix otherwise."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise KdsweepError(f"{what} {run_dir} does not exist; check the path, or train it first")
    if not (run_dir / METRICS).is_file():
        raise KdsweepError(f"{what} {run_dir} is not finished (no metrics.json); train it first (or check the path)")
    return io.read_json(run_dir / METRICS, f"the metrics of {what}",
                        f"delete {run_dir} and train it again", required=_REQUIRED)


def check_compatible(run: dict, run_dir, dataset_cfg: dict, num_classes: int | None = None, what: str = "run"):
    """KdsweepError unless the run was trained on the config's data (IDENTITY) with num_classes outputs."""
    trained = (run.get("config") or {}).get("dataset") or {}
    for key in IDENTITY:
        if key in trained and trained[key] != dataset_cfg[key]:
            raise KdsweepError(
                f"{what} {run_dir} was trained with dataset.{key} = {trained[key]!r} but this job's config says "
                f"{dataset_cfg[key]!r}: pass the config of the run's study (--config), or train the {what} "
                "for this one")
    if num_classes is not None and run.get("num_classes") not in (None, num_classes):
        raise KdsweepError(f"{what} {run_dir} has {run['num_classes']} classes but this job's data has "
                           f"{num_classes}: pass the config of the run's study (--config)")


def load(run_dir, dataset_cfg: dict, device, num_classes: int | None = None, what: str = "run"):
    """(metrics, model on device) of a finished run of the config's data; KdsweepError otherwise."""
    from .models import load_model

    run_dir = Path(run_dir)
    record = finished(run_dir, what)
    check_compatible(record, run_dir, dataset_cfg, None, what)
    model = load_model(run_dir / MODEL, device)
    classes = model.num_classes
    if num_classes is not None and classes != num_classes:
        raise KdsweepError(f"{what} {run_dir} has {classes} classes but this job's data has {num_classes}: "
                           "pass the config of the run's study (--config)")
    return record, model
