"""What the workflow's checkpoints chose, read back: the confirmation's points (records.BestPoint), and the
records of the search's decisions present (the staged sweep's temperature, records.StagedChoice; each
successive-halving rung's kept points, records.RungDecision), which the search strategies read themselves
(kdsweep.search). Each is read checked (`Record.read`: a damaged file is one sentence naming it and the
fix; a string is no flag, NaN no accuracy) and held to the study's plan: the choice of this student (and
rung), of points of its sweep, and for the confirmation of a halving study not a point a rung pruned.

The workflow's input functions read the confirmation's records here; `check` reads every one present before the workflow
plans a job, so that a damaged or hand-edited record stops Snakemake with one sentence instead of a
traceback from an input function, while a record that a changed config makes stale is left to Snakemake,
which makes it again. Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path

from .errors import KdsweepError
from .layout import Layout
from .methods import METHODS
from .plan import Plan
from .records import BestPoint, RungDecision, StagedChoice, point_of


def point(plan: Plan, student: str, method: str, path, among=None) -> tuple:
    """The hyperparameters of a student's point of a method the confirmation's checkpoint chose; among: the
    points it may pick (successive halving: the last rung's survivors), None for every candidate."""
    return plan.chosen_point(student, method, BestPoint.read(path), str(path), among)


def _kept_by_last_rung(method: str, decision: RungDecision, choice: BestPoint, path) -> None:
    """KdsweepError where a confirmation's record picks a point its student's last rung did not keep."""
    picked = point_of(choice)
    canonical = METHODS[picked[0]].canonical(picked[1])
    for candidate in decision.candidates:
        point = point_of(candidate)
        if candidate.kept and point[0] == method and METHODS[method].canonical(point[1]) == canonical:
            return
    raise KdsweepError(f"{BestPoint.WHAT} {path} picks {method} point {dict(picked[1])}, which successive halving "
                       f"pruned (the last rung, {decision.student}'s at epoch {decision.rung}, did not keep it); "
                       f"{BestPoint.FIX}")


def check(plan: Plan, layout: Layout, root=".") -> None:
    """Read every checkpoint record of the study present under root (KdsweepError for the first that is
    damaged), and check what they say of each other: a confirmation's point of a halving study is one its
    last rung kept, where it was chosen after that rung's decision. What they say of the config is checked
    where Snakemake reads them, by `point` and the search strategies (kdsweep.search): a record that a
    changed config makes stale is Snakemake's to make again, not an error."""
    root = Path(root)
    for path in layout.staged_choices():
        if (root / path).exists():
            StagedChoice.read(root / path)
    for student in plan.students:
        last = None
        for stage in range(len(plan.rungs)):
            path = root / layout.rung_decision(student, stage)
            decision = RungDecision.read(path) if path.exists() else None
            last = (path, decision) if decision is not None and stage == len(plan.rungs) - 1 else None
        for method in plan.confirm_methods:
            path = root / layout.confirm_record(student, method)
            if not path.exists():
                continue
            choice = BestPoint.read(path)
            if last is not None and last[0].stat().st_mtime <= path.stat().st_mtime:
                _kept_by_last_rung(method, last[1], choice, path)
