"""The reference study's tables: Table I (teacher and baselines under attack), the T x w grid, Tables II-V
(kd_vs_hard: each student's best distilled point against its baseline), the sensitivity to T and w against
seed noise, and vs_reference (the reference study's reported numbers, kdsweep/reference.yaml, beside this
study's, when it is that comparison).
"""

from importlib import resources

import numpy as np
import pandas as pd
import yaml

from kdsweep.plan import fmt
from kdsweep.records import Metrics
from kdsweep.layout import METRICS
from kdsweep.intervals import expected_range
from kdsweep.attacks import WORST
from kdsweep.tables.collect import LOGIT_SCALE, TRANSFER, attack_names, in_role_order, long_scores
from kdsweep.tables.search import pruned_of
from kdsweep.tables.markdown import (CI_NOTE, GAIN_HEADER, GAIN_NOTE, LOGIT_NOTE, MASKED_NOTE, SEEDS_NOTE,
                                     attack_heading, attack_note, family_note, flagged_cell, gain_cells, mean_cell,
                                     measure_label, number, render)
from kdsweep.tables.robustness import mark
from kdsweep.tables.summary import (ADJUSTED_COLUMNS, COMPARISON_COLUMNS, MEASURES, candidates, compare, counts_as_int,
                                    family, in_order, pick_best, summarise)


def eps_column(attack, epsilon):
    """Column name of an attack's accuracy at epsilon in table1: `fgsm eps=0.01`."""
    return f"{attack} eps={fmt(epsilon)}"


def table1(runs, robustness):
    """Teacher and baselines: test accuracy, accuracy per attack and epsilon (`fgsm eps=0.01_mean`, ...)
    and logit scale (`max_logit_mean`, `logit_norm_mean`, ...)."""
    keys = ["role", "dataset", "model"]
    base = runs[runs["role"].isin(["teacher", "baseline"])]
    attacked = robustness.loc[~robustness["attack"].str.startswith(TRANSFER),
                              ["run", "attack", "epsilon", "adv_acc", "masking_suspected"]].merge(
        base[["run", *keys]], on="run")
    parts = [summarise(base, keys, "test_acc")]
    for attack in attack_names(attacked):
        rows = attacked[attacked["attack"] == attack]
        for epsilon, group in rows.groupby("epsilon"):
            parts.append(summarise(group, keys, "adv_acc", eps_column(attack, epsilon)))
            # how many of the runs averaged failed a masking check at this epsilon (kdsweep.tables.robustness)
            parts.append(group.groupby(keys)["masking_suspected"].sum().astype(int)
                         .rename(f"{eps_column(attack, epsilon)}_masking_flagged").to_frame())
    parts += [summarise(base, keys, column) for column in LOGIT_SCALE]
    table = in_role_order(pd.concat(parts, axis=1).reset_index(), keys)
    flagged = [c for c in table.columns if c.endswith("_masking_flagged")]
    table[flagged] = table[flagged].fillna(0).astype(int)
    return counts_as_int(table)


# table1.md's attack columns: the headline and the reference study's FGSM (every attack: table1.csv)
TABLE1_ATTACKS = (WORST, "fgsm")


def table1_markdown(table, robustness):
    attacked = [c[: -len("_mean")] for c in table.columns if " eps=" in c and c.endswith("_mean")
                and c.split(" ", 1)[0] in TABLE1_ATTACKS]
    header = ["role", "dataset", "model", "test accuracy (%)",
              *(f"{attack_heading(q.split(' ', 1)[0])} {q.split(' ', 1)[1]} (%)" for q in attacked),
              MEASURES["max_logit"][0], MEASURES["logit_norm"][0]]
    rows = [[row["role"], row["dataset"], row["model"],
             *(flagged_cell(mean_cell(row[f"{q}_mean"], row[f"{q}_ci95"], row[f"{q}_n"]),
                            {"masking_flagged": row.get(f"{q}_masking_flagged", 0)})
               for q in ["test_acc", *attacked, *LOGIT_SCALE])]
            for _, row in table.iterrows()]
    caption = ("Table I. Teacher and hard-target baselines: clean test accuracy, accuracy under the headline and "
               "under the reference study's FGSM, and logit scale (every attack's accuracy: table1.csv). "
               + attack_note(robustness) + MASKED_NOTE + LOGIT_NOTE + CI_NOTE)
    return render(caption, header, rows)


TEACHER_FREE_KD = "the hard-target baseline (w = 0 at every T)"


