"""Successive halving (config `sweep: halving`, kdsweep.search.halving): the rung decision, the plan's stages, the
exactness of a point trained in stages, and a halving study through the real Snakemake, then switched to
the grid.
"""

import csv
import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from kdsweep.config import load_config
from kdsweep.errors import KdsweepError
from kdsweep.plan import Plan
from kdsweep.search.halving import decide, kept_count
from kdsweep.records import JobPoint, JobRecord, RungDecision

from conftest import ROOT, built_once, copy_of, job_counts, kd_run, snakemake
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


def _histories(folder, points, rung, until=None):
    """One pack record per seed (until_epoch: `until`, the rung's by default) of these points {(method, hparams):
    [[(val_loss, val_acc) of each epoch] of seed 0, of seed 1, ...]}: a point whose list ends before the rung
    ended there (early stopping: finished), one that goes past it trained on since (finished at its end)."""
    seeds = len(next(iter(points.values())))
    paths = []
    for seed in range(seeds):
        entries = []
        for i, ((method, hparams), by_seed) in enumerate(points.items()):
            epochs = by_seed[seed]
            best = min(range(len(epochs)), key=lambda e: (epochs[e][0], e))
            finished = len(epochs) != rung
            entries.append(JobPoint(
                run=f"runs/{method}/p{i}_seed{seed}", method=method, hparams=dict(hparams), config_hash=f"h{i}{seed}",
                seed=seed, epochs=len(epochs), val_acc=epochs[best][1], finished=finished,
                test_acc=50.0 if finished else None,
                history=[{"epoch": e + 1, "val_loss": loss, "val_acc": acc} for e, (loss, acc) in enumerate(epochs)]))
        paths.append(JobRecord(points=entries, until_epoch=until or rung).write(Path(folder) / f"seed{seed}.json"))
    return paths


def _at(epochs, rung):
    """A point's (val acc, best epoch) at the rung, computed here: the lowest validation loss among epochs <= rung,
    the first of equal ones."""
    seen = epochs[:rung]
    loss = min(loss for loss, _ in seen)
    best = next(e for e, (l, _) in enumerate(seen) if l == loss)
    return seen[best][1], best + 1


# (val_loss, val_acc) per epoch and seed; rung 2. kd T=1 went on to epoch 4 and got much better after the rung;
# T=2 is best at epoch 1 (its epoch-2 accuracy is higher, but its loss is not); T=4 was ended by early stopping
# after epoch 1; T=8 is the plain one.
HISTORY = {kd(1, 0.5): [[(2.0, 40.0), (1.5, 50.0), (0.2, 99.0), (0.1, 99.5)], [(2.0, 42.0), (1.4, 52.0), (0.2, 98.0)]],
           kd(2, 0.5): [[(1.0, 60.0), (1.2, 80.0)], [(1.1, 58.0), (1.1, 90.0)]],
           kd(4, 0.5): [[(1.3, 55.0)], [(1.3, 57.0)]],
           kd(8, 0.5): [[(1.8, 45.0), (1.6, 48.0)], [(1.8, 44.0), (1.7, 47.0)]]}


def test_a_rung_reads_each_point_at_its_own_epoch_never_past_it(tmp_path):
    """The decision at rung 2 from records whose points went on past it (a record written again after the
    survivors trained on) equals the one from records written at the rung, byte for byte: each point judged on
    the validation accuracy of its best validation-loss epoch up to epoch 2, finished only if early stopping
    ended it by then."""
    (tmp_path / "later").mkdir()
    (tmp_path / "at").mkdir()
    later = decide(_histories(tmp_path / "later", HISTORY, 2), "resnet18", 1, 2, keep=0.5, min_kept=1, seeds=[0, 1])
    at_rung = {point: [epochs[:2] for epochs in by_seed] for point, by_seed in HISTORY.items()}
    at = decide(_histories(tmp_path / "at", at_rung, 2), "resnet18", 1, 2, keep=0.5, min_kept=1, seeds=[0, 1])
    later.write(tmp_path / "later.json")
    at.write(tmp_path / "at.json")
    assert (tmp_path / "later.json").read_bytes() == (tmp_path / "at.json").read_bytes()
    found = {(c.method, frozenset(c.hparams.items())): c for c in later.candidates}
    for point, by_seed in HISTORY.items():
        candidate = found[point[0], frozenset(point[1])]
        states = [_at(epochs, 2) for epochs in by_seed]
        assert candidate.val_acc_mean == sum(acc for acc, _ in states) / 2
        assert candidate.best_epochs == [best for _, best in states]
        assert candidate.epochs == [min(len(epochs), 2) for epochs in by_seed]
        assert candidate.finished == (point == kd(4, 0.5))  # the only one ended by epoch 2
    # means 51, 59, 56, 47.5: T=2 and T=4 go on (T=1's 99% came after the rung)
    assert kept(later) == points(kd(2, 0.5), kd(4, 0.5))


