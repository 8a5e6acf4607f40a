"""Results -> frames: the finished runs of results/<study>/, their attack results and evaluations, each
result bound to the run version it measured (kdsweep.identity.result_matches).

Inputs, each read as its record (kdsweep.records): runs/<role>/<run>/metrics.json (a finished run),
attacks/<role>/<run>/<attack>_eps<eps>.json (one per attack and epsilon, and the worst case over the
headline's attacks, `worst`), masking/<role>/<run>.json (transfer attacks and gradient-masking checks;
kdsweep.tables.robustness) and evaluation/<role>/<run>.json (fidelity, calibration, logit scale, per-class
accuracy; kdsweep.evaluation), found by the workflow's names only (what else lies there is a stray,
kdsweep.tables.files). A missing attack or evaluation file (a sweep in progress) leaves empty cells, never an
error. A result that measured another version of its run (retrained
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
from kdsweep.attacks import ATTACKS, WORST
from kdsweep.layout import METRICS, attack_file
from kdsweep.methods import METHODS
from kdsweep.plan import ROLES, Run
from kdsweep.records import CLASS_MEASURES, EVALUATION_MEASURES, AttackResult, Evaluation, Metrics, point_of
from kdsweep.tables.files import StudyFiles

KEYS = ["dataset", "model", "role", "temperature", "soft_weight", "seed"]
# Columns from evaluation/<role>/<run>.json (kdsweep.records.Evaluation): agreement with the teacher (%),
# KL(teacher || student) at T = 1, ECE (%), NLL, mean largest logit, mean logit L2 norm, the lowest accuracy of
# a class (%).
EVALUATION_COLUMNS = [*EVALUATION_MEASURES, *CLASS_MEASURES]
LOGIT_SCALE = ["max_logit", "logit_norm"]
# teacher: the teacher run's folder name (a distilled run's teacher's, a teacher's own); parameters: the
# model's parameter count; images_per_second: training images per second as the run was trained, epochs x its epoch's
# images / train_seconds (a packed run shares its job's seconds with its pack: per point, as trained)
RUN_COLUMNS = KEYS + ["epochs", "best_epoch", "stopped_early", "val_acc", "val_loss", "test_acc",
                      "test_loss", *EVALUATION_COLUMNS, "train_seconds", "device", "run", "teacher", "parameters",
                      "images_per_second"]
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
            "test_loss", "train_seconds", "parameters",
            "images_per_second", "epsilon", "clean_acc", "adv_acc", "adv_acc_on_correct", "n", "n_correct",
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


def _named(metrics: Metrics) -> str | None:
    """runs/<role>/<run> of the run a metrics.json describes (kdsweep.plan.Run.folder); None for none."""
    picked = point_of(metrics)
    try:
        # the teacher's name too: a named teacher's own run and the runs of a study's second teacher carry it
        run = Run(metrics.role, metrics.model, metrics.seed, *(picked or ()), teacher=metrics.teacher)
    except KdsweepError:
        return None
    return run.folder


def finished_runs(results_dir, files: StudyFiles | None = None) -> dict[str, Metrics]:
    """{run folder relative to results_dir: its metrics.json} of every finished run of the study (files: the
    study's files, whose strays gain a run folder whose metrics.json describes another run: a copy)."""
    files = files or StudyFiles(results_dir)
    runs = {}
    for name, folder in files.runs.items():
        metrics = Metrics.read(folder / METRICS, needs=Metrics.TABULATED)
        if _named(metrics) == name:
            runs[name] = metrics
        else:
            files.stray(folder)
    return runs


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


def collect_runs(results_dir, unmatched: list | None = None, files: StudyFiles | None = None) -> pd.DataFrame:
    """One row per finished run (a folder with metrics.json); unfinished runs are skipped.

    The EVALUATION_COLUMNS come from evaluation/<role>/<run>.json, empty while that file is missing or
    measured another version of the run or of the teacher (kdsweep.identity.result_matches). Such results
    are added to `unmatched`, or warned about where it is None; so are strays (files: the study's files,
    warned about by the caller that gives them)."""
    results_dir = results_folder(results_dir)
    own = files is None
    files = files or StudyFiles(results_dir)
    runs = finished_runs(results_dir, files)
    teachers = {Path(run).name: metrics for run, metrics in runs.items() if run.startswith("runs/teacher/")}
    computed = (*EVALUATION_COLUMNS, "run", "teacher", "parameters", "images_per_second")
    rows, left_out = [], []
    for run, record in runs.items():
        row = {key: getattr(record, key) for key in RUN_COLUMNS if key not in computed}
        row["run"], row["parameters"] = run, record.params
        row["teacher"] = Path(run).name if record.role == "teacher" else (
            Path(record.teacher_run).name if record.teacher_run else None)
        # a run of a teacher but the study's first (its name in the run's folder name; tables.write_tables)
        row["teacher_tag"] = record.teacher if record.role != "teacher" else None
        seen = (record.epochs or 0) * (record.train_images or 0)
        row["images_per_second"] = seen / record.train_seconds if seen and record.train_seconds else None
        # the run's KD method and point (its hyperparameters' values in the method's order): the methods
        # tables' keys, never written to runs.csv
        method, point = point_of(record) or (None, None)
        row["method"], row["point"] = method, (tuple(value for _, value in point) if point else None)
        evaluation = results_dir / "evaluation" / f"{run.removeprefix('runs/')}.json"
        if evaluation.is_file():
            result = Evaluation.read(evaluation)
            teacher_hash = result.teacher_run_hash
            # the teacher it was measured against: the study's teacher of that folder (one teacher: that one)
            teacher = teachers.get(Path(result.teacher_run).name) if result.teacher_run else None
            if teacher is None and len(teachers) == 1:
                teacher = next(iter(teachers.values()))
            if result_matches(result, record) and (teacher_hash is None or teacher is None
                                                   or teacher_hash == teacher.config_hash):
                row.update(result.measures())
            else:
                left_out.append(evaluation)
        rows.append(row)
    _left_out(left_out, unmatched, results_dir)
    if own:
        files.warn()
    return in_role_order(numeric_frame(rows, [*RUN_COLUMNS, "method", "point", "teacher_tag"]),
                         ["role", "dataset", "model", "temperature", "soft_weight", "seed", "run"])


def collect_attacks(results_dir, unmatched: list | None = None, files: StudyFiles | None = None) -> pd.DataFrame:
    """One row per attack result file of a finished run that it measured (kdsweep.identity.result_matches);
    `run` is the attacked run folder relative to results_dir; the others go to `unmatched`, and strays to
    `files` (collect_runs)."""
    results_dir = results_folder(results_dir)
    own = files is None
    files = files or StudyFiles(results_dir)
    runs = finished_runs(results_dir, files)
    columns = [c for c in ROBUSTNESS_COLUMNS if c not in ("dataset", *LOGIT_SCALE, *SEED_GAIN, *MASKING)]  # joined later
    rows, left_out = [], []
    for path in files.attacks:
        record = AttackResult.read(path)
        if path.name != attack_file(record.attack, record.epsilon):
            files.stray(path)  # a copy under another attack's or epsilon's name
            continue
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
    if own:
        files.warn()
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


def planned_teacher_free(results_dir) -> dict:
    """The study's teacher-free points (kdsweep.plan.Plan.teacher_free: {method: {point: "baseline" or the
    shared run's point}}), from results/<study>/study.yaml, the config the workflow last ran with; {} without
    one (a folder the workflow did not write), or where it no longer plans."""
    from kdsweep.config import load_config
    from kdsweep.plan import Plan

    path = Path(results_dir) / "study.yaml"
    if not path.is_file():
        return {}
    try:
        return Plan(load_config([path])).teacher_free
    except (KdsweepError, KeyError, OSError, ValueError):
        return {}


def without_baseline_copies(runs) -> pd.DataFrame:
    """The runs less sweep runs of teacher-free points whose loss is the baseline's (kd's w = 0; kdsweep.plan
    trains none, but a study folder from an earlier version may hold them): the baseline stands for them, once."""
    def copy(role, method, point):
        if method not in METHODS or role != method or not isinstance(point, tuple):
            return False
        names = [param.name for param in METHODS[method].params]
        return METHODS[method].teacher_free(dict(zip(names, point))) == 1

    copies = [copy(*row) for row in zip(runs["role"], runs["method"], runs["point"])]
    if any(copies):
        print(f"kdsweep: note: left out {sum(copies)} run(s) of teacher-free points (e.g. "
              f"{runs.loc[copies, 'run'].iloc[0]}): their loss is the baseline's, and the baseline stands for them",
              file=sys.stderr)
    return runs[[not c for c in copies]].reset_index(drop=True)
