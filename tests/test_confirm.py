"""Confirmation on fresh seeds: the plan of its runs, the checkpoint's choice (validation, never test),
the paired gains of kd_vs_hard and confirmed, and the workflow (dry runs; one real tiny study).

The unit tests build run folders in the documented formats (tests/fake_runs.py); the workflow tests
(marker workflow) run the real Snakemake in temporary directories, as tests/test_workflow.py does.
"""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats as scipy_stats

from conftest import TINY_WORKFLOW, copy_of, job_counts, snakemake
from conftest import kd_run
from fake_runs import write_attack, write_method_run, write_run
from kdsweep import io
from kdsweep.config import load_config
from kdsweep.errors import KdsweepError
from kdsweep.commands import Commands
from kdsweep.layout import Layout
from kdsweep.plan import Plan, Run
from kdsweep.search import Undecided
from kdsweep.tables import write_tables
from kdsweep.tables.choices import best_point

ROOT = Path(__file__).resolve().parents[1]
T_975_3 = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom (t table)


def study(*overrides):
    return Plan(load_config([str(ROOT / "config.yaml")], overrides))


# ---------------------------------------------------------------- the plan


def test_confirmation_is_on_in_the_reference_study_with_three_fresh_seeds():
    plan = study()
    assert plan.confirm_seeds == [100, 101, 102] and not set(plan.confirm_seeds) & set(plan.seeds)
    assert plan.confirm_methods == ["kd"] and plan.choices() == [("resnet18", "kd"), ("mobilenet_v3_small", "kd")]
    assert plan.confirm_baselines() == [Run("confirm", s, seed) for s in ("resnet18", "mobilenet_v3_small")
                                        for seed in (100, 101, 102)]
    off = study("confirm.seeds=[]")
    assert off.confirm_seeds == [] and off.confirm_baselines() == [] and off.choices() == []
    assert len(off.fixed_runs()) == 99 and len(off.packs) == 96
    assert not any(run.role == "confirm" for pack in off.packs for run in pack.runs)


def test_three_confirm_seeds_plan_their_runs_on_fresh_seeds():
    plan = study("confirm.seeds=[10, 11, 12]")
    assert plan.confirm_baselines() == [Run("confirm", s, seed) for s in ("resnet18", "mobilenet_v3_small")
                                        for seed in (10, 11, 12)]
    fixed = plan.fixed_runs()
    assert len(fixed) == 99 + 6 and set(plan.confirm_baselines()) <= set(fixed)
    # every distilled point of the grid (w > 0) can be chosen: 8 temperatures x 6 soft weights
    candidates = [dict(point) for point in plan.candidates("resnet18", "kd")]
    assert len(candidates) == 48 and all(point["soft_weight"] > 0 for point in candidates)
    assert {"temperature": 4.0, "soft_weight": 0.5} in candidates
    # a pack of one per candidate and confirm seed; only the chosen point's become jobs
    confirm_packs = [pack for pack in plan.packs if pack.role == "confirm"]
    assert len(confirm_packs) == 2 * 3 * 48 and all(len(pack.runs) == 1 for pack in confirm_packs)
    assert len(plan.packs) == 96 + 288
    runs = plan.confirmed("resnet18", "kd", kd_run("kd", "resnet18", 0, 4, 0.5).hparams)
    assert [run.folder for run in runs] == [f"runs/confirm/resnet18_T4_soft0.5_seed{s}" for s in (10, 11, 12)]
    assert {run.seed for run in runs} & set(plan.seeds) == set()
    assert plan.pack_of(runs[0]).name == "confirm_resnet18_T4_soft0.5_seed10"
    assert Layout(plan).finished(runs[0]) == ["results/cifar10-reference/packs/confirm_resnet18_T4_soft0.5_seed10.json"]
    base = Run("confirm", "resnet18", 10)
    assert base.folder == "runs/confirm/resnet18_seed10" and not base.distilled and not base.needs_teacher
    assert Layout(plan).finished(base) == ["results/cifar10-reference/trained/confirm/resnet18_seed10.json"]
    assert plan.run("confirm", "resnet18_T4_soft0.5_seed10") == runs[0] and plan.run("confirm", base.name) == base
    # a confirmed run: its evaluation, its masking record and every attack (6) and their worst case at every epsilon (3)
    assert len(Layout(plan).outputs(runs)) == 3 * (1 + 1 + 1 + 7 * 3)
    assert Layout(plan).confirm_record("resnet18") == "results/cifar10-reference/confirm/resnet18.json"
    assert "--out results/cifar10-reference/runs/confirm/resnet18_T4_soft0.5_seed10" in Commands(plan, Layout(plan)).pack_points(
        plan.pack_of(runs[0]))


