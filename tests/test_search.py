"""The search strategies' registry (kdsweep.search): a strategy and a KD method added as one module each.

A toy strategy ("random": a seeded subset of each method's grid, every point trained to the end, each
student's point chosen among them by the confirmation on validation accuracy) and a toy KD method ("toy", a
Method subclass) are defined here, registered into kdsweep.search.STRATEGIES and kdsweep.methods.METHODS,
and a small study that uses both is dry-run by the real Snakemake: the jobs it plans are those the toy
strategy asked for. The dry run is another process, so it registers them there itself (`register`, run
before Snakemake reads the Snakefile: the same registries, filled as a module of each package would fill them).
"""

import random
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from kdsweep.errors import KdsweepError
from kdsweep.methods import METHODS
from kdsweep.methods.base import Method, Param, soft_loss
from kdsweep.records import RungCandidate, RungDecision
from kdsweep.search import STRATEGIES, guarded, write_decision
from kdsweep.search.base import Strategy

from conftest import run_kdsweep

ROOT = Path(__file__).resolve().parents[1]
STUDENT = "resnet18"


# ---------------------------------------------------------------- the toy method and strategy


# A toy logit method: only the soft term, scaled, at temperature T (no labels' term).
TOY = Method(
    name="toy", title="toy KD (a test's)", terms=("soft",), axes=("temperature", "scale"),
    params=(Param("temperature", "T", 4.0, minimum=0.001, maximum=1000, description="softmax temperature"),
            Param("scale", "s", 1.0, minimum=0, maximum=10, exclusive_minimum=True, description="the term's weight")),
    loss_fn=lambda student, teacher, labels, hparams, progress=None: {
        "soft": (float(hparams["scale"]), soft_loss(student, teacher, float(hparams["temperature"])))},
)


class RandomSearch(Strategy):
    """COUNT points of each method's grid, drawn with the budget's seed per student, trained to the end."""

    name = "random"
    label = "random search (a seeded subset of each method's grid, every point trained to the end)"
    COUNT = 2

    def drawn(self, plan, student: str, method: str) -> list:
        points = plan.points[method]
        rng = random.Random(f"{plan.config['budget']['seed']}:{student}:{method}")
        chosen = set(rng.sample(points, min(self.COUNT, len(points))))
        return [point for point in points if point in chosen]

    def sweeps(self, plan, student: str, teacher=None) -> list[list]:
        return [[run for method in plan.methods for run in plan.method_grid(method, [student], teacher)
                 if run.hparams in self.drawn(plan, student, method)]]


RANDOM = RandomSearch()


def register(method_table=METHODS, strategy_table=STRATEGIES, setitem=None):
    """Put the toy method and strategy into the registries (setitem: monkeypatch's, undone after a test)."""
    setitem = setitem or (lambda table, key, value: table.__setitem__(key, value))
    setitem(method_table, TOY.name, TOY)
    setitem(strategy_table, RANDOM.name, RANDOM)


@pytest.fixture
def toys(monkeypatch):
    register(setitem=monkeypatch.setitem)


STUDY = f"""\
study: toy-search
students: [{STUDENT}]
temperatures: [1, 4]
soft_weights: [0.5, 0.9]
seeds: [0]
confirm: {{seeds: [100]}}
sweep: random
methods: {{kd: {{}}, toy: {{temperature: [2, 4], scale: [0.5, 1]}}}}
"""


def _plan(study_file):
    from kdsweep.config import load_config
    from kdsweep.plan import Plan

    return Plan(load_config([ROOT / "config.yaml", study_file]))


# ---------------------------------------------------------------- the registry


def test_the_registry_holds_one_strategy_per_module_and_the_schema_takes_their_names():
    from kdsweep.config import schema

    modules = {path.stem for path in (ROOT / "src" / "kdsweep" / "search").glob("*.py")} - {"__init__", "base",
                                                                                          "evidence"}
    assert set(STRATEGIES) == modules == {"grid", "staged", "halving"}
    assert list(STRATEGIES)[0] == "grid" and STRATEGIES["grid"].default  # the default leads
    assert schema()["properties"]["sweep"]["enum"] == list(STRATEGIES)


