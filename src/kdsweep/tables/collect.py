"""Results -> frames: the finished runs of results/<study>/, their attack results and evaluations, each
result bound to the run version it measured (kdsweep.identity.result_matches).

Inputs, each read as its record (kdsweep.records): runs/<role>/<run>/metrics.json (a finished run),
attacks/<role>/<run>/<attack>_eps<eps>.json (one per attack and epsilon, and the worst case over the
headline's attacks, `worst`), masking/<role>/<run>.json (transfer attacks and gradient-masking checks;
kdsweep.tables.robustness) and evaluation/<role>/<run>.json (fidelity, calibration, logit scale, per-class
accuracy; kdsweep.evaluation). A missing attack or evaluation file (a sweep in progress) leaves empty cells,
never an error. A result that measured another version of its run (retrained
since: its run hash or model digest differs, kdsweep.identity) is left out with a warning: no table pairs
the numbers of two versions of a run.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from kdsweep.errors import KdsweepError
from kdsweep.identity import result_matches
from kdsweep.plan import ROLES
from kdsweep.attacks import ATTACKS, WORST
from kdsweep.records import CLASS_MEASURES, EVALUATION_MEASURES, AttackResult, Evaluation, Metrics, point_of
from kdsweep.runs import METRICS

KEYS = ["dataset", "model", "role", "temperature", "soft_weight", "seed"]
# Columns from evaluation/<role>/<run>.json (kdsweep.records.Evaluation): agreement with the teacher (%),
# KL(teacher || student) at T = 1, ECE (%), NLL, mean largest logit, mean logit L2 norm, the lowest accuracy of
# a class (%).
EVALUATION_COLUMNS = [*EVALUATION_MEASURES, *CLASS_MEASURES]
LOGIT_SCALE = ["max_logit", "logit_norm"]
RUN_COLUMNS = KEYS + ["epochs", "best_epoch", "stopped_early", "val_acc", "val_loss", "test_acc",
                      "test_loss", *EVALUATION_COLUMNS, "train_seconds", "device", "run"]
# A distilled run's row also has its same-seed baseline's accuracy under the same attack and epsilon
# and the gain of that seed (the sweep's kd against baseline, a confirm run against the confirm baseline).
SEED_GAIN = ["hard_adv_acc", "adv_gain"]
# The images attacked: the test set's size, the evaluation subset's (empty: every test image) and the exact
# (Clopper-Pearson) 95% binomial interval of adv_acc on that many images; the lowest accuracy under the
# attack of a class; and the run's gradient-masking checks that failed at that epsilon (or at any: the
# large-epsilon check), in words (kdsweep.tables.robustness).
# A transfer attack's rows: attack transfer_<source> (teacher, baseline), from the run's masking record.
TRANSFER = "transfer_"
IMAGES = ["n_test", "subset_size", "adv_acc_low", "adv_acc_high", "worst_class_adv_acc"]
MASKING = ["masking_suspected", "masking"]
ROBUSTNESS_COLUMNS = KEYS + ["attack", "epsilon", "clean_acc", "adv_acc", "adv_acc_on_correct", *LOGIT_SCALE,
                             "n", "n_correct", "params", "run", *SEED_GAIN, *IMAGES, *MASKING]
_NUMERIC = ("temperature", "soft_weight", "seed", "epochs", "best_epoch", "val_acc", "val_loss", "test_acc",
            "test_loss", "train_seconds", "epsilon", "clean_acc", "adv_acc", "adv_acc_on_correct", "n", "n_correct",
            "n_test", "subset_size", "adv_acc_low", "adv_acc_high", "worst_class_adv_acc", *EVALUATION_COLUMNS)


def numeric_frame(rows, columns):
    frame = pd.DataFrame(rows, columns=columns)
    for column in set(_NUMERIC) & set(columns):
        frame[column] = pd.to_numeric(frame[column])
    return frame


def metrics_frame(records: list[Metrics]) -> pd.DataFrame:
    """One row per run's metrics.json: what the tables and the checkpoints' choices read of it."""
    columns = [*Metrics.REQUIRED, *Metrics.TABULATED]
    return numeric_frame([{key: getattr(record, key) for key in columns} for record in records], columns)


def in_role_order(frame, by):
    order = {role: i for i, role in enumerate(ROLES)}
    return frame.sort_values(by, key=lambda c: c.map(order) if c.name == "role" else c,
                             ignore_index=True)


def results_folder(results_dir):
    """results/<study>, or KdsweepError for a path that is no folder."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise KdsweepError(f"{results_dir} is not a folder: pass the study's results folder (results/<study>).")
    return results_dir