def test_confirm_seeds_that_the_sweep_uses_are_refused_in_one_sentence():
    with pytest.raises(KdsweepError, match=r"confirm.seeds \[0\] are seeds of the sweep too.*fresh seeds"):
        study("seeds=[0, 1]", "confirm.seeds=[0, 5]")
    with pytest.raises(KdsweepError, match="confirm"):  # the schema: unique seeds >= 0
        study("confirm.seeds=[3, 3]")
    with pytest.raises(KdsweepError, match="confirm"):
        study("confirm.seeds=[-1]")


def test_the_chosen_point_is_a_distilled_point_of_the_config():
    plan = study("confirm.seeds=[10]")
    # a record of this version (method, hparams) or of an earlier one (kd's T and w alone)
    point = kd_run("kd", "resnet18", 0, 4, 0.5).hparams
    assert plan.chosen_point("resnet18", "kd", {"temperature": 4.0, "soft_weight": 0.5}, "x.json") == point
    assert plan.chosen_point("resnet18", "kd", {"method": "kd", "hparams": dict(point)}, "x.json") == point
    for bad in ({"temperature": 3.0, "soft_weight": 0.5}, {"temperature": 4.0, "soft_weight": 0.0},
                {"method": "dkd", "hparams": {"alpha": 1, "beta": 8, "temperature": 4, "warmup_epochs": 20}}):
        with pytest.raises(KdsweepError, match="delete x.json"):
            plan.chosen_point("resnet18", "kd", bad, "x.json")


def test_staged_sweep_confirms_any_point_it_can_reach():
    plan = study("sweep=staged", "confirm.seeds=[10]")
    # every temperature at w = 0.9, every w at T = 4 (4, 0.9 once): T = 4 as checkpoint best_temperature chose it
    sweep = plan.sweep("resnet18", "kd", lambda checkpoint, read, student: 4)
    assert len(sweep) == 8 + 6 - 1 and len(set(sweep)) == len(sweep)  # w = 0 is the baseline: never in a sweep
    assert {(run.temperature, run.soft_weight) for run in sweep if run.soft_weight == 0.9} == {
        (t, 0.9) for t in (1, 2, 4, 6, 8, 10, 15, 20)}
    assert len(plan.candidates("resnet18", "kd")) == 8 * 6
    with pytest.raises(Undecided):  # its runs depend on the temperature, not chosen yet
        plan.sweep("resnet18")


def test_a_confirm_run_is_distilled_or_its_baseline():
    assert kd_run("confirm", "resnet18", 3, 4, 0.5).name == "resnet18_T4_soft0.5_seed3"
    assert kd_run("confirm", "resnet18", 3, 4, 0.5).needs_teacher
    with pytest.raises(KdsweepError, match="soft_weight None is not a finite number"):
        kd_run("confirm", "resnet18", 3, 4)
    with pytest.raises(KdsweepError, match="soft_weight 1.5 is above its bound"):
        kd_run("confirm", "resnet18", 3, 4, 1.5)
    with pytest.raises(KdsweepError, match="a confirm run takes a KD method"):
        Run("confirm", "resnet18", 3, None, (("temperature", 4.0),))


# ---------------------------------------------------------------- the checkpoint's choice


def sweep(root, points, seeds=(0,), model="resnet18"):
    """kd runs: points = {(T, w): [(val, test) per seed]}; their folders."""
    return [write_run(root, "kd", model, seed, t, w, val_acc=val, test_acc=test)
            for (t, w), values in points.items() for seed, (val, test) in zip(seeds, values)]


