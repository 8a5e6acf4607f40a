"""A finished run read by another job (a distillation's teacher, an attack's or an evaluation's run), and
the checks that it is what its record says and belongs to the job's data: the same dataset, subset,
train/validation split and data digest (kdsweep.identity), as many classes, and a model file that is
the one its metrics.json describes (architecture, class count, digest). Without them a digits student
distilled from a CIFAR-10 teacher, or an attack on a model.pt swapped for another, would finish and
look done.
"""

from __future__ import annotations

from pathlib import Path

from .errors import KdsweepError
from .identity import DATASET_KEYS, DIGEST, file_digest
from .layout import METRICS, MODEL
from .records import Metrics


def finished(run_dir, what: str = "run") -> Metrics:
    """metrics.json of a finished run folder (with what binds a result to the run's version:
    Metrics.BOUND); KdsweepError naming the fix otherwise."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise KdsweepError(f"{what} {run_dir} does not exist; check the path, or train it first")
    if not (run_dir / METRICS).is_file():
        raise KdsweepError(f"{what} {run_dir} is not finished (no metrics.json); train it first (or check the path)")
    return Metrics.read(run_dir / METRICS, f"the metrics of {what}", f"delete {run_dir} and train it again",
                        needs=Metrics.BOUND)


def check_compatible(run: Metrics, run_dir, dataset_cfg: dict, num_classes: int | None = None, what: str = "run",
                     data_digest: str | None = None):
    """KdsweepError unless the run was trained on the config's data (identity.DATASET_KEYS, and the data
    digest where both are known) with num_classes outputs."""
    trained = (run.config or {}).get("dataset") or {}
    for key in DATASET_KEYS:
        if key in trained and trained[key] != dataset_cfg[key]:
            raise KdsweepError(
                f"{what} {run_dir} was trained with dataset.{key} = {trained[key]!r} but this job's config says "
                f"{dataset_cfg[key]!r}: pass the config of the run's study (--config), or train the {what} "
                "for this one")
    if trained.get(DIGEST) and data_digest and trained[DIGEST] != data_digest:
        raise KdsweepError(
            f"{what} {run_dir} was trained on other {dataset_cfg['name']} files than those in {dataset_cfg['root']} "
            f"(data digest {trained[DIGEST][:12]} there, {data_digest[:12]} here): point dataset.root at the files "
            f"the {what} was trained on, or train the {what} again on these")
    if num_classes is not None and run.num_classes not in (None, num_classes):
        raise KdsweepError(f"{what} {run_dir} has {run.num_classes} classes but this job's data has "
                           f"{num_classes}: pass the config of the run's study (--config)")


def load(run_dir, dataset_cfg: dict, device, num_classes: int | None = None, what: str = "run",
         data_digest: str | None = None):
    """(metrics, model on device) of a finished run of the config's data, its model.pt checked against
    its metrics.json; KdsweepError otherwise."""
    from .models import load_model  # torch, imported by the jobs that load a model only

    run_dir = Path(run_dir)
    record = finished(run_dir, what)
    check_compatible(record, run_dir, dataset_cfg, None, what, data_digest)
    fix = f"delete {run_dir} and train it again"
    recorded = record.model_digest
    if recorded and (run_dir / MODEL).is_file() and file_digest(run_dir / MODEL) != recorded:
        raise KdsweepError(f"{run_dir / MODEL} is not the model its metrics.json describes (its digest differs: "
                           f"replaced or damaged since the run finished); {fix}")
    model = load_model(run_dir / MODEL, device)
    if model.architecture != record.model:
        raise KdsweepError(f"{run_dir / MODEL} holds a {model.architecture}, but its metrics.json is of a "
                           f"{record.model}; {fix}")
    classes = model.num_classes
    if record.num_classes not in (None, classes):
        raise KdsweepError(f"{run_dir / MODEL} has {classes} classes, but its metrics.json says "
                           f"{record.num_classes}; {fix}")
    if num_classes is not None and classes != num_classes:
        raise KdsweepError(f"{what} {run_dir} has {classes} classes but this job's data has {num_classes}: "
                           "pass the config of the run's study (--config)")
    return record, model