def finished_runs(results_dir) -> dict[str, Metrics]:
    """{run folder relative to results_dir: its metrics.json} of every finished run."""
    return {path.parent.relative_to(results_dir).as_posix(): Metrics.read(path, needs=Metrics.TABULATED)
            for path in results_dir.glob(f"runs/*/*/{METRICS}")}


def _left_out(paths, unmatched, results_dir):
    if unmatched is None:
        warn_unmatched(paths, results_dir)
    else:
        unmatched.extend(paths)


def warn_unmatched(unmatched, results_dir):
    """Results left out because they measured another version of their run: said, never silent."""
    if unmatched:
        example = Path(unmatched[0]).relative_to(results_dir)
        print(f"kdsweep: warning: left out {len(unmatched)} result file(s) that measured another version of their "
              f"run, or a run that is not finished (e.g. {example}); `snakemake` measures them again",
              file=sys.stderr)


def collect_runs(results_dir, unmatched: list | None = None) -> pd.DataFrame:
    """One row per finished run (a folder with metrics.json); unfinished runs are skipped.

    The EVALUATION_COLUMNS come from evaluation/<role>/<run>.json, empty while that file is missing or
    measured another version of the run or of the teacher (kdsweep.identity.result_matches). Such results
    are added to `unmatched`, or warned about where it is None."""
    results_dir = results_folder(results_dir)
    runs = finished_runs(results_dir)
    teacher = next((metrics for run, metrics in runs.items() if run.startswith("runs/teacher/")), None)
    rows, left_out = [], []
    for run, record in runs.items():
        row = {key: getattr(record, key) for key in RUN_COLUMNS if key not in (*EVALUATION_COLUMNS, "run")}
        row["run"] = run
        # the run's KD method and point (its hyperparameters' values in the method's order): the methods
        # tables' keys, never written to runs.csv
        method, point = point_of(record) or (None, None)
        row["method"], row["point"] = method, (tuple(value for _, value in point) if point else None)
        evaluation = results_dir / "evaluation" / f"{run.removeprefix('runs/')}.json"
        if evaluation.is_file():
            result = Evaluation.read(evaluation)
            teacher_hash = result.teacher_run_hash
            if result_matches(result, record) and (teacher_hash is None or teacher is None
                                                   or teacher_hash == teacher.config_hash):
                row.update(result.measures())
            else:
                left_out.append(evaluation)
        rows.append(row)
    _left_out(left_out, unmatched, results_dir)
    return in_role_order(numeric_frame(rows, [*RUN_COLUMNS, "method", "point"]),
                         ["role", "dataset", "model", "temperature", "soft_weight", "seed", "run"])


def collect_attacks(results_dir, unmatched: list | None = None) -> pd.DataFrame:
    """One row per attack result file of a finished run that it measured (kdsweep.identity.result_matches);
    `run` is the attacked run folder relative to results_dir; the others go to `unmatched` (collect_runs)."""
    results_dir = results_folder(results_dir)
    runs = finished_runs(results_dir)
    columns = [c for c in ROBUSTNESS_COLUMNS if c not in ("dataset", *LOGIT_SCALE, *SEED_GAIN, *MASKING)]  # joined later
    rows, left_out = [], []
    for path in results_dir.glob("attacks/*/*/*.json"):
        record = AttackResult.read(path)
        run = f"runs/{path.parent.parent.name}/{path.parent.name}"
        if run not in runs or not result_matches(record, runs[run]):
            left_out.append(path)
            continue
        row = {key: getattr(record, key) for key in columns if key not in ("params", "run", *IMAGES)}
        row["params"] = json.dumps(record.params or {}, sort_keys=True)
        row["run"] = run
        row.update(images_of(record))
        rows.append(row)
    _left_out(left_out, unmatched, results_dir)
    return in_role_order(numeric_frame(rows, columns),
                         ["role", "model", "temperature", "soft_weight", "seed", "attack", "epsilon"])


