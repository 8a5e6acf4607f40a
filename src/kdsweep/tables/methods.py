"""The KD methods side by side: per student, each method's best point against the hard-target baseline
(methods.csv, methods.md), and every point of every method (method_grid.csv: the heat maps' data).
"""

import numpy as np
import pandas as pd

from kdsweep.methods import METHODS
from kdsweep.plan import fmt
from kdsweep.tables.collect import long_scores
from kdsweep.tables.search import pruned_of
from kdsweep.attacks import WORST
from kdsweep.tables.markdown import (MASKED_NOTE, SEEDS_NOTE, attack_note, flagged_cell, gain_cells, mean_cell,
                                     measure_label, render)
from kdsweep.tables.robustness import mark
from kdsweep.tables.summary import (COMPARISON_COLUMNS, MEASURES, compare, counts_as_int, in_order, measure_rank,
                                    method_candidates, pick_best, summarise)


def point_label(method: str, point) -> str:
    """A method's point as `name=value, ...` (kdsweep.methods: its hyperparameters, in its order)."""
    if method not in METHODS or point is None or (not isinstance(point, tuple) and pd.isna(point)):
        return "–"
    return ", ".join(f"{param.name}={fmt(value)}" for param, value in zip(METHODS[method].params, point))


METHODS_COLUMNS = ["dataset", "model", "method", "point", "val_acc_mean", *COMPARISON_COLUMNS, "masking_flagged"]


def methods(runs, robustness):
    """Per student and KD method of the study: its point with the best mean validation accuracy (one that uses
    the teacher; never chosen on test) against the hard-target baseline, every measure paired by seed. kd's
    rows are kd_vs_hard's (Tables II-V)."""
    scores = long_scores(runs, robustness)
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
            rows.append(mark(compare(scores, seeds, chosen, hard_runs), robustness, [*chosen, *hard_runs]).assign(
                dataset=dataset, model=model, method=method, point=point_label(method, point),
                val_acc_mean=cells.loc[[point], "val_acc_mean"].iloc[0]))
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    table = counts_as_int(table.reindex(columns=METHODS_COLUMNS))
    order = {name: i for i, name in enumerate(METHODS)}
    table = table.assign(_method=table["method"].map(order))
    return in_order(table, ["dataset", "model", "_method"]).drop(columns="_method")


def methods_markdown(table, robustness):
    caption = ("The KD methods side by side. Per student and method, the point with the highest mean VALIDATION "
               "accuracy over the sweep's seeds (among those that use the teacher; test accuracy never chooses "
               "it) against the hard-target baseline: clean test accuracy, accuracy under the headline and under "
               "the reference study's FGSM at each epsilon (every attack: methods.csv), agreement with the teacher "
               "and expected calibration error. A best point of many is optimistic: tables/confirmed.md trains "
               "each method's again on fresh seeds. " + attack_note(robustness) + MASKED_NOTE
               + "Accuracies in %, gains in points; the gain is paired by seed, method(seed s) - baseline(seed s), "
               "with its 95% interval (Student t) where there are two pairs or more. " + SEEDS_NOTE)
    if table.empty:
        return caption + "\n\nNo distilled run has finished yet.\n"
    # the headline and the reference study's FGSM (every attack: methods.csv)
    wanted = [("clean", 0.0), *sorted({(m, e) for m, e in zip(table["measure"], table["epsilon"])
                                      if m in (WORST, "fgsm")}, key=lambda item: (measure_rank(item[0]),
                                                                                  item[0], item[1])),
              ("agreement", np.nan), ("ece", np.nan)]
    header = ["dataset", "student", "method", "point (validation acc.)", "method - hard (95% CI, n)"]
    header += [measure_label(measure, epsilon)[0] for measure, epsilon in wanted]
    rows = []
    for (dataset, model, method, point), group in table.groupby(["dataset", "model", "method", "point"], sort=False):
        def cell(measure, epsilon):
            match = group[(group["measure"] == measure)
                          & ((group["epsilon"] == epsilon) | (group["epsilon"].isna() & pd.isna(epsilon)))]
            if match.empty:
                return "–"
            row = match.iloc[0]
            return flagged_cell(mean_cell(row["kd_mean"], row["kd_ci95"], row["kd_n"], measure_label(measure, epsilon)[1]),
                                row)

        clean = group[group["measure"] == "clean"].iloc[0]
        gain, interval_cell, n, _ = gain_cells(clean)
        paired = f"{gain} ({interval_cell}, n = {n})" if int(n) > 1 else f"{gain} (n = {n}, no interval)"
        rows.append([dataset, model, method, f"{point} ({clean_val(group):.2f})", paired,
                     *(cell(measure, epsilon) for measure, epsilon in wanted)])
    return render(caption, header, rows)


def clean_val(group) -> float:
    return float(group["val_acc_mean"].iloc[0])


METHOD_GRID_COLUMNS = ["dataset", "model", "method", "point", "x_name", "x", "y_name", "y", "test_acc_mean",
                       "test_acc_std", "test_acc_n", "test_acc_ci95", "val_acc_mean", "val_acc_std", "val_acc_n",
                       "val_acc_ci95", "pruned_at_epoch"]


def method_grid(runs, search=None):
    """Every point of every KD method, per student: mean test and validation accuracy over seeds, with the
    values of the method's two main hyperparameters (its `axes`: the heat map's x and y); successive halving's
    pruned points (search: kdsweep.tables.search) with the validation accuracy of the rung where they stopped
    (`pruned_at_epoch`) and no test accuracy."""
    rows = []
    datasets = runs.drop_duplicates("model").set_index("model")["dataset"]
    for method_name, method in METHODS.items():
        mine = runs[(runs["role"] == method_name) & (runs["method"] == method_name)]
        pruned = pruned_of(search, method_name) if search is not None else mine.iloc[:0]
        if mine.empty and pruned.empty:
            continue
        names = [param.name for param in method.params]
        x_name, y_name = method.axes
        keys = ["dataset", "model", "point"]
        summary = pd.concat([summarise(mine, keys, "test_acc"), summarise(mine, keys, "val_acc")], axis=1)
        finished = [(dataset, model, point, values.to_dict(), pd.NA)
                    for (dataset, model, point), values in summary.iterrows()]
        stopped = [(datasets.get(row.model), row.model, row.point,
                    {"val_acc_mean": row.val_acc_mean, "val_acc_n": row.val_acc_n}, row.pruned_at_epoch)
                   for row in pruned.itertuples()]
        for dataset, model, point, values, pruned_at in finished + stopped:
            hparams = dict(zip(names, point))
            rows.append({"dataset": dataset, "model": model, "method": method_name,
                         "point": point_label(method_name, point), "x_name": x_name, "x": hparams[x_name],
                         "y_name": y_name, "y": hparams[y_name], **values, "pruned_at_epoch": pruned_at})
    return counts_as_int(pd.DataFrame(rows, columns=METHOD_GRID_COLUMNS))
