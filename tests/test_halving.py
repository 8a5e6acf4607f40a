"""Successive halving (config `sweep: halving`, kdsweep.halving): the rung decision, the plan's stages, the
exactness of a point trained in stages, and a halving study through the real Snakemake, then switched to
the grid.
"""

import csv
import json
import math
from fractions import Fraction
from pathlib import Path

import pytest

from kdsweep.config import load_config
from kdsweep.errors import KdsweepError
from kdsweep.halving import decide, kept_count
from kdsweep.plan import Plan
from kdsweep.records import JobPoint, JobRecord, RungDecision

from conftest import ROOT, kd_run, snakemake
from conftest import run_kdsweep as kdsweep

HALVING = ROOT / "tests" / "studies" / "halving.yaml"
# metrics.json's numbers of a run (not its seconds or its count of resumes)
COMPARED = ["epochs", "best_epoch", "stopped_early", "val_acc", "val_loss", "test_acc", "test_loss", "config_hash"]


# ---------------------------------------------------------------- the decision


@pytest.mark.parametrize("keep", [0.1, 0.25, 0.34, 0.5, 0.9])
@pytest.mark.parametrize("min_kept", [1, 2, 3])
def test_kept_count_is_the_fraction_rounded_up_never_below_the_minimum_nor_above_all(keep, min_kept):
    for n in range(1, 21):
        fraction = math.ceil(Fraction(str(keep)) * n)  # exact: 0.34 * 50 is 17, not 17.000000000000004
        assert kept_count(n, keep, min_kept) == min(n, max(min_kept, fraction))


def _records(folder, points, rung=3, test_accs=None):
    """One pack record per seed of these points {(method, hparams tuple): [val acc of seed 0, seed 1, ...]};
    test_accs the same shape (None: paused points, no test accuracy). Returns the paths, in seed order."""
    seeds = len(next(iter(points.values())))
    paths = []
    for seed in range(seeds):
        entries = []
        for i, ((method, hparams), accs) in enumerate(points.items()):
            test = None if test_accs is None else test_accs[(method, hparams)][seed]
            entries.append(JobPoint(run=f"runs/{method}/p{i}_seed{seed}", method=method, hparams=dict(hparams),
                                    config_hash=f"h{i}{seed}", seed=seed, epochs=rung, val_acc=accs[seed],
                                    test_acc=test, finished=test is not None))
        paths.append(JobRecord(points=entries, until_epoch=rung).write(Path(folder) / f"seed{seed}.json"))
    return paths


def kd(t, w):
    return ("kd", (("temperature", t), ("soft_weight", w)))


def dkd(beta):
    return ("dkd", (("alpha", 1.0), ("beta", beta), ("temperature", 4.0), ("warmup_epochs", 20)))


# val acc per seed: kd's means are 50, 70, 60, 80, 65; dkd's 40, 90, 90 (a tie: the first in order wins)
POINTS = {kd(1, 0.5): [40, 60], kd(2, 0.5): [75, 65], kd(4, 0.5): [60, 60], kd(8, 0.5): [90, 70],
          kd(16, 0.5): [65, 65], dkd(1.0): [40, 40], dkd(2.0): [95, 85], dkd(8.0): [80, 100]}


def kept(decision: RungDecision):
    """The kept points, as {(method, frozenset of (name, value))} (a record's JSON sorts its keys)."""
    return {(c.method, frozenset(c.hparams.items())) for c in decision.candidates if c.kept}


def points(*named):
    return {(method, frozenset(hparams)) for method, hparams in named}


def test_each_method_keeps_its_best_points_on_mean_validation_accuracy(tmp_path):
    decision = decide(_records(tmp_path, POINTS), "resnet18", 0, 3, keep=0.34, min_kept=1, seeds=[0, 1])
    # kd: ceil(0.34 * 5) = 2 of means 50, 70, 60, 80, 65 -> T=8 (80) and T=2 (70); dkd: ceil(0.34 * 3) = 2 of
    # 40, 90, 90 -> both 90s
    assert kept(decision) == points(kd(8, 0.5), kd(2, 0.5), dkd(2.0), dkd(8.0))
    means = {(c.method, frozenset(c.hparams.items())): c.val_acc_mean for c in decision.candidates}
    assert means == {(method, frozenset(hparams)): sum(accs) / 2 for (method, hparams), accs in POINTS.items()}
    assert all(c.n == 2 and c.epochs == [3, 3] and not c.finished for c in decision.candidates)


