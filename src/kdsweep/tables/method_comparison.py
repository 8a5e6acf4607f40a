"""The KD methods side by side: per student, each method's best point against the hard-target baseline
(methods.csv, methods.md: one family of tests, adjusted for multiplicity; each method's search budget beside
it), and every point of every method (method_grid.csv: the heat maps' data).
"""

import numpy as np
import pandas as pd

from kdsweep.methods import METHODS
from kdsweep.plan import fmt
from kdsweep.tables.collect import long_scores
from kdsweep.tables.search import pruned_of
from kdsweep.attacks import WORST
from kdsweep.tables.markdown import (MASKED_NOTE, SEEDS_NOTE, attack_note, family_note, flagged_cell, gain_cells,
                                     mean_cell, measure_label, render)
from kdsweep.tables.robustness import mark
from kdsweep.tables.summary import (ADJUSTED_COLUMNS, COMPARISON_COLUMNS, MEASURES, budget_of, compare, counts_as_int,
                                    family, in_order, measure_rank, method_candidates, pick_best, summarise)


def point_label(method: str, point) -> str:
    """A method's point as `name=value, ...` (kdsweep.methods: its hyperparameters, in its order)."""
    if method not in METHODS or point is None or (not isinstance(point, tuple) and pd.isna(point)):
        return "–"
    return ", ".join(f"{param.name}={fmt(value)}" for param, value in zip(METHODS[method].params, point))


# A method's search budget for one student: the points it searched (those that use the teacher, finished and
# those successive halving pruned; a shared teacher-free run is no candidate), the seeds, the finished runs,
# the epochs trained (each run's, summed; a pruned point's seeds: the epochs each trained to its rung) and the
# training hours of the finished runs (train_seconds summed; GPU-h or CPU-h).
BUDGET_COLUMNS = ["budget_points", "budget_seeds", "budget_runs", "budget_epochs", "budget_hours", "budget_unit"]
METHODS_COLUMNS = ["dataset", "model", "method", "point", "val_acc_mean", *BUDGET_COLUMNS, *COMPARISON_COLUMNS,
                   "masking_flagged", *ADJUSTED_COLUMNS]


def searched(method: str, point) -> bool:
    """Whether a point (its values in the method's order) is a candidate of the method's search: it uses the
    teacher."""
    return isinstance(point, tuple) and METHODS[method].needs_teacher(
        dict(zip((param.name for param in METHODS[method].params), point)))


def budgets(runs, search=None) -> dict:
    """{(dataset, model, method): {budget column: value}} of every student's sweep runs of every method
    (`runs` before successive halving's pruned points are dropped; search: kdsweep.tables.search, whose
    pruned points add their points and, for each seed without a finished run (metrics.json), the epochs the
    rung record says it trained)."""
    sweep = runs[runs["method"].notna() & runs["role"].eq(runs["method"])]
    # rows by a boolean list (.loc: an empty one selects no row, not no column)
    sweep = sweep.loc[[searched(method, point) for method, point in zip(sweep["method"], sweep["point"])]]
    out = {}
    for (dataset, model, method), group in sweep.groupby(["dataset", "model", "method"], sort=True):
        cost = budget_of(group)
        if search is not None:
            done = set(group["point"])
            finished = set(zip(group["point"], group["seed"]))
            paused = pruned_of(search, method)
            paused = paused[(paused["model"] == model) & paused["point"].map(lambda point: searched(method, point))]
            cost["points"] += int((~paused["point"].isin(done)).sum())
            # a seed with no metrics.json stopped at the rung (a seed early stopping finished is in group already)
            cost["epochs"] += sum(epochs for point, pairs in zip(paused["point"], paused["seed_epochs"])
                                  for seed, epochs in pairs
                                  if (point, seed) not in finished and (seed is not None or point not in done))
        out[dataset, model, method] = {f"budget_{key}": value for key, value in cost.items()}
    return out


def methods(runs, robustness, budget=None):
    """Per student and KD method of the study: its point with the best mean validation accuracy (one that uses
    the teacher; never chosen on test) against the hard-target baseline, every measure paired by seed, with
    the method's search budget (`budget`: budgets(...), else of these runs). kd's rows are kd_vs_hard's
    (Tables II-V). The whole table is one family of tests (kdsweep.tables.summary.FAMILIES)."""
    budget = budgets(runs) if budget is None else budget
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
                val_acc_mean=cells.loc[[point], "val_acc_mean"].iloc[0], **budget.get((dataset, model, method), {})))
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    table = counts_as_int(family(table.reindex(columns=METHODS_COLUMNS[:-len(ADJUSTED_COLUMNS)]), "methods")
                          .reindex(columns=METHODS_COLUMNS))
    order = {name: i for i, name in enumerate(METHODS)}
    table = table.assign(_method=table["method"].map(order))
    return in_order(table, ["dataset", "model", "_method"]).drop(columns="_method")