def test_a_record_without_history_is_judged_only_where_it_stopped_at_the_rung(tmp_path):
    """A pack record of an earlier version (no history) holding a point past the rung cannot say the point's
    state at the rung: refused with the fix, never judged on what came after."""
    paths = _records(tmp_path, POINTS, rung=3)
    record = JobRecord.read(paths[0])
    record.points[0].epochs = 5
    record.write(paths[0])
    with pytest.raises(KdsweepError, match="at epoch 5 without its validation history.*delete it"):
        decide(paths, "resnet18", 0, 3, 0.34, 1, [0, 1])


@pytest.mark.parametrize("seed", range(6))
def test_points_without_the_teacher_never_go_on_and_at_least_min_kept_that_use_it_do(tmp_path, seed):
    """Many kd w = 0 points (hard targets only), better on validation than every point that uses the teacher:
    none goes on, and the rung keeps ceil(keep * n) >= min_kept of the n points that use it, so the
    confirmation always has a candidate."""
    rng = np.random.default_rng(seed)
    temperatures = [1, 2, 4, 6, 8, 10, 15, 20]
    weights = [0.0, 0.3, 0.9]
    grid = {kd(t, w): [float(rng.uniform(90, 99)) if w == 0 else float(rng.uniform(10, 80)) for _ in range(2)]
            for t in temperatures for w in weights}
    keep, min_kept = [(0.1, 1), (0.1, 2), (0.34, 1), (0.5, 3), (0.05, 1), (0.2, 2)][seed]
    decision = decide(_records(tmp_path, grid), "resnet18", 0, 3, keep=keep, min_kept=min_kept, seeds=[0, 1])
    teacher = [c for c in decision.candidates if c.hparams["soft_weight"] > 0]
    free = [c for c in decision.candidates if c.hparams["soft_weight"] == 0]
    assert len(free) == 8 and not any(c.kept or c.uses_teacher for c in free)
    assert all(c.uses_teacher for c in teacher)
    assert sum(c.kept for c in teacher) == max(min_kept, math.ceil(Fraction(str(keep)) * len(teacher))) >= 1
    best = sorted(teacher, key=lambda c: -c.val_acc_mean)[:sum(c.kept for c in teacher)]
    assert all(c.kept for c in best)


def test_ties_go_to_fewer_epochs_to_the_best_loss_then_to_lower_values_and_are_reported(tmp_path):
    """Three dkd points tie on mean validation accuracy and keep 0.34 keeps 2: beta 8 reached its best loss in
    fewer epochs and goes on first; beta 1 and 2 tie on that too, and the lower value (beta 1) goes on. The
    record names the tie and what broke it, and is the same bytes whatever order its records come in."""
    tied = {dkd(2.0): [[(1.0, 90.0), (0.9, 90.0)]] * 2,
            dkd(8.0): [[(0.9, 90.0), (1.0, 91.0)]] * 2,
            dkd(1.0): [[(1.0, 90.0), (0.9, 90.0)]] * 2}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    tie = decide(_histories(tmp_path / "a", tied, 2), "resnet18", 0, 2, keep=0.34, min_kept=1, seeds=[0, 1])
    assert kept(tie) == points(dkd(8.0), dkd(1.0))
    assert tie.ties == ["dkd: 3 points tie at mean validation accuracy 90%; kept alpha=1, beta=8, temperature=4, "
                        "warmup_epochs=20; alpha=1, beta=1, temperature=4, warmup_epochs=20, over alpha=1, beta=2, "
                        "temperature=4, warmup_epochs=20, by the lower hyperparameter values"]
    reordered = dict(reversed(list(tied.items())))
    again = decide(list(reversed(_histories(tmp_path / "b", reordered, 2))), "resnet18", 0, 2, keep=0.34, min_kept=1,
                   seeds=[0, 1])
    tie.write(tmp_path / "tie.json")
    again.write(tmp_path / "again.json")
    assert (tmp_path / "tie.json").read_bytes() == (tmp_path / "again.json").read_bytes()
    printed = kdsweep("rung-decision", *_histories(tmp_path / "a", tied, 2), "--student", "resnet18", "--stage", 0,
                      "--rung", 2, "--keep", 0.34, "--min-kept", 1, "--seeds", 0, 1, "--out", tmp_path / "c.json")
    assert "tie at the cut: dkd: 3 points tie" in printed.stdout


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


@pytest.mark.parametrize("overrides, message", [
    (["methods={kd: null}"], "sweep: halving judges the points of the study's KD methods, but methods names none; "
                             "give methods a section"),
    (["soft_weights=[0]"], "kd's grid has none \\(kd: a soft weight above 0\\); add one, or leave the method out"),
    (["halving.min_kept=4"], "halving keeps every point at every rung .* so it decides nothing; set halving.min_kept "
                             "below 4"),
    (["halving.keep=0.8"], "so it decides nothing; set halving.min_kept below 4 and halving.keep at most 0.75,"),
])
def test_a_halving_that_cannot_decide_is_refused_before_any_job(overrides, message):
    """No KD method, a method without a point that uses the teacher (the only points a rung ranks), or a keep
    and min_kept that keep every point at every rung (4 points: min_kept 4, or keep 0.8 -> ceil(3.2) = 4)."""
    with pytest.raises(KdsweepError, match=message):
        _plan(*overrides)
    assert _plan("halving.min_kept=3").search.prunes  # 3 of 4: the first rung drops one
    assert _plan("halving.keep=0.75").search.prunes  # ceil(0.75 x 4) = 3 of 4


def test_the_workflow_refuses_halving_without_a_kd_method_in_one_sentence(tmp_path):
    result = snakemake(tmp_path, "--dry-run", "--config", "methods={kd: null}", configfiles=[HALVING], check=False)
    assert result.returncode != 0 and "Job stats" not in result.stdout
    assert "sweep: halving judges the points of the study's KD methods, but methods names none" in (
        result.stdout + result.stderr)


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


RUNG2 = "results/halving-tiny/halving/mobilenet_v3_small_rung2.json"


@pytest.fixture(scope="session")
def halving_paused(tmp_path_factory):
    """A working directory in which tests/studies/halving.yaml ran to its second rung's decision: the survivor
    paused at epoch 2, nothing evaluated yet (once per test run; work on a copy, copy_of)."""
    return built_once(tmp_path_factory, "halving-paused", lambda folder: snakemake(
        folder, "--cores", "2", "--show-failed-logs", RUNG2, configfiles=[HALVING]))


@pytest.fixture(scope="session")
def halving_finished(tmp_path_factory, halving_paused):
    """halving_paused run to the end: the survivor resumed and finished, every run evaluated, the tables."""
    import shutil

    def build(folder):
        shutil.copytree(halving_paused, folder, symlinks=True, dirs_exist_ok=True)
        snakemake(folder, "--cores", "2", "--show-failed-logs", configfiles=[HALVING])

    return built_once(tmp_path_factory, "halving-finished", build)


def _decisions(results) -> dict:
    return {path.name: path.read_bytes() for path in sorted((results / "halving").glob("*.json"))}


def _spellings(folder) -> list[Path]:
    """tests/studies/halving.yaml three ways that mean the same: two keys of `training` swapped, a default
    restated (lr, config.yaml's 0.001, as 1.0e-3), and whole numbers written as floats."""
    text = HALVING.read_text()
    spelled = {"reordered": text.replace("  batch_size: 100\n  max_epochs: 4\n", "  max_epochs: 4\n  batch_size: 100\n"),
               "restated": text.replace("training:\n", "training:\n  lr: 1.0e-3\n"),
               "floats": text.replace("temperatures: [2, 4]", "temperatures: [2.0, 4.0]")
               .replace("min_kept: 1", "min_kept: 1.0").replace("max_epochs: 4", "max_epochs: 4.0")
               .replace("rotation_degrees: 10", "rotation_degrees: 10.0").replace("flip_p: 0.0", "flip_p: 0")}
    paths = []
    for name, respelled in spelled.items():
        assert respelled != text, name
        paths.append(folder / f"{name}.yaml")
        paths[-1].write_text(respelled)
    return paths


def _nothing_to_do(workdir, *args, configfiles=(HALVING,)):
    result = snakemake(workdir, "--dry-run", *args, configfiles=configfiles)
    assert "Nothing to be done" in result.stdout + result.stderr, (args, configfiles, result.stdout[-3000:])


@pytest.mark.workflow
def test_a_new_pack_size_and_a_respelled_study_file_plan_nothing_and_the_rungs_stand(halving_paused, tmp_path):
    """The halving study paused at its second rung, finished with runtime.pack_size 3 instead of 4: the packs
    keep their names and runs (their records on disk), the survivor resumes from its rung's checkpoint, and
    the rung records are the same bytes as before. Then the finished study plans nothing (dry runs) for either
    pack size, nor for its study file with keys reordered, a default restated or 1.0 for 1."""
    work = copy_of(halving_paused, tmp_path / "work")
    results = work / "results" / "halving-tiny"
    before = _decisions(results)
    assert list(before) == ["mobilenet_v3_small_rung1.json", "mobilenet_v3_small_rung2.json"]
    three = ["--config", "runtime={pack_size: 3}"]
    snakemake(work, "--cores", "2", "--show-failed-logs", *three, configfiles=[HALVING])
    assert _decisions(results) == before
    assert sorted(path.stem for path in (results / "packs").glob("*.json")) == [
        f"mobilenet_v3_small_seed{seed}_pack1_{stage}" for seed in (0, 1) for stage in ("final", "rung1", "rung2")]
    for seed in (0, 1):
        log = (results / "logs" / "packs" / f"mobilenet_v3_small_seed{seed}_pack1_final.log").read_text()
        assert log.count("resuming ") == 1 and "after epoch 2" in log
    _nothing_to_do(work, *three)
    _nothing_to_do(work)
    for respelled in _spellings(tmp_path):
        _nothing_to_do(work, configfiles=[respelled])


@pytest.mark.workflow
def test_remade_rung_records_decide_the_same_and_shorter_rungs_table_every_finished_run(halving_finished, tmp_path):
    """The finished halving study with its first rung's pack records made again, now that its points are past
    epoch 1 (one finished): both rung records are the same bytes, status counts no point ended before rung 1,
    and no run is measured again. Then rungs [1] instead of [1, 2]: the second point rung 1 kept trains on to
    the end and is measured; the first finalist is not measured again though its pack record is written again;
    the tables hold both finalists and the two points pruned at epoch 1, read no record of the old rung 2, and
    say in one line that it is not in the study, as status does."""
    work = copy_of(halving_finished, tmp_path / "work")
    results = work / "results" / "halving-tiny"
    before = _decisions(results)
    measured = {path: path.stat().st_mtime_ns for folder in ("attacks", "masking", "evaluation")
                for path in (results / folder).rglob("*.json")}
    # teacher, 2 baselines, 1 finalist x 2 seeds: an attack job's FGSM, worst case, evaluation and masking record
    # each
    assert len(measured) == 20
    first = [f"results/halving-tiny/packs/mobilenet_v3_small_seed{seed}_pack1_rung1.json" for seed in (0, 1)]
    result = snakemake(work, "--cores", "2", "--show-failed-logs", "--forcerun", *first, configfiles=[HALVING])
    counts = job_counts(result.stdout + result.stderr)
    assert counts["distill"] == 2 and not {"attack", "evaluate", "train"} & set(counts), counts
    remade = JobRecord.read(results / "packs" / "mobilenet_v3_small_seed0_pack1_rung1.json")
    assert max(point.epochs for point in remade.points) == 4 and any(point.finished for point in remade.points)
    assert _decisions(results) == before
    status = kdsweep("status", "results/halving-tiny", cwd=work).stdout
    assert "rung 1 (epoch 1): 4 judged, 2 kept, 2 dropped, 0 finished" in status

    shorter = ["--config", "halving={rungs: [1]}"]
    result = snakemake(work, "--dry-run", *shorter, configfiles=[HALVING])
    counts = job_counts(result.stdout + result.stderr)
    assert counts["distill"] == 2 and counts["attack"] == 2 and "evaluate" not in counts, counts  # the new finalist
    snakemake(work, "--cores", "2", "--show-failed-logs", *shorter, configfiles=[HALVING])
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in measured.items())
    kept = [c for c in RungDecision.read(results / "halving" / "mobilenet_v3_small_rung1.json").candidates if c.kept]
    runs = list(csv.DictReader(open(results / "tables" / "runs.csv")))
    finalists = {(float(row["temperature"]), float(row["soft_weight"]), row["seed"]) for row in runs if row["role"] == "kd"}
    assert finalists == {(c.hparams["temperature"], c.hparams["soft_weight"], seed) for c in kept for seed in "01"}
    grid = list(csv.DictReader(open(results / "tables" / "grid.csv")))
    assert sorted(row["pruned_at_epoch"] for row in grid) == ["", "", "1", "1"]
    assert all(row["search"].startswith("successive halving (a rung at epoch 1;") for row in grid)
    line = ("not in this study as configured now (kept on disk, left out of every table and choice): 1 checkpoint "
            "record: halving/mobilenet_v3_small_rung2.json")
    assert line in (results / "logs" / "tables.log").read_text()
    assert line in kdsweep("status", "results/halving-tiny", cwd=work).stdout
    assert (results / "halving" / "mobilenet_v3_small_rung2.json").read_bytes() == before[
        "mobilenet_v3_small_rung2.json"]  # kept on disk


@pytest.mark.workflow
def test_a_rung_never_leaves_the_confirmation_without_a_point_that_uses_the_teacher(halving_finished, tmp_path):
    """The finding through Snakemake: soft weights {0, 0.5}, keep 0.1 and confirmation on. Every rung keeps
    exactly one point, one that uses the teacher (a w = 0 point, where the plan has one, is recorded and never
    kept, however it did on validation), and the confirmation's checkpoint chooses a point with w > 0 among
    the finalists; no job fails. (The finished study's w = 0.5 points keep their packs and checkpoints.)"""
    work = copy_of(halving_finished, tmp_path / "work")
    results = work / "results" / "halving-tiny"
    changed = ["--config", "soft_weights=[0, 0.5]", "halving={keep: 0.1}", "confirm={seeds: [2]}"]
    snakemake(work, "--cores", "2", "--show-failed-logs", "results/halving-tiny/confirm/mobilenet_v3_small.json",
              *changed, configfiles=[HALVING])
    for rung in (1, 2):
        decision = RungDecision.read(results / "halving" / f"mobilenet_v3_small_rung{rung}.json")
        assert all(c.uses_teacher == (c.hparams["soft_weight"] > 0) for c in decision.candidates)
        (kept,) = [c for c in decision.candidates if c.kept]  # ceil(0.1 x 2) = 1 (min_kept 1) of those that use it
        assert kept.uses_teacher and kept.hparams["soft_weight"] == 0.5
    choice = json.loads((results / "confirm" / "mobilenet_v3_small.json").read_text())
    assert choice["hparams"]["soft_weight"] == 0.5 and choice["hparams"] == kept.hparams


@pytest.mark.workflow
def test_a_halving_study_then_the_grid_on_the_same_folder(halving_finished, tmp_path):
    """tests/studies/halving.yaml through Snakemake: 4 points x 2 seeds judged at epochs 1 and 2. The
    survivors' metrics equal those of the same points trained at once (in this process, from the study's own
    teacher and stats); the tables show the pruned points with their rung's validation accuracy and no test
    accuracy, and name the search; status shows the rungs. Then the study switched to the grid continues the
    dropped points from their rungs' checkpoints, and every run equals the uninterrupted one."""
    from kdsweep import train
    from kdsweep.search.halving import read_decision

    tmp_path = copy_of(halving_finished, tmp_path / "work")
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
