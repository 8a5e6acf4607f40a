"""The staged sweep (config `sweep: staged`): kd's temperature, then its soft weight. Stage 1 trains every
temperature at w = staged.soft_weight; checkpoint best_temperature (kdsweep.tables.choices.best_temperature)
chooses each student's temperature on mean validation accuracy over the seeds (ties to the lower one);
stage 2 trains every soft weight at that temperature. Every other KD method trains its grid, as the grid
does. Its decision is records.StagedChoice, staged/<student>_seed-all.json.
"""

from __future__ import annotations

from ..errors import KdsweepError
from ..methods.base import fmt
from ..records import StagedChoice
from .base import Strategy


class Staged(Strategy):
    name = "staged"
    label = "staged (the temperature sweep, then the soft-weight sweep at the best temperature)"
    decides = ("best_temperature",)

    def soft_weights(self, config: dict) -> tuple[str, list]:
        return "soft_weights and staged.soft_weight", [*config["soft_weights"], config["staged"]["soft_weight"]]

    def check(self, plan) -> None:
        if "kd" not in plan.methods:
            raise KdsweepError("sweep: staged is kd's temperature-then-soft-weight sweep, but methods leaves kd "
                               "out; set sweep: grid, or give methods a kd section")
        if plan.staged_weight == 0:
            raise KdsweepError("staged.soft_weight is 0: at w = 0 every temperature trains the hard-target baseline, "
                               "so the temperature sweep would have nothing to choose from; set it above 0 (the "
                               "reference study's 0.9)")
        if plan.budget["equal"]:
            raise KdsweepError("budget.equal subsamples each method's grid, but sweep: staged gives kd a staged "
                               "sweep, not a grid; set sweep: grid (or halving), or budget.equal: false")

    def sweeps(self, plan, student: str, teacher=None) -> list[list]:
        """The temperature sweep (with every other method's grid), then for each temperature the soft-weight
        sweep it would get if chosen (without the point the temperature sweep trained already): only the
        chosen temperature's packs become jobs."""
        return [plan.temperature_sweep(student) + plan.other_methods([student], teacher)] + [
            [run for run in plan.soft_weight_sweep(student, t) if run.soft_weight != plan.staged_weight]
            for t in plan.config["temperatures"]]

    def first_runs(self, plan) -> list:
        """Stage 1 of every student, then every other method's grid."""
        return [run for student in plan.students for run in plan.temperature_sweep(student)] + plan.other_methods()

    def temperature(self, plan, choice, source: str) -> float:
        """The config's number for the temperature a best-temperature record (`choice`) picked."""
        spelling = fmt(choice["temperature"])
        if spelling not in plan.temperatures:
            raise KdsweepError(f"{source} picks temperature {choice['temperature']}, which is not in the config's "
                               f"temperatures; delete {source} so that it is chosen again")
        return plan.temperatures[spelling]

    def chosen_temperature(self, plan, student: str, decided) -> float:
        """The temperature checkpoint best_temperature chose for a student."""
        return decided("best_temperature", lambda path: self.temperature(plan, StagedChoice.read(path), str(path)),
                       student=student)

    def decided_runs(self, plan, student: str, decided) -> list:
        """Stage 2: every soft weight at the student's chosen temperature."""
        return plan.soft_weight_sweep(student, self.chosen_temperature(plan, student, decided))

    def waiting(self, plan, student: str, known: set) -> dict:
        any_temperature = plan.config["temperatures"][0]
        return {("kd", student): sum(run not in known for run in plan.soft_weight_sweep(student, any_temperature))}

    def sweep(self, plan, student: str, method: str, decided) -> list:
        """kd's: the temperature sweep and the soft-weight sweep at the chosen temperature."""
        if method != "kd":
            return super().sweep(plan, student, method, decided)
        temperature = self.chosen_temperature(plan, student, decided)
        return list(dict.fromkeys([*plan.temperature_sweep(student), *plan.soft_weight_sweep(student, temperature)]))


STRATEGY = Staged()