def test_best_point_chooses_on_validation_never_on_test(tmp_path):
    """Validation and test orders disagree: (1, 0.5) is best on validation, (4, 0.9) on test, and w = 0
    (hard targets only) best of all on validation but no candidate."""
    dirs = sweep(tmp_path, {(1.0, 0.5): [(92.0, 89.0)], (4.0, 0.9): [(90.0, 93.0)], (4.0, 0.0): [(95.0, 95.0)]})
    choice = best_point(dirs)
    assert (choice["temperature"], choice["soft_weight"]) == (1.0, 0.5)
    assert choice["val_acc"] == pytest.approx(92.0) and choice["n"] == 1 and choice["seeds"] == [0]
    assert choice["candidates"] == [{"temperature": 1.0, "soft_weight": 0.5, "val_acc_mean": 92.0, "n": 1},
                                    {"temperature": 4.0, "soft_weight": 0.9, "val_acc_mean": 90.0, "n": 1}]
    assert choice["hard_target_runs_left_out"] == 1
    assert not [key for key in json.dumps(choice).split('"') if "test" in key]  # no test number in the record


def test_best_point_takes_the_mean_over_seeds_not_the_luckiest_run(tmp_path):
    # (1, 0.5): one lucky seed (94) but mean 86; (4, 0.9): mean 87
    dirs = sweep(tmp_path, {(1.0, 0.5): [(94.0, 80.0), (78.0, 80.0)], (4.0, 0.9): [(86.0, 80.0), (88.0, 80.0)]},
                 seeds=(0, 1))
    choice = best_point(reversed(dirs))
    assert (choice["temperature"], choice["soft_weight"], choice["n"]) == (4.0, 0.9, 2)
    assert choice["seeds"] == [0, 1] and choice["val_acc"] == pytest.approx(87.0)
    # kd_vs_hard compares the same point
    write_run(tmp_path, "baseline", "resnet18", 0)
    write_tables(tmp_path)
    table = pd.read_csv(tmp_path / "tables" / "kd_vs_hard.csv")
    assert table[["temperature", "soft_weight"]].drop_duplicates().values.tolist() == [[4.0, 0.9]]


def test_best_point_refuses_what_it_cannot_choose_from(tmp_path):
    dirs = sweep(tmp_path, {(1.0, 0.5): [(92.0, 89.0)]})
    unfinished = tmp_path / "runs/kd/resnet18_T4_soft0.5_seed0"
    unfinished.mkdir()
    with pytest.raises(KdsweepError, match="no metrics.json"):
        best_point([*dirs, unfinished])
    with pytest.raises(KdsweepError, match="one student"):
        best_point(dirs + sweep(tmp_path, {(1.0, 0.5): [(92.0, 89.0)]}, model="mobilenet_v3_small"))
    with pytest.raises(KdsweepError, match="w > 0"):
        best_point(sweep(tmp_path, {(4.0, 0.0): [(92.0, 89.0)]}))
    with pytest.raises(KdsweepError, match="sweep's distilled runs only"):
        best_point([write_run(tmp_path, "baseline", "resnet18", 0)])


def test_best_point_command_writes_the_record(tmp_path):
    dirs = sweep(tmp_path, {(1.0, 0.5): [(92.0, 89.0)], (4.0, 0.9): [(90.0, 93.0)]})
    out = tmp_path / "confirm" / "resnet18.json"
    from kdsweep.cli import main

    main(["best-point", "--out", str(out), *map(str, dirs)])
    assert io.read_json(out)["temperature"] == 1.0


# ---------------------------------------------------------------- paired gains in the tables


def test_kd_vs_hard_pairs_by_seed_and_leaves_unpaired_seeds_out(tmp_path):
    """Seeds 0, 1, 2 distilled, baselines of seeds 0 and 1 only: the gain has n = 2 pairs; the difference
    of the two means (boost) is not the paired gain."""
    for seed, (kd, hard) in enumerate([(91.0, 89.0), (92.0, 91.0), (95.0, None)]):
        write_run(tmp_path, "kd", "resnet18", seed, 4.0, 0.9, val_acc=kd, test_acc=kd)
        if hard is not None:
            write_run(tmp_path, "baseline", "resnet18", seed, val_acc=hard, test_acc=hard)
    write_tables(tmp_path)
    row = pd.read_csv(tmp_path / "tables" / "kd_vs_hard.csv").query("measure == 'clean'").iloc[0]
    assert (row["kd_n"], row["hard_n"], row["gain_n"]) == (3, 2, 2)
    assert row["gain_mean"] == pytest.approx(1.5) and row["boost"] == pytest.approx((91 + 92 + 95) / 3 - (89 + 91) / 2)
    assert row["gain_std"] == pytest.approx(math.sqrt(0.5))
    half = 12.706204736174707 * math.sqrt(0.5) / math.sqrt(2)  # t(0.975, 1)
    assert (row["gain_ci95"], row["gain_low"], row["gain_high"]) == pytest.approx((half, 1.5 - half, 1.5 + half))
    assert not row["gain_excludes_zero"]
    # the paired t-test's p (scipy's), and the family: one row with an interval (clean; no attack, no evaluation),
    # so the adjusted p and interval are the raw ones
    p = scipy_stats.ttest_1samp([2.0, 1.0], 0.0).pvalue
    assert row["gain_p"] == pytest.approx(p) and row["family_size"] == 1
    assert (row["gain_p_holm"], row["gain_low_adj"], row["gain_high_adj"]) == pytest.approx((p, 1.5 - half, 1.5 + half))
    assert not row["gain_excludes_zero_adj"] and row["family"].startswith("every row of kd_vs_hard")
    md = (tmp_path / "tables" / "kd_vs_hard.md").read_text()
    cell = f"[{1.5 - half:+.2f}, {1.5 + half:+.2f}]"
    assert f"| +1.50 | {cell} | {cell} | 2 | {p:.3f} | {p:.3f} | no |" in md
    assert "one family of m = 1 comparisons (every row of kd_vs_hard (students x measures x eps)" in md


