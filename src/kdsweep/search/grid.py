"""The grid (config `sweep: grid`, the reference study's): every point of every method's grid (after
`budget`), trained to the end, nothing decided on the way. The confirmation, where it is on, chooses each
student's point of each method among all of them. The only strategy a study of several teachers may use.
"""

from __future__ import annotations

from .base import Strategy


class Grid(Strategy):
    name = "grid"
    label = "grid (every point trained to the end)"
    several_teachers = True
    default = True

    def first_runs(self, plan) -> list:
        """kd's grid (every student's), then every other method's, then the same of each further teacher: the
        order the reference study's jobs have always been listed in."""
        runs = []
        for teacher in [None, *(teacher.tag for teacher in plan.teachers[1:])]:
            runs += (plan.grid(teacher=teacher) if "kd" in plan.methods else []) + plan.other_methods(teacher=teacher)
        return runs


STRATEGY = Grid()