def test_the_minimum_kept_per_student_and_method_holds(tmp_path):
    decision = decide(_records(tmp_path, POINTS), "resnet18", 0, 3, keep=0.1, min_kept=3, seeds=[0, 1])
    # 10% of 5 or 3 points is 1, below the minimum of 3: kd keeps its 3 best (80, 70, 65), dkd all 3
    assert kept(decision) == points(kd(8, 0.5), kd(2, 0.5), kd(16, 0.5), dkd(1.0), dkd(2.0), dkd(8.0))


def test_ties_go_to_the_first_point_in_the_plans_order(tmp_path):
    decision = decide(_records(tmp_path, POINTS), "resnet18", 0, 3, keep=0.34, min_kept=1, seeds=[0, 1])
    tied = {("dkd", (("alpha", 1.0), ("beta", 8.0), ("temperature", 4.0), ("warmup_epochs", 20))): [90, 90],
              ("dkd", (("alpha", 1.0), ("beta", 2.0), ("temperature", 4.0), ("warmup_epochs", 20))): [90, 90],
              ("dkd", (("alpha", 1.0), ("beta", 1.0), ("temperature", 4.0), ("warmup_epochs", 20))): [90, 90]}
    (tmp_path / "tie").mkdir()
    tie = decide(_records(tmp_path / "tie", tied), "resnet18", 0, 3, keep=0.34, min_kept=1, seeds=[0, 1])
    assert kept(tie) == points(*list(tied)[:2])
    assert decision.candidates  # (the fixture above decided too)


def test_a_decision_never_reads_test_accuracy(tmp_path):
    """The same validation numbers with test accuracies that rank the points the other way round (finished
    points) or none at all (paused points) give the same decision."""
    (tmp_path / "paused").mkdir()
    (tmp_path / "finished").mkdir()
    paused = decide(_records(tmp_path / "paused", POINTS), "resnet18", 0, 3, 0.34, 1, [0, 1])
    upside_down = {point: [100 - acc for acc in accs] for point, accs in POINTS.items()}
    finished = decide(_records(tmp_path / "finished", POINTS, test_accs=upside_down), "resnet18", 0, 3, 0.34, 1,
                      [0, 1])
    assert kept(finished) == kept(paused)
    assert [c.val_acc_mean for c in finished.candidates] == [c.val_acc_mean for c in paused.candidates]
    assert all(c.finished for c in finished.candidates)
    assert "test" not in json.dumps(finished.as_dict()).replace("never test accuracy", "")


def test_a_rerun_writes_the_same_decision(tmp_path):
    paths = _records(tmp_path, POINTS)
    args = ["rung-decision", *paths, "--student", "resnet18", "--stage", 0, "--rung", 3, "--keep", 0.34,
            "--min-kept", 1, "--seeds", 0, 1]
    kdsweep(*args, "--out", tmp_path / "first.json")
    kdsweep(*args, "--out", tmp_path / "again.json")
    assert (tmp_path / "first.json").read_bytes() == (tmp_path / "again.json").read_bytes()
    assert kept(RungDecision.read(tmp_path / "first.json")) == points(kd(8, 0.5), kd(2, 0.5), dkd(2.0), dkd(8.0))


def test_a_decision_refuses_records_it_cannot_judge(tmp_path):
    paths = _records(tmp_path, POINTS)
    with pytest.raises(KdsweepError, match=r"seeds \[0\] at rung 3, not the sweep's \[0, 1\]"):
        decide(paths[:1], "resnet18", 0, 3, 0.34, 1, [0, 1])
    with pytest.raises(KdsweepError, match="to epoch 3, not to this rung's 9"):
        decide(paths, "resnet18", 1, 9, 0.34, 1, [0, 1])
    result = kdsweep("rung-decision", *paths, "--student", "resnet18", "--stage", 0, "--rung", 0, "--keep", 0.3,
                     "--min-kept", 1, "--seeds", 0, 1, "--out", tmp_path / "x.json", check=False)
    assert result.returncode == 2 and "no number of epochs" in result.stderr


# ---------------------------------------------------------------- the plan


def _plan(*overrides):
    return Plan(load_config([ROOT / "config.yaml", HALVING], list(overrides)))