def test_one_seed_says_n_1_and_gives_no_interval(tmp_path):
    write_run(tmp_path, "kd", "resnet18", 0, 4.0, 0.9, test_acc=91.0)
    write_run(tmp_path, "baseline", "resnet18", 0, test_acc=89.5)
    write_tables(tmp_path)
    row = pd.read_csv(tmp_path / "tables" / "kd_vs_hard.csv").query("measure == 'clean'").iloc[0]
    assert row["gain_n"] == 1 and row["gain_mean"] == pytest.approx(1.5)
    assert row[["gain_std", "gain_ci95", "gain_low", "gain_high", "gain_excludes_zero"]].isna().all()
    assert row[["gain_p", "gain_p_holm", "gain_low_adj", "gain_high_adj"]].isna().all() and row["family_size"] == 0
    assert "| +1.50 | none (n = 1) | – | 1 | – | – | – |" in (tmp_path / "tables" / "kd_vs_hard.md").read_text()


def confirmation_study(root):
    """One sweep seed (0) and a confirmation on seeds 10-13 of the point best_point chose.

    Sweep: baseline test 88; (1, 0.5) val 92 test 89 (chosen), (4, 0.9) val 90 test 93, (4, 0) val 95.
    Confirmation at (1, 0.5): distilled 90, 91.5, 89 (seeds 10-12) and 95 (seed 13, no baseline);
    baselines 88, 90, 88.5 (seeds 10-12): paired gains 2, 1.5, 0.5. A distilled confirmation run of
    another point (4, 0.9; an earlier choice) is on disk too and is not the chosen point.
    FGSM at 0.1: every run's accuracy halved, so the paired gains halve too."""
    dirs = sweep(root, {(1.0, 0.5): [(92.0, 89.0)], (4.0, 0.9): [(90.0, 93.0)], (4.0, 0.0): [(95.0, 95.0)]})
    write_run(root, "baseline", "resnet18", 0, val_acc=89.0, test_acc=88.0)
    io.write_json(root / "confirm" / "resnet18.json", best_point(dirs))
    runs = [("confirm", 10, 1.0, 0.5, 90.0), ("confirm", 11, 1.0, 0.5, 91.5), ("confirm", 12, 1.0, 0.5, 89.0),
            ("confirm", 13, 1.0, 0.5, 95.0), ("confirm", 10, 4.0, 0.9, 99.0),
            ("confirm", 10, None, None, 88.0), ("confirm", 11, None, None, 90.0), ("confirm", 12, None, None, 88.5),
            ("kd", 0, 1.0, 0.5, 89.0), ("baseline", 0, None, None, 88.0)]
    for role, seed, t, w, test in runs:
        if role == "confirm":
            write_run(root, role, "resnet18", seed, t, w, val_acc=50.0, test_acc=test)
        write_attack(root, role, "resnet18", seed, t, w, 0.1, test / 2, test)
    write_tables(root)
    return pd.read_csv(root / "tables" / "confirmed.csv")


