"""Successive halving over a sweep (config `sweep: halving`): the decision at each rung.

Every point of a student's sweep trains to the first rung's epoch (halving.rungs), in packs whose records
(kdsweep.records.JobRecord, `until_epoch`) give each point's validation accuracy there. At each rung, within
each KD method (a method's points compete with each other only: methods differ in what their grids span,
and a study that sweeps a method wants its best point, which a cross-method cut could starve), the points
are ranked by mean validation accuracy over the sweep's seeds, and the best `keep` of them (never fewer
than `min_kept`) go on to the next rung; the rest stop, their run folders keeping the checkpoint of the
rung, so that a later strategy (more rungs, a larger fraction, the grid) continues them. After the last
rung the survivors train to the end, exactly as the grid trains them (kdsweep.train resumes a checkpoint
bit for bit). A point that early stopping ended before a rung is finished, and judged on what it reached.

Each point is judged on its state at the rung's epoch r, read from its record's validation history
(kdsweep.records.JobPoint.history): its best validation-loss epoch among epochs <= r and the validation
accuracy then; finished if early stopping ended it by r. Never its state after r: a pack record written
again later (a forced rerun, a point trained on since) gives the same decision, byte for byte. Only the points
that use the teacher compete (kd's w = 0 is hard targets only: it is recorded, never kept), and at least
`min_kept` of them go on, so that the confirmation always has a candidate. Ties go to fewer epochs to the
best validation loss, then to the lower hyperparameter values in the method's order (TIE_BREAK, as the
confirmation's choice breaks its ties), never to how the points were packed; a tie at the cut is named in the
record (`ties`). The candidates are listed in that order too (methods in the registry's order), so that the
record is the same bytes whatever order the pack records came in. The decision reads validation numbers only: the records it reads hold no test accuracy
for a paused point, and it never reads a finished one's. Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path

from .errors import KdsweepError
from .methods import METHODS
from .plan import fmt, kept_count
from .records import JobPoint, JobRecord, RungCandidate, RungDecision, point_of

TIE_BREAK = ("fewer epochs to the best validation loss (mean over the seeds), then the lower hyperparameter values "
             "in the method's order")
CHOSEN_ON = ("mean validation accuracy over the sweep's seeds at the rung's epoch (each run's best validation-loss "
             "epoch up to it), within each KD method, among the points that use the teacher; ties to "
             f"{TIE_BREAK}; never test accuracy")


def at_rung(point: JobPoint, rung: int, path) -> tuple[float, int, int | None, bool]:
    """(validation accuracy, epochs trained, best validation-loss epoch, finished) of a point at the rung's
    epoch, from its validation history; a record of an earlier version (no history) only where it stopped
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


def _spelled(hparams) -> str:
    return ", ".join(f"{name}={fmt(value) if isinstance(value, (int, float)) else value}" for name, value in hparams)


def decide(record_paths, student: str, stage: int, rung: int, keep: float, min_kept: int,
           seeds) -> RungDecision:
    """The rung's decision from the pack records of its points (every seed of every point of the student)."""
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
        raise KdsweepError(f"halving rung {rung} of {student} got no pack record with a point: pass the rung's "
                           "pack records")
    wanted = sorted(int(seed) for seed in seeds)
    for (method, hparams), by_seed in points.items():
        if sorted(by_seed) != wanted:
            raise KdsweepError(f"{student}'s {method} point {dict(hparams)} has seeds {sorted(by_seed)} at rung "
                               f"{rung}, not the sweep's {wanted}: pass the pack records of every seed")
    candidates, ties = [], []
    for method in [name for name in METHODS if any(m == name for m, _ in points)]:
        group = sorted(((hparams, [points[method, hparams][seed] for seed in wanted])
                        for (m, hparams), _ in points.items() if m == method),
                       key=lambda entry: [value for _, value in entry[0]])
        teacher = [METHODS[method].needs_teacher(dict(hparams)) for hparams, _ in group]
        if not any(teacher):
            raise KdsweepError(f"halving rung {rung} of {student} got no {method} point that uses the teacher (kd: "
                               "w > 0); give the method such a point, or leave it out of the study")
        means = [sum(state[0] for state in states) / len(states) for _, states in group]
        # fewer epochs to the best validation loss first (a record of an earlier version: unknown, no order)
        speed = [sum(state[2] or 0 for state in states) / len(states) for _, states in group]
        order = sorted((i for i in range(len(group)) if teacher[i]), key=lambda i: (-means[i], speed[i], i))
        kept = set(order[:kept_count(len(order), keep, min_kept)])
        for value in dict.fromkeys(means[i] for i in order):
            tied = [i for i in order if means[i] == value]
            if len({i in kept for i in tied}) == 2:
                last, first_out = max((i for i in tied if i in kept), key=order.index), \
                    min((i for i in tied if i not in kept), key=order.index)
                broken_by = ("fewer epochs to the best validation loss" if speed[last] != speed[first_out]
                             else "the lower hyperparameter values")
                ties.append(f"{method}: {len(tied)} points tie at mean validation accuracy {value:g}%; kept "
                            + "; ".join(_spelled(group[i][0]) for i in tied if i in kept) + ", over "
                            + "; ".join(_spelled(group[i][0]) for i in tied if i not in kept)
                            + f", by {broken_by}")
        for i, (hparams, states) in enumerate(group):
            candidates.append(RungCandidate(
                method=method, hparams=dict(hparams), val_acc_mean=means[i], n=len(states),
                epochs=[state[1] for state in states], finished=all(state[3] for state in states), kept=i in kept,
                best_epochs=None if None in [state[2] for state in states] else [state[2] for state in states],
                uses_teacher=teacher[i]))
    return RungDecision(student=student, rung=rung, stage=stage, keep=keep, min_kept=min_kept, seeds=wanted,
                        chosen_on=CHOSEN_ON, candidates=candidates, ties=ties or None)


def kept_points(decision: RungDecision) -> set[tuple]:
    """(method, hparams) of the points a rung kept."""
    return {point_of(candidate.as_dict()) for candidate in decision.candidates if candidate.kept}


def read_decision(path) -> RungDecision:
    return RungDecision.read(Path(path), what="halving decision",
                             fix="delete it so that the workflow decides the rung again")
