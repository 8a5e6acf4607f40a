"""What a search strategy is to kdsweep (config `sweep`; kdsweep.search has the registry).

A strategy module defines `STRATEGY`, an instance of a subclass of `Strategy`. Handed the study's plan
(kdsweep.plan.Plan: its students, seeds, grids after `budget`, packs) and, where it decides anything, what its
decisions so far chose, it answers:
- which distillation runs a student's packs hold, in the order they are packed (`sweeps`), and the epochs
  at which every pack pauses for a decision before it trains on to the end (`rungs`);
- which runs train before any decision (`first_runs`), which of them are the study's outputs before any
  decision (`fixed_runs`), which runs a student's decisions add (`decided_runs`) and how many wait for
  them meanwhile (`waiting`), and which run outputs a student's search needs in the end (`outputs`);
- which points a pack trains at each of its stages (`kept`);
- which runs a student's point of a method is chosen from (`sweep`), and among which points where not
  every candidate may be chosen (`among`). The choice itself, the best mean validation accuracy over the
  seeds and never a test accuracy, is the confirmation's (kdsweep.tables.choices.best_point), a stage every
  strategy shares, not a strategy: see kdsweep.search.

Decisions are made by the workflow's checkpoints (`decides`: their rules) and read back through a
`decided(checkpoint, read, **wildcards)` the caller gives: read(path) of the record that the checkpoint of
these wildcards wrote. In the workflow it waits for the checkpoint (Snakemake's `checkpoints`); in the status
view and the tables it reads the record on disk, or raises `Undecided` where none is written yet.

The search's guarantees (docs/search.md) live here, so that every strategy has them without writing them:
- a rung is judged on its own history: a strategy that stops points at rungs (`prunes`) implements `judge`,
  which the interface's `decide_rung` hands each point's state at the rung's epoch (kdsweep.search.evidence:
  its pack records' validation history cut there, in one order), never the records; so the decision made
  again from records written later, or given in another order, is the same bytes;
- a decision is written once: every checkpoint writes its record through `write_decision`, which leaves a
  record that holds the same decision as it is and refuses to replace one that holds another (the stages
  after it trained on it); the strategy reads nothing else than what its records say, so that the plan stays
  a function of the config and the records.
The registry (kdsweep.search) refuses a strategy that overrides `decide_rung`, or that prunes without `judge`.

Nothing here imports torch or the plan: the plan imports the registry and hands itself in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, ClassVar

from .. import io
from ..errors import KdsweepError
from .evidence import PointAtRung, points_at_rung


class Undecided(LookupError):
    """A decision the search needs is not made yet: its checkpoint's record is not written."""


def nothing_decided(checkpoint: str, read: Callable, **wildcards):
    """`decided` before any checkpoint has run."""
    raise Undecided(f"checkpoint {checkpoint} ({', '.join(f'{k}={v}' for k, v in wildcards.items())}) has not run")


def write_decision(record, path, what: str) -> Path:
    """Write a checkpoint's decision (a kdsweep.records record) to `path`, once: a file that already holds these
    bytes is left as it is (its time too, which Snakemake reads), and one that holds anything else is refused, in
    a sentence naming the file and the fix. The workflow removes a checkpoint's output before it runs again, so
    this refuses only a decision made over another by hand, or by two jobs at once."""
    path = Path(path)
    if path.exists():
        if path.read_text(errors="replace") == io.json_text(record.as_dict()):
            return path
        raise KdsweepError(f"{what} {path} already holds another decision, and a decision is written once (the runs "
                           "after it trained on it); delete it, and what was trained on it, to decide again")
    return record.write(path)