def test_a_halving_plan_trains_every_pack_in_stages_and_finishes_only_the_survivors():
    plan = _plan()
    names = [pack.name for pack in plan.packs]
    assert names == [f"mobilenet_v3_small_seed{seed}_pack1_{stage}" for seed in (0, 1)
                     for stage in ("rung1", "rung2", "final")]
    assert [(pack.stage, pack.until) for pack in plan.packs[:3]] == [(0, 1), (1, 2), (2, None)]
    run = plan.packs[0].runs[0]
    assert plan.pack_of(run).name == "mobilenet_v3_small_seed0_pack1_final"  # the pack that finishes it
    assert not any(r.distilled for r in plan.fixed_runs())  # which finish is known once the rungs decide
    kept = {(run.method, run.hparams)}
    packs = plan.rung_packs("mobilenet_v3_small", 2, kept)
    assert [pack.runs for pack in packs] == [(run,), (plan.packs[3].runs[0],)]  # its two seeds
    assert plan.rung_packs("mobilenet_v3_small", 1, set()) == []  # a pack with no survivor is no job
    assert plan.finalists("mobilenet_v3_small", kept) == [run, plan.packs[3].runs[0]]


def test_the_grid_plans_as_before():
    plan = _plan("sweep=grid")
    assert [pack.name for pack in plan.packs] == ["mobilenet_v3_small_seed0_pack1", "mobilenet_v3_small_seed1_pack1"]
    assert all(pack.stage is None and pack.until is None for pack in plan.packs)
    assert plan.rungs == []


def test_teacher_free_points_never_reach_a_rung():
    """A halving study whose grid holds w = 0 at every temperature (4 of its 8 points): those points are the
    baseline and train nowhere (kdsweep.plan), so no rung's packs hold one, halving.decide never sees one, and
    every point a rung can keep is distilled; the confirmation's candidates too."""
    plan = _plan("temperatures=[1, 2, 4, 8]", "soft_weights=[0.0, 0.9]")
    for stage in range(len(plan.rungs) + 1):
        runs = [run for pack in plan.stage_packs("mobilenet_v3_small", stage) for run in pack.runs]
        assert len(runs) == 4 * len(plan.seeds) and all(run.needs_teacher for run in runs), stage
    assert sorted(plan.teacher_free["kd"].values()) == ["baseline"] * 4
    assert [dict(point)["soft_weight"] for point in plan.candidates("mobilenet_v3_small", "kd")] == [0.9] * 4


@pytest.mark.parametrize("rungs, message", [
    ("[2, 2]", r"halving.rungs \[2, 2\] do not increase"),
    ("[3, 1]", r"halving.rungs \[3, 1\] do not increase"),
    ("[1, 4]", r"halving.rungs \[1, 4\] reach training.max_epochs \(4\)"),
])
def test_rungs_that_cannot_work_are_refused_before_any_job(rungs, message):
    with pytest.raises(KdsweepError, match=message):
        _plan(f"halving.rungs={rungs}")


# ---------------------------------------------------------------- exactness


def test_a_point_trained_rung_by_rung_ends_exactly_as_one_trained_at_once(tiny_study, tmp_path):
    """Two points of one pack paused at epochs 1 and 2 and then trained to the end equal the same points
    trained without a pause: metrics and every history number but the seconds, compared exactly (the same
    computation on this machine). A paused point has no metrics.json and keeps its checkpoint."""
    from kdsweep import train

    config = load_config([ROOT / "config.yaml", tiny_study.folder / "tiny.yaml"],
                         ["training.max_epochs=4", "training.lr_patience=0"])
    runs = [kd_run("kd", "mobilenet_v3_small", 3, temperature=t, soft_weight=w) for t, w in [(4, 0.5), (2, 0.9)]]

    def train_to(folder, until):
        outs = [tmp_path / folder / f"point{i}" for i in range(len(runs))]
        return outs, train.train_points(config, runs, tiny_study.stats, outs, teacher_dir=tiny_study.teacher,
                                        log=lambda line: None, until_epoch=until)

    whole, at_once = train_to("whole", None)
    for until in (1, 2):
        staged, paused = train_to("staged", until)
        for out, metrics in zip(staged, paused):
            assert metrics.epochs == until and metrics.test_acc is None and metrics.val_acc is not None
            assert not (out / "metrics.json").exists() and (out / "checkpoint.pt").exists()
    staged, finished = train_to("staged", None)
    for a, b, out_a, out_b in zip(at_once, finished, whole, staged):
        assert {k: a[k] for k in COMPARED} == {k: b[k] for k in COMPARED}
        assert b["resumed"] == 2
        rows_a, rows_b = (list(csv.DictReader(open(out / "history.csv"))) for out in (out_a, out_b))
        assert [{k: v for k, v in row.items() if k != "seconds"} for row in rows_a] == \
               [{k: v for k, v in row.items() if k != "seconds"} for row in rows_b]
    assert at_once[0]["val_acc"] != at_once[1]["val_acc"] or at_once[0]["val_loss"] != at_once[1]["val_loss"]


