"""Run folders -> tables: whatever has finished so far, as CSV (and Markdown where a reader needs one).

Every aggregate over seeds carries `<quantity>_mean`, `_std`, `_n` and `_ci95` (the half-width of a
Student-t 95% confidence interval); with one seed std and ci95 are NaN, never zero.
Accuracies are percent. `soft_weight` is w, the weight of the soft (teacher) term (the reference study's alpha = 1 - w).

A comparison of a distilled student with its baseline (kd_vs_hard, confirmed) also carries the
gain paired by seed, KD(s) - baseline(s) (kdsweep.stats): `gain_mean, _std, _n` (pairs), `_ci95`,
`_low, _high` (the 95% t-interval) and `_excludes_zero`; with one pair no interval. The
confirmation's runs (role confirm, fresh seeds) appear in runs.csv and robustness.csv and in the
confirmed table only, never in a sweep table. sensitivity: per student, the spread of mean test
accuracy over the grid against the seed-to-seed standard deviation. vs_reference: the reference
study's reported numbers (kdsweep/reference.yaml) beside this study's, when it is that comparison.

Inputs under results/<study>/: runs/<role>/<run>/metrics.json (a finished run),
attacks/<role>/<run>/<attack>_eps<eps>.json (one per attack and epsilon) and
evaluation/<role>/<run>.json (fidelity, calibration, logit scale; kdsweep.evaluation). A missing
attack or evaluation file (a sweep in progress) leaves empty cells, never an error. A result that
measured another version of its run (retrained since: its run hash or model digest differs,
kdsweep.identity) is left out with a warning: no table pairs the numbers of two versions of a run.
"""

import csv
import json
import sys
from importlib import resources
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from kdsweep.errors import KdsweepError
from kdsweep.identity import result_matches
from kdsweep.io import read_json, read_text, write_text
from kdsweep.methods import METHODS
from kdsweep.plan import ROLES, TABLES, fmt, point_of
from kdsweep.runs import METRICS
from kdsweep.stats import GAIN_FIELDS, expected_range, interval, paired_gain


KEYS = ["dataset", "model", "role", "temperature", "soft_weight", "seed"]
# Columns from evaluation/<role>/<run>.json (kdsweep.evaluation): agreement with the teacher (%),
# KL(teacher || student) at T = 1, ECE (%), NLL, mean largest logit, mean logit L2 norm.
EVALUATION_COLUMNS = ["agreement", "kl_to_teacher", "ece", "nll", "max_logit", "logit_norm"]
LOGIT_SCALE = ["max_logit", "logit_norm"]
RUN_COLUMNS = KEYS + ["epochs", "best_epoch", "stopped_early", "val_acc", "val_loss", "test_acc",
                      "test_loss", *EVALUATION_COLUMNS, "train_seconds", "device", "run"]
# A distilled run's row also has its same-seed baseline's accuracy under the same attack and epsilon
# and the gain of that seed (the sweep's kd against baseline, a confirm run against the confirm baseline).
SEED_GAIN = ["hard_adv_acc", "adv_gain"]
ROBUSTNESS_COLUMNS = KEYS + ["attack", "epsilon", "clean_acc", "adv_acc", "adv_acc_on_correct", *LOGIT_SCALE,
                             "n", "n_correct", "params", "run", *SEED_GAIN]
_METRICS_REQUIRED = ("role", "dataset", "model", "seed", "temperature", "soft_weight", "val_acc", "test_acc")
_ATTACK_REQUIRED = ("attack", "epsilon", "role", "model", "temperature", "soft_weight", "seed",
                    "clean_acc", "adv_acc", "adv_acc_on_correct")
_EVALUATION_REQUIRED = tuple(EVALUATION_COLUMNS)
_NUMERIC = ("temperature", "soft_weight", "seed", "epochs", "best_epoch", "val_acc", "val_loss", "test_acc",
            "test_loss", "train_seconds", "epsilon", "clean_acc", "adv_acc", "adv_acc_on_correct", "n", "n_correct",
            *EVALUATION_COLUMNS)
# kd_vs_hard's measures after the clean accuracy and the attacks, and how the Markdown shows them:
# (label, decimals).
MEASURES = {
    "max_logit": ("mean largest logit", 2),
    "logit_norm": ("mean logit L2 norm", 2),
    "agreement": ("top-1 agreement with the teacher (%)", 2),
    "kl_to_teacher": ("KL(teacher ‖ student), T = 1", 3),
    "ece": ("expected calibration error (%)", 2),
    "nll": ("negative log-likelihood", 3),
}
_TIE = 1e-9  # means closer than this count as a tie
_SUMMARY = ("mean", "std", "n", "ci95")
GAIN_COLUMNS = [f"gain_{field}" for field in GAIN_FIELDS]
# A comparison of a distilled student with its baseline, per measure and epsilon (_compare).
COMPARISON_COLUMNS = ["measure", "epsilon", *(f"{side}_{stat}" for side in ("hard", "kd") for stat in _SUMMARY),
                      "boost", *GAIN_COLUMNS]


def _read_json(path, required):
    return read_json(path, "result file", "delete it and rerun the job that writes it", required)


def read_table(path) -> pd.DataFrame:
    """A table written by write_tables; KdsweepError if it is missing, cut short or damaged."""
    fix = f"rebuild the tables with `python -m kdsweep aggregate {Path(path).parent.parent}`"
    text = read_text(path, "table", fix)
    rows = list(csv.reader(StringIO(text)))
    if not text.endswith("\n") or not rows or any(len(row) != len(rows[0]) for row in rows):
        raise KdsweepError(f"table {path} is cut short or damaged (its rows do not all have the header's "
                           f"{len(rows[0]) if rows else 0} fields); {fix}")
    return pd.read_csv(StringIO(text))


def _frame(rows, columns):
    frame = pd.DataFrame(rows, columns=columns)
    for column in set(_NUMERIC) & set(columns):
        frame[column] = pd.to_numeric(frame[column])
    return frame


def _sorted(frame, by):
    order = {role: i for i, role in enumerate(ROLES)}
    return frame.sort_values(by, key=lambda c: c.map(order) if c.name == "role" else c,
                             ignore_index=True)


def _results(results_dir):
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise KdsweepError(f"{results_dir} is not a folder: pass the study's results folder (results/<study>).")
    return results_dir


def _finished_runs(results_dir) -> dict:
    """{run folder relative to results_dir: its metrics.json} of every finished run."""
    return {path.parent.relative_to(results_dir).as_posix(): _read_json(path, _METRICS_REQUIRED)
            for path in results_dir.glob("runs/*/*/metrics.json")}


def _left_out(paths, unmatched, results_dir):
    if unmatched is None:
        _warn_unmatched(paths, results_dir)
    else:
        unmatched.extend(paths)