def binomial_interval(k: int, n: int) -> tuple[float, float]:
    """The exact (Clopper-Pearson) 95% interval, in %, of a proportion of k in n (scipy.stats.binomtest)."""
    low, high = binomtest(int(k), int(n)).proportion_ci(confidence_level=0.95, method="exact")
    return 100.0 * low, 100.0 * high


def images_of(record: AttackResult) -> dict:
    """A result's IMAGES columns (a result of an earlier version: its n only, no subset)."""
    n = record.n
    low, high = binomial_interval(round(record.adv_acc * n / 100), n) if n else (np.nan, np.nan)
    present = [value for value in (record.class_adv_acc or []) if value is not None]
    return {"n_test": record.n_test if record.n_test is not None else n,
            "subset_size": (record.subset or {}).get("size"), "adv_acc_low": low, "adv_acc_high": high,
            "worst_class_adv_acc": min(present) if present else np.nan}


def join_robustness(runs, attacks, masking=None):
    """Attack results with the attacked run's dataset and logit scale joined, and for a distilled run the
    same-seed hard-target run's accuracy under the same attack and epsilon and the seed's gain; with `masking`
    (kdsweep.tables.robustness.collect_masking), its transfer attacks as rows (attack transfer_<source>) and
    every row's failed masking checks."""
    from kdsweep.tables.robustness import with_masking

    frame = attacks.merge(runs[["run", "dataset", *LOGIT_SCALE]], on="run", how="left")
    # kd pairs with baseline, a distilled confirm run with the confirm baseline of its seed
    frame["_pairs"] = np.where(frame["role"] == "confirm", "confirm", "sweep")
    hard = frame["role"].eq("baseline") | (frame["role"].eq("confirm") & frame["temperature"].isna())
    key = ["_pairs", "dataset", "model", "seed", "attack", "epsilon"]
    baselines = frame.loc[hard, [*key, "adv_acc"]].rename(columns={"adv_acc": "hard_adv_acc"})
    frame = frame.merge(baselines.drop_duplicates(key), on=key, how="left")
    frame.loc[frame["temperature"].isna(), "hard_adv_acc"] = np.nan  # teacher and baselines: no comparison
    frame["adv_gain"] = frame["adv_acc"] - frame["hard_adv_acc"]
    return with_masking(frame.reindex(columns=ROBUSTNESS_COLUMNS), masking)


def attack_rank(name) -> tuple:
    """The order of attacks in tables: the worst case (the headline) first, FGSM (the reference study's), the
    others in the registry's order, then the transfer attacks."""
    if name == WORST:
        return (0, 0, name)
    if name == "fgsm":
        return (1, 0, name)
    if str(name).startswith(TRANSFER):
        return (3, 0, name)
    return (2, list(ATTACKS).index(name) if name in ATTACKS else len(ATTACKS), name)


def attack_names(robustness):
    """The attacks present, in attack_rank's order."""
    return sorted(robustness["attack"].dropna().unique(), key=attack_rank)


def long_scores(runs, robustness):
    """Long form: one value per (run, measure, epsilon): measure "clean" (the test accuracy, epsilon 0),
    each attack (accuracy under it, at its epsilon) and each of EVALUATION_COLUMNS (epsilon NaN; only
    runs with an evaluation file)."""
    clean = runs[["run", "test_acc"]].rename(columns={"test_acc": "value"}).assign(measure="clean", epsilon=0.0)
    # (transfer attacks are the masking checks' evidence, in robustness.csv and tables/masking.md, not a measure)
    attacked = robustness.loc[~robustness["attack"].str.startswith(TRANSFER),
                              ["run", "attack", "epsilon", "adv_acc"]].rename(
        columns={"attack": "measure", "adv_acc": "value"})
    evaluation = runs.melt(id_vars="run", value_vars=EVALUATION_COLUMNS, var_name="measure",
                           value_name="value").dropna(subset="value").assign(epsilon=np.nan)
    return pd.concat([clean, attacked, evaluation], ignore_index=True)[["run", "measure", "epsilon", "value"]]