class Strategy:
    """A search over a study's points: the grid's defaults (every point trained to the end, none decided)."""

    name: ClassVar[str] = ""  # config `sweep`
    label: ClassVar[str] = ""  # what the tables and figures say of the search
    # the workflow checkpoints (rules of workflow/rules/) whose records hold its decisions
    decides: ClassVar[tuple[str, ...]] = ()
    # a study of several teachers may use it (the others decide per student, of one teacher)
    several_teachers: ClassVar[bool] = False
    # its decisions stop points before the end, at rungs (records.RungDecision): the tables show the pruned
    # points with the accuracy where they stopped, and leave them out of every "best"
    prunes: ClassVar[bool] = False
    # the search the tables name where none is given (`kdsweep aggregate` without --search)
    default: ClassVar[bool] = False

    # ---- the config

    def rungs(self, config: dict) -> list[int]:
        """The epochs at which every pack pauses for a decision, increasing (none: each pack trains to the
        end in one job); KdsweepError for rungs that cannot work."""
        return []

    def soft_weights(self, config: dict) -> tuple[str, list]:
        """(the keys, their values) of every soft weight that appears in a run's name (plan.number_table)."""
        return "soft_weights", list(config["soft_weights"])

    def check(self, plan) -> None:
        """KdsweepError, in one sentence naming the fix, where this strategy cannot search the study."""

    # ---- the runs

    def sweeps(self, plan, student: str, teacher=None) -> list[list]:
        """A student's distillation runs (every seed), from the teacher of this tag (None: the study's
        first), in groups that are packed one after the other: here one, kd's grid first and every other
        method's after it (so that a study's kd packs are the same with or without other methods)."""
        kd = [plan.grid([student], teacher=teacher)] if "kd" in plan.methods else []
        others = plan.other_methods([student], teacher)
        return [kd[0] + others] if kd else [others]

    def first_runs(self, plan) -> list:
        """The distillation runs that train before any decision, in the plan's order (every teacher's)."""
        teachers = [teacher.tag for teacher in plan.teachers] if self.several_teachers else [None]
        return [run for teacher in teachers for student in plan.students
                for sweep in self.sweeps(plan, student, teacher) for run in sweep]

    def fixed_runs(self, plan) -> list:
        """The distillation runs whose outputs the study asks for before any decision."""
        return self.first_runs(plan)

    def decided_runs(self, plan, student: str, decided: Callable) -> list:
        """The distillation runs a student's decisions add to first_runs (Undecided until they are made)."""
        return []

    def waiting(self, plan, student: str, known: set) -> dict:
        """{(role, student): how many runs wait for the student's decisions}, while they are not made."""
        return {}

    def outputs(self, plan, student: str, decided: Callable) -> list:
        """The distillation runs beyond fixed_runs whose outputs a student's search needs, once decided
        (the workflow asks for them; only a strategy that `decides` is asked)."""
        return self.decided_runs(plan, student, decided)

    def describe(self, rungs, keep, min_kept) -> str:
        """The tables' words for a search that prunes, at these rungs and settings (records.RungDecision's)."""
        return self.label

    def decision_records(self, plan, layout) -> list[str]:
        """The decisions' records the tables read, which the study's tables wait for."""
        return []

    def kept(self, plan, student: str, stage: int, decided: Callable) -> set | None:
        """The points {(method, hparams)} a student's packs train at a stage (an index of rungs, or
        len(rungs): to the end), given the decision before it; None: every point of the pack."""
        return None

    # ---- the choice

    def sweep(self, plan, student: str, method: str, decided: Callable) -> list:
        """The distillation runs a student's point of one method is chosen from (the confirmation's
        checkpoint), once the decisions they depend on are made."""
        return [run for sweep in self.sweeps(plan, student) for run in sweep if run.method == method]

    def among(self, plan, student: str, method: str, decided: Callable) -> set | None:
        """The points {hparams} the choice may pick, where not every candidate of the sweep may be; None: any."""
        return None

    # ---- a decision at a rung (a strategy that prunes)

    def decide_rung(self, record_paths, student: str, stage: int, rung: int, seeds, **settings):
        """The decision of a student's rung (stage: its index), from the pack records of its points (every seed of
        every point) and the strategy's settings (halving: keep, min_kept): `judge` of each point's state at the
        rung (the module docstring's guarantees; not to be overridden: the registry refuses a strategy that does)."""
        seeds = sorted(int(seed) for seed in seeds)
        return self.judge(student, stage, rung, seeds, points_at_rung(record_paths, student, rung, seeds), **settings)

    def judge(self, student: str, stage: int, rung: int, seeds: list[int], points: list[PointAtRung],
              **settings):
        """The record of a rung's decision (records.RungDecision) from each point's state at the rung, given in the
        registry's order of methods and then by hyperparameter values: which points go on. Only a strategy that
        `prunes` judges."""
        raise NotImplementedError(f"search {self.name!r} stops no point at a rung")