def methods_markdown(table, robustness):
    caption = ("The KD methods side by side. Per student and method, the point with the highest mean VALIDATION "
               "accuracy over the sweep's seeds (among those that use the teacher; test accuracy never chooses "
               "it) against the hard-target baseline: clean test accuracy, accuracy under the headline and under "
               "the reference study's FGSM at each epsilon (every attack: methods.csv), agreement with the teacher "
               "and expected calibration error. A best point of many is "
               "optimistic (the winner's curse), the more so the more points a method searched: its search budget "
               "is beside it (points x seeds: the points searched, those that use the teacher, finished or pruned, "
               "times the seeds; the epochs each run trained, summed, a pruned point's to its rung; the training "
               "hours of its finished runs). A method with a larger budget "
               "had more chances to find a lucky point, so compare methods at equal budgets (config budget.equal) "
               "or on fresh seeds: tables/confirmed.md trains each method's point again there, and compares it "
               "head to head with kd's. " + attack_note(robustness) + MASKED_NOTE
               + "Accuracies in %, gains in points; the gain is paired by seed, method(seed s) - baseline(seed s), "
               "with its raw 95% interval (Student t) where there are two pairs or more and, after adjustment for "
               "multiplicity, Holm's p and the Bonferroni interval. " + family_note(table) + SEEDS_NOTE)
    if table.empty:
        return caption + "\n\nNo distilled run has finished yet.\n"
    # the headline and the reference study's FGSM (every attack: methods.csv)
    wanted = [("clean", 0.0), *sorted({(m, e) for m, e in zip(table["measure"], table["epsilon"])
                                      if m in (WORST, "fgsm")}, key=lambda item: (measure_rank(item[0]),
                                                                                  item[0], item[1])),
              ("agreement", np.nan), ("ece", np.nan)]
    header = ["dataset", "student", "method", "point (validation acc.)", "search budget",
              "method - hard (95% CI raw; adjusted; n)", "p (raw; Holm)", "differs from 0 (adjusted)"]
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
        gain, raw, adjusted, n, p, p_holm, verdict = gain_cells(clean)
        paired = f"{gain} ({raw}; {adjusted}; n = {n})" if int(n) > 1 else f"{gain} (n = {n}, no interval)"
        rows.append([dataset, model, method, f"{point} ({clean_val(group):.2f})", budget_cell(clean), paired,
                     f"{p}; {p_holm}", verdict, *(cell(measure, epsilon) for measure, epsilon in wanted)])
    return render(caption, header, rows)


def budget_cell(row) -> str:
    """`48 points x 1 seed, 2304 epochs, 1.20 GPU-h` of a methods row."""
    if pd.isna(row.get("budget_runs")):
        return "–"
    seeds = int(row["budget_seeds"])
    return (f"{int(row['budget_points'])} points x {seeds} seed{'s' if seeds != 1 else ''}, "
            f"{int(row['budget_epochs'])} epochs, {row['budget_hours']:.2f} {row['budget_unit']}")


def clean_val(group) -> float:
    return float(group["val_acc_mean"].iloc[0])


METHOD_GRID_COLUMNS = ["dataset", "model", "method", "point", "x_name", "x", "y_name", "y", "test_acc_mean",
                       "test_acc_std", "test_acc_n", "test_acc_ci95", "val_acc_mean", "val_acc_std", "val_acc_n",
                       "val_acc_ci95", "pruned_at_epoch", "teacher_free"]


def teacher_free_label(method: str, points) -> str:
    """A method's teacher-free points (hyperparameter tuples) as one point: the values they share, and which
    vary (and do nothing there), e.g. `alpha=0, beta=0, warmup_epochs=20 (any temperature)`."""
    names = [param.name for param in METHODS[method].params]
    columns = list(zip(*(tuple(value for _, value in point) for point in points)))
    shared = [f"{name}={fmt(values[0])}" for name, values in zip(names, columns) if len(set(values)) == 1]
    varying = [name for name, values in zip(names, columns) if len(set(values)) > 1]
    return ", ".join(shared) + (f" (any {', '.join(varying)})" if varying else "")


def method_grid(runs, search=None, teacher_free=None):
    """Every point of every KD method, per student: mean test and validation accuracy over seeds, with the
    values of the method's two main hyperparameters (its `axes`: the heat map's x and y); successive halving's
    pruned points (search: kdsweep.tables.search) with the validation accuracy of the rung where they stopped
    (`pruned_at_epoch`) and no test accuracy. The study's teacher-free points (teacher_free:
    kdsweep.plan.Plan.teacher_free) appear once each: those that are the baseline as one row of the
    baseline's runs, `teacher_free` "baseline" (an axis they vary over left empty); a shared teacher-free run
    as its point, `teacher_free` "shared"."""
    rows = []
    datasets = runs.drop_duplicates("model").set_index("model")["dataset"]
    baselines = runs[runs["role"] == "baseline"]
    for method_name, method in METHODS.items():
        mine = runs[(runs["role"] == method_name) & (runs["method"] == method_name)]
        pruned = pruned_of(search, method_name) if search is not None else mine.iloc[:0]
        free = (teacher_free or {}).get(method_name, {})
        as_baseline = [point for point, target in free.items() if target == "baseline"]
        shared = {tuple(value for _, value in target) for target in free.values() if target != "baseline"}
        if mine.empty and pruned.empty and not (as_baseline and len(baselines)):
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
                         "y_name": y_name, "y": hparams[y_name], **values, "pruned_at_epoch": pruned_at,
                         "teacher_free": "shared" if point in shared else None})
        if as_baseline:
            taken = {name: {value for point in as_baseline for n, value in point if n == name} for name in names}
            axis = {name: next(iter(v)) if len(v) == 1 else np.nan for name, v in taken.items()}
            keys = ["dataset", "model"]
            summary = pd.concat([summarise(baselines, keys, "test_acc"), summarise(baselines, keys, "val_acc")], axis=1)
            rows += [{"dataset": dataset, "model": model, "method": method_name,
                      "point": teacher_free_label(method_name, as_baseline), "x_name": x_name, "x": axis[x_name],
                      "y_name": y_name, "y": axis[y_name], **values.to_dict(), "pruned_at_epoch": pd.NA,
                      "teacher_free": "baseline"} for (dataset, model), values in summary.iterrows()]
    return counts_as_int(pd.DataFrame(rows, columns=METHOD_GRID_COLUMNS))