# ---------------------------------------------------------------- through Snakemake


@pytest.mark.workflow
def test_a_halving_study_then_the_grid_on_the_same_folder(tmp_path):
    """tests/studies/halving.yaml through Snakemake: 4 points x 2 seeds judged at epochs 1 and 2. The
    survivors' metrics equal those of the same points trained at once (in this process, from the study's own
    teacher and stats); the tables show the pruned points with their rung's validation accuracy and no test
    accuracy, and name the search; status shows the rungs. Then the study switched to the grid continues the
    dropped points from their rungs' checkpoints, and every run equals the uninterrupted one."""
    from kdsweep import train
    from kdsweep.halving import read_decision

    snakemake(tmp_path, "--cores", "2", "--show-failed-logs", configfiles=[HALVING])
    results = tmp_path / "results" / "halving-tiny"
    decisions = [read_decision(results / "halving" / f"mobilenet_v3_small_rung{rung}.json") for rung in (1, 2)]
    assert [sum(c.kept for c in d.candidates) for d in decisions] == [2, 1]  # keep 0.5 of 4, then of 2
    assert [len(d.candidates) for d in decisions] == [4, 2]
    (finalist,) = [c for c in decisions[1].candidates if c.kept]
    config = load_config([ROOT / "config.yaml", HALVING])
    plan = Plan(config)
    runs = [run for pack in plan.stage_packs("mobilenet_v3_small", 0) for run in pack.runs]
    survivors = [run for run in runs if run.params == finalist.hparams]
    assert len(survivors) == 2
    for run in runs:
        assert ((results / run.folder / "metrics.json").exists()) == (run in survivors)

    # the same points trained at once, outside the workflow
    expected = {}
    for pack in plan.stage_packs("mobilenet_v3_small", 0):  # one per seed
        outs = [tmp_path / "at_once" / run.name for run in pack.runs]
        at_once = train.train_points(config, pack.runs, results / "data" / "stats.json", outs,
                                     teacher_dir=results / plan.teacher.folder, log=lambda line: None)
        expected.update({run: {k: metrics[k] for k in COMPARED} for run, metrics in zip(pack.runs, at_once)})
    for run in survivors:
        found = json.loads((results / run.folder / "metrics.json").read_text())
        assert {k: found[k] for k in COMPARED} == expected[run]

    grid = list(csv.DictReader(open(results / "tables" / "grid.csv")))
    pruned = [row for row in grid if row["pruned_at_epoch"]]
    assert len(pruned) == 3 and all(row["test_acc_mean"] == "" and row["val_acc_mean"] for row in pruned)
    assert all(row["search"].startswith("successive halving (rungs at epochs 1, 2") for row in grid)
    runs_table = list(csv.DictReader(open(results / "tables" / "runs.csv")))
    assert sum(row["role"] == "kd" for row in runs_table) == 2  # the best is chosen among the finished only
    assert "Search: successive halving" in (results / "tables" / "kd_vs_hard.md").read_text()
    status = kdsweep("status", results, cwd=tmp_path).stdout
    assert "mobilenet_v3_small rung 1 (epoch 1): 4 judged, 2 kept, 2 dropped" in status
    assert "mobilenet_v3_small rung 2 (epoch 2): 2 judged, 1 kept, 1 dropped" in status

    # the grid on the same folder: the dropped points resume from their rungs' checkpoints
    snakemake(tmp_path, "--cores", "2", "--show-failed-logs", "--config", "sweep=grid", configfiles=[HALVING])
    logs = "".join(path.read_text() for path in (results / "logs" / "packs").glob("*pack1.log"))
    for run in runs:
        if run not in survivors:
            dropped_at = 1 if run.params not in [c.hparams for c in decisions[1].candidates] else 2
            assert f"resuming {Path('results/halving-tiny') / run.folder} after epoch {dropped_at}" in logs
        found = json.loads((results / run.folder / "metrics.json").read_text())
        assert {k: found[k] for k in COMPARED} == expected[run], run.name
    grid = list(csv.DictReader(open(results / "tables" / "grid.csv")))
    assert not any(row["pruned_at_epoch"] for row in grid) and all(row["search"].startswith("grid") for row in grid)