def test_confirmed_gain_and_interval_by_hand(tmp_path):
    table = confirmation_study(tmp_path)
    assert set(zip(table["temperature"], table["soft_weight"])) == {(1.0, 0.5)}  # the record's point only
    clean = table.query("measure == 'clean'").iloc[0]
    gains = [2.0, 1.5, 0.5]
    mean = sum(gains) / 3
    sd = math.sqrt(sum((g - mean) ** 2 for g in gains) / 2)
    half = T_975_3 * sd / math.sqrt(3)
    assert (clean["kd_n"], clean["hard_n"], clean["gain_n"]) == (4, 3, 3)
    assert (clean["gain_mean"], clean["gain_std"], clean["gain_ci95"]) == pytest.approx((mean, sd, half))
    assert (clean["gain_low"], clean["gain_high"]) == pytest.approx((mean - half, mean + half))
    assert not clean["gain_excludes_zero"]  # 1.33 - 1.90 < 0
    # beside it, the sweep's own estimate at the chosen point: one seed, gain 89 - 88
    assert (clean["sweep_gain_mean"], clean["sweep_gain_n"]) == (pytest.approx(1.0), 1)
    assert (clean["sweep_val_acc_mean"], clean["sweep_n"]) == (pytest.approx(92.0), 1)
    fgsm = table.query("measure == 'fgsm'").iloc[0]
    assert fgsm["epsilon"] == 0.1 and fgsm["gain_n"] == 3
    assert (fgsm["gain_mean"], fgsm["gain_ci95"]) == pytest.approx((mean / 2, half / 2))
    # the family: clean and FGSM (two rows with an interval); FGSM's gains are the clean ones halved, so the same
    # t and p; Holm's step-down over two equal p-values gives each min(1, 2p), Bonferroni's interval t(1 - 0.05/4, 2)
    p = scipy_stats.ttest_1samp(gains, 0.0).pvalue
    adjusted = scipy_stats.t.ppf(1 - 0.05 / 4, 2) * sd / math.sqrt(3)
    assert clean["family_size"] == 2 and clean["gain_p"] == pytest.approx(p)
    assert clean["gain_p_holm"] == pytest.approx(min(1.0, 2 * p)) and fgsm["gain_p_holm"] == pytest.approx(min(1.0, 2 * p))
    assert (clean["gain_low_adj"], clean["gain_high_adj"]) == pytest.approx((mean - adjusted, mean + adjusted))
    assert clean["against"] == "baseline" and set(table["against"]) == {"baseline"}  # kd alone: no head to head
    md = (tmp_path / "tables" / "confirmed.md").read_text()
    assert "| +1.00 (1) | 88.83 ± " in md
    assert (f"| {mean:+.2f} | [{mean - half:+.2f}, {mean + half:+.2f}] | [{mean - adjusted:+.2f}, {mean + adjusted:+.2f}] "
            f"| 3 | {p:.3f} | {min(1.0, 2 * p):.3f} | no |") in md
    assert "Cost of the confirmation so far: 8 runs (distilled and baselines), 80 epochs, 0.00 CPU-h" in md
    assert ("candidates, best first: temperature=1, soft_weight=0.5: 92.00; temperature=4, soft_weight=0.9: 90.00."
            in md)