def _warn_unmatched(unmatched, results_dir):
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
    results_dir = _results(results_dir)
    runs = _finished_runs(results_dir)
    teacher = next((metrics for run, metrics in runs.items() if run.startswith("runs/teacher/")), None)
    rows, left_out = [], []
    for run, record in runs.items():
        row = {key: record.get(key) for key in RUN_COLUMNS if key not in EVALUATION_COLUMNS}
        row["run"] = run
        # the run's KD method and point (its hyperparameters' values in the method's order): the methods
        # tables' keys, never written to runs.csv
        method, point = point_of(record) or (None, None)
        row["method"], row["point"] = method, (tuple(value for _, value in point) if point else None)
        evaluation = results_dir / "evaluation" / f"{run.removeprefix('runs/')}.json"
        if evaluation.is_file():
            result = _read_json(evaluation, _EVALUATION_REQUIRED)
            teacher_hash = result.get("teacher_run_hash")
            if result_matches(result, record) and (teacher_hash is None or teacher is None
                                                   or teacher_hash == teacher.get("config_hash")):
                row.update({key: result[key] for key in EVALUATION_COLUMNS})
            else:
                left_out.append(evaluation)
        rows.append(row)
    _left_out(left_out, unmatched, results_dir)
    return _sorted(_frame(rows, [*RUN_COLUMNS, "method", "point"]),
                   ["role", "dataset", "model", "temperature", "soft_weight", "seed", "run"])


def collect_attacks(results_dir, unmatched: list | None = None) -> pd.DataFrame:
    """One row per attack result file of a finished run that it measured (kdsweep.identity.result_matches);
    `run` is the attacked run folder relative to results_dir; the others go to `unmatched` (collect_runs)."""
    results_dir = _results(results_dir)
    runs = _finished_runs(results_dir)
    columns = [c for c in ROBUSTNESS_COLUMNS if c not in ("dataset", *LOGIT_SCALE, *SEED_GAIN)]  # joined later
    rows, left_out = [], []
    for path in results_dir.glob("attacks/*/*/*.json"):
        record = _read_json(path, _ATTACK_REQUIRED)
        run = f"runs/{path.parent.parent.name}/{path.parent.name}"
        if run not in runs or not result_matches(record, runs[run]):
            left_out.append(path)
            continue
        row = {key: record.get(key) for key in columns}
        row["params"] = json.dumps(record.get("params") or {}, sort_keys=True)
        row["run"] = run
        rows.append(row)
    _left_out(left_out, unmatched, results_dir)
    return _sorted(_frame(rows, columns),
                   ["role", "model", "temperature", "soft_weight", "seed", "attack", "epsilon"])


def summarise(frame, by, value, name=None) -> pd.DataFrame:
    """Per group of `by`: `<name>_mean, _std, _n, _ci95` of column `value` over the group's rows (seeds)."""
    out = frame.groupby(by, dropna=False, sort=True)[value].agg(["mean", "std", "count"])
    out = out.rename(columns={"count": "n"})
    with np.errstate(invalid="ignore", divide="ignore"):
        half = stats.t.ppf(0.975, out["n"] - 1) * out["std"] / np.sqrt(out["n"])
    out["ci95"] = half.where(out["n"] > 1)
    out.columns = [f"{name or value}_{c}" for c in out.columns]
    return out


def pick_best(means: pd.Series):
    """Index label of the highest value; ties (and near-ties) go to the lowest label."""
    means = means.dropna().sort_index()
    return means.index[means >= means.max() - _TIE][0]


def _robustness(runs, attacks):
    """Attack results with the attacked run's dataset and logit scale joined, and for a distilled run the
    same-seed hard-target run's accuracy under the same attack and epsilon and the seed's gain."""
    frame = attacks.merge(runs[["run", "dataset", *LOGIT_SCALE]], on="run", how="left")
    # kd pairs with baseline, a distilled confirm run with the confirm baseline of its seed
    frame["_pairs"] = np.where(frame["role"] == "confirm", "confirm", "sweep")
    hard = frame["role"].eq("baseline") | (frame["role"].eq("confirm") & frame["temperature"].isna())
    key = ["_pairs", "dataset", "model", "seed", "attack", "epsilon"]
    baselines = frame.loc[hard, [*key, "adv_acc"]].rename(columns={"adv_acc": "hard_adv_acc"})
    frame = frame.merge(baselines.drop_duplicates(key), on=key, how="left")
    frame.loc[frame["temperature"].isna(), "hard_adv_acc"] = np.nan  # teacher and baselines: no comparison
    frame["adv_gain"] = frame["adv_acc"] - frame["hard_adv_acc"]
    return frame[ROBUSTNESS_COLUMNS]


def _attacks(robustness):
    """The attacks present, FGSM first, then by name."""
    return sorted(robustness["attack"].dropna().unique(), key=lambda name: (name != "fgsm", name))


def _measure_rank(measure):
    """Order of kd_vs_hard's rows: clean, FGSM, other attacks (then by name), then MEASURES."""
    if measure == "clean":
        return 0
    if measure in MEASURES:
        return 3 + list(MEASURES).index(measure)
    return 1 if measure == "fgsm" else 2


def _scores(runs, robustness):
    """Long form: one value per (run, measure, epsilon): measure "clean" (the test accuracy, epsilon 0),
    each attack (accuracy under it, at its epsilon) and each of EVALUATION_COLUMNS (epsilon NaN; only
    runs with an evaluation file)."""
    clean = runs[["run", "test_acc"]].rename(columns={"test_acc": "value"}).assign(measure="clean", epsilon=0.0)
    attacked = robustness[["run", "attack", "epsilon", "adv_acc"]].rename(
        columns={"attack": "measure", "adv_acc": "value"})
    evaluation = runs.melt(id_vars="run", value_vars=EVALUATION_COLUMNS, var_name="measure",
                           value_name="value").dropna(subset="value").assign(epsilon=np.nan)
    return pd.concat([clean, attacked, evaluation], ignore_index=True)[["run", "measure", "epsilon", "value"]]


def _eps(attack, epsilon):
    """Column name of an attack's accuracy at epsilon in table1: `fgsm eps=0.01`."""
    return f"{attack} eps={fmt(epsilon)}"


def _counts_as_int(table):
    """Groups absent from one side of a join have n = 0, not NaN."""
    counts = [c for c in table.columns if c.endswith("_n")]
    table[counts] = table[counts].fillna(0).astype(int)
    return table


def _table1(runs, robustness):
    """Teacher and baselines: test accuracy, accuracy per attack and epsilon (`fgsm eps=0.01_mean`, ...)
    and logit scale (`max_logit_mean`, `logit_norm_mean`, ...)."""
    keys = ["role", "dataset", "model"]
    base = runs[runs["role"].isin(["teacher", "baseline"])]
    attacked = robustness[["run", "attack", "epsilon", "adv_acc"]].merge(base[["run", *keys]], on="run")
    parts = [summarise(base, keys, "test_acc")]
    for attack in _attacks(attacked):
        rows = attacked[attacked["attack"] == attack]
        parts += [summarise(group, keys, "adv_acc", _eps(attack, epsilon))
                  for epsilon, group in rows.groupby("epsilon")]
    parts += [summarise(base, keys, column) for column in LOGIT_SCALE]
    return _counts_as_int(_sorted(pd.concat(parts, axis=1).reset_index(), keys))


def _grid(runs):
    keys = ["dataset", "model", "temperature", "soft_weight"]
    kd = runs[runs["role"] == "kd"]
    return pd.concat([summarise(kd, keys, "test_acc"), summarise(kd, keys, "val_acc")], axis=1).reset_index()