def test_an_unknown_strategy_is_refused_in_one_sentence_naming_the_registered_ones(tmp_path):
    from kdsweep.config import load_config
    from kdsweep.errors import KdsweepError

    with pytest.raises(KdsweepError) as refused:
        load_config([ROOT / "config.yaml"], ["sweep=random"])
    assert str(refused.value) == ("config key 'sweep' is invalid: 'random' is not one of ['grid', 'halving', "
                                  "'staged']; fix it in the override 'sweep=random'")


def test_a_registered_strategy_and_method_are_a_study_s_search_and_method(toys, tmp_path):
    from kdsweep.config import schema

    assert "random" in schema()["properties"]["sweep"]["enum"] and "toy" in schema()["properties"]["methods"][
        "properties"]
    (tmp_path / "toy.yaml").write_text(STUDY)
    plan = _plan(tmp_path / "toy.yaml")
    assert plan.search is RANDOM and plan.methods == ["kd", "toy"]
    distilled = [run for run in plan.fixed_runs() if run.distilled]
    for method, grid in (("kd", 4), ("toy", 4)):  # 2 of each method's 4 points, drawn again the same
        mine = [run.hparams for run in distilled if run.method == method]
        assert len(plan.points[method]) == grid and len(mine) == 2 and set(mine) < set(plan.points[method])
        assert mine == RANDOM.drawn(plan, STUDENT, method)
        # the confirmation chooses among them, and nothing else: what the strategy drew
        assert plan.sweep(STUDENT, method) == [run for run in distilled if run.method == method]
    assert {run for pack in plan.packs if pack.role != "confirm" for run in pack.runs} == set(distilled)


# ---------------------------------------------------------------- the interface's guarantees


class KeepOne(Strategy):
    """A toy strategy that prunes, written with none of the guarantees: at each rung the one point of the highest
    mean validation accuracy, of any method, goes on (ties to the first given)."""

    name = "keep-one"
    label = "keep one"
    decides = ("rung_decision",)
    prunes = True

    def judge(self, student, stage, rung, seeds, points):
        best = max(range(len(points)), key=lambda i: (points[i].val_acc_mean, -i))
        return RungDecision(student=student, rung=rung, stage=stage, seeds=seeds, chosen_on="the best mean", candidates=[
            RungCandidate(method=point.method, hparams=dict(point.hparams), val_acc_mean=point.val_acc_mean,
                          n=len(point.val_acc), kept=i == best) for i, point in enumerate(points)])


def test_a_strategy_that_prunes_judges_each_rung_on_its_own_history_and_in_one_order(tmp_path):
    """KeepOne's decision at rung 2 from pack records whose points trained on past the rung (kd T=1 reached 99%
    at epoch 3) is the one from records written at the rung, and the same whatever order the records come in,
    byte for byte: the interface hands it each point's state at the rung, computed here from the histories
    (kdsweep.search.evidence is not asked)."""
    from test_halving import HISTORY, _histories

    strategy = guarded(KeepOne())
    at_rung = {point: [epochs[:2] for epochs in by_seed] for point, by_seed in HISTORY.items()}
    later = _histories(tmp_path / "later", HISTORY, 2)
    made = [strategy.decide_rung(paths, STUDENT, 1, 2, [1, 0]).as_dict() for paths in (
        later, list(reversed(later)), _histories(tmp_path / "at", at_rung, 2))]
    assert made[0] == made[1] == made[2]

    def mean_at_rung(by_seed):  # each seed's accuracy at its lowest validation loss up to epoch 2 (the first)
        return sum(min(epochs[:2], key=lambda row: row[0])[1] for epochs in by_seed) / len(by_seed)

    best = max(HISTORY, key=lambda point: mean_at_rung(HISTORY[point]))
    assert [(c["method"], c["hparams"]) for c in made[0]["candidates"] if c["kept"]] == [(best[0], dict(best[1]))]
    assert best[1] == (("temperature", 2), ("soft_weight", 0.5)) and made[0]["seeds"] == [0, 1]


def test_the_registry_refuses_a_strategy_that_judges_rungs_its_own_way():
    class OwnWay(KeepOne):
        def decide_rung(self, record_paths, student, stage, rung, seeds, **settings):
            return None

    class NoJudge(Strategy):
        name, prunes = "no-judge", True

    with pytest.raises(TypeError, match="overrides decide_rung"):
        guarded(OwnWay())
    with pytest.raises(TypeError, match="prunes but has no judge"):
        guarded(NoJudge())
    assert all(guarded(strategy) is strategy for strategy in STRATEGIES.values())


