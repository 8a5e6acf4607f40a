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

The decision reads validation numbers only: the records it reads hold no test accuracy for a paused point,
and it never reads a finished one's. Ties go to the point first in the plan's order, so that a rerun decides
the same. Nothing here imports torch.
"""

from __future__ import annotations

import math
from pathlib import Path

from .errors import KdsweepError
from .records import JobRecord, RungCandidate, RungDecision, point_of

CHOSEN_ON = ("mean validation accuracy over the sweep's seeds at the rung (the best validation-loss epoch's so "
             "far), within each KD method; ties to the point first in the plan's order; never test accuracy")


def kept_count(n: int, keep: float, min_kept: int) -> int:
    """How many of a method's n points go on: ceil(keep * n), at least min_kept, at most n."""
    return min(n, max(min_kept, math.ceil(keep * n - 1e-9)))


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
            entry[point.seed] = point
    if not points:
        raise KdsweepError(f"halving rung {rung} of {student} got no pack record with a point: pass the rung's "
                           "pack records")
    wanted = sorted(int(seed) for seed in seeds)
    for (method, hparams), by_seed in points.items():
        if sorted(by_seed) != wanted:
            raise KdsweepError(f"{student}'s {method} point {dict(hparams)} has seeds {sorted(by_seed)} at rung "
                               f"{rung}, not the sweep's {wanted}: pass the pack records of every seed")
    candidates = []
    for method in dict.fromkeys(method for method, _ in points):
        group = [(hparams, by_seed) for (m, hparams), by_seed in points.items() if m == method]
        means = [sum(point.val_acc for point in by_seed.values()) / len(by_seed) for _, by_seed in group]
        order = sorted(range(len(group)), key=lambda i: (-means[i], i))
        kept = set(order[:kept_count(len(group), keep, min_kept)])
        for i, (hparams, by_seed) in enumerate(group):
            candidates.append(RungCandidate(
                method=method, hparams=dict(hparams), val_acc_mean=means[i], n=len(by_seed),
                epochs=[by_seed[seed].epochs for seed in wanted],
                finished=all(point.finished for point in by_seed.values()), kept=i in kept))
    return RungDecision(student=student, rung=rung, stage=stage, keep=keep, min_kept=min_kept, seeds=wanted,
                        chosen_on=CHOSEN_ON, candidates=candidates)


def kept_points(decision: RungDecision) -> set[tuple]:
    """(method, hparams) of the points a rung kept."""
    return {point_of(candidate.as_dict()) for candidate in decision.candidates if candidate.kept}


def read_decision(path) -> RungDecision:
    return RungDecision.read(Path(path), what="halving decision",
                             fix="delete it so that the workflow decides the rung again")