def grid(runs, teacher_free=None):
    """The kd sweep's grid: per student and point (T, w), test and validation accuracy over seeds. Where the
    study's grid holds w = 0 (teacher_free: kdsweep.plan.Plan.teacher_free, {method: {point: ...}}), that
    point once per student, as what trains it, the baseline: its row has no temperature and `teacher_free`
    says so."""
    keys = ["dataset", "model", "temperature", "soft_weight"]
    kd = runs[runs["role"] == "kd"]
    table = pd.concat([summarise(kd, keys, "test_acc"), summarise(kd, keys, "val_acc")], axis=1).reset_index()
    table["teacher_free"] = None
    if (teacher_free or {}).get("kd"):
        base = runs[runs["role"] == "baseline"].assign(temperature=np.nan, soft_weight=0.0)
        rows = pd.concat([summarise(base, keys, "test_acc"), summarise(base, keys, "val_acc")],
                         axis=1).reset_index().assign(teacher_free=TEACHER_FREE_KD)
        table = counts_as_int(pd.concat([table, rows], ignore_index=True)
                              .sort_values(["dataset", "model", "soft_weight", "temperature"], kind="stable",
                                           na_position="first", ignore_index=True))
    return table


def with_pruned(grid, runs, search):
    """grid.csv: the grid with successive halving's pruned kd points (kdsweep.tables.search): each with the
    validation accuracy of the rung where it stopped (`pruned_at_epoch`) and no test accuracy."""
    pruned = pruned_of(search, "kd")
    if pruned.empty:
        return grid.assign(pruned_at_epoch=pd.NA)
    datasets = runs.drop_duplicates("model").set_index("model")["dataset"]
    rows = pd.DataFrame({"dataset": pruned["model"].map(datasets), "model": pruned["model"],
                         "temperature": [point[0] for point in pruned["point"]],
                         "soft_weight": [point[1] for point in pruned["point"]],
                         "val_acc_mean": pruned["val_acc_mean"], "val_acc_n": pruned["val_acc_n"],
                         "pruned_at_epoch": pruned["pruned_at_epoch"]})
    return counts_as_int(pd.concat([grid.assign(pruned_at_epoch=pd.NA), rows], ignore_index=True)
                         .sort_values(["model", "temperature", "soft_weight"], kind="stable", ignore_index=True))


KD_VS_HARD_COLUMNS = ["dataset", "model", "temperature", "soft_weight", "kd_val_acc_mean", *COMPARISON_COLUMNS,
                      "masking_flagged", *ADJUSTED_COLUMNS]


def kd_vs_hard(runs, robustness):
    """Per student: the distilled (T, w > 0) with the best mean validation accuracy against the baseline."""
    scores = long_scores(runs, robustness)
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
        both = mark(compare(scores, seeds, kd_runs, hard_runs), robustness, [*kd_runs, *hard_runs])
        rows.append(both.assign(dataset=dataset, model=model, temperature=temperature,
                                soft_weight=soft_weight, kd_val_acc_mean=val_acc))
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    table = counts_as_int(family(table.reindex(columns=COMPARISON_COLUMNS + KD_VS_HARD_COLUMNS[:5] + ["masking_flagged"]),
                                 "kd_vs_hard")
                          .reindex(columns=KD_VS_HARD_COLUMNS))
    return in_order(table, ["dataset", "model"])


def kd_vs_hard_markdown(table, robustness):
    header = ["dataset", "student", "temperature T", "soft_weight w", "measure", "hard targets",
              "distilled", *GAIN_HEADER]
    rows = []
    for _, row in table.iterrows():
        measure, digits = measure_label(row["measure"], row["epsilon"])
        rows.append([row["dataset"], row["model"], number(row["temperature"]), number(row["soft_weight"]),
                     flagged_cell(measure, row),
                     mean_cell(row["hard_mean"], row["hard_ci95"], row["hard_n"], digits),
                     mean_cell(row["kd_mean"], row["kd_ci95"], row["kd_n"], digits), *gain_cells(row, digits=digits)])
    caption = ("Tables II-V. Best distilled run per student against its hard-target baseline. The distilled "
               "(T, w) is the one with the highest VALIDATION accuracy (mean over seeds, w > 0); test accuracy "
               "is never used to choose it. It is still the best of many points on the same seeds, so its gain "
               "is optimistic: tables/confirmed.md trains it again on fresh seeds. w = soft_weight, the weight "
               "of the soft (teacher) term; the reference study's alpha = 1 - w. " + attack_note(robustness)
               + MASKED_NOTE + LOGIT_NOTE
               + "Agreement and KL(teacher ‖ student) at T = 1 measure fidelity to the teacher (Stanton et al. "
               "2021); ECE (equal-width confidence bins) and NLL measure calibration. "
               "Accuracies in %, kd - hard in points; " + GAIN_NOTE + family_note(table)
               + "Hard targets and distilled: " + SEEDS_NOTE + " w = 0 trains no run of its own: it is the "
               "hard-target baseline at every T (the same loss and seed), so the baseline column is it.")
    return render(caption, header, rows)


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


