"""kdsweep.tables: the aggregation of a fake, partly finished study written in the documented file formats."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import kd_run

from kdsweep.errors import KdsweepError
from kdsweep.layout import TABLES, attack_file
from kdsweep.tables import write_tables
from kdsweep.tables.choices import best_temperature
from kdsweep.tables.collect import EVALUATION_COLUMNS
from kdsweep.tables.summary import MEASURES


def run_path(*run):
    return kd_run(*run).folder

DATASET = "cifar10"
TEACHER = "resnet50"
BASE = {"resnet18": 88.80, "mobilenet_v3_small": 81.35}  # hard-target test accuracy, seed 0
TEMPERATURES = (1.0, 4.0, 8.0)
WEIGHTS = (0.5, 0.9, 1.0)
EPSILONS = (0.01, 0.05)
FGSM_FACTOR = {0.01: 0.8, 0.05: 0.2}
PGD_FACTOR = {0.01: 0.6, 0.05: 0.05}  # PGD is stronger
ATTACK_FACTOR = {"fgsm": FGSM_FACTOR, "pgd": PGD_FACTOR}
PGD_PARAMS = {"steps": 10, "relative_step_size": 0.25, "random_start": True, "seed": 0}
NOT_EVALUATED = ("resnet18", 1.0, 0.5, 0)  # finished, but its evaluation file is not written yet
SEED_OFFSET = (0.0, -0.5, 0.5)  # seeds 0, 1, 2: mean = the seed-0 value, std = 0.5
UNFINISHED = ("mobilenet_v3_small", 8.0, 1.0, 0)  # no metrics.json
VAL_BEST = (4.0, 0.9)  # resnet18's best cell on validation...
TEST_BEST = (8.0, 0.5)  # ...and a different one, best on test only
T_975_2 = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom (from a t table)


def accuracies(model, temperature=None, soft_weight=None):
    """(val_acc, test_acc) of seed 0 for one run coordinate."""
    base = BASE.get(model, 91.36)
    if temperature is None:
        return base + 0.3, base
    val = base + 1.0 - 0.05 * temperature - 0.5 * abs(soft_weight - 0.5)
    if model == "resnet18" and (temperature, soft_weight) == VAL_BEST:
        return base + 2.0, base + 1.5
    if model == "resnet18" and (temperature, soft_weight) == TEST_BEST:
        return base + 1.0, base + 2.5
    return val, val - 0.4


def write_run(root, role, model, seed, temperature=None, soft_weight=None, val_acc=None, test_acc=None):
    """A finished run folder (metrics.json as train.py writes it); returns its folder."""
    folder = root / run_path(role, model, seed, temperature, soft_weight)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "history.csv").write_text("epoch,lr,train_loss,val_loss,val_acc,seconds\n")
    metrics = {
        "role": role, "dataset": DATASET, "model": model, "seed": seed,
        "temperature": temperature, "soft_weight": soft_weight,
        "teacher_run": None if role != "kd" else str(root / run_path("teacher", TEACHER, 0)),
        "epochs": 42, "best_epoch": 32, "stopped_early": True,
        "val_acc": val_acc, "val_loss": 0.35, "test_acc": test_acc, "test_loss": 0.37,
        "train_seconds": 1234.5, "resumed": 0, "device": "cuda:0",
        "versions": {"python": "3.12.3", "torch": "2.5.1", "torchvision": "0.20.1", "kdsweep": "0.1.0"},
        "slurm": {"job_id": None, "array_task": None, "gpus": None},
        "config": {}, "config_hash": "0123abcd",
    }
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return folder


def write_attack(root, role, model, seed, temperature, soft_weight, epsilon, test_acc, attack="fgsm"):
    run = run_path(role, model, seed, temperature, soft_weight)
    adv = test_acc * ATTACK_FACTOR[attack][epsilon] + (1.0 if role == "kd" else 0.0)
    record = {
        "attack": attack, "params": PGD_PARAMS if attack == "pgd" else {},
        "epsilon": epsilon, "run": str(root / run), "role": role, "model": model,
        "temperature": temperature, "soft_weight": soft_weight, "seed": seed, "n": 10000,
        "clean_acc": test_acc, "adv_acc": adv, "n_correct": round(test_acc * 100),
        "adv_acc_on_correct": 100 * adv / test_acc, "seconds": 3.2, "device": "cuda:0",
        "slurm": {"job_id": "17", "array_task": None, "gpus": "0"},
    }
    path = root / "attacks" / role / run.split("/")[-1] / attack_file(attack, epsilon)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def evaluation_values(model, seed, temperature=None, soft_weight=None):
    """The measures of evaluation/<role>/<run>.json: logits grow with T (as distillation at high T does)."""
    t = 0.0 if temperature is None else temperature
    w = 0.0 if soft_weight is None else soft_weight
    return {"agreement": 90.0 + 5 * w + SEED_OFFSET[seed], "kl_to_teacher": 0.3 - 0.2 * w,
            "ece": 3.0 + 0.1 * t, "nll": 0.4 + 0.01 * t,
            "max_logit": 8.0 + t + SEED_OFFSET[seed], "logit_norm": 12.0 + 2 * t, "worst_class_acc": 70.0 + w}


def write_evaluation(root, role, model, seed, temperature=None, soft_weight=None, test_acc=None):
    """evaluation/<role>/<run>.json as `python -m kdsweep evaluate` writes it."""
    run = run_path(role, model, seed, temperature, soft_weight)
    record = {
        "run": str(root / run), "role": role, "dataset": DATASET, "model": model, "seed": seed,
        "temperature": temperature, "soft_weight": soft_weight,
        "teacher_run": str(root / run_path("teacher", TEACHER, 0)), "teacher_model": TEACHER,
        "n": 10000, "test_acc": test_acc, "test_acc_metrics": test_acc, "ece_bins": 15,
        **evaluation_values(model, seed, temperature, soft_weight),
        "seconds": 2.0, "device": "cuda:0", "precision": "bf16 autocast",
        "slurm": {"job_id": "18", "array_task": None, "gpus": "0"},
    }
    path = root / "evaluation" / role / f"{run.split('/')[-1]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def make_study(root, seeds=(0,), weights=WEIGHTS):
    """A study in progress: teacher, baselines, a T x w sweep over `seeds`, one unfinished run."""
    coords = [("teacher", TEACHER, 0, None, None)]
    for model in BASE:
        for seed in seeds:
            coords.append(("baseline", model, seed, None, None))
            coords += [("kd", model, seed, t, w) for t in TEMPERATURES for w in weights]
    for role, model, seed, t, w in coords:
        if (model, t, w, seed) == UNFINISHED:
            folder = root / run_path(role, model, seed, t, w)
            folder.mkdir(parents=True)
            (folder / "checkpoint.pt").write_bytes(b"")
            continue
        val, test = (a + SEED_OFFSET[seed] for a in accuracies(model, t, w))
        write_run(root, role, model, seed, t, w, val, test)
        for epsilon in EPSILONS:
            for attack in ATTACK_FACTOR:
                write_attack(root, role, model, seed, t, w, epsilon, test, attack)
        if (model, t, w, seed) != NOT_EVALUATED:
            write_evaluation(root, role, model, seed, t, w, test)
    return root


def finished(seeds, weights=WEIGHTS):
    return 1 + len(BASE) * len(seeds) * (1 + len(TEMPERATURES) * len(weights)) - 1


@pytest.fixture(params=[(0,), (0, 1, 2)], ids=["1seed", "3seeds"])
def study(request, tmp_path):
    seeds = request.param
    make_study(tmp_path, seeds)
    paths = write_tables(tmp_path)
    return seeds, tmp_path, paths


def read(root, name):
    return pd.read_csv(root / "tables" / name)


def test_row_counts_and_files(study):
    seeds, root, paths = study
    assert [p.name for p in paths] == list(TABLES)
    assert all(p.is_file() and p.parent == root / "tables" for p in paths)
    runs, robustness = read(root, "runs.csv"), read(root, "robustness.csv")
    assert len(runs) == finished(seeds)
    assert len(robustness) == finished(seeds) * len(EPSILONS) * len(ATTACK_FACTOR)
    assert list(runs["role"].drop_duplicates()) == ["teacher", "baseline", "kd"]
    assert {"dataset", "model", "role", "temperature", "soft_weight", "seed", "epochs", "best_epoch",
            "val_acc", "test_acc", "train_seconds", "run", *EVALUATION_COLUMNS} <= set(runs.columns)
    assert {"attack", "epsilon", "clean_acc", "adv_acc", "adv_acc_on_correct", "max_logit", "logit_norm",
            "params"} <= set(robustness.columns)
    assert robustness["dataset"].eq(DATASET).all()
    # one row per run x attack x epsilon
    assert not robustness.duplicated(["run", "attack", "epsilon"]).any()
    assert robustness.groupby("attack").size().to_dict() == {a: finished(seeds) * len(EPSILONS) for a in ATTACK_FACTOR}
    grid = read(root, "grid.csv")
    cell = grid.query("model == 'mobilenet_v3_small' and temperature == 8 and soft_weight == 1")
    if len(seeds) == 1:  # the unfinished run's cell is absent
        assert len(grid) == len(BASE) * len(TEMPERATURES) * len(WEIGHTS) - 1 and cell.empty
    else:
        assert len(grid) == len(BASE) * len(TEMPERATURES) * len(WEIGHTS)
        assert cell["test_acc_n"].item() == len(seeds) - 1
    table1 = read(root, "table1.csv")
    assert list(table1["model"]) == [TEACHER, "mobilenet_v3_small", "resnet18"]
    assert {"fgsm eps=0.01_mean", "fgsm eps=0.05_ci95", "pgd eps=0.01_mean", "pgd eps=0.05_n", "test_acc_n",
            "max_logit_mean", "logit_norm_ci95"} <= set(table1.columns)
    assert not [c for c in table1.columns if c.startswith("eps=")]


def test_evaluation_and_pgd_files_are_joined(tmp_path):
    make_study(tmp_path)
    write_tables(tmp_path)
    runs = read(tmp_path, "runs.csv").set_index("run")
    name = run_path("kd", "resnet18", 0, 4.0, 0.9)
    assert runs.loc[name, EVALUATION_COLUMNS].tolist() == pytest.approx(
        list(evaluation_values("resnet18", 0, 4.0, 0.9).values()))
    # a finished run whose evaluation is still to come: empty cells, not a crash
    model, t, w, seed = NOT_EVALUATED
    assert runs.loc[run_path("kd", model, seed, t, w), EVALUATION_COLUMNS].isna().all()

    robustness = read(tmp_path, "robustness.csv")
    pgd = robustness.query("attack == 'pgd' and epsilon == 0.05 and run == @name").iloc[0]
    test = BASE["resnet18"] + 1.5  # VAL_BEST's test accuracy
    assert pgd["adv_acc"] == pytest.approx(test * PGD_FACTOR[0.05] + 1)
    assert (pgd["max_logit"], pgd["logit_norm"]) == pytest.approx((12.0, 20.0))  # the run's, joined
    assert json.loads(pgd["params"]) == PGD_PARAMS
    assert robustness.query("attack == 'fgsm'")["params"].eq("{}").all()
    columns = list(robustness.columns)
    assert columns.index("adv_acc_on_correct") + 1 == columns.index("max_logit")  # next to the numbers

    base = read(tmp_path, "table1.csv").query("model == 'resnet18'").iloc[0]
    assert base["pgd eps=0.01_mean"] == pytest.approx(BASE["resnet18"] * PGD_FACTOR[0.01])
    assert base["fgsm eps=0.01_mean"] == pytest.approx(BASE["resnet18"] * FGSM_FACTOR[0.01])
    assert base["max_logit_mean"] == pytest.approx(8.0) and base["logit_norm_n"] == 1
    md = (tmp_path / "tables" / "table1.md").read_text()
    # (no worst case in these files, as in an earlier version's: table1.md shows FGSM, table1.csv every attack)
    assert "| FGSM (reference study, Table IV) eps=0.01 (%) | FGSM (reference study, Table IV) eps=0.05 (%) |" in md
    assert "pgd (random_start=true, relative_step_size=0.25, seed=0, steps=10)" in md

    kd = read(tmp_path, "kd_vs_hard.csv").query("model == 'resnet18'")
    assert kd["measure"].tolist() == ["clean", "fgsm", "fgsm", "pgd", "pgd", *MEASURES]
    row = kd.query("measure == 'pgd' and epsilon == 0.01").iloc[0]
    assert row["boost"] == pytest.approx(1.5 * PGD_FACTOR[0.01] + 1.0)
    row = kd.query("measure == 'max_logit'").iloc[0]
    assert (row["hard_mean"], row["kd_mean"], row["boost"]) == pytest.approx((8.0, 12.0, 4.0))
    assert math.isnan(row["epsilon"])
    md = (tmp_path / "tables" / "kd_vs_hard.md").read_text()
    assert "| FGSM (reference study, Table IV) eps=0.05 (%) |" in md and "| PGD eps=0.05 (%) |" in md
    assert "| mean largest logit | 8.00 | 12.00 | +4.00 |" in md
    assert "| KL(teacher ‖ student), T = 1 | 0.300 | 0.120 | -0.180 |" in md


def test_evaluation_files_missing_or_broken(tmp_path):
    make_study(tmp_path)
    for path in (tmp_path / "evaluation").glob("*/*.json"):
        path.unlink()
    write_tables(tmp_path)  # a sweep in progress: no evaluation yet
    assert read(tmp_path, "runs.csv")[EVALUATION_COLUMNS].isna().all(axis=None)
    assert read(tmp_path, "robustness.csv")[["max_logit", "logit_norm"]].isna().all(axis=None)
    kd = read(tmp_path, "kd_vs_hard.csv")
    assert set(kd["measure"]) == {"clean", "fgsm", "pgd"}
    assert read(tmp_path, "table1.csv")["max_logit_n"].eq(0).all()
    assert "| – | – |" in (tmp_path / "tables" / "table1.md").read_text()
    path = tmp_path / "evaluation" / "baseline" / "resnet18_seed0.json"
    path.write_text('{"agreement": 90')
    with pytest.raises(KdsweepError, match=r"resnet18_seed0.json.*delete it and rerun"):
        write_tables(tmp_path)


def test_best_run_is_chosen_on_validation_not_test(study):
    seeds, root, _ = study
    table = read(root, "kd_vs_hard.csv").query("model == 'resnet18'")
    assert (table[["temperature", "soft_weight"]].drop_duplicates().values.tolist() == [list(VAL_BEST)])
    clean = table.query("measure == 'clean'").iloc[0]
    assert clean["kd_mean"] == pytest.approx(BASE["resnet18"] + 1.5)
    assert clean["hard_mean"] == pytest.approx(BASE["resnet18"])
    assert clean["boost"] == pytest.approx(1.5)
    assert clean["kd_val_acc_mean"] == pytest.approx(BASE["resnet18"] + 2.0)
    fgsm = table.query("measure == 'fgsm' and epsilon == 0.01").iloc[0]
    assert fgsm["boost"] == pytest.approx(1.5 * FGSM_FACTOR[0.01] + 1.0)
    assert len(table) == 1 + len(EPSILONS) * len(ATTACK_FACTOR) + len(EVALUATION_COLUMNS)
    md = (root / "tables" / "kd_vs_hard.md").read_text()
    assert "VALIDATION" in md and "alpha = 1 - w" in md and "never used" in md


def test_three_seed_statistics_match_hand_computation(tmp_path):
    make_study(tmp_path, seeds=(0, 1, 2))
    write_tables(tmp_path)
    std, ci = 0.5, T_975_2 * 0.5 / math.sqrt(3)
    base = read(tmp_path, "table1.csv").query("model == 'resnet18'").iloc[0]
    assert (base["test_acc_mean"], base["test_acc_std"], base["test_acc_n"]) == pytest.approx((88.80, std, 3))
    assert base["test_acc_ci95"] == pytest.approx(ci)
    assert base["fgsm eps=0.05_mean"] == pytest.approx(88.80 * FGSM_FACTOR[0.05])
    assert base["fgsm eps=0.05_ci95"] == pytest.approx(T_975_2 * 0.5 * FGSM_FACTOR[0.05] / math.sqrt(3))
    assert base["pgd eps=0.05_ci95"] == pytest.approx(T_975_2 * 0.5 * PGD_FACTOR[0.05] / math.sqrt(3))
    assert (base["max_logit_mean"], base["max_logit_std"], base["max_logit_ci95"]) == pytest.approx((8.0, std, ci))
    teacher = read(tmp_path, "table1.csv").query("role == 'teacher'").iloc[0]
    assert teacher["test_acc_n"] == 1 and math.isnan(teacher["test_acc_std"])
    grid = read(tmp_path, "grid.csv").query("model == 'resnet18' and temperature == 4 and soft_weight == 0.9")
    assert grid[["test_acc_mean", "test_acc_std", "test_acc_n", "test_acc_ci95"]].iloc[0].tolist() == \
        pytest.approx([BASE["resnet18"] + 1.5, std, 3, ci])
    assert grid["val_acc_mean"].item() == pytest.approx(BASE["resnet18"] + 2.0)
    kd = read(tmp_path, "kd_vs_hard.csv").query("model == 'resnet18' and measure == 'clean'").iloc[0]
    assert [kd["kd_std"], kd["kd_n"], kd["kd_ci95"], kd["hard_ci95"]] == pytest.approx([std, 3, ci, ci])
    md = (tmp_path / "tables" / "table1.md").read_text()
    assert f"88.80 ± {ci:.2f} (3)" in md and "| 91.36 |" in md


def test_one_seed_has_nan_std_and_ci(tmp_path):
    make_study(tmp_path)
    write_tables(tmp_path)
    grid = read(tmp_path, "grid.csv")
    assert grid["test_acc_n"].eq(1).all()
    assert grid["test_acc_std"].isna().all() and grid["test_acc_ci95"].isna().all()
    kd = read(tmp_path, "kd_vs_hard.csv")
    assert kd["kd_ci95"].isna().all() and kd["hard_std"].isna().all()
    md = (tmp_path / "tables" / "kd_vs_hard.md").read_text()
    assert "±" not in md.split("\n", 1)[1] and "| 88.80 | 90.30 | +1.50 |" in md


def test_partial_studies_aggregate_and_an_empty_one_is_refused(tmp_path):
    with pytest.raises(KdsweepError, match="holds no finished run"):
        write_tables(tmp_path)
    assert not (tmp_path / "tables").exists()
    # only a baseline, no attack yet
    write_run(tmp_path, "baseline", "resnet18", 0, val_acc=89.1, test_acc=88.8)
    write_tables(tmp_path)
    kd = read(tmp_path, "kd_vs_hard.csv")
    assert kd["hard_mean"].tolist() == [88.8] and kd["kd_n"].tolist() == [0]
    with pytest.raises(KdsweepError, match="not a folder"):
        write_tables(tmp_path / "typo")


@pytest.mark.parametrize("where", ["runs/kd/resnet18_T4_soft0.9_seed0/metrics.json",
                                   "attacks/baseline/resnet18_seed0/fgsm_eps0.01.json"])
def test_malformed_json_names_the_file_and_the_fix(tmp_path, where):
    make_study(tmp_path)
    path = tmp_path / where
    path.write_text('{"role": "kd", "val_acc": 9')  # a truncated write
    with pytest.raises(KdsweepError, match=r"(?s)" + path.name + ".*delete it and rerun"):
        write_tables(tmp_path)
    path.write_text('{"role": "kd"}')
    with pytest.raises(KdsweepError, match="lacks"):
        write_tables(tmp_path)


def kd_runs(root, val_by_temperature, model="resnet18", soft_weight=0.9):
    return [write_run(root, "kd", model, seed, t, soft_weight, val, val - 0.4)
            for t, vals in val_by_temperature.items() for seed, val in enumerate(vals)]


def test_best_temperature_highest_mean_validation(tmp_path):
    # T=2 has the best single run, T=4 the best mean
    dirs = kd_runs(tmp_path, {1.0: [80.0, 80.2], 2.0: [83.0, 79.0], 4.0: [82.0, 82.2]})
    best = best_temperature(dirs)
    assert best == {"student": "resnet18", "temperature": 4.0, "soft_weight": 0.9,
                    "val_acc": pytest.approx(82.1),
                    "candidates": {1.0: pytest.approx(80.1), 2.0: pytest.approx(81.0), 4.0: pytest.approx(82.1)}}


def test_best_temperature_ties_go_low(tmp_path):
    """An exact tie by construction: both means are (82.3 + 81.9) / 2, and IEEE addition commutes,
    so the two temperatures' means are equal bit for bit whatever the order the runs come in."""
    dirs = kd_runs(tmp_path, {8.0: [82.3, 81.9], 4.0: [81.9, 82.3], 1.0: [80.0, 80.0]})
    assert best_temperature(reversed(dirs))["temperature"] == 4.0


