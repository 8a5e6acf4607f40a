"""Confirmation on fresh seeds (confirmed.csv, confirmed.md): per student and KD method, the point its
checkpoint chose (kdsweep.tables.choices) trained again on seeds the sweep never used, against hard targets
paired by seed, beside the same gain on the sweep's seeds; and head to head, each other method's confirmed
point against kd's (tuned KD), paired by the same fresh seeds (`against`: baseline or kd). The whole table
is one family of tests (kdsweep.tables.summary.FAMILIES): adjusted p-values and intervals beside the raw ones.
"""

import numpy as np
import pandas as pd

from kdsweep.methods import METHODS
from kdsweep.tables.collect import long_scores
from kdsweep.tables.markdown import (GAIN_NOTE, MASKED_NOTE, SEEDS_NOTE, family_note, flagged_cell, gain_cells,
                                     gain_header, mean_cell, measure_label, render)
from kdsweep.tables.robustness import mark
from kdsweep.tables.method_comparison import point_label
from kdsweep.tables.summary import (ADJUSTED_COLUMNS, GAIN_COLUMNS, SUMMARY, budget_of, compare, counts_as_int, family,
                                    in_order, method_candidates)

# (kd's T and w as before; a point of any method in `method` and `point`, its hyperparameters spelled out;
# against: the side the gain is taken against, "baseline" (hard_* its numbers) or "kd" (hard_*: kd's confirmed
# point's))
CONFIRMED_COLUMNS = ["dataset", "model", "temperature", "soft_weight", "sweep_val_acc_mean", "sweep_n", "measure",
                     "epsilon", "sweep_gain_mean", "sweep_gain_n",
                     *(f"{side}_{stat}" for side in ("hard", "kd") for stat in SUMMARY), *GAIN_COLUMNS,
                     "method", "point", "against", "masking_flagged", *ADJUSTED_COLUMNS]


def confirmed(runs, robustness, choices):
    """Per student and KD method with confirmation runs: the chosen point (its record's; without one, each
    point found) on the fresh seeds, distilled against hard targets, paired by seed; beside it the same gain
    on the sweep's seeds (the estimate that chose the point). Then each other method's point against kd's,
    paired by fresh seed (where kd's is confirmed), beside the same contrast on the sweep's seeds."""
    scores = long_scores(runs, robustness)
    seeds = runs.set_index("run")["seed"]
    rows = []
    confirm = runs[runs["role"] == "confirm"]
    for (dataset, model), mine in confirm.groupby(["dataset", "model"], sort=True):
        distilled, hard = mine[mine["method"].notna()], mine.loc[mine["method"].isna(), "run"]
        sweep = runs[(runs["dataset"] == dataset) & (runs["model"] == model)]
        confirmed_points = {}  # method -> (point, its fresh runs, its sweep runs)
        for method in [name for name in METHODS if (distilled["method"] == name).any()]:
            choice = choices.get((model, method))
            found = sorted(set(distilled.loc[distilled["method"] == method, "point"]))
            for point in ([choice.point] if choice is not None else found):
                def at(frame, role):
                    return frame.loc[(frame["role"] == role) & (frame["method"] == method)
                                     & frame["point"].map(lambda p: p == point), "run"]

                fresh, on_sweep_runs = at(distilled, "confirm"), at(sweep, method)
                confirmed_points.setdefault(method, (point, fresh, on_sweep_runs))
                table = mark(compare(scores, seeds, fresh, hard), robustness, [*fresh, *hard])
                on_sweep = compare(scores, seeds, on_sweep_runs, sweep.loc[sweep["role"] == "baseline", "run"])
                cells = method_candidates(sweep, method)
                cell = cells.loc[[point]].iloc[0] if point in cells.index else None
                rows.append(_rows(table, on_sweep, dataset, model, method, point, "baseline",
                                  choice.record.val_acc if choice else (cell["val_acc_mean"] if cell is not None
                                                                        else np.nan),
                                  choice.record.n if choice else (cell["n"] if cell is not None else 0)))
        if "kd" not in confirmed_points:
            continue
        _, kd_fresh, kd_sweep = confirmed_points["kd"]
        for method, (point, fresh, on_sweep_runs) in confirmed_points.items():
            if method == "kd":
                continue
            choice = choices.get((model, method))
            rows.append(_rows(mark(compare(scores, seeds, fresh, kd_fresh), robustness, [*fresh, *kd_fresh]),
                              compare(scores, seeds, on_sweep_runs, kd_sweep),
                              dataset, model, method, point, "kd", choice.record.val_acc if choice else np.nan,
                              choice.record.n if choice else 0))
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    table = counts_as_int(family(table.reindex(columns=CONFIRMED_COLUMNS[:-len(ADJUSTED_COLUMNS)]), "confirmed")
                          .reindex(columns=CONFIRMED_COLUMNS))
    order = {name: i for i, name in enumerate(METHODS)}
    table = table.assign(_method=table["method"].map(order), _against=table["against"].ne("baseline"))
    return in_order(table, ["dataset", "model", "_against", "_method", "point"]).drop(columns=["_method", "_against"])