def sensitivity(runs, grid):
    """Per student: the spread (max - min) of mean test accuracy over the soft weight at each temperature,
    over the temperature at each soft weight, and over the whole grid, beside the seed-to-seed standard
    deviation at the same points (pooled; with one seed per point, from the confirmation's runs and the
    hard-target runs), their ratio, and the spread that points which do not differ at all would show
    (kdsweep.intervals.expected_range(points) x sd / sqrt(seeds per point))."""
    rows = []
    for (dataset, model), cells in grid.groupby(["dataset", "model"], sort=True):
        fallback = _pooled_sd(_replicates(runs, dataset, model))
        # w = 0, where the study's grid holds it, is the baseline (one row, no temperature): every temperature's
        # w = 0 point
        free, trained = cells[cells["temperature"].isna()], cells[cells["temperature"].notna()]
        slices = [("soft_weight", t, np.nan, pd.concat([free, part]) if len(free) else part)
                  for t, part in trained.groupby("temperature")]
        slices += [("temperature", np.nan, w, part) for w, part in trained.groupby("soft_weight")]
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


def sensitivity_markdown(table):
    caption = ("Sensitivity. Per student, how far the grid's mean test accuracy (%) moves over the soft weight w "
               "(at each temperature T), over T (at each w) and over the whole grid (spread = max - min of the "
               "points' means), beside the seed-to-seed standard deviation at the same points (pooled over the "
               "points' seeds; with one seed per point, from the confirmation's runs and the hard-target runs, "
               "which only estimates it) and the spread that many points would show if they did not differ at "
               "all (expected range of that many means of noise). A spread well above the noise-alone spread is a "
               "sensitivity; one near it is seed noise. w = 0 (hard targets only; where the grid holds it) is the "
               "hard-target baseline at every T, trained once: it counts in each temperature's spread over w.")
    if table.empty:
        return caption + "\n\nNo student has two finished grid points yet.\n"
    header = ["dataset", "student", "varied", "at", "points", "test accuracy range", "spread", "seed-to-seed SD (df)",
              "spread / SD", "spread from noise alone"]
    rows = []
    for _, row in table.iterrows():
        at = {"soft_weight": f"T = {number(row['temperature'])}", "temperature": f"w = {number(row['soft_weight'])}",
              "both": "whole grid"}[row["varied"]]
        sd = "– (one seed per point)" if row["seed_sd_df"] == 0 else (
            f"{row['seed_sd']:.2f} ({int(row['seed_sd_df'])})"
            + ("" if row["seed_sd_from"] == "grid" else " from confirmation and hard-target runs"))
        rows.append([row["dataset"], row["model"], {"both": "T and w"}.get(row["varied"], row["varied"]), at,
                     int(row["points"]), f"{row['min_test_acc_mean']:.2f}–{row['max_test_acc_mean']:.2f}",
                     f"{row['spread']:.2f}", sd, "–" if pd.isna(row["ratio"]) else f"{row['ratio']:.1f}",
                     "–" if pd.isna(row["noise_spread"]) else f"{row['noise_spread']:.2f}"])
    return render(caption, header, rows)


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
        subset = (Metrics.read(results_dir / run / METRICS).config or {}).get("dataset", {}).get("subset")
        if subset is not None:
            return f"this study trains on dataset.subset = {subset} images, not the whole {study['dataset']}"
    return None


def vs_reference(runs, results_dir, table1, kd_vs_hard, confirmed, sensitivity):
    """The reference study's reported numbers beside this study's (the other tables' rows) and its
    confirmation's; for another study one row, `quantity = not applicable`, saying why."""
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
            column = eps_column("fgsm", epsilon)
            found = row if f"{column}_mean" in row.index else None
            add(model, "hard-target accuracy", "fgsm", float(epsilon), value, source, found, prefix=column)
    for model, optimal in ref["optimal"].items():
        mine = kd_vs_hard[kd_vs_hard["model"] == model]
        if mine.empty:
            continue
        # kd's confirmed point against the baseline (not another method's, nor a head-to-head row)
        confirm = confirmed[(confirmed["model"] == model) & (confirmed["method"] == "kd")
                            & (confirmed["against"] == "baseline")]
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


def vs_reference_markdown(table):
    ref = reference()["study"]
    caption = (f"The reference study side by side: its reported numbers ({ref['dataset']}, a {ref['teacher']} "
               f"teacher; one run per point, the optimal point chosen on TEST accuracy) beside this study's "
               "(means over seeds; the sweep's point chosen on validation accuracy) and its confirmation on fresh "
               "seeds. Accuracies in %, gains and spreads in points; this study's intervals are 95% (Student t): "
               "of the mean for accuracies, of the paired gain for gains, unadjusted: the same gains adjusted for "
               "multiplicity, within their tables' families, are in kd_vs_hard.md and confirmed.md.")
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
                     number(row["this_study"]) if point else cell(row["this_study"], row["this_study_n"],
                                                                   row["this_study_low"], row["this_study_high"]),
                     number(row["confirmed"]) if point else cell(row["confirmed"], row["confirmed_n"],
                                                                  row["confirmed_low"], row["confirmed_high"]),
                     row["note"] if isinstance(row["note"], str) else ""])
    return render(caption, header, rows)