def test_best_temperature_refuses_bad_input(tmp_path):
    dirs = kd_runs(tmp_path, {1.0: [80.0], 4.0: [82.0]})
    unfinished = tmp_path / "runs/kd/resnet18_T8_soft0.9_seed0"
    unfinished.mkdir()
    with pytest.raises(KdsweepError, match="no metrics.json"):
        best_temperature([*dirs, unfinished])
    other = kd_runs(tmp_path, {2.0: [81.0]}, soft_weight=0.5)
    with pytest.raises(KdsweepError, match="soft_weight"):
        best_temperature(dirs + other)


def test_the_teacher_free_point_appears_once_as_the_baseline_and_each_method_states_its_budget(tmp_path):
    """A study whose grid holds w = 0 (kd at T 1 and 4) and dkd's alpha = beta = 0 (at T 2 and 4): the plan trains
    none of them (kdsweep.plan); grid.csv and method_grid.csv show each once per student, the baseline's two seeds,
    labelled; the spread over w at each T counts it as w = 0; a kd run at w = 0 that an earlier version trained is
    left out with a note. methods.csv states each method's budget from the runs' metrics.json."""
    import yaml

    from fake_runs import write_method_run, write_run as fake_run
    from kdsweep.config import load_config
    from kdsweep.plots import write_figures

    config = load_config([], ["soft_weights=[0.0, 0.5, 0.9]", "temperatures=[1, 4]", "students=[resnet18]",
                              "seeds=[0, 1]", "confirm.seeds=[]",
                              "methods={kd: {}, dkd: {alpha: [0, 1], beta: [0, 8], temperature: [2, 4]}}"])
    folder = tmp_path / "results" / config["study"]  # the study folder, as its study.yaml names it
    folder.mkdir(parents=True)
    (folder / "study.yaml").write_text(yaml.safe_dump(config))
    for seed, base in ((0, 88.0), (1, 89.0)):
        fake_run(folder, "baseline", "resnet18", seed, val_acc=base, test_acc=base)
        for t in (1.0, 4.0):
            for w, gain in ((0.5, 1.0), (0.9, 2.0)):
                fake_run(folder, "kd", "resnet18", seed, t, w, val_acc=base + gain, test_acc=base + gain + t / 10)
        for alpha, beta in ((1, 0), (0, 8), (1, 8)):
            for t in (2, 4):
                write_method_run(folder, "dkd", "resnet18", seed, "dkd",
                                 {"alpha": alpha, "beta": beta, "temperature": t, "warmup_epochs": 20},
                                 val_acc=base + 0.5, test_acc=base + 0.5, epochs=12, train_seconds=360.0)
    fake_run(folder, "kd", "resnet18", 0, 4.0, 0.0, val_acc=99.0, test_acc=99.0)  # an earlier version's w = 0 run
    write_tables(folder)
    grid = read(folder, "grid.csv")
    free = grid[grid["soft_weight"] == 0]
    assert len(free) == 1 and math.isnan(free["temperature"].iloc[0])
    assert free["teacher_free"].iloc[0] == "the hard-target baseline (w = 0 at every T)"
    assert (free["test_acc_mean"].iloc[0], free["test_acc_n"].iloc[0]) == (pytest.approx(88.5), 2)
    assert len(grid) == 1 + 2 * 2 and grid.loc[grid["soft_weight"] > 0, "teacher_free"].isna().all()
    sensitivity = read(folder, "sensitivity.csv").query("varied == 'soft_weight'")
    assert sensitivity["points"].tolist() == [3, 3]  # w = 0 (the baseline), 0.5, 0.9 at each T
    assert sensitivity["min_test_acc_mean"].tolist() == pytest.approx([88.5, 88.5])
    method_grid = read(folder, "method_grid.csv")
    dkd_free = method_grid[(method_grid["method"] == "dkd") & (method_grid["teacher_free"] == "baseline")]
    assert dkd_free["point"].tolist() == ["alpha=0, beta=0, warmup_epochs=20 (any temperature)"]
    assert (dkd_free["x"].iloc[0], dkd_free["test_acc_mean"].iloc[0]) == (0, pytest.approx(88.5))
    assert math.isnan(dkd_free["y"].iloc[0])  # the axis it varies over, where it does nothing
    assert len(method_grid.query("method == 'dkd'")) == 6 + 1
    assert len(method_grid.query("method == 'kd' and teacher_free == 'baseline'")) == 1
    methods = read(folder, "methods.csv").query("measure == 'clean'").set_index("method")
    assert methods.loc["kd", ["budget_points", "budget_seeds", "budget_runs", "budget_epochs"]].tolist() == [4, 2, 8, 80]
    assert methods.loc["dkd", ["budget_points", "budget_seeds", "budget_runs", "budget_epochs"]].tolist() == [6, 2, 12, 144]
    assert methods.loc["dkd", "budget_hours"] == pytest.approx(12 * 360 / 3600) and methods.loc["dkd", "budget_unit"] == "CPU-h"
    md = (folder / "tables" / "methods.md").read_text()
    assert "| 6 points x 2 seeds, 144 epochs, 1.20 CPU-h |" in md
    assert not read(folder, "runs.csv")["run"].str.contains("_soft0_").any()
    paths = write_figures(folder, 0.9, ["resnet18"], ["kd", "dkd"])  # the heat maps leave the baseline out
    assert all(path.stat().st_size > 0 for path in paths)


