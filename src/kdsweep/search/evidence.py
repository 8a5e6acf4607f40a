"""What a decision at a rung knows of a student's points: each one's state at the rung's epoch, and nothing else.

A strategy that stops points at rungs (`Strategy.prunes`) is handed the points by the interface
(`Strategy.decide_rung`), never the records: this module reads the rung's pack records (kdsweep.records.JobRecord,
`until_epoch`) and cuts each point's validation history (JobPoint.history) at the rung. So every such strategy
judges a rung on its own history: a pack record written again later (a forced rerun, a point trained on since)
hands it the same points, and the points come in one order (methods in the registry's order, then their
hyperparameter values), whatever order the records came in. A point's state at epoch r is its best
validation-loss epoch among epochs <= r and the validation accuracy then, finished if early stopping ended it
by r. Only validation numbers: a paused point's record holds no test accuracy, and a finished one's is not read.
Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import KdsweepError
from ..methods import METHODS
from ..records import JobPoint, JobRecord, point_of


@dataclass(frozen=True)
class PointAtRung:
    """One point of a student (every seed of it) as a rung sees it. Per seed, in the sweep's order of seeds: its
    validation accuracy at its best validation-loss epoch up to the rung, the epochs it trained up to the rung,
    that best epoch (None in a record of an earlier version, which holds no history)."""

    method: str
    hparams: tuple[tuple[str, float], ...]  # in the method's order
    uses_teacher: bool  # kd's w = 0 does not: hard targets only
    val_acc: tuple[float, ...]
    epochs: tuple[int, ...]
    best_epochs: tuple[int | None, ...]
    finished: bool  # every seed ended (early stopping) by the rung

    @property
    def val_acc_mean(self) -> float:
        return sum(self.val_acc) / len(self.val_acc)


def at_rung(point: JobPoint, rung: int, path) -> tuple[float, int, int | None, bool]:
    """(validation accuracy, epochs trained, best validation-loss epoch, finished) of one seed of a point at the
    rung's epoch, from its validation history; a record of an earlier version (no history) only where it stopped
    at the rung or before it."""
    fix = "delete it so that its pack is trained to the rung again"
    if point.history is None:
        reached = point.epochs is not None and (point.epochs == rung or (point.epochs < rung and point.finished))
        if not reached:
            raise KdsweepError(f"pack record {path} holds {point.run} at epoch {point.epochs} without its validation "
                               f"history, so its state at rung {rung} is unknown; {fix}")
        return point.val_acc, point.epochs, None, bool(point.finished)
    try:
        rows = [(int(row["epoch"]), float(row["val_loss"]), float(row["val_acc"])) for row in point.history]
    except (KeyError, TypeError, ValueError):
        raise KdsweepError(f"pack record {path} has a damaged validation history of {point.run}; {fix}") from None
    rows = [row for row in rows if row[0] <= rung]
    reached = len(rows) == rung or (point.finished and point.epochs == len(rows))
    if not rows or [epoch for epoch, _, _ in rows] != list(range(1, len(rows) + 1)) or not reached:
        raise KdsweepError(f"pack record {path} holds no validation history of {point.run} up to rung {rung}; {fix}")
    # the first of equal losses, as training keeps it (kdsweep.train: a later epoch must be strictly better)
    best_epoch, _, val_acc = min(rows, key=lambda row: (row[1], row[0]))
    return val_acc, len(rows), best_epoch, bool(point.finished) and point.epochs <= rung


def points_at_rung(record_paths, student: str, rung: int, seeds: list[int]) -> list[PointAtRung]:
    """Every point of the student's rung, from the pack records of its points (every seed of every point; seeds:
    the sweep's, increasing), in the registry's order of methods and then by hyperparameter values; KdsweepError
    naming the record and the fix where a record is not of this rung, lacks a point's state at it, or a point
    lacks a seed."""
    points: dict[tuple, dict] = {}
    for path in record_paths:
        record = JobRecord.read(path, what="pack record", fix="delete it so that its pack is trained again")
        if record.until_epoch != rung:
            raise KdsweepError(f"pack record {path} trained its points to epoch {record.until_epoch}, not to this "
                               f"rung's {rung}; delete it so that its pack is trained to the rung again")
        for point in record.points:
            picked = point_of(point)
            if picked is None or point.val_acc is None or point.seed is None:
                raise KdsweepError(f"pack record {path} has a point without its KD method, seed or validation "
                                   "accuracy; delete it so that its pack is trained again")
            method, hparams = picked
            if point.hparams is not None and set(point.hparams) != {name for name, _ in hparams}:
                raise KdsweepError(f"pack record {path} has a {method} point with unknown hyperparameters; delete it "
                                   "so that its pack is trained again")
            entry = points.setdefault((method, hparams), {})
            if point.seed in entry:
                raise KdsweepError(f"{student}'s {method} point {dict(hparams)} seed {point.seed} is in two pack "
                                   f"records of rung {rung} (one is {path}); delete the stale one")
            entry[point.seed] = at_rung(point, rung, path)
    if not points:
        raise KdsweepError(f"rung {rung} of {student} got no pack record with a point: pass the rung's pack records")
    for (method, hparams), by_seed in points.items():
        if sorted(by_seed) != seeds:
            raise KdsweepError(f"{student}'s {method} point {dict(hparams)} has seeds {sorted(by_seed)} at rung "
                               f"{rung}, not the sweep's {seeds}: pass the pack records of every seed")
    order = list(METHODS)
    ranked = sorted(points, key=lambda point: (order.index(point[0]), [value for _, value in point[1]]))
    out = []
    for method, hparams in ranked:
        states = [points[method, hparams][seed] for seed in seeds]
        out.append(PointAtRung(method=method, hparams=hparams,
                               uses_teacher=METHODS[method].needs_teacher(dict(hparams)),
                               val_acc=tuple(state[0] for state in states), epochs=tuple(state[1] for state in states),
                               best_epochs=tuple(state[2] for state in states),
                               finished=all(state[3] for state in states)))
    return out