def candidates(kd_runs) -> pd.DataFrame:
    """The distilled points of these kd runs (w > 0: w = 0 is hard targets only), indexed by
    (temperature, soft_weight): `val_acc_mean` over their seeds and `n`, the seeds. The point kd_vs_hard
    compares and the one the confirmation trains again is `pick_best(candidates(...)["val_acc_mean"])`."""
    kd = kd_runs[kd_runs["soft_weight"] > 0]
    return kd.groupby(["temperature", "soft_weight"], sort=True)["val_acc"].agg(val_acc_mean="mean", n="count")


def _compare(scores, seeds, kd_runs, hard_runs) -> pd.DataFrame:
    """Per (measure, epsilon) of `scores` (long form, _scores): each side's mean, std, n and ci95 over its
    runs, `boost` (the difference of the two means) and the gain paired by seed (kdsweep.stats.paired_gain;
    `seeds`: run -> seed)."""
    sides = pd.concat([scores[scores["run"].isin(hard_runs)].assign(side="hard"),
                       scores[scores["run"].isin(kd_runs)].assign(side="kd")], ignore_index=True)
    sides["seed"] = sides["run"].map(seeds)
    rows = []
    for (measure, epsilon), group in sides.groupby(["measure", "epsilon"], dropna=False, sort=True):
        values = {side: group.loc[group["side"] == side].set_index("seed")["value"] for side in ("hard", "kd")}
        row = {"measure": measure, "epsilon": epsilon}
        for side, value in values.items():
            summary = interval(value)
            row.update({f"{side}_{stat}": summary[stat] for stat in _SUMMARY})
        row["boost"] = row["kd_mean"] - row["hard_mean"]
        gain = paired_gain(values["kd"], values["hard"])
        row.update({f"gain_{field}": gain[field] for field in GAIN_FIELDS})
        rows.append(row)
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def _in_order(table, keys):
    """Rows by `keys`, then clean, the attacks (FGSM first) by epsilon, then MEASURES in their order."""
    rank = table["measure"].map(_measure_rank)
    return (table.assign(_rank=rank).sort_values([*keys, "_rank", "measure", "epsilon"])
            .drop(columns="_rank").reset_index(drop=True))


KD_VS_HARD_COLUMNS = ["dataset", "model", "temperature", "soft_weight", "kd_val_acc_mean", *COMPARISON_COLUMNS]


def _kd_vs_hard(runs, robustness):
    """Per student: the distilled (T, w > 0) with the best mean validation accuracy against the baseline."""
    scores = _scores(runs, robustness)
    seeds = runs.set_index("run")["seed"]
    rows = []
    students = runs.loc[runs["role"].isin(["baseline", "kd"]), ["dataset", "model"]].drop_duplicates()
    for dataset, model in students.itertuples(index=False):
        mine = runs[(runs["dataset"] == dataset) & (runs["model"] == model)]
        cells = candidates(mine[mine["role"] == "kd"])
        temperature = soft_weight = val_acc = np.nan
        kd_runs = []
        if len(cells):
            temperature, soft_weight = pick_best(cells["val_acc_mean"])
            val_acc = cells.loc[(temperature, soft_weight), "val_acc_mean"]
            kd_runs = mine.loc[(mine["role"] == "kd") & (mine["temperature"] == temperature)
                               & (mine["soft_weight"] == soft_weight), "run"]
        hard_runs = mine.loc[mine["role"] == "baseline", "run"]
        both = _compare(scores, seeds, kd_runs, hard_runs)
        rows.append(both.assign(dataset=dataset, model=model, temperature=temperature,
                                soft_weight=soft_weight, kd_val_acc_mean=val_acc))
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    table = _counts_as_int(table.reindex(columns=KD_VS_HARD_COLUMNS))
    return _in_order(table, ["dataset", "model"])


def _cell(mean, ci, n, digits=2):
    """`mean ± ci95 (n)` with several seeds, the mean alone with one, a dash with none."""
    if pd.isna(mean):
        return "–"
    return f"{mean:.{digits}f} ± {ci:.{digits}f} ({int(n)})" if n > 1 else f"{mean:.{digits}f}"