def test_a_budget_counts_the_searched_points_and_each_pruned_seeds_own_epochs(tmp_path):
    """A halving study (rung at epoch 3, seeds 0 and 1) with kd's 4 points, and lskd's distilled point (soft weight
    9) beside its shared teacher-free run (hard weight 0.1, soft weight 0). kd: 2 finalists train 10 epochs per
    seed; at the rung one pruned point paused both seeds at 3, another paused seed 0 at 3 while early stopping
    had ended seed 1 at epoch 2 (a finished run, metrics.json), and a third's pack records (of an earlier version)
    gave no epochs, so each seed counts the rung's 3. Its budget is what trained, seed by seed: 5 points,
    4 x 10 + 3 + 3 + 3 + 2 + 3 + 3 = 57 epochs; lskd's counts its distilled point, not the teacher-free run
    (no candidate)."""
    from fake_runs import write_method_run
    from fake_runs import write_run as fake_run
    from kdsweep.records import RungCandidate, RungDecision

    student = "resnet18"
    for seed in (0, 1):
        fake_run(tmp_path, "baseline", student, seed, val_acc=88.0 + seed, test_acc=88.0 + seed)
        for t in (1.0, 4.0):
            write_method_run(tmp_path, "kd", student, seed, "kd", {"temperature": t, "soft_weight": 0.9},
                             val_acc=90.0 + t, test_acc=90.0 + seed, epochs=10, train_seconds=100.0)
        for w in (0.0, 9.0):
            write_method_run(tmp_path, "lskd", student, seed, "lskd",
                             {"temperature": 2.0, "hard_weight": 0.1, "soft_weight": w}, epochs=7, train_seconds=70.0)
    # the seed early stopping ended before the rung: finished, with its metrics.json
    write_method_run(tmp_path, "kd", student, 1, "kd", {"temperature": 4.0, "soft_weight": 0.5}, val_acc=85.0,
                     epochs=2, train_seconds=20.0)

    def judged(t, w, epochs, kept):
        return RungCandidate(method="kd", hparams={"temperature": t, "soft_weight": w}, val_acc_mean=85.0, n=2,
                             epochs=epochs, finished=None not in epochs and min(epochs) < 3, kept=kept)

    RungDecision(student=student, rung=3, stage=0, keep=0.5, min_kept=1, seeds=[0, 1], candidates=[
        judged(1.0, 0.5, [3, 3], False), judged(4.0, 0.5, [3, 2], False), judged(2.0, 0.5, [None, None], False),
        judged(1.0, 0.9, [3, 3], True), judged(4.0, 0.9, [3, 3], True)]).write(
        tmp_path / "halving" / f"{student}_rung3.json")
    write_tables(tmp_path, "halving")
    methods = read(tmp_path, "methods.csv").query("measure == 'clean'").set_index("method")
    columns = ["budget_points", "budget_seeds", "budget_runs", "budget_epochs"]
    assert methods.loc["kd", columns].tolist() == [5, 2, 5, 4 * 10 + 3 + 3 + 3 + 2 + 3 + 3]
    assert methods.loc["kd", "budget_hours"] == pytest.approx((4 * 100 + 20) / 3600)
    assert methods.loc["lskd", columns].tolist() == [1, 2, 2, 14]
    assert methods.loc["lskd", "budget_hours"] == pytest.approx(2 * 70 / 3600)