def test_a_decision_is_written_once(tmp_path):
    """The same decision again leaves the file as it is (its bytes and its time, which Snakemake reads); another
    decision over it is refused in one sentence, through the checkpoint's command too, and the file stands."""
    from test_halving import POINTS, _records

    paths = _records(tmp_path, POINTS)
    out = tmp_path / "halving" / "resnet18_rung3.json"
    args = ["rung-decision", *paths, "--student", STUDENT, "--stage", 0, "--rung", 3, "--min-kept", 1, "--seeds", 0,
            1, "--out", out]
    run_kdsweep(*args, "--keep", 0.34)
    first, stamp = out.read_bytes(), out.stat().st_mtime_ns
    decision = RungDecision.read(out)
    assert write_decision(decision, out, "halving decision") == out
    run_kdsweep(*args, "--keep", 0.34)
    assert out.read_bytes() == first and out.stat().st_mtime_ns == stamp
    refused = run_kdsweep(*args, "--keep", 0.9, check=False)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert f"halving decision {out} already holds another decision" in refused.stderr and "delete it" in refused.stderr
    decision.keep = 0.9
    with pytest.raises(KdsweepError, match="already holds another decision"):
        write_decision(decision, out, "halving decision")
    assert out.read_bytes() == first and out.stat().st_mtime_ns == stamp


# ---------------------------------------------------------------- the real Snakemake


# The dry run's process: the toy method and strategy registered before Snakemake reads the Snakefile (so
# before kdsweep.plan is imported: its roles and the workflow's wildcards include the toy method).
BOOT = ("import sys; sys.path.insert(0, sys.argv.pop(1)); import test_search; test_search.register(); "
        "from snakemake.cli import main; main()")


def jobs(output: str) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job of a dry run's listing."""
    found = []
    for line in output.splitlines():
        if rule := re.match(r"\s*(?:local)?(?:rule|checkpoint) (\w+):$", line):
            found.append((rule.group(1), {}))
        elif found and (wildcards := re.match(r"\s+wildcards: (.*)$", line)):
            found[-1][1].update(item.split("=", 1) for item in wildcards.group(1).split(", "))
    return found


@pytest.mark.workflow
def test_a_study_of_a_toy_strategy_and_a_toy_method_plans_the_jobs_the_strategy_asked_for(toys, tmp_path):
    study = tmp_path / "toy.yaml"
    study.write_text(STUDY)
    (tmp_path / "work").mkdir()
    plan = _plan(study)
    result = subprocess.run(
        [sys.executable, "-c", BOOT, str(Path(__file__).parent), "--snakefile", str(ROOT / "Snakefile"),
         "--directory", str(tmp_path / "work"), "--configfile", str(ROOT / "config.yaml"), str(study),
         "--dry-run", "--printshellcmds"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    output = result.stdout + result.stderr
    planned = jobs(output)
    distilled = [run for run in plan.fixed_runs() if run.distilled]
    assert len(distilled) == 4 and {run.method for run in distilled} == {"kd", "toy"}
    # the distillation jobs: the packs of the drawn points, nothing of the rest of either grid
    assert sorted(w["pack"] for rule, w in planned if rule == "distill") == sorted(
        plan.pack_of(run).name for run in distilled)
    # every run measured: the teacher, the baselines (the sweep's and the confirmation's) and the drawn points
    measured = {(run.role, run.name) for run in [*plan.teacher_runs(), *plan.baselines(), *plan.confirm_baselines(),
                                                 *distilled]}
    assert {(w["role"], w["run"]) for rule, w in planned if rule == "attack"} == measured
    # each method's point is chosen among the drawn points of that method (checkpoint best_point's runs)
    assert sorted(w["choice"] for rule, w in planned if rule == "best_point") == [STUDENT, f"{STUDENT}_toy"]
    chosen_from = {}
    for command in re.findall(r"kdsweep best-point (.*?) >>", output):  # --out <record> <run folder>...
        words = shlex.split(command)
        chosen_from[Path(words[1]).stem] = sorted(words[2:])
    assert chosen_from == {choice: sorted(f"{plan.results}/{run.folder}" for run in distilled
                                          if plan.choice_name(STUDENT, run.method) == choice)
                           for choice in (STUDENT, f"{STUDENT}_toy")}
