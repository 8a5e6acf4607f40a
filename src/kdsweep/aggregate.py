"""Run folders -> tables: whatever has finished so far, as CSV (and Markdown where the reference study has a table).

Every aggregate over seeds carries `<quantity>_mean`, `_std`, `_n` and `_ci95` (the half-width of a
Student-t 95% confidence interval); with one seed std and ci95 are NaN, never zero.
Accuracies are percent. `soft_weight` is w, the weight of the soft (teacher) term (the reference study's alpha = 1 - w).

Inputs under results/<study>/: runs/<role>/<run>/metrics.json (a finished run),
attacks/<role>/<run>/<attack>_eps<eps>.json (one per attack and epsilon) and
evaluation/<role>/<run>.json (fidelity, calibration, logit scale; kdsweep.evaluation). A missing
attack or evaluation file (a sweep in progress) leaves empty cells, never an error.
"""

import csv
import json
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from kdsweep.errors import KdsweepError
from kdsweep.io import read_json, read_text, write_text
from kdsweep.plan import ROLES, TABLES, fmt


KEYS = ["dataset", "model", "role", "temperature", "soft_weight", "seed"]
# Columns from evaluation/<role>/<run>.json (kdsweep.evaluation): agreement with the teacher (%),
# KL(teacher || student) at T = 1, ECE (%), NLL, mean largest logit, mean logit L2 norm.
EVALUATION_COLUMNS = ["agreement", "kl_to_teacher", "ece", "nll", "max_logit", "logit_norm"]
LOGIT_SCALE = ["max_logit", "logit_norm"]
RUN_COLUMNS = KEYS + ["epochs", "best_epoch", "stopped_early", "val_acc", "val_loss", "test_acc",
                      "test_loss", *EVALUATION_COLUMNS, "train_seconds", "device", "run"]
ROBUSTNESS_COLUMNS = KEYS + ["attack", "epsilon", "clean_acc", "adv_acc", "adv_acc_on_correct", *LOGIT_SCALE,
                             "n", "n_correct", "params", "run"]
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


def collect_runs(results_dir) -> pd.DataFrame:
    """One row per finished run (a folder with metrics.json); unfinished runs are skipped.

    The EVALUATION_COLUMNS come from evaluation/<role>/<run>.json, empty while that file is missing."""
    results_dir = _results(results_dir)
    rows = []
    for path in results_dir.glob("runs/*/*/metrics.json"):
        record = _read_json(path, _METRICS_REQUIRED)
        row = {key: record.get(key) for key in RUN_COLUMNS if key not in EVALUATION_COLUMNS}
        row["run"] = path.parent.relative_to(results_dir).as_posix()
        evaluation = results_dir / "evaluation" / path.parent.parent.name / f"{path.parent.name}.json"
        if evaluation.is_file():
            record = _read_json(evaluation, _EVALUATION_REQUIRED)
            row.update({key: record[key] for key in EVALUATION_COLUMNS})
        rows.append(row)
    return _sorted(_frame(rows, RUN_COLUMNS), ["role", "dataset", "model", "temperature", "soft_weight", "seed"])


def collect_attacks(results_dir) -> pd.DataFrame:
    """One row per attack result file; `run` is the attacked run folder relative to results_dir."""
    results_dir = _results(results_dir)
    columns = [c for c in ROBUSTNESS_COLUMNS if c not in ("dataset", *LOGIT_SCALE)]  # joined from the run
    rows = []
    for path in results_dir.glob("attacks/*/*/*.json"):
        record = _read_json(path, _ATTACK_REQUIRED)
        row = {key: record.get(key) for key in columns}
        row["params"] = json.dumps(record.get("params") or {}, sort_keys=True)
        row["run"] = f"runs/{path.parent.parent.name}/{path.parent.name}"
        rows.append(row)
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
    """Attack results with the attacked run's dataset and logit scale joined."""
    frame = attacks.merge(runs[["run", "dataset", *LOGIT_SCALE]], on="run", how="left")
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