def write_masking(root, role, model, seed, temperature, soft_weight, checks):
    """masking/<role>/<run>.json as the attack job writes it, its checks those kdsweep.attacks.diagnostics found."""
    from kdsweep.records import Masking, MaskingCheck

    run = run_path(role, model, seed, temperature, soft_weight)
    record = Masking(run=str(root / run), role=role, dataset=DATASET, model=model, temperature=temperature,
                     soft_weight=soft_weight, seed=seed, n_test=10, tolerance=1.0, transfer=[],
                     checks=[MaskingCheck(**check) for check in checks],
                     suspected=not all(check["passed"] for check in checks))
    record.write(root / "masking" / role / f"{run.split('/')[-1]}.json")


def test_a_failed_masking_check_is_said_in_words_and_marks_every_number_it_touches(tmp_path):
    """Two runs whose attack jobs found masking, as the diagnostics word it: the distilled point of Tables II-V
    (PGD above FGSM at ε = 0.05 only) and a baseline (FGSM leaving images correct at the large ε: every ε). Every
    other run's checks pass. masking.md lists both sentences, robustness.csv carries them on those runs' rows at
    those ε alone, and Table I and Tables II-V count the flagged runs beside each attack number they average."""
    from kdsweep.attacks.diagnostics import checks
    from kdsweep.attacks.examples import Examples
    from kdsweep.attacks.suite import Suite
    from kdsweep.config import load_config

    make_study(tmp_path)
    suite = Suite.from_config(load_config([], ["robustness.masking.large_epsilon_attacks=[fgsm]"]))
    everything = np.arange(10)

    def made(correct):  # ten images, all correct before the attack, the first `correct` still correct after it
        return Examples(everything, np.ones(10, dtype=bool), np.arange(10) < correct)

    sound = {("fgsm", 0.01): made(8), ("pgd", 0.01): made(6), ("fgsm", 0.05): made(2), ("pgd", 0.05): made(1)}
    masked = {**sound, ("pgd", 0.05): made(5)}  # PGD above FGSM at 0.05: 50% against 20%
    chosen = ("kd", "resnet18", 0, *VAL_BEST)
    for run in (("teacher", TEACHER, 0, None, None), ("baseline", "resnet18", 0, None, None)):
        write_masking(tmp_path, *run, checks(sound, {}, {"fgsm": made(0)}, suite))
    write_masking(tmp_path, *chosen, checks(masked, {}, {"fgsm": made(0)}, suite))
    write_masking(tmp_path, "baseline", "mobilenet_v3_small", 0, None, None, checks(sound, {}, {"fgsm": made(9)}, suite))
    write_tables(tmp_path)

    pgd_sentence = "masking suspected: PGD above FGSM at ε=0.05 (50.0% against 20.0%)"
    large_sentence = ("masking suspected: FGSM leaves 90.0% correct at ε=0.5, where any image can be turned into "
                      "another (more than 10%)")
    masking_md = (tmp_path / "tables" / "masking.md").read_text()
    assert f"- kd/resnet18_T4_soft0.9_seed0: {pgd_sentence}" in masking_md
    assert f"- baseline/mobilenet_v3_small_seed0: {large_sentence}" in masking_md
    assert "Every check passed" not in masking_md
    checked = read(tmp_path, "masking.csv")
    assert checked["run"].nunique() == 4 and (~checked["passed"]).sum() == 2

    robustness = read(tmp_path, "robustness.csv").set_index(["run", "attack", "epsilon"])
    kd, mobilenet = run_path(*chosen), run_path("baseline", "mobilenet_v3_small", 0)
    assert robustness.loc[(kd, "fgsm", 0.05), "masking"] == pgd_sentence
    assert robustness.loc[(kd, "fgsm", 0.05), "masking_suspected"]
    assert not robustness.loc[(kd, "pgd", 0.01), "masking_suspected"]
    assert all(robustness.loc[(mobilenet, attack, epsilon), "masking"] == large_sentence
               for attack in ATTACK_FACTOR for epsilon in EPSILONS)
    flagged = robustness[robustness["masking_suspected"].astype(bool)].reset_index()
    assert sorted(set(flagged["run"])) == sorted([kd, mobilenet])
    assert len(flagged) == len(ATTACK_FACTOR) * (1 + len(EPSILONS))  # kd: at 0.05; the baseline: at both

    kd_vs_hard = read(tmp_path, "kd_vs_hard.csv").set_index(["model", "measure", "epsilon"])
    assert kd_vs_hard.loc[("resnet18", "pgd", 0.05), "masking_flagged"] == 1
    assert kd_vs_hard.loc[("resnet18", "fgsm", 0.05), "masking_flagged"] == 1
    assert kd_vs_hard.loc[("resnet18", "pgd", 0.01), "masking_flagged"] == 0
    assert kd_vs_hard.loc[("mobilenet_v3_small", "fgsm", 0.01), "masking_flagged"] == 1  # its baseline's
    assert "| PGD eps=0.05 (%) ⚠ 1 |" in (tmp_path / "tables" / "kd_vs_hard.md").read_text()
    table1 = read(tmp_path, "table1.csv").set_index("model")
    assert table1.loc["mobilenet_v3_small", "fgsm eps=0.01_masking_flagged"] == 1
    assert table1.loc["resnet18", "fgsm eps=0.05_masking_flagged"] == 0
    table1_md = (tmp_path / "tables" / "table1.md").read_text()
    mobilenet_row = next(line for line in table1_md.splitlines() if "| baseline | cifar10 | mobilenet_v3_small |" in line)
    resnet_row = next(line for line in table1_md.splitlines() if "| baseline | cifar10 | resnet18 |" in line)
    assert mobilenet_row.count("⚠ 1") == len(EPSILONS) and "⚠" not in resnet_row