def _markdown(caption, header, rows):
    lines = [caption, "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


_SEEDS_NOTE = "with several seeds: mean ± 95% CI half-width (Student t) (n seeds)."
_CI_NOTE = "Accuracies in %; " + _SEEDS_NOTE


def _attack_note(robustness):
    """`Attacks: fgsm; pgd (random_start=true, relative_step_size=0.25, seed=0, steps=10).` from the files."""
    if robustness.empty:
        return ""
    parts = []
    for attack in _attacks(robustness):
        settings = []
        for text in sorted(robustness.loc[robustness["attack"] == attack, "params"].dropna().unique()):
            params = json.loads(text)
            if params:
                settings.append(", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(params.items())))
        parts.append(attack + (f" ({' / '.join(settings)})" if settings else ""))
    return ("Attacks (L-inf, eps in [0, 1] pixel units; PGD step = relative_step_size x eps): "
            + "; ".join(parts) + ". ")


_LOGIT_NOTE = ("Logit scale: mean over test images of the largest logit and of the logit vector's L2 norm; "
               "an attack gain that comes with a much larger logit scale may be gradient masking. ")


def _table1_markdown(table, robustness):
    attacked = [c[: -len("_mean")] for c in table.columns if " eps=" in c and c.endswith("_mean")]
    header = ["role", "dataset", "model", "test accuracy (%)",
              *(f"{q.split(' ', 1)[0].upper()} {q.split(' ', 1)[1]} (%)" for q in attacked),
              MEASURES["max_logit"][0], MEASURES["logit_norm"][0]]
    rows = [[row["role"], row["dataset"], row["model"],
             *(_cell(row[f"{q}_mean"], row[f"{q}_ci95"], row[f"{q}_n"])
               for q in ["test_acc", *attacked, *LOGIT_SCALE])]
            for _, row in table.iterrows()]
    caption = ("Table I. Teacher and hard-target baselines: clean test accuracy, accuracy under each attack "
               "and logit scale. " + _attack_note(robustness) + _LOGIT_NOTE + _CI_NOTE)
    return _markdown(caption, header, rows)


def _measure_label(measure, epsilon):
    if measure == "clean":
        return "clean test accuracy (%)", 2
    if measure in MEASURES:
        return MEASURES[measure]
    return f"{measure.upper()} eps={fmt(epsilon)} (%)", 2


def _number(value):
    return "–" if pd.isna(value) else fmt(value)


def _signed(value, digits=2):
    return "–" if pd.isna(value) else f"{value:+.{digits}f}"


def _gain_cells(row, prefix="gain", digits=2):
    """[paired mean gain, its 95% interval, pairs, whether the interval excludes 0]; no interval for n < 2."""
    n = int(row[f"{prefix}_n"])
    if n > 1:
        interval_cell = f"[{row[f'{prefix}_low']:+.{digits}f}, {row[f'{prefix}_high']:+.{digits}f}]"
        excludes = "yes" if row[f"{prefix}_excludes_zero"] is True else "no"
    else:
        interval_cell, excludes = ("none (n = 1)" if n == 1 else "–"), "–"
    return [_signed(row[f"{prefix}_mean"], digits), interval_cell, str(n), excludes]


_GAIN_HEADER = ["kd - hard", "95% CI of the gain", "pairs n", "CI excludes 0"]
_GAIN_NOTE = ("kd - hard is the gain paired by seed, KD(seed s) - baseline(seed s), averaged over the seeds "
              "that have both (n pairs); its 95% interval is mean ± t(0.975, n - 1) · sd / √n (Student t), "
              "none with one pair. ")


def _kd_vs_hard_markdown(table, robustness):
    header = ["dataset", "student", "temperature T", "soft_weight w", "measure", "hard targets",
              "distilled", *_GAIN_HEADER]
    rows = []
    for _, row in table.iterrows():
        measure, digits = _measure_label(row["measure"], row["epsilon"])
        rows.append([row["dataset"], row["model"], _number(row["temperature"]), _number(row["soft_weight"]), measure,
                     _cell(row["hard_mean"], row["hard_ci95"], row["hard_n"], digits),
                     _cell(row["kd_mean"], row["kd_ci95"], row["kd_n"], digits), *_gain_cells(row, digits=digits)])
    caption = ("Tables II-V. Best distilled run per student against its hard-target baseline. The distilled "
               "(T, w) is the one with the highest VALIDATION accuracy (mean over seeds, w > 0); test accuracy "
               "is never used to choose it. It is still the best of many points on the same seeds, so its gain "
               "is optimistic: tables/confirmed.md trains it again on fresh seeds. w = soft_weight, the weight "
               "of the soft (teacher) term; the reference study's alpha = 1 - w. " + _attack_note(robustness)
               + _LOGIT_NOTE
               + "Agreement and KL(teacher ‖ student) at T = 1 measure fidelity to the teacher (Stanton et al. "
               "2021); ECE (equal-width confidence bins) and NLL measure calibration. "
               "Accuracies in %, kd - hard in points; " + _GAIN_NOTE + "Hard targets and distilled: " + _SEEDS_NOTE)
    return _markdown(caption, header, rows)


# ---------------------------------------------------------------- the KD methods side by side


def point_label(method: str, point) -> str:
    """A method's point as `name=value, ...` (kdsweep.methods: its hyperparameters, in its order)."""
    if method not in METHODS or point is None or (not isinstance(point, tuple) and pd.isna(point)):
        return "–"
    return ", ".join(f"{param.name}={fmt(value)}" for param, value in zip(METHODS[method].params, point))


def method_candidates(runs, method: str) -> pd.DataFrame:
    """The points of one method's runs that use the teacher (kd: w > 0), indexed by point (its values in the
    method's order): `val_acc_mean` over their seeds and `n`. For kd the same points, in the same order, as
    `candidates`."""
    mine = runs[(runs["method"] == method) & runs["role"].eq(method)]
    used = mine[[METHODS[method].needs_teacher(dict(zip((p.name for p in METHODS[method].params), point)))
                 for point in mine["point"]]] if len(mine) else mine
    return used.groupby("point", sort=True)["val_acc"].agg(val_acc_mean="mean", n="count")


METHODS_COLUMNS = ["dataset", "model", "method", "point", "val_acc_mean", *COMPARISON_COLUMNS]


def _methods(runs, robustness):
    """Per student and KD method of the study: its point with the best mean validation accuracy (one that uses
    the teacher; never chosen on test) against the hard-target baseline, every measure paired by seed. kd's
    rows are kd_vs_hard's (Tables II-V)."""
    scores = _scores(runs, robustness)
    seeds = runs.set_index("run")["seed"]
    rows = []
    students = runs.loc[runs["role"].isin(["baseline", *METHODS]), ["dataset", "model"]].drop_duplicates()
    for dataset, model in students.itertuples(index=False):
        mine = runs[(runs["dataset"] == dataset) & (runs["model"] == model)]
        hard_runs = mine.loc[mine["role"] == "baseline", "run"]
        for method in [name for name in METHODS if (mine["role"] == name).any()]:
            cells = method_candidates(mine, method)
            if not len(cells):
                continue
            point = pick_best(cells["val_acc_mean"])
            chosen = mine.loc[(mine["role"] == method) & mine["point"].map(lambda p: p == point), "run"]
            rows.append(_compare(scores, seeds, chosen, hard_runs).assign(
                dataset=dataset, model=model, method=method, point=point_label(method, point),
                val_acc_mean=cells.loc[[point], "val_acc_mean"].iloc[0]))
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    table = _counts_as_int(table.reindex(columns=METHODS_COLUMNS))
    order = {name: i for i, name in enumerate(METHODS)}
    table = table.assign(_method=table["method"].map(order))
    return _in_order(table, ["dataset", "model", "_method"]).drop(columns="_method")


def _methods_markdown(table, robustness):
    caption = ("The KD methods side by side. Per student and method, the point with the highest mean VALIDATION "
               "accuracy over the sweep's seeds (among those that use the teacher; test accuracy never chooses "
               "it) against the hard-target baseline: clean test accuracy, accuracy under each attack and "
               "epsilon, agreement with the teacher and expected calibration error. A best point of many is "
               "optimistic: tables/confirmed.md trains each method's again on fresh seeds. " + _attack_note(robustness)
               + "Accuracies in %, gains in points; the gain is paired by seed, method(seed s) - baseline(seed s), "
               "with its 95% interval (Student t) where there are two pairs or more. " + _SEEDS_NOTE)
    if table.empty:
        return caption + "\n\nNo distilled run has finished yet.\n"
    wanted = [("clean", 0.0), *sorted({(m, e) for m, e in zip(table["measure"], table["epsilon"])
                                      if m not in ("clean", *MEASURES)}, key=lambda item: (_measure_rank(item[0]),
                                                                                           item[0], item[1])),
              ("agreement", np.nan), ("ece", np.nan)]
    header = ["dataset", "student", "method", "point (validation acc.)", "method - hard (95% CI, n)"]
    header += [_measure_label(measure, epsilon)[0] for measure, epsilon in wanted]
    rows = []
    for (dataset, model, method, point), group in table.groupby(["dataset", "model", "method", "point"], sort=False):
        def cell(measure, epsilon):
            match = group[(group["measure"] == measure)
                          & ((group["epsilon"] == epsilon) | (group["epsilon"].isna() & pd.isna(epsilon)))]
            if match.empty:
                return "–"
            row = match.iloc[0]
            return _cell(row["kd_mean"], row["kd_ci95"], row["kd_n"], _measure_label(measure, epsilon)[1])

        clean = group[group["measure"] == "clean"].iloc[0]
        gain, interval_cell, n, _ = _gain_cells(clean)
        rows.append([dataset, model, method, f"{point} ({clean_val(group):.2f})", f"{gain} ({interval_cell}, {n})",
                     *(cell(measure, epsilon) for measure, epsilon in wanted)])
    return _markdown(caption, header, rows)


def clean_val(group) -> float:
    return float(group["val_acc_mean"].iloc[0])


METHOD_GRID_COLUMNS = ["dataset", "model", "method", "point", "x_name", "x", "y_name", "y", "test_acc_mean",
                       "test_acc_std", "test_acc_n", "test_acc_ci95", "val_acc_mean", "val_acc_std", "val_acc_n",
                       "val_acc_ci95"]


def _method_grid(runs):
    """Every point of every KD method, per student: mean test and validation accuracy over seeds, with the
    values of the method's two main hyperparameters (its `axes`: the heat map's x and y)."""
    rows = []
    for method_name, method in METHODS.items():
        mine = runs[(runs["role"] == method_name) & (runs["method"] == method_name)]
        if mine.empty:
            continue
        names = [param.name for param in method.params]
        x_name, y_name = method.axes
        keys = ["dataset", "model", "point"]
        summary = pd.concat([summarise(mine, keys, "test_acc"), summarise(mine, keys, "val_acc")], axis=1)
        for (dataset, model, point), values in summary.iterrows():
            hparams = dict(zip(names, point))
            rows.append({"dataset": dataset, "model": model, "method": method_name,
                         "point": point_label(method_name, point), "x_name": x_name, "x": hparams[x_name],
                         "y_name": y_name, "y": hparams[y_name], **values.to_dict()})
    return _counts_as_int(pd.DataFrame(rows, columns=METHOD_GRID_COLUMNS))


# ---------------------------------------------------------------- confirmation on fresh seeds

# (kd's T and w as before; a point of any method in `method` and `point`, its hyperparameters spelled out)
CONFIRMED_COLUMNS = ["dataset", "model", "temperature", "soft_weight", "sweep_val_acc_mean", "sweep_n", "measure",
                     "epsilon", "sweep_gain_mean", "sweep_gain_n",
                     *(f"{side}_{stat}" for side in ("hard", "kd") for stat in _SUMMARY), *GAIN_COLUMNS,
                     "method", "point"]
_RECORD_REQUIRED = ("student", "val_acc", "n", "candidates")


def collect_choices(results_dir) -> dict:
    """The confirmation checkpoint's records, confirm/<choice>.json (best_point): {(student, method): record}
    (a record of an earlier version, without its method, is kd's)."""
    choices = {}
    for path in sorted(_results(results_dir).glob("confirm/*.json")):
        record = _read_json(path, _RECORD_REQUIRED)
        picked = point_of(record)
        if picked is None:
            raise KdsweepError(f"{path} names no point of a KD method; delete it so that the workflow chooses again")
        choices[record["student"], picked[0]] = {**record, "method": picked[0],
                                                 "point": tuple(value for _, value in picked[1])}
    return choices


def _confirmed(runs, robustness, choices):
    """Per student and KD method with confirmation runs: the chosen point (its record's; without one, each
    point found) on the fresh seeds, distilled against hard targets, paired by seed; beside it the same gain
    on the sweep's seeds (the estimate that chose the point)."""
    scores = _scores(runs, robustness)
    seeds = runs.set_index("run")["seed"]
    rows = []
    confirm = runs[runs["role"] == "confirm"]
    for (dataset, model), mine in confirm.groupby(["dataset", "model"], sort=True):
        distilled, hard = mine[mine["method"].notna()], mine.loc[mine["method"].isna(), "run"]
        sweep = runs[(runs["dataset"] == dataset) & (runs["model"] == model)]
        for method in [name for name in METHODS if (distilled["method"] == name).any()]:
            choice = choices.get((model, method))
            found = sorted(set(distilled.loc[distilled["method"] == method, "point"]))
            for point in ([choice["point"]] if choice is not None else found):
                def at(frame, role):
                    return frame.loc[(frame["role"] == role) & (frame["method"] == method)
                                     & frame["point"].map(lambda p: p == point), "run"]

                table = _compare(scores, seeds, at(distilled, "confirm"), hard)
                on_sweep = _compare(scores, seeds, at(sweep, method), sweep.loc[sweep["role"] == "baseline", "run"])
                on_sweep = on_sweep[["measure", "epsilon", "gain_mean", "gain_n"]].rename(
                    columns={"gain_mean": "sweep_gain_mean", "gain_n": "sweep_gain_n"})
                table = table.drop(columns="boost").merge(on_sweep, on=["measure", "epsilon"], how="left")
                cells = method_candidates(sweep, method)
                cell = cells.loc[[point]].iloc[0] if point in cells.index else None
                values = dict(zip((param.name for param in METHODS[method].params), point))
                rows.append(table.assign(
                    dataset=dataset, model=model, method=method, point=point_label(method, point),
                    temperature=values.get("temperature", np.nan), soft_weight=values.get("soft_weight", np.nan),
                    sweep_val_acc_mean=choice["val_acc"] if choice else (cell["val_acc_mean"] if cell is not None
                                                                         else np.nan),
                    sweep_n=choice["n"] if choice else (cell["n"] if cell is not None else 0)))
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    table = _counts_as_int(table.reindex(columns=CONFIRMED_COLUMNS))
    order = {name: i for i, name in enumerate(METHODS)}
    table = table.assign(_method=table["method"].map(order))
    return _in_order(table, ["dataset", "model", "_method", "point"]).drop(columns="_method")


def _confirmed_markdown(table, choices):
    caption = ("Confirmation on fresh seeds. Per student and KD method, the distilled point with the highest mean "
               "VALIDATION accuracy over the sweep's seeds (one that uses the teacher: for kd w > 0, as in Tables "
               "II-V; the test set never chooses it) is trained again, with its hard-target baseline, on seeds the "
               "sweep never used. A sweep's best point is the luckiest of many: its seeds helped it on validation "
               "and, through the same weights, on test, so its gain on the sweep's seeds (\"in the sweep\") is "
               "optimistic; the fresh seeds' gain is the estimate to report. Accuracies in %, gains in points; "
               + _GAIN_NOTE + "Hard targets and distilled (fresh seeds): " + _SEEDS_NOTE)
    if table.empty:
        return caption + ("\n\nNo confirmation run has finished: the config's confirm.seeds is empty "
                          "(confirmation off, the default), or its runs are still to come.\n")
    header = ["dataset", "student", "method", "point", "measure", "distilled - hard in the sweep (n)",
              "hard targets, fresh seeds", "distilled, fresh seeds", *_GAIN_HEADER]
    rows = []
    for _, row in table.iterrows():
        measure, digits = _measure_label(row["measure"], row["epsilon"])
        sweep = ("–" if pd.isna(row["sweep_gain_mean"]) else
                 f"{row['sweep_gain_mean']:+.{digits}f} ({int(row['sweep_gain_n'])})")
        rows.append([row["dataset"], row["model"], row["method"], row["point"],
                     measure, sweep, _cell(row["hard_mean"], row["hard_ci95"], row["hard_n"], digits),
                     _cell(row["kd_mean"], row["kd_ci95"], row["kd_n"], digits), *_gain_cells(row, digits=digits)])
    lines = []
    for (student, method), choice in sorted(choices.items()):
        names = [param.name for param in METHODS[method].params]

        def label(values):
            return point_label(method, tuple(values[name] for name in names))

        means = "; ".join(f"{label(c)}: {c['val_acc_mean']:.2f}"
                          for c in sorted(choice["candidates"], key=lambda c: -c["val_acc_mean"]))
        lines.append(f"- {student}, {method}: chose {point_label(method, choice['point'])} (mean validation "
                     f"accuracy {choice['val_acc']:.2f}% over {choice['n']} sweep seed(s)); candidates, best first: "
                     f"{means}.")
    chosen = ("\nThe choices (confirm/<student>[_<method>].json):\n\n" + "\n".join(lines) + "\n") if lines else ""
    return _markdown(caption, header, rows) + chosen


# ---------------------------------------------------------------- sensitivity

SENSITIVITY_COLUMNS = ["dataset", "model", "varied", "temperature", "soft_weight", "points", "min_test_acc_mean",
                       "max_test_acc_mean", "spread", "seeds_per_point", "seed_sd", "seed_sd_df", "seed_sd_from",
                       "ratio", "noise_spread"]


def _pooled_sd(groups):
    """(pooled standard deviation, degrees of freedom) of samples [(std, n)], over those with n >= 2."""
    usable = [(sd, n) for sd, n in groups if n >= 2 and pd.notna(sd)]
    df = sum(n - 1 for _, n in usable)
    if not df:
        return np.nan, 0
    return float(np.sqrt(sum((n - 1) * sd ** 2 for sd, n in usable) / df)), int(df)


def _replicates(runs, dataset, model):
    """(std, n) samples of one student outside the grid's seeds: its confirmed distilled runs per point,
    and its hard-target runs (sweep and confirmation baselines, none of them chosen by any score)."""
    mine = runs[(runs["dataset"] == dataset) & (runs["model"] == model)]
    distilled = mine[(mine["role"] == "confirm") & mine["temperature"].notna()]
    samples = [(group.std(), group.count()) for _, group in
               distilled.groupby(["temperature", "soft_weight"])["test_acc"]]
    hard = mine.loc[(mine["role"] == "baseline") | ((mine["role"] == "confirm") & mine["temperature"].isna()),
                    "test_acc"]
    return samples + [(hard.std(), hard.count())]


def _sensitivity(runs, grid):
    """Per student: the spread (max - min) of mean test accuracy over the soft weight at each temperature,
    over the temperature at each soft weight, and over the whole grid, beside the seed-to-seed standard
    deviation at the same points (pooled; with one seed per point, from the confirmation's runs and the
    hard-target runs), their ratio, and the spread that points which do not differ at all would show
    (kdsweep.stats.expected_range(points) x sd / sqrt(seeds per point))."""
    rows = []
    for (dataset, model), cells in grid.groupby(["dataset", "model"], sort=True):
        fallback = _pooled_sd(_replicates(runs, dataset, model))
        slices = [("soft_weight", t, np.nan, part) for t, part in cells.groupby("temperature")]
        slices += [("temperature", np.nan, w, part) for w, part in cells.groupby("soft_weight")]
        slices.append(("both", np.nan, np.nan, cells))
        for varied, temperature, soft_weight, part in slices:
            if len(part) < 2 or (varied == "both" and (part["temperature"].nunique() < 2
                                                        or part["soft_weight"].nunique() < 2)):
                continue
            sd, df = _pooled_sd(zip(part["test_acc_std"], part["test_acc_n"]))
            source = "grid"
            if not df and fallback[1]:
                (sd, df), source = fallback, "confirmation and hard-target runs"
            elif not df:
                source = ""
            per_point = float(len(part) / (1.0 / part["test_acc_n"]).sum())  # harmonic mean
            spread = part["test_acc_mean"].max() - part["test_acc_mean"].min()
            rows.append({"dataset": dataset, "model": model, "varied": varied, "temperature": temperature,
                         "soft_weight": soft_weight, "points": len(part),
                         "min_test_acc_mean": part["test_acc_mean"].min(),
                         "max_test_acc_mean": part["test_acc_mean"].max(), "spread": spread,
                         "seeds_per_point": per_point, "seed_sd": sd, "seed_sd_df": df, "seed_sd_from": source,
                         "ratio": spread / sd if df and sd > 0 else np.nan,
                         "noise_spread": expected_range(len(part)) * sd / np.sqrt(per_point) if df else np.nan})
    order = {"soft_weight": 0, "temperature": 1, "both": 2}
    table = pd.DataFrame(rows, columns=SENSITIVITY_COLUMNS)
    return (table.assign(_order=table["varied"].map(order))
            .sort_values(["dataset", "model", "_order", "temperature", "soft_weight"])
            .drop(columns="_order").reset_index(drop=True))


def _sensitivity_markdown(table):
    caption = ("Sensitivity. Per student, how far the grid's mean test accuracy (%) moves over the soft weight w "
               "(at each temperature T), over T (at each w) and over the whole grid (spread = max - min of the "
               "points' means), beside the seed-to-seed standard deviation at the same points (pooled over the "
               "points' seeds; with one seed per point, from the confirmation's runs and the hard-target runs, "
               "which only estimates it) and the spread that many points would show if they did not differ at "
               "all (expected range of that many means of noise). A spread well above the noise-alone spread is a "
               "sensitivity; one near it is seed noise. At w = 0 (hard targets only) T changes nothing.")
    if table.empty:
        return caption + "\n\nNo student has two finished grid points yet.\n"
    header = ["dataset", "student", "varied", "at", "points", "test accuracy range", "spread", "seed-to-seed SD (df)",
              "spread / SD", "spread from noise alone"]
    rows = []
    for _, row in table.iterrows():
        at = {"soft_weight": f"T = {_number(row['temperature'])}", "temperature": f"w = {_number(row['soft_weight'])}",
              "both": "whole grid"}[row["varied"]]
        sd = "– (one seed per point)" if row["seed_sd_df"] == 0 else (
            f"{row['seed_sd']:.2f} ({int(row['seed_sd_df'])})"
            + ("" if row["seed_sd_from"] == "grid" else " from confirmation and hard-target runs"))
        rows.append([row["dataset"], row["model"], {"both": "T and w"}.get(row["varied"], row["varied"]), at,
                     int(row["points"]), f"{row['min_test_acc_mean']:.2f}–{row['max_test_acc_mean']:.2f}",
                     f"{row['spread']:.2f}", sd, "–" if pd.isna(row["ratio"]) else f"{row['ratio']:.1f}",
                     "–" if pd.isna(row["noise_spread"]) else f"{row['noise_spread']:.2f}"])
    return _markdown(caption, header, rows)


# ---------------------------------------------------------------- the reference study side by side

VS_REFERENCE_COLUMNS = ["model", "quantity", "measure", "epsilon", "reference", "reference_source", "this_study",
                        "this_study_n", "this_study_low", "this_study_high", "confirmed", "confirmed_n",
                        "confirmed_low", "confirmed_high", "note"]


def reference() -> dict:
    """The reference study's reported numbers (kdsweep/reference.yaml)."""
    return yaml.safe_load((resources.files("kdsweep") / "reference.yaml").read_text())


def _applies(runs, results_dir, ref) -> str | None:
    """None when this study is the reference study's comparison; else why not, in one sentence."""
    study = ref["study"]
    if runs.empty:
        return "no run of this study has finished yet"
    datasets = sorted(runs["dataset"].dropna().unique())
    if datasets != [study["dataset"]]:
        return f"this study's dataset is {', '.join(datasets)}; the reference study's is {study['dataset']}"
    teachers = sorted(runs.loc[runs["role"] == "teacher", "model"].unique())
    if teachers and teachers != [study["teacher"]]:
        return f"this study's teacher is {', '.join(teachers)}; the reference study's is {study['teacher']}"
    students = set(runs.loc[runs["role"] != "teacher", "model"])
    if students and not students & set(study["students"]):
        return (f"this study's students ({', '.join(sorted(students))}) are none of the reference study's "
                f"({', '.join(study['students'])})")
    for run in runs["run"]:
        subset = _read_json(results_dir / run / METRICS, ()).get("config", {}).get("dataset", {}).get("subset")
        if subset is not None:
            return f"this study trains on dataset.subset = {subset} images, not the whole {study['dataset']}"
    return None


def _vs_reference(runs, results_dir, table1, kd_vs_hard, confirmed, sensitivity):
    ref = reference()
    reason = _applies(runs, results_dir, ref)
    if reason:
        return pd.DataFrame([{"quantity": "not applicable", "note": f"does not apply: {reason}"}],
                            columns=VS_REFERENCE_COLUMNS)
    rows = []

    def add(model, quantity, measure, epsilon, value, source, mine=None, confirmed_row=None, prefix=None, note=""):
        row = {"model": model, "quantity": quantity, "measure": measure, "epsilon": epsilon, "reference": value,
               "reference_source": source, "note": note}
        for where, found in (("this_study", mine), ("confirmed", confirmed_row)):
            if found is None:
                continue
            if prefix == "gain":
                row.update({where: found["gain_mean"], f"{where}_n": found["gain_n"],
                            f"{where}_low": found["gain_low"], f"{where}_high": found["gain_high"]})
            elif prefix:
                mean, ci = found[f"{prefix}_mean"], found[f"{prefix}_ci95"]
                row.update({where: mean, f"{where}_n": found[f"{prefix}_n"], f"{where}_low": mean - ci,
                            f"{where}_high": mean + ci})
        rows.append(row)

    def first(frame):
        return None if frame.empty else frame.iloc[0]

    def measure_rows(frame, model, measure, epsilon):
        mine = frame[(frame["model"] == model) & (frame["measure"] == measure)]
        return first(mine[np.isclose(mine["epsilon"].astype(float), epsilon)] if measure != "clean" else mine)

    source = ref["table1"]["source"]
    for model, reported in ref["table1"]["models"].items():
        row = first(table1[table1["model"] == model])
        if row is None:
            continue
        add(model, "hard-target accuracy", "clean", 0.0, reported["clean"], source, row, prefix="test_acc")
        for epsilon, value in reported["fgsm"].items():
            column = _eps("fgsm", epsilon)
            found = row if f"{column}_mean" in row.index else None
            add(model, "hard-target accuracy", "fgsm", float(epsilon), value, source, found, prefix=column)
    for model, optimal in ref["optimal"].items():
        mine = kd_vs_hard[kd_vs_hard["model"] == model]
        if mine.empty:
            continue
        confirm = confirmed[confirmed["model"] == model]
        point, confirm_point = first(mine), first(confirm)
        for key, label in (("temperature", "optimal temperature T"), ("soft_weight", "optimal soft weight w")):
            add(model, label, "", np.nan, optimal[key], optimal["source"],
                note="reference: best on test accuracy; this study: best mean validation accuracy")
            rows[-1]["this_study"] = point[key]
            rows[-1]["confirmed"] = np.nan if confirm_point is None else confirm_point[key]
        measures = [("clean", 0.0, optimal["clean"], optimal["gain"]["clean"])] + [
            ("fgsm", float(eps), optimal["fgsm"][eps], optimal["gain"]["fgsm"][eps]) for eps in optimal["fgsm"]]
        for measure, epsilon, accuracy, gain in measures:
            mine_row, confirm_row = measure_rows(mine, model, measure, epsilon), measure_rows(confirm, model, measure,
                                                                                               epsilon)
            add(model, "distilled accuracy", measure, epsilon, accuracy, optimal["source"], mine_row, confirm_row,
                prefix="kd")
            add(model, "gain over hard targets", measure, epsilon, gain, optimal["source"], mine_row, confirm_row,
                prefix="gain")
    studied = set(runs.loc[runs["role"] != "teacher", "model"])
    for model, spreads in ref["spread"].items():
        if model not in studied:
            continue
        for varied, reported in spreads.items():
            fixed = "temperature" if varied == "soft_weight" else "soft_weight"
            mine = sensitivity[(sensitivity["model"] == model) & (sensitivity["varied"] == varied)]
            mine = first(mine[np.isclose(mine[fixed].astype(float), reported[fixed])])
            symbol = {"soft_weight": "w", "temperature": "T"}
            label = f"spread over {symbol[varied]} at {symbol[fixed]} = {fmt(reported[fixed])}"
            if mine is None:
                note = f"this study has no two grid points at {label.rsplit(' at ', 1)[1]}"
            else:
                note = f"this study: {int(mine['points'])} points" + (
                    "" if not mine["seed_sd_df"] else f", seed-to-seed SD {mine['seed_sd']:.2f} "
                    f"({int(mine['seed_sd_df'])} df), spread from seed noise alone {mine['noise_spread']:.2f}")
            add(model, label, "clean", 0.0, reported["max"] - reported["min"], reported["source"], note=note)
            if mine is not None:
                rows[-1]["this_study"] = mine["spread"]
    table = pd.DataFrame(rows, columns=VS_REFERENCE_COLUMNS)
    for column in ("this_study_n", "confirmed_n"):
        table[column] = table[column].astype("Int64")
    return table


def _vs_reference_markdown(table):
    ref = reference()["study"]
    caption = (f"The reference study side by side: its reported numbers ({ref['dataset']}, a {ref['teacher']} "
               f"teacher; one run per point, the optimal point chosen on TEST accuracy) beside this study's "
               "(means over seeds; the sweep's point chosen on validation accuracy) and its confirmation on fresh "
               "seeds. Accuracies in %, gains and spreads in points; this study's intervals are 95% (Student t): "
               "of the mean for accuracies, of the paired gain for gains.")
    if (table["quantity"] == "not applicable").any():
        return caption + "\n\n" + table["note"].iloc[0][0].upper() + table["note"].iloc[0][1:] + ".\n"

    def cell(value, n, low, high, digits=2):
        if pd.isna(value):
            return "–"
        text = f"{value:.{digits}f}"
        if pd.notna(n):
            text += f" (n = {int(n)})"
        if pd.notna(low) and pd.notna(high):
            text += f" [{low:.{digits}f}, {high:.{digits}f}]"
        return text

    header = ["student", "quantity", "measure", "reference study", "source", "this study: sweep",
              "this study: confirmed", "note"]
    rows = []
    for _, row in table.iterrows():
        point = row["quantity"].startswith("optimal")
        measure = "" if point else ("clean" if row["measure"] == "clean" else
                                    f"{row['measure'].upper()} eps={fmt(row['epsilon'])}")
        rows.append([row["model"], row["quantity"], measure,
                     fmt(row["reference"]) if point else f"{row['reference']:.2f}", row["reference_source"],
                     _number(row["this_study"]) if point else cell(row["this_study"], row["this_study_n"],
                                                                   row["this_study_low"], row["this_study_high"]),
                     _number(row["confirmed"]) if point else cell(row["confirmed"], row["confirmed_n"],
                                                                  row["confirmed_low"], row["confirmed_high"]),
                     row["note"] if isinstance(row["note"], str) else ""])
    return _markdown(caption, header, rows)


def write_tables(results_dir) -> list[Path]:
    """Write every table of TABLES under results_dir/tables/ from whatever has finished."""
    results_dir = _results(results_dir)
    unmatched = []
    runs = collect_runs(results_dir, unmatched)
    if runs.empty:
        raise KdsweepError(f"{results_dir} holds no finished run (no runs/<role>/<run>/metrics.json): nothing to "
                           "tabulate yet; train some runs first, or pass the study's folder results/<study>")
    robustness = _robustness(runs, collect_attacks(results_dir, unmatched))
    _warn_unmatched(unmatched, results_dir)
    grid = _grid(runs)
    table1 = _table1(runs, robustness)
    kd_vs_hard = _kd_vs_hard(runs, robustness)
    choices = collect_choices(results_dir)
    confirmed = _confirmed(runs, robustness, choices)
    sensitivity = _sensitivity(runs, grid)
    vs_reference = _vs_reference(runs, results_dir, table1, kd_vs_hard, confirmed, sensitivity)
    out = results_dir / "tables"
    methods = _methods(runs, robustness)
    method_grid = _method_grid(runs)
    csv = {"runs.csv": runs[RUN_COLUMNS], "robustness.csv": robustness, "table1.csv": table1, "methods.csv": methods,
           "method_grid.csv": method_grid,
           "kd_vs_hard.csv": kd_vs_hard, "grid.csv": grid, "confirmed.csv": confirmed,
           "sensitivity.csv": sensitivity, "vs_reference.csv": vs_reference}
    texts = {name: frame.to_csv(index=False, float_format="%.10g") for name, frame in csv.items()}
    texts["table1.md"] = _table1_markdown(table1, robustness)
    texts["kd_vs_hard.md"] = _kd_vs_hard_markdown(kd_vs_hard, robustness)
    texts["confirmed.md"] = _confirmed_markdown(confirmed, choices)
    texts["sensitivity.md"] = _sensitivity_markdown(sensitivity)
    texts["vs_reference.md"] = _vs_reference_markdown(vs_reference)
    texts["methods.md"] = _methods_markdown(methods, robustness)
    return [write_text(out / name, texts[name]) for name in TABLES]


def best_temperature(run_dirs) -> dict:
    """Staged sweep: the temperature whose runs (one student, one soft weight, any seeds) have the
    highest mean validation accuracy; ties go to the lower temperature."""
    records = []
    for run_dir in run_dirs:
        path = Path(run_dir) / METRICS
        if not path.is_file():
            raise KdsweepError(f"{run_dir} has no metrics.json (the run has not finished): "
                               "finish its distill job before choosing the temperature.")
        records.append(_read_json(path, _METRICS_REQUIRED))
    if not records:
        raise KdsweepError("best-temperature got no run folders: pass the distilled runs of one student.")
    runs = _frame(records, list(_METRICS_REQUIRED))
    if (runs["role"] != "kd").any():
        raise KdsweepError("best-temperature takes distilled (kd) runs only: pass runs/kd/... folders.")
    for key in ("dataset", "model", "soft_weight"):
        if runs[key].nunique(dropna=False) != 1:
            raise KdsweepError(f"best-temperature got runs with different {key} values "
                               f"({sorted(runs[key].unique())}): pass the runs of one student at one soft weight.")
    means = runs.groupby("temperature")["val_acc"].mean()
    best = pick_best(means)
    return {"student": runs["model"].iloc[0], "temperature": float(best),
            "soft_weight": float(runs["soft_weight"].iloc[0]), "val_acc": float(means[best]),
            "candidates": {float(t): float(v) for t, v in means.items()}}


def best_point(run_dirs) -> dict:
    """Confirmation's checkpoint: among one student's distilled runs of one KD method (any seeds), the point
    with the highest mean validation accuracy over its seeds, among those that use the teacher (kd: w > 0;
    `method_candidates`, `pick_best`: what the methods table and, for kd, kd_vs_hard compare; ties go to the
    lower values in the method's order). The record names the method, the point (`hparams`, and each
    hyperparameter flat, as kd's T and w always were), every candidate with its mean and seeds; test
    accuracy is never read."""
    records = []
    for run_dir in run_dirs:
        path = Path(run_dir) / METRICS
        if not path.is_file():
            raise KdsweepError(f"{run_dir} has no metrics.json (the run has not finished): "
                               "finish its distill job before choosing the point to confirm.")
        records.append(_read_json(path, _METRICS_REQUIRED))
    if not records:
        raise KdsweepError("best-point got no run folders: pass the distilled runs of one student's sweep.")
    points = [point_of(record) for record in records]
    runs = _frame(records, list(_METRICS_REQUIRED))
    runs["method"] = [point[0] if point else None for point in points]
    runs["point"] = [tuple(value for _, value in point[1]) if point else None for point in points]
    methods = set(runs["method"])
    if None in methods or (runs["role"] != runs["method"]).any():
        raise KdsweepError("best-point takes the sweep's distilled runs only: pass runs/<method>/... folders.")
    for key in ("dataset", "model", "method"):
        if runs[key].nunique(dropna=False) != 1:
            raise KdsweepError(f"best-point got runs with different {key} values ({sorted(runs[key].unique())}): "
                               "pass the runs of one student and one method.")
    method = runs["method"].iloc[0]
    cells = method_candidates(runs, method)
    if cells.empty:
        raise KdsweepError(f"best-point got no {method} run that uses the teacher (kd: w > 0; w = 0 is hard "
                           "targets only): pass the student's sweep runs.")
    point = pick_best(cells["val_acc_mean"])
    names = [param.name for param in METHODS[method].params]
    seeds = runs.loc[runs["point"].map(lambda p: p == point), "seed"]
    hparams = dict(zip(names, (float(value) for value in point)))
    chosen = cells.loc[[point]].iloc[0]
    return {"student": runs["model"].iloc[0], "dataset": runs["dataset"].iloc[0], "method": method,
            "hparams": hparams, **hparams,
            "val_acc": float(chosen["val_acc_mean"]), "n": int(chosen["n"]), "seeds": sorted(int(s) for s in seeds),
            "chosen_on": "mean validation accuracy over the sweep's seeds, among the points that use the teacher "
                         "(kd: w > 0); ties to the lower values, in the method's order",
            "candidates": [{**dict(zip(names, (float(value) for value in candidate))),
                            "val_acc_mean": float(row["val_acc_mean"]), "n": int(row["n"])}
                           for candidate, row in cells.iterrows()],
            "hard_target_runs_left_out": int(len(runs) - sum(cells["n"]))}