"""Confirmation on fresh seeds (confirmed.csv, confirmed.md): per student and KD method, the point its
checkpoint chose (kdsweep.tables.choices) trained again on seeds the sweep never used, against hard targets
paired by seed, beside the same gain on the sweep's seeds.
"""

import numpy as np
import pandas as pd

from kdsweep.methods import METHODS
from kdsweep.tables.collect import long_scores
from kdsweep.tables.markdown import (GAIN_HEADER, GAIN_NOTE, MASKED_NOTE, SEEDS_NOTE, flagged_cell, gain_cells,
                                     mean_cell, measure_label, render)
from kdsweep.tables.robustness import mark
from kdsweep.tables.methods import point_label
from kdsweep.tables.summary import GAIN_COLUMNS, SUMMARY, compare, counts_as_int, in_order, method_candidates

# (kd's T and w as before; a point of any method in `method` and `point`, its hyperparameters spelled out)
CONFIRMED_COLUMNS = ["dataset", "model", "temperature", "soft_weight", "sweep_val_acc_mean", "sweep_n", "measure",
                     "epsilon", "sweep_gain_mean", "sweep_gain_n",
                     *(f"{side}_{stat}" for side in ("hard", "kd") for stat in SUMMARY), *GAIN_COLUMNS,
                     "method", "point", "masking_flagged"]


def confirmed(runs, robustness, choices):
    """Per student and KD method with confirmation runs: the chosen point (its record's; without one, each
    point found) on the fresh seeds, distilled against hard targets, paired by seed; beside it the same gain
    on the sweep's seeds (the estimate that chose the point)."""
    scores = long_scores(runs, robustness)
    seeds = runs.set_index("run")["seed"]
    rows = []
    confirm = runs[runs["role"] == "confirm"]
    for (dataset, model), mine in confirm.groupby(["dataset", "model"], sort=True):
        distilled, hard = mine[mine["method"].notna()], mine.loc[mine["method"].isna(), "run"]
        sweep = runs[(runs["dataset"] == dataset) & (runs["model"] == model)]
        for method in [name for name in METHODS if (distilled["method"] == name).any()]:
            choice = choices.get((model, method))
            found = sorted(set(distilled.loc[distilled["method"] == method, "point"]))
            for point in ([choice.point] if choice is not None else found):
                def at(frame, role):
                    return frame.loc[(frame["role"] == role) & (frame["method"] == method)
                                     & frame["point"].map(lambda p: p == point), "run"]

                table = mark(compare(scores, seeds, at(distilled, "confirm"), hard), robustness,
                             [*at(distilled, "confirm"), *hard])
                on_sweep = compare(scores, seeds, at(sweep, method), sweep.loc[sweep["role"] == "baseline", "run"])
                on_sweep = on_sweep[["measure", "epsilon", "gain_mean", "gain_n"]].rename(
                    columns={"gain_mean": "sweep_gain_mean", "gain_n": "sweep_gain_n"})
                table = table.drop(columns="boost").merge(on_sweep, on=["measure", "epsilon"], how="left")
                cells = method_candidates(sweep, method)
                cell = cells.loc[[point]].iloc[0] if point in cells.index else None
                values = dict(zip((param.name for param in METHODS[method].params), point))
                rows.append(table.assign(
                    dataset=dataset, model=model, method=method, point=point_label(method, point),
                    temperature=values.get("temperature", np.nan), soft_weight=values.get("soft_weight", np.nan),
                    sweep_val_acc_mean=choice.record.val_acc if choice else (
                        cell["val_acc_mean"] if cell is not None else np.nan),
                    sweep_n=choice.record.n if choice else (cell["n"] if cell is not None else 0)))
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    table = counts_as_int(table.reindex(columns=CONFIRMED_COLUMNS))
    order = {name: i for i, name in enumerate(METHODS)}
    table = table.assign(_method=table["method"].map(order))
    return in_order(table, ["dataset", "model", "_method", "point"]).drop(columns="_method")


def confirmed_markdown(table, choices):
    caption = ("Confirmation on fresh seeds. Per student and KD method, the distilled point with the highest mean "
               "VALIDATION accuracy over the sweep's seeds (one that uses the teacher: for kd w > 0, as in Tables "
               "II-V; the test set never chooses it) is trained again, with its hard-target baseline, on seeds the "
               "sweep never used. A sweep's best point is the luckiest of many: its seeds helped it on validation "
               "and, through the same weights, on test, so its gain on the sweep's seeds (\"in the sweep\") is "
               "optimistic; the fresh seeds' gain is the estimate to report. Accuracies in %, gains in points; "
               + MASKED_NOTE + GAIN_NOTE + "Hard targets and distilled (fresh seeds): " + SEEDS_NOTE)
    if table.empty:
        return caption + ("\n\nNo confirmation run has finished: the config's confirm.seeds is empty "
                          "(confirmation off, the default), or its runs are still to come.\n")
    header = ["dataset", "student", "method", "point", "measure", "distilled - hard in the sweep (n)",
              "hard targets, fresh seeds", "distilled, fresh seeds", *GAIN_HEADER]
    rows = []
    for _, row in table.iterrows():
        measure, digits = measure_label(row["measure"], row["epsilon"])
        sweep = ("–" if pd.isna(row["sweep_gain_mean"]) else
                 f"{row['sweep_gain_mean']:+.{digits}f} ({int(row['sweep_gain_n'])})")
        rows.append([row["dataset"], row["model"], row["method"], row["point"],
                     flagged_cell(measure, row), sweep, mean_cell(row["hard_mean"], row["hard_ci95"], row["hard_n"], digits),
                     mean_cell(row["kd_mean"], row["kd_ci95"], row["kd_n"], digits), *gain_cells(row, digits=digits)])
    lines = []
    for (student, method), choice in sorted(choices.items()):
        names = [param.name for param in METHODS[method].params]

        def label(values):
            return point_label(method, tuple(values[name] for name in names))

        means = "; ".join(f"{label(c)}: {c['val_acc_mean']:.2f}"
                          for c in sorted(choice.record.candidates, key=lambda c: -c["val_acc_mean"]))
        lines.append(f"- {student}, {method}: chose {point_label(method, choice.point)} (mean validation "
                     f"accuracy {choice.record.val_acc:.2f}% over {choice.record.n} sweep seed(s)); candidates, "
                     f"best first: {means}.")
    chosen = ("\nThe choices (confirm/<student>[_<method>].json):\n\n" + "\n".join(lines) + "\n") if lines else ""
    return render(caption, header, rows) + chosen
