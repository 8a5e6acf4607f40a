"""Architecture pairs side by side (pairs.csv, pairs.md): per teacher, student and KD method, the method's best
point for that pair (highest mean validation accuracy among the points that use the teacher; never test) against
the student's hard-target baseline, with both networks' parameter counts and measured training images per
second. A study with one teacher has one pair per student; with several (architectures as an axis,
docs/models.md) every student meets every teacher. The table is one family of tests (kdsweep.tables.summary
.FAMILIES): Holm's p and Bonferroni's intervals beside the raw ones.
"""

import numpy as np
import pandas as pd

from kdsweep.methods import METHODS
from kdsweep.tables.collect import long_scores
from kdsweep.tables.markdown import SEEDS_NOTE, family_note, gain_cells, mean_cell, render
from kdsweep.tables.method_comparison import point_label
from kdsweep.tables.summary import ADJUSTED_COLUMNS, compare, family, method_candidates, pick_best

PAIRS_COLUMNS = ["dataset", "teacher", "teacher_model", "teacher_parameters", "teacher_test_acc",
                 "teacher_images_per_second", "model", "parameters", "method", "point", "val_acc_mean", "hard_mean",
                 "hard_ci95", "hard_n", "kd_mean", "kd_ci95", "kd_n", "gain_mean", "gain_low", "gain_high",
                 "gain_excludes_zero", "gain_n", "images_per_second", "gain_std", "gain_p", *ADJUSTED_COLUMNS]


def _mean(values):
    values = pd.to_numeric(values, errors="coerce").dropna()
    return float(values.mean()) if len(values) else np.nan


def pairs(runs, robustness):
    """One row per (teacher, student, KD method) with a distilled run: the pair's best point on validation
    against the student's baseline (clean test accuracy, gain paired by seed), parameter counts and images/s."""
    scores = long_scores(runs, robustness)
    seeds = runs.set_index("run")["seed"]
    teachers = runs[runs["role"] == "teacher"].set_index("teacher")
    distilled = runs[runs["role"].isin(METHODS) & runs["teacher"].notna()]
    rows = []
    for (dataset, teacher, model), mine in distilled.groupby(["dataset", "teacher", "model"], sort=True):
        baselines = runs[(runs["role"] == "baseline") & (runs["dataset"] == dataset) & (runs["model"] == model)]
        own = teachers.loc[[teacher]] if teacher in teachers.index else teachers.iloc[:0]
        for method in [name for name in METHODS if (mine["role"] == name).any()]:
            cells = method_candidates(mine, method)
            if not len(cells):
                continue
            point = pick_best(cells["val_acc_mean"])
            chosen = mine.loc[(mine["role"] == method) & mine["point"].map(lambda p: p == point)]
            clean = compare(scores, seeds, chosen["run"], baselines["run"])
            clean = clean[clean["measure"] == "clean"].iloc[0]
            rows.append({"dataset": dataset, "teacher": teacher,
                         "teacher_model": own["model"].iloc[0] if len(own) else np.nan,
                         "teacher_parameters": _mean(own["parameters"]), "teacher_test_acc": _mean(own["test_acc"]),
                         "teacher_images_per_second": _mean(own["images_per_second"]), "model": model,
                         "parameters": _mean(mine["parameters"]), "method": method, "point": point_label(method, point),
                         "val_acc_mean": cells.loc[[point], "val_acc_mean"].iloc[0],
                         **{column: clean[column] for column in PAIRS_COLUMNS if column in clean.index},
                         "images_per_second": _mean(mine.loc[mine["role"] == method, "images_per_second"])})
    table = family(pd.DataFrame(rows, columns=PAIRS_COLUMNS[:-len(ADJUSTED_COLUMNS)]), "pairs")
    for column in ("hard_n", "kd_n", "gain_n"):
        table[column] = table[column].fillna(0).astype(int)
    for column in ("teacher_parameters", "parameters"):
        table[column] = table[column].astype("Int64")
    order = {name: i for i, name in enumerate(METHODS)}
    return (table.assign(_method=table["method"].map(order)).sort_values(["dataset", "teacher", "model", "_method"])
            .drop(columns="_method").reset_index(drop=True))


def _count(value) -> str:
    return "–" if pd.isna(value) else f"{value / 1e6:.2f} M"


def _speed(value) -> str:
    return "–" if pd.isna(value) else f"{value:,.0f}"


def pairs_markdown(table):
    caption = ("Architecture pairs. Per teacher, student and KD method: the pair's point with the highest mean "
               "VALIDATION accuracy (among those that use the teacher; test accuracy never chooses it) against the "
               "student's hard-target baseline, clean test accuracy in %, the gain paired by seed with its raw 95% "
               "interval (Student t) where there are two pairs or more and its adjusted one, with Holm's p; "
               + family_note(table) + "Parameters in millions; images/s: "
               "training images per second as each run was trained (epochs x images / training seconds; a packed "
               "run shares its job's time with its pack, a teacher distilled from as it is has none). Hard targets and "
               "distilled: " + SEEDS_NOTE)
    if table.empty:
        return caption + "\n\nNo distilled run has finished yet.\n"
    header = ["dataset", "teacher", "teacher params", "teacher acc.", "teacher images/s", "student", "params",
              "method", "point (validation acc.)", "hard targets", "distilled",
              "distilled - hard (95% CI raw; adjusted; n)", "p (Holm)", "student images/s"]
    rows = []
    for _, row in table.iterrows():
        gain, raw, adjusted, n, _, p_holm, _ = gain_cells(row)
        paired = f"{gain} ({raw}; {adjusted}; n = {n})" if int(n) > 1 else f"{gain} (n = {n}, no interval)"
        teacher = row["teacher"] if pd.isna(row["teacher_model"]) else f"{row['teacher']} ({row['teacher_model']})"
        rows.append([row["dataset"], teacher, _count(row["teacher_parameters"]),
                     "–" if pd.isna(row["teacher_test_acc"]) else f"{row['teacher_test_acc']:.2f}",
                     _speed(row["teacher_images_per_second"]), row["model"], _count(row["parameters"]), row["method"],
                     f"{row['point']} ({row['val_acc_mean']:.2f})",
                     mean_cell(row["hard_mean"], row["hard_ci95"], row["hard_n"]),
                     mean_cell(row["kd_mean"], row["kd_ci95"], row["kd_n"]), paired, p_holm,
                     _speed(row["images_per_second"])])
    return render(caption, header, rows)