def _rows(table, on_sweep, dataset, model, method, point, against, val_acc, n):
    """One contrast's rows: the fresh seeds' comparison, the sweep's gain beside it, the point's coordinates."""
    on_sweep = on_sweep[["measure", "epsilon", "gain_mean", "gain_n"]].rename(
        columns={"gain_mean": "sweep_gain_mean", "gain_n": "sweep_gain_n"})
    table = table.drop(columns="boost").merge(on_sweep, on=["measure", "epsilon"], how="left")
    values = dict(zip((param.name for param in METHODS[method].params), point))
    return table.assign(dataset=dataset, model=model, method=method, point=point_label(method, point),
                        against=against, temperature=values.get("temperature", np.nan),
                        soft_weight=values.get("soft_weight", np.nan), sweep_val_acc_mean=val_acc, sweep_n=n)


def confirmed_markdown(table, choices, runs=None):
    caption = ("Confirmation on fresh seeds. Per student and KD method, the distilled point with the highest mean "
               "VALIDATION accuracy over the sweep's seeds (one that uses the teacher: for kd w > 0, as in Tables "
               "II-V; the test set never chooses it) is trained again, with its hard-target baseline, on seeds the "
               "sweep never used. A sweep's best point is the luckiest of many (the winner's curse): its seeds "
               "helped it on validation and, through the same weights, on test, so its gain on the sweep's seeds "
               "(\"in the sweep\") is optimistic; the fresh seeds' gain is the estimate to report. Accuracies in %, "
               "gains in points; " + MASKED_NOTE + GAIN_NOTE + family_note(table) + "Both sides on fresh seeds: "
               + SEEDS_NOTE + cost_note(runs))
    if table.empty:
        return caption + ("\n\nNo confirmation run has finished: the config's confirm.seeds is empty "
                          "(confirmation off), or its runs are still to come.\n")

    def section(rows_of, title, reference, difference):
        header = ["dataset", "student", "method", "point", "measure", f"{difference} in the sweep (n)",
                  f"{reference}, fresh seeds", "method, fresh seeds", *gain_header(difference)]
        rows = []
        for _, row in rows_of.iterrows():
            measure, digits = measure_label(row["measure"], row["epsilon"])
            sweep = ("–" if pd.isna(row["sweep_gain_mean"]) else
                     f"{row['sweep_gain_mean']:+.{digits}f} ({int(row['sweep_gain_n'])})")
            rows.append([row["dataset"], row["model"], row["method"], row["point"],
                         flagged_cell(measure, row), sweep,
                         mean_cell(row["hard_mean"], row["hard_ci95"], row["hard_n"], digits),
                         mean_cell(row["kd_mean"], row["kd_ci95"], row["kd_n"], digits),
                         *gain_cells(row, digits=digits)])
        return render(title, header, rows)

    text = caption + "\n\n" + section(table[table["against"] == "baseline"],
                                        "Against the hard-target baseline (paired by fresh seed):", "hard targets",
                                        "method - hard")
    head_to_head = table[table["against"] == "kd"]
    if len(head_to_head):
        text += "\n" + section(head_to_head, "Head to head: each method's confirmed point against kd's confirmed "
                                              "point (tuned KD), paired by fresh seed; the same family:",
                                "kd", "method - kd")
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
    return text + chosen


def cost_note(runs) -> str:
    """What the confirmation's finished runs cost: runs, epochs trained and training hours (budget_of)."""
    if runs is None:
        return ""
    mine = runs[runs["role"] == "confirm"]
    if mine.empty:
        return ""
    cost = budget_of(mine)
    return (f" Cost of the confirmation so far: {cost['runs']} runs (distilled and baselines), {cost['epochs']} "
            f"epochs, {cost['hours']:.2f} {cost['unit']} of training.")
