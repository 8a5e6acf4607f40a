"""What the workflow's checkpoints chose, read back: the staged sweep's temperature (records.StagedChoice),
each successive-halving rung's kept points (records.RungDecision) and the confirmation's points
(records.BestPoint). Each is read checked (`Record.read`: a damaged file is one sentence naming it and the
fix; a string is no flag, NaN no accuracy) and held to the study's plan: the choice of this student (and
rung), of points of its sweep, and for the confirmation of a halving study not a point a rung pruned.

The workflow's input functions read the records here, and so does `python -m kdsweep status`; `check`
reads every one present before the workflow plans a job, so that a damaged record stops Snakemake with one
sentence instead of a traceback from an input function. Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path

from .layout import Layout
from .plan import Plan
from .records import BestPoint, RungDecision, StagedChoice


def temperature(plan: Plan, path) -> float:
    """The config's number for the temperature a staged-sweep choice picked."""
    return plan.chosen_temperature(StagedChoice.read(path), str(path))


def kept(plan: Plan, student: str, stage: int, path) -> set[tuple]:
    """The points (method, hparams) a student's rung (its index in halving.rungs) kept."""
    return plan.rung_kept(student, stage, RungDecision.read(path), str(path))


def point(plan: Plan, student: str, method: str, path, among=None) -> tuple:
    """The hyperparameters of a student's point of a method the confirmation's checkpoint chose; among: the
    points it may pick (successive halving: the last rung's survivors), None for every candidate."""
    return plan.chosen_point(student, method, BestPoint.read(path), str(path), among)


def survivors(plan: Plan, student: str, method: str, kept_last: set) -> set[tuple]:
    """Successive halving: the points of a student and method that the last rung kept and that use the
    teacher (what the confirmation may choose from)."""
    return {run.hparams for run in plan.finalists(student, kept_last, method) if run.needs_teacher}


def check(plan: Plan, layout: Layout, root=".") -> None:
    """Read every checkpoint record of the study present under root, as the functions above do: KdsweepError
    for the first that is damaged or does not fit the plan."""
    root = Path(root)
    for student in plan.students:
        if plan.staged and (root / layout.staged_choice(student)).exists():
            temperature(plan, root / layout.staged_choice(student))
        kept_last = None
        for stage in range(len(plan.rungs)):
            path = root / layout.rung_decision(student, stage)
            if path.exists():
                points = kept(plan, student, stage, path)
                kept_last = points if stage == len(plan.rungs) - 1 else None
        for method in plan.confirm_methods:
            path = root / layout.confirm_record(student, method)
            if path.exists():
                among = survivors(plan, student, method, kept_last) if kept_last is not None else None
                point(plan, student, method, path, among)
