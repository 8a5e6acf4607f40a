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

Each point is judged on its state at the rung's epoch, as the search interface hands it to every strategy that
prunes (kdsweep.search.evidence: the pack records' validation history cut at the rung, never the point's state
after it, in one order whatever order the records came in), so a pack record written again later gives the same
decision, byte for byte. Only the points that use the teacher compete (kd's w = 0 is hard targets only: it is
recorded, never kept), and at least `min_kept` of them go on, so that the confirmation always has a candidate.
Ties go to fewer epochs to the best validation loss, then to the lower hyperparameter values in the method's
order (TIE_BREAK, as the confirmation's choice breaks its ties), never to how the points were packed; a tie at
the cut is named in the record (`ties`). The decision reads validation numbers only. Nothing here imports torch.

The strategy (`Halving`) gives the plan its rungs, refuses a config under which halving
decides nothing, trains every point to the first rung and, at each later stage, the points the rung before
kept (checkpoint rung_decision writes each decision: halving/<student>_rung<epochs>.json); the confirmation
chooses among the last rung's survivors.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import KdsweepError
from ..methods import METHODS
from ..methods.base import fmt
from ..records import RungCandidate, RungDecision, point_of
from .base import Strategy

TIE_BREAK = ("fewer epochs to the best validation loss (mean over the seeds), then the lower hyperparameter values "
             "in the method's order")
CHOSEN_ON = ("mean validation accuracy over the sweep's seeds at the rung's epoch (each run's best validation-loss "
             "epoch up to it), within each KD method, among the points that use the teacher; ties to "
             f"{TIE_BREAK}; never test accuracy")


# Successive halving's arithmetic, which the strategy checks a config with (a rung that keeps every point decides
# nothing) and `judge` decides each rung with.
def kept_count(n: int, keep: float, min_kept: int) -> int:
    """How many of a method's n points go on: ceil(keep * n), at least min_kept, at most n."""
    return min(n, max(min_kept, math.ceil(keep * n - 1e-9)))


def decide(record_paths, student: str, stage: int, rung: int, keep: float, min_kept: int,
           seeds) -> RungDecision:
    """The rung's decision from the pack records of its points (every seed of every point of the student)."""
    return STRATEGY.decide_rung(record_paths, student, stage, rung, seeds, keep=keep, min_kept=min_kept)


def _spelled(hparams) -> str:
    return ", ".join(f"{name}={fmt(value) if isinstance(value, (int, float)) else value}" for name, value in hparams)


def kept_points(decision: RungDecision) -> set[tuple]:
    """(method, hparams) of the points a rung kept."""
    return {point_of(candidate.as_dict()) for candidate in decision.candidates if candidate.kept}


def read_decision(path) -> RungDecision:
    return RungDecision.read(Path(path), what="halving decision",
                             fix="delete it so that the workflow decides the rung again")


class Halving(Strategy):
    name = "halving"
    label = "successive halving"
    decides = ("rung_decision",)
    prunes = True

    def rungs(self, config: dict) -> list[int]:
        rungs, max_epochs = list(config["halving"]["rungs"]), config["training"]["max_epochs"]
        if any(later <= earlier for earlier, later in zip(rungs, rungs[1:])):
            raise KdsweepError(f"halving.rungs {rungs} do not increase; list the epochs of the rungs in increasing "
                               "order, e.g. [4, 12]")
        if rungs[-1] >= max_epochs:
            raise KdsweepError(f"halving.rungs {rungs} reach training.max_epochs ({max_epochs}), where every run "
                               "ends anyway; give rungs below it")
        return rungs

    def check(self, plan) -> None:
        """What successive halving needs to decide anything: a KD method, and in each method points that use the
        teacher (the only ones a rung ranks, `decide`), more of them than the first rung keeps."""
        if not plan.methods:
            raise KdsweepError("sweep: halving judges the points of the study's KD methods, but methods names none; "
                               "give methods a section (e.g. kd: {}), or set sweep: grid")
        keep, min_kept = plan.config["halving"]["keep"], plan.config["halving"]["min_kept"]
        ranked = {}
        for method in plan.methods:
            ranked[method] = sum(METHODS[method].needs_teacher(dict(hparams)) for hparams in plan.points[method])
            if not ranked[method]:
                raise KdsweepError(f"sweep: halving ranks each method's points that use the teacher, but {method}'s "
                                   "grid has none (kd: a soft weight above 0); add one, or leave the method out")
        if all(kept_count(n, keep, min_kept) == n for n in ranked.values()):
            # refused rather than warned about: every rung would keep every point, so the study would be the grid
            # with pauses, and its tables would name a search that chose nothing
            most = max(ranked.values())
            # the largest keep (6 digits, rounded down) under which ceil(keep x most) drops a point
            fraction = math.floor((most - 1) / most * 1e6) / 1e6
            raise KdsweepError(f"halving keeps every point at every rung (halving.keep {keep} and min_kept {min_kept} "
                               f"of at most {most} points per method), so it decides nothing; set halving.min_kept "
                               f"below {most} and halving.keep at most {fraction:g}, or set sweep: grid")

    def first_runs(self, plan) -> list:
        """Every point of every student trains to the first rung."""
        return [run for student in plan.students for pack in plan.stage_packs(student, 0) for run in pack.runs]

    def fixed_runs(self, plan) -> list:
        """None: the distilled runs that finish are the last rung's survivors (Plan.finalists)."""
        return []

    def kept(self, plan, student: str, stage: int, decided) -> set | None:
        """The points the rung before a stage kept (None for the first stage: all of them)."""
        if stage == 0:
            return None
        return decided("rung_decision",
                       lambda path: plan.rung_kept(student, stage - 1, RungDecision.read(path), str(path)),
                       student=student, rung=plan.rungs[stage - 1])

    def outputs(self, plan, student: str, decided) -> list:
        """The student's distilled runs that the last rung kept, trained to the end."""
        return plan.finalists(student, self.kept(plan, student, len(plan.rungs), decided))

    def decision_records(self, plan, layout) -> list[str]:
        """Every rung's decision: the tables show the pruned points with their rung's validation accuracy."""
        return layout.rung_decisions()

    def sweep(self, plan, student: str, method: str, decided) -> list:
        """The last rung's survivors of the method."""
        return plan.finalists(student, self.kept(plan, student, len(plan.rungs), decided), method)

    def among(self, plan, student: str, method: str, decided) -> set:
        return {run.hparams for run in self.sweep(plan, student, method, decided) if run.needs_teacher}

    def judge(self, student: str, stage: int, rung: int, seeds: list[int], points, keep: float,
              min_kept: int) -> RungDecision:
        """Within each method, the points that use the teacher ranked by mean validation accuracy at the rung, the
        best `keep` of them (at least min_kept) kept; ties at the cut named."""
        candidates, ties = [], []
        for method in dict.fromkeys(point.method for point in points):
            group = [point for point in points if point.method == method]
            if not any(point.uses_teacher for point in group):
                raise KdsweepError(f"halving rung {rung} of {student} got no {method} point that uses the teacher "
                                   "(kd: w > 0); give the method such a point, or leave it out of the study")
            means = [point.val_acc_mean for point in group]
            # fewer epochs to the best validation loss first (a record of an earlier version: unknown, no order)
            speed = [sum(epoch or 0 for epoch in point.best_epochs) / len(point.best_epochs) for point in group]
            order = sorted((i for i, point in enumerate(group) if point.uses_teacher),
                           key=lambda i: (-means[i], speed[i], i))
            kept = set(order[:kept_count(len(order), keep, min_kept)])
            for value in dict.fromkeys(means[i] for i in order):
                tied = [i for i in order if means[i] == value]
                if len({i in kept for i in tied}) == 2:
                    last, first_out = max((i for i in tied if i in kept), key=order.index), \
                        min((i for i in tied if i not in kept), key=order.index)
                    broken_by = ("fewer epochs to the best validation loss" if speed[last] != speed[first_out]
                                 else "the lower hyperparameter values")
                    ties.append(f"{method}: {len(tied)} points tie at mean validation accuracy {value:g}%; kept "
                                + "; ".join(_spelled(group[i].hparams) for i in tied if i in kept) + ", over "
                                + "; ".join(_spelled(group[i].hparams) for i in tied if i not in kept)
                                + f", by {broken_by}")
            for i, point in enumerate(group):
                candidates.append(RungCandidate(
                    method=method, hparams=dict(point.hparams), val_acc_mean=means[i], n=len(point.val_acc),
                    epochs=list(point.epochs), finished=point.finished, kept=i in kept,
                    best_epochs=None if None in point.best_epochs else list(point.best_epochs),
                    uses_teacher=point.uses_teacher))
        return RungDecision(student=student, rung=rung, stage=stage, keep=keep, min_kept=min_kept,
                            seeds=seeds, chosen_on=CHOSEN_ON,
                            candidates=candidates, ties=ties or None)

    def describe(self, rungs, keep, min_kept) -> str:
        """The tables' words for a halving of these rungs and settings (none yet: no rung decided)."""
        at = (f"rungs at epochs {', '.join(map(str, rungs))}" if len(rungs) > 1
              else f"a rung at epoch {rungs[0]}" if rungs else "")
        return ("successive halving (" + (f"{at}; keep {fmt(keep)}, at least {min_kept}, per student and method"
                                          if rungs else "no rung yet") + ")")


STRATEGY = Halving()