def _kd_vs_hard(runs, robustness, grid):
    """Per student: the distilled (T, w > 0) with the best mean validation accuracy against the baseline."""
    scores = _scores(runs, robustness)
    rows = []
    students = runs.loc[runs["role"].isin(["baseline", "kd"]), ["dataset", "model"]].drop_duplicates()
    for dataset, model in students.itertuples(index=False):
        mine = runs[(runs["dataset"] == dataset) & (runs["model"] == model)]
        cells = grid[(grid["dataset"] == dataset) & (grid["model"] == model) & (grid["soft_weight"] > 0)]
        cells = cells.set_index(["temperature", "soft_weight"])["val_acc_mean"]
        temperature = soft_weight = val_acc = np.nan
        kd_runs = []
        if len(cells):  # w = 0 is hard targets only: not a distilled candidate
            temperature, soft_weight = pick_best(cells)
            val_acc = cells[(temperature, soft_weight)]
            kd_runs = mine.loc[(mine["role"] == "kd") & (mine["temperature"] == temperature)
                               & (mine["soft_weight"] == soft_weight), "run"]
        hard_runs = mine.loc[mine["role"] == "baseline", "run"]
        by = ["measure", "epsilon"]
        hard = summarise(scores[scores["run"].isin(hard_runs)], by, "value", "hard")
        kd = summarise(scores[scores["run"].isin(kd_runs)], by, "value", "kd")
        both = pd.concat([hard, kd], axis=1).reset_index()
        both = _counts_as_int(both.reindex(columns=[*by, *hard.columns, *kd.columns]))
        both["boost"] = both["kd_mean"] - both["hard_mean"]
        rows.append(both.assign(dataset=dataset, model=model, temperature=temperature,
                                soft_weight=soft_weight, kd_val_acc_mean=val_acc))
    columns = ["dataset", "model", "temperature", "soft_weight", "kd_val_acc_mean", "measure", "epsilon",
               *(f"{side}_{stat}" for side in ("hard", "kd") for stat in ("mean", "std", "n", "ci95")), "boost"]
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    table = table.reindex(columns=columns)
    # clean, the attacks (FGSM first) by epsilon, then MEASURES in their order
    rank = table["measure"].map(_measure_rank)
    return (table.assign(_rank=rank).sort_values(["dataset", "model", "_rank", "measure", "epsilon"])
            .drop(columns="_rank").reset_index(drop=True))


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


def _kd_vs_hard_markdown(table, robustness):
    header = ["dataset", "student", "temperature T", "soft_weight w", "measure", "hard targets",
              "distilled", "kd - hard"]
    rows = []
    for _, row in table.iterrows():
        measure, digits = _measure_label(row["measure"], row["epsilon"])
        rows.append([row["dataset"], row["model"],
                     "–" if pd.isna(row["temperature"]) else fmt(row["temperature"]),
                     "–" if pd.isna(row["soft_weight"]) else fmt(row["soft_weight"]), measure,
                     _cell(row["hard_mean"], row["hard_ci95"], row["hard_n"], digits),
                     _cell(row["kd_mean"], row["kd_ci95"], row["kd_n"], digits),
                     "–" if pd.isna(row["boost"]) else f"{row['boost']:+.{digits}f}"])
    caption = ("Tables II-V. Best distilled run per student against its hard-target baseline. The distilled "
               "(T, w) is the one with the highest VALIDATION accuracy (mean over seeds, w > 0); test accuracy "
               "is never used to choose it. w = soft_weight, the weight of the soft (teacher) term; the reference study's "
               "alpha = 1 - w. " + _attack_note(robustness) + _LOGIT_NOTE
               + "Agreement and KL(teacher ‖ student) at T = 1 measure fidelity to the teacher (Stanton et al. "
               "2021); ECE (equal-width confidence bins) and NLL measure calibration. "
               "Accuracies in %, kd - hard in points; " + _SEEDS_NOTE)
    return _markdown(caption, header, rows)


def write_tables(results_dir) -> list[Path]:
    """Write every table of TABLES under results_dir/tables/ from whatever has finished."""
    results_dir = _results(results_dir)
    runs = collect_runs(results_dir)
    if runs.empty:
        raise KdsweepError(f"{results_dir} holds no finished run (no runs/<role>/<run>/metrics.json): nothing to "
                           "tabulate yet; train some runs first, or pass the study's folder results/<study>")
    robustness = _robustness(runs, collect_attacks(results_dir))
    grid = _grid(runs)
    table1 = _table1(runs, robustness)
    kd_vs_hard = _kd_vs_hard(runs, robustness, grid)
    out = results_dir / "tables"
    csv = {"runs.csv": runs, "robustness.csv": robustness, "table1.csv": table1,
           "kd_vs_hard.csv": kd_vs_hard, "grid.csv": grid}
    texts = {name: frame.to_csv(index=False, float_format="%.10g") for name, frame in csv.items()}
    texts["table1.md"] = _table1_markdown(table1, robustness)
    texts["kd_vs_hard.md"] = _kd_vs_hard_markdown(kd_vs_hard, robustness)
    return [write_text(out / name, texts[name]) for name in TABLES]


def best_temperature(run_dirs) -> dict:
    """Staged sweep: the temperature whose runs (one student, one soft weight, any seeds) have the
    highest mean validation accuracy; ties go to the lower temperature."""
    records = []
    for run_dir in run_dirs:
        path = Path(run_dir) / "metrics.json"
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