DKD = {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup_epochs": 20}


def holm_by_hand(pvalues):
    """Holm's adjusted p-values, written as the procedure reads: sort, multiply the i-th smallest (from 0) by
    m - i, carry the running maximum, cap at 1."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def test_each_method_is_confirmed_head_to_head_against_kd_on_the_same_fresh_seeds(tmp_path):
    """kd's and dkd's chosen points, each trained again on seeds 10-12 with the baseline. dkd - kd is paired by
    fresh seed (1.0, -0.5, 2.5), beside dkd - kd on the sweep's seed (90 - 89); the three contrasts of the
    clean accuracy (kd - hard, dkd - hard, dkd - kd) are one family: Holm's p and Bonferroni's intervals by
    hand. The headline states each from the adjusted numbers only."""
    kd = [write_run(tmp_path, "kd", "resnet18", 0, 1.0, 0.5, val_acc=92.0, test_acc=89.0)]
    dkd = [write_method_run(tmp_path, "dkd", "resnet18", 0, "dkd", DKD, val_acc=91.0, test_acc=90.0)]
    write_run(tmp_path, "baseline", "resnet18", 0, val_acc=89.0, test_acc=88.0)
    io.write_json(tmp_path / "confirm" / "resnet18.json", best_point(kd))
    io.write_json(tmp_path / "confirm" / "resnet18_dkd.json", best_point(dkd))
    fresh = {"kd": (90.0, 91.5, 89.0), "dkd": (91.0, 91.0, 91.5), "hard": (88.0, 90.0, 88.5)}
    for i, seed in enumerate((10, 11, 12)):
        write_run(tmp_path, "confirm", "resnet18", seed, 1.0, 0.5, test_acc=fresh["kd"][i])
        write_method_run(tmp_path, "confirm", "resnet18", seed, "dkd", DKD, test_acc=fresh["dkd"][i])
        write_run(tmp_path, "confirm", "resnet18", seed, test_acc=fresh["hard"][i])
    write_tables(tmp_path)
    table = pd.read_csv(tmp_path / "tables" / "confirmed.csv").query("measure == 'clean'")
    assert list(zip(table["method"], table["against"])) == [("kd", "baseline"), ("dkd", "baseline"), ("dkd", "kd")]
    gains = {key: [a - b for a, b in zip(fresh[one], fresh[other])]
             for key, (one, other) in {"kd": ("kd", "hard"), "dkd": ("dkd", "hard"), "dkd-kd": ("dkd", "kd")}.items()}
    p = {key: scipy_stats.ttest_1samp(values, 0.0).pvalue for key, values in gains.items()}
    holm = dict(zip(p, holm_by_hand(list(p.values()))))
    t_adjusted = scipy_stats.t.ppf(1 - 0.05 / (2 * 3), 2)
    for (_, row), key in zip(table.iterrows(), gains):
        values = gains[key]
        mean = sum(values) / 3
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
        assert (row["gain_mean"], row["gain_std"], row["gain_n"]) == pytest.approx((mean, sd, 3)), key
        assert (row["gain_p"], row["gain_p_holm"]) == pytest.approx((p[key], holm[key])), key
        assert (row["gain_low_adj"], row["gain_high_adj"]) == pytest.approx(
            (mean - t_adjusted * sd / math.sqrt(3), mean + t_adjusted * sd / math.sqrt(3))), key
        assert row["gain_excludes_zero_adj"] == (holm[key] < 0.05) and row["family_size"] == 3
    head = table.iloc[2]
    assert (head["hard_mean"], head["kd_mean"]) == pytest.approx((sum(fresh["kd"]) / 3, sum(fresh["dkd"]) / 3))
    assert (head["sweep_gain_mean"], head["sweep_gain_n"]) == (pytest.approx(1.0), 1)
    md = (tmp_path / "tables" / "confirmed.md").read_text()
    assert "Head to head: each method's confirmed point against kd's confirmed point" in md
    assert "| method - kd | 95% CI (raw) | 95% CI (adjusted) |" in md and "| +1.00 (1) |" in md
    headline = (tmp_path / "tables" / "headline.md").read_text()
    assert "fresh seeds" in headline and "m = 3 comparisons of confirmed.md" in headline
    for key, other in (("kd", "the hard-target baseline"), ("dkd", "the hard-target baseline"),
                       ("dkd-kd", "kd's confirmed point")):
        mean = sum(gains[key]) / 3
        verdict = ("beats" if mean > 0 else "trails") if holm[key] < 0.05 else "does not differ detectably from"
        assert f"{verdict} {other}" in headline and f"{mean:+.2f} points" in headline, key
    assert "95% CI (raw)" not in headline  # the headline reads the adjusted numbers only


def test_confirmation_runs_stay_out_of_the_sweep_tables(tmp_path):
    confirmation_study(tmp_path)
    grid = pd.read_csv(tmp_path / "tables" / "grid.csv")
    # the sweep's two distilled points; its run at w = 0 (an earlier version trained one) is the baseline, left out
    assert len(grid) == 2 and grid["test_acc_n"].eq(1).all() and grid["soft_weight"].gt(0).all()
    kd = pd.read_csv(tmp_path / "tables" / "kd_vs_hard.csv").query("measure == 'clean'").iloc[0]
    assert (kd["kd_n"], kd["hard_n"], kd["gain_n"]) == (1, 1, 1) and kd["kd_mean"] == pytest.approx(89.0)
    table1 = pd.read_csv(tmp_path / "tables" / "table1.csv")
    assert table1["test_acc_n"].tolist() == [1]
    runs = pd.read_csv(tmp_path / "tables" / "runs.csv")
    assert (runs["role"] == "confirm").sum() == 8 and not (runs["soft_weight"] == 0).any()
    robustness = pd.read_csv(tmp_path / "tables" / "robustness.csv")
    assert (robustness["role"] == "confirm").sum() == 8


def test_without_confirmation_the_table_says_so(tmp_path):
    write_run(tmp_path, "baseline", "resnet18", 0)
    write_tables(tmp_path)
    assert pd.read_csv(tmp_path / "tables" / "confirmed.csv").empty
    assert "confirm.seeds is empty" in (tmp_path / "tables" / "confirmed.md").read_text()


# ---------------------------------------------------------------- the workflow

# config.yaml's jobs before the checkpoints, confirmation off: teacher, 2 baselines, 96 distilled runs (8 x 6 per
# student: w = 0 is the baseline), each attacked (2 attacks x 3 eps) and evaluated by one job
UNCONFIRMED_JOBS = {"download": 1, "runtime": 1, "study": 1, "stats": 1, "train": 3, "attack": 99, "distill": 96,
                    "tables": 1, "figures": 1, "all": 1, "total": 205}


def with_confirmation(seeds):
    """Before the checkpoints, per student `seeds` baselines (train), each with its attack job (the whole suite
    and the evaluation), and one best_point checkpoint; the distilled confirmation runs (distill) and their evaluations
    come once the checkpoints have chosen (test_plan-level: plan.confirmed)."""
    extra = {"train": 2 * seeds, "attack": 2 * seeds, "best_point": 2}
    expected = {rule: UNCONFIRMED_JOBS.get(rule, 0) + extra.get(rule, 0) for rule in {*UNCONFIRMED_JOBS, *extra}}
    expected["total"] = UNCONFIRMED_JOBS["total"] + sum(extra.values())
    return expected


@pytest.mark.workflow
def test_reference_study_dry_run_confirms_on_three_fresh_seeds_and_confirm_off_drops_only_that(tmp_path):
    assert job_counts(snakemake(tmp_path, "--dry-run").stdout) == with_confirmation(3)
    explicit = snakemake(tmp_path, "--dry-run", "--config", "confirm={seeds: []}").stdout
    assert job_counts(explicit) == UNCONFIRMED_JOBS


@pytest.mark.workflow
def test_four_confirm_seeds_add_the_expected_jobs(tmp_path):
    counts = job_counts(snakemake(tmp_path, "--dry-run", "--config", "confirm={seeds: [10, 11, 12, 13]}").stdout)
    assert counts == with_confirmation(4)


@pytest.mark.workflow
def test_overlapping_confirm_seeds_stop_the_workflow_in_one_sentence(tmp_path):
    result = snakemake(tmp_path, "--dry-run", "--config", "seeds=[0,1]", "confirm={seeds: [1, 7]}", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Job stats" not in output
    assert "confirm.seeds [1] are seeds of the sweep too" in output


@pytest.mark.workflow
def test_staged_sweep_confirms_after_both_checkpoints(tmp_path):
    counts = job_counts(snakemake(tmp_path, "--dry-run", "--config", "sweep=staged", "confirm={seeds: [10]}").stdout)
    assert counts["best_temperature"] == 2 and counts["best_point"] == 2 and counts["distill"] == 16
    assert counts["train"] == 3 + 2


@pytest.mark.workflow
def test_tiny_study_confirms_its_point_on_two_fresh_seeds(tiny, tmp_path):
    """The finished tiny study (one student, T = 4, w = 0.5 and 0.9, seed 0) given confirm.seeds [1, 2],
    for real: the checkpoint chooses on validation, the chosen point and the baseline train on seeds 1
    and 2 and are attacked and evaluated, and the confirmed table pairs them (n = 2). The sweep's runs
    are not trained again."""
    study = copy_of(tiny, tmp_path / "tiny")
    results = study / "results" / "tiny"
    sweep = {path: path.stat().st_mtime_ns for path in (results / "runs").glob("*/*/metrics.json")}
    confirm = ["--config", "confirm={seeds: [1, 2]}"]
    snakemake(study, "--cores", "2", "--show-failed-logs", *confirm, configfiles=[TINY_WORKFLOW])
    assert len(sweep) == 4 and all(path.stat().st_mtime_ns == mtime for path, mtime in sweep.items())
    choice = io.read_json(results / "confirm" / "mobilenet_v3_small.json")
    runs = pd.read_csv(results / "tables" / "runs.csv")
    kd = runs[runs["role"] == "kd"]
    assert choice["val_acc"] == pytest.approx(kd["val_acc"].max())  # the best on validation (ties: lower w)
    assert {c["soft_weight"] for c in choice["candidates"]} == {0.5, 0.9}
    name = f"mobilenet_v3_small_T{choice['temperature']:g}_soft{choice['soft_weight']:g}"
    for seed in (1, 2):
        assert (results / f"runs/confirm/{name}_seed{seed}/metrics.json").is_file()
        assert (results / f"runs/confirm/mobilenet_v3_small_seed{seed}/metrics.json").is_file()
        assert (results / f"packs/confirm_{name}_seed{seed}.json").is_file()
        assert (results / f"attacks/confirm/{name}_seed{seed}/fgsm_eps0.1.json").is_file()
        assert (results / f"evaluation/confirm/mobilenet_v3_small_seed{seed}.json").is_file()
    confirm_runs = runs[runs["role"] == "confirm"]
    assert sorted(confirm_runs["seed"]) == [1, 1, 2, 2]
    table = pd.read_csv(results / "tables" / "confirmed.csv")
    clean = table.query("measure == 'clean'").iloc[0]
    assert (clean["temperature"], clean["soft_weight"]) == (choice["temperature"], choice["soft_weight"])
    assert (clean["kd_n"], clean["hard_n"], clean["gain_n"]) == (2, 2, 2) and clean["sweep_gain_n"] == 1
    assert "Nothing to be done" in "".join(
        (lambda r: (r.stdout, r.stderr))(snakemake(study, "--dry-run", *confirm, configfiles=[TINY_WORKFLOW])))
    report = study / "report.html"
    snakemake(study, "--report", str(report), *confirm, configfiles=[TINY_WORKFLOW])
    assert report.stat().st_size > 0


@pytest.mark.workflow
def test_the_demo_confirms_each_student_on_two_fresh_seeds(tmp_path):
    """studies/demo.yaml: before its checkpoints, the teacher, 2 sweep and 2 x 2 confirmation baselines,
    each student's 7 sweep points (kd's 2 x 2 grid, one point each of dkd, lskd and ctkd) in one pack,
    and one best_point per student and confirmed method (kd); then 2 x 2 distilled confirmation runs."""
    plan = Plan(load_config([str(ROOT / "config.yaml"), str(ROOT / "studies" / "demo.yaml")]))
    assert plan.confirm_seeds == [1, 2] and not set(plan.confirm_seeds) & set(plan.seeds)
    counts = job_counts(snakemake(tmp_path, "--dry-run", configfiles=[ROOT / "studies" / "demo.yaml"]).stdout)
    assert plan.pack_size == 7 and plan.confirm_methods == ["kd"]
    points = 4 + 1 + 1 + 1  # per student
    runs = 1 + 2 + points * 2 + 2 * 2  # teacher, baselines, sweep points, confirmation baselines
    packs = -(-points // plan.pack_size)
    assert (counts["train"], counts["distill"], counts["best_point"]) == (1 + 2 + 4, packs * 2, 2 * 1)
    assert counts["attack"] == runs and "evaluate" not in counts  # one attack job per run: the whole suite


def test_robustness_rows_carry_each_seeds_gain(tmp_path):
    """robustness.csv: a distilled run's accuracy under attack beside its own seed's baseline (the sweep's
    kd against baseline, a confirmation run against the confirmation's baseline)."""
    confirmation_study(tmp_path)
    rows = pd.read_csv(tmp_path / "tables" / "robustness.csv").set_index("run")
    kd = rows.loc["runs/kd/resnet18_T1_soft0.5_seed0"]
    assert (kd["adv_acc"], kd["hard_adv_acc"], kd["adv_gain"]) == pytest.approx((44.5, 44.0, 0.5))
    confirmed = rows.loc["runs/confirm/resnet18_T1_soft0.5_seed11"]
    assert (confirmed["hard_adv_acc"], confirmed["adv_gain"]) == pytest.approx((45.0, 0.75))
    assert math.isnan(rows.loc["runs/confirm/resnet18_T1_soft0.5_seed13", "adv_gain"])  # no baseline of seed 13
    assert rows.loc[["runs/baseline/resnet18_seed0", "runs/confirm/resnet18_seed10"], "adv_gain"].isna().all()
