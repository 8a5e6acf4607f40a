"""Robustness beyond one number per attack: the gradient-masking checks (masking.csv, masking.md) and the
transfer attacks of each run (rows of robustness.csv), the marks they leave on every table that averages a
flagged run, and accuracy per class (per_class.csv, per_class.md).

masking/<role>/<run>.json (kdsweep.records.Masking, written by the run's attack job) holds its transfer
attacks and checks (kdsweep.attacks.diagnostics). A check that failed marks every attack number of its run at
its epsilon (the large-epsilon check: at every epsilon): robustness.csv says so in words per row
(`masking`), and a comparison that averages such a run counts it (`masking_flagged`), which its Markdown
shows beside the number ("⚠ masking suspected in k run(s)"): a flagged run is never averaged in silently.

Per class: the clean accuracy of each class on the whole test set (evaluation/<role>/<run>.json) and under the
headline, the worst case, on the evaluation subset (attacks/<role>/<run>/worst_eps<eps>.json), for each
student's distilled point of Tables II-V against its hard-target baseline, paired by seed (kdsweep.intervals): on the
sweep's seeds and, where the confirmation ran, on its fresh seeds; and the lowest class's accuracy (`worst`).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from kdsweep.attacks import ATTACKS, WORST, label
from kdsweep.identity import result_matches
from kdsweep.plan import fmt
from kdsweep.records import AttackResult, Evaluation, Masking
from kdsweep.intervals import paired_gain
from kdsweep.tables.collect import (KEYS, LOGIT_SCALE, ROBUSTNESS_COLUMNS, TRANSFER, attack_rank,
                                    binomial_interval, finished_runs, in_role_order, numeric_frame)
from kdsweep.tables.files import StudyFiles
from kdsweep.tables.markdown import number, render

CHECK_COLUMNS = [*KEYS, "run", "check", "attack", "against", "epsilon", "value", "limit", "n", "passed", "sentence"]


def collect_masking(results_dir, unmatched: list, files: StudyFiles) -> dict:
    """{"checks": one row per check of every run's masking record (CHECK_COLUMNS), "transfer": one row per
    transfer attack, in robustness.csv's columns}; a record that measured another version of its run goes to
    `unmatched` (kdsweep.tables.collect), one of a run of another name to the strays of `files`."""
    runs = finished_runs(results_dir, files)
    checks, transfer = [], []
    for path in files.masking:
        record = Masking.read(path)
        run = f"runs/{path.parent.name}/{path.stem}"
        if record.role != path.parent.name:
            files.stray(path)  # a copy under another role's folder
            continue
        if run not in runs or not result_matches(record, runs[run]):
            unmatched.append(path)
            continue
        keys = {key: getattr(record, key) for key in KEYS} | {"run": run}
        checks += [{**keys, **check.as_dict()} for check in record.checks]
        for result in record.transfer or []:
            n = result.n or 0
            low, high = binomial_interval(round(result.adv_acc * n / 100), n) if n else (np.nan, np.nan)
            transfer.append({**keys, "attack": f"{TRANSFER}{result.source}", "epsilon": result.epsilon,
                             "adv_acc": result.adv_acc, "n": result.n, "n_test": record.n_test,
                             "subset_size": result.n if record.n_test and result.n != record.n_test else np.nan,
                             "adv_acc_low": low, "adv_acc_high": high,
                             "params": json.dumps({"attack": result.attack, "source_run": result.source_run},
                                                  sort_keys=True)})
    return {"checks": numeric_frame(checks, CHECK_COLUMNS).astype({"passed": bool}),
            "transfer": numeric_frame(transfer, ROBUSTNESS_COLUMNS)}


def failed_checks(checks: pd.DataFrame) -> pd.DataFrame:
    return checks[~checks["passed"].astype(bool)]


def flags(checks: pd.DataFrame) -> dict:
    """{run: [(epsilon or None for every epsilon, sentence)]} of the failed checks."""
    out: dict = {}
    for row in failed_checks(checks).itertuples():
        every = row.check == "large_epsilon"
        out.setdefault(row.run, []).append((None if every else float(row.epsilon), row.sentence))
    return out


def _sentences(found, run, epsilon) -> list[str]:
    return [sentence for at, sentence in found.get(run, []) if at is None or np.isclose(at, epsilon)]


def with_masking(frame: pd.DataFrame, masking: dict | None) -> pd.DataFrame:
    """robustness.csv: the attack rows and the transfer rows, each with its run's failed checks at its epsilon."""
    if masking is not None and len(masking["transfer"]):
        datasets = frame.drop_duplicates("run").set_index("run")["dataset"]
        transfer = masking["transfer"].assign(dataset=lambda t: t["run"].map(datasets).fillna(t["dataset"]))
        frame = pd.concat([frame, transfer], ignore_index=True) if len(frame) else transfer
    found = flags(masking["checks"]) if masking is not None else {}
    said = [_sentences(found, run, epsilon) for run, epsilon in zip(frame["run"], frame["epsilon"])]
    frame = frame.assign(masking_suspected=[bool(s) for s in said], masking=["; ".join(s) for s in said])
    frame = frame.assign(_attack=frame["attack"].map(attack_rank))
    return in_role_order(frame, ["role", "model", "temperature", "soft_weight", "seed", "_attack", "epsilon"]
                         ).drop(columns="_attack")[ROBUSTNESS_COLUMNS]


def join_robustness(runs, attacks, masking=None):
    """Attack results with the attacked run's dataset and logit scale joined, and for a distilled run the
    same-seed hard-target run's accuracy under the same attack and epsilon and the seed's gain; with `masking`
    (collect_masking), its transfer attacks as rows (attack transfer_<source>) and every row's failed masking
    checks: robustness.csv."""
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


def mark(table: pd.DataFrame, robustness: pd.DataFrame, runs) -> pd.DataFrame:
    """A comparison (kdsweep.tables.summary.compare) with `masking_flagged`: per attack measure and epsilon, how many
    of the runs it averages had a masking check fail there (0 for the other measures)."""
    flagged = robustness[robustness["masking_suspected"].astype(bool) & robustness["run"].isin(list(runs))]
    per_epsilon = flagged.groupby("epsilon")["run"].nunique()
    attacked = table["measure"].map(lambda m: m == WORST or m in ATTACKS)
    counts = [int(per_epsilon[np.isclose(per_epsilon.index, epsilon)].sum()) if is_attack and pd.notna(epsilon) else 0
              for is_attack, epsilon in zip(attacked, table["epsilon"])]
    return table.assign(masking_flagged=counts)


# ---------------------------------------------------------------- masking.csv, masking.md


def masking_table(checks: pd.DataFrame) -> pd.DataFrame:
    order = {name: i for i, name in enumerate(("rises_with_epsilon", "iterative_above_single_step",
                                               "headline_above_reference", "white_box_above_transfer",
                                               "gradient_free_beats_gradient", "large_epsilon"))}
    table = checks.assign(_check=checks["check"].map(order))
    return in_role_order(table, ["role", "model", "temperature", "soft_weight", "seed", "run", "_check", "attack",
                                 "against", "epsilon"]).drop(columns="_check")[CHECK_COLUMNS]


def masking_markdown(checks: pd.DataFrame, robustness: pd.DataFrame) -> str:
    caption = ("Gradient masking. Each run's attack job checks its numbers for signs that its gradient attacks "
               "failed for want of a usable gradient rather than of an adversarial image (Carlini et al. 2019): an "
               "attack's accuracy rising with ε; an iterative attack above FGSM, or the worst case above FGSM or "
               "PGD; an iterative white-box attack above a transfer attack (images crafted on the teacher or on the "
               "run's own seed's hard-target baseline); the gradient attacks' worst case above the gradient-free "
               "Square attack; and, at a large ε where any image can become another, an attack leaving images "
               "correct. Each compares accuracies on the same test images, with a tolerance (the records' "
               "`limit`). A failed check marks that run's attack numbers at that ε in every table (⚠) and is never "
               "averaged in silently; the headline, a worst case over attacks of which some are scale-free, is the "
               "number to read.")
    if checks.empty:
        return caption + "\n\nNo run's attack job has finished yet.\n"
    checks = masking_table(checks)
    runs = checks.drop_duplicates("run")
    failed = failed_checks(checks)
    header = ["role", "model", "runs checked", "checks", "failed", "runs with a failed check"]
    rows = []
    for (role, model), group in runs.groupby(["role", "model"], sort=False):
        mine = checks[checks["run"].isin(group["run"])]
        bad = failed[failed["run"].isin(group["run"])]
        rows.append([role, model, len(group), len(mine), len(bad), bad["run"].nunique()])
    text = render(caption, header, rows)
    if failed.empty:
        return text + "\nEvery check passed.\n"
    lines = [f"- {row.run.removeprefix('runs/')}: {row.sentence}" for row in failed.itertuples()]
    return text + "\nFailed checks:\n\n" + "\n".join(lines) + "\n"


# ---------------------------------------------------------------- per class


def _read_class_values(results_dir, runs, files: StudyFiles) -> pd.DataFrame:
    """Long form: run, measure (clean | worst), epsilon (0 for clean), class, value (%), n."""
    finished = finished_runs(results_dir, files)
    worst = {path for path in files.attacks if path.name.startswith(f"{WORST}_eps")}
    rows = []
    for run in runs["run"]:
        metrics = finished.get(run)
        evaluation = results_dir / "evaluation" / f"{run.removeprefix('runs/')}.json"
        if metrics is not None and evaluation.is_file():
            record = Evaluation.read(evaluation)
            if result_matches(record, metrics) and record.class_acc:
                rows += [{"run": run, "measure": "clean", "epsilon": 0.0, "class": c, "value": value,
                          "n": (record.class_n or [np.nan] * len(record.class_acc))[c]}
                         for c, value in enumerate(record.class_acc)]
        for path in sorted((results_dir / "attacks" / run.removeprefix("runs/")).glob(f"{WORST}_eps*.json")):
            if path not in worst:
                continue  # (a stray, said by collect_attacks)
            record = AttackResult.read(path)
            if metrics is not None and result_matches(record, metrics) and record.class_adv_acc:
                rows += [{"run": run, "measure": WORST, "epsilon": record.epsilon, "class": c, "value": value,
                          "n": record.class_n[c]} for c, value in enumerate(record.class_adv_acc)]
    frame = pd.DataFrame(rows, columns=["run", "measure", "epsilon", "class", "value", "n"])
    frame["value"] = pd.to_numeric(frame["value"])
    return frame


PER_CLASS_COLUMNS = ["dataset", "model", "method", "temperature", "soft_weight", "seeds", "measure", "epsilon", "class",
                     "n", "hard_mean", "kd_mean", "gain_mean", "gain_std", "gain_n", "gain_low", "gain_high"]


def _comparisons(runs, kd_vs_hard, confirmed):
    """(dataset, model, T, w, which seeds, kd runs, hard runs) of each student's point of Tables II-V on the sweep's
    seeds and of its confirmed kd point on the fresh seeds."""
    out = []
    for row in kd_vs_hard.drop_duplicates(["dataset", "model"]).itertuples():
        if pd.isna(row.temperature):
            continue
        mine = runs[(runs["dataset"] == row.dataset) & (runs["model"] == row.model)]
        kd = mine[(mine["role"] == "kd") & np.isclose(mine["temperature"], row.temperature)
                  & np.isclose(mine["soft_weight"], row.soft_weight)]
        out.append((row.dataset, row.model, row.temperature, row.soft_weight, "sweep", kd,
                    mine[mine["role"] == "baseline"]))
    chosen = confirmed[(confirmed["method"] == "kd")] if len(confirmed) else confirmed
    for row in chosen.drop_duplicates(["dataset", "model"]).itertuples() if len(chosen) else []:
        mine = runs[(runs["dataset"] == row.dataset) & (runs["model"] == row.model) & (runs["role"] == "confirm")]
        kd = mine[(mine["method"] == "kd") & np.isclose(mine["temperature"].astype(float), row.temperature)
                  & np.isclose(mine["soft_weight"].astype(float), row.soft_weight)]
        out.append((row.dataset, row.model, row.temperature, row.soft_weight, "fresh", kd, mine[mine["method"].isna()]))
    return out


def per_class(results_dir, runs, kd_vs_hard, confirmed, files: StudyFiles) -> pd.DataFrame:
    """PER_CLASS_COLUMNS: per student, seeds (sweep | fresh), measure (clean | worst at each epsilon) and class (its
    label, or `worst`: the lowest class's accuracy of each run), the hard-target and distilled means and the gain
    paired by seed."""
    values = _read_class_values(results_dir, runs, files)
    seeds = runs.set_index("run")["seed"]
    rows = []
    for dataset, model, temperature, soft_weight, which, kd, hard in _comparisons(runs, kd_vs_hard, confirmed):
        mine = values[values["run"].isin([*kd["run"], *hard["run"]])]
        lowest = (mine.groupby(["run", "measure", "epsilon"], as_index=False)["value"].min()
                  .assign(**{"class": "worst", "n": np.nan}))
        for (measure, epsilon, klass), group in pd.concat([mine, lowest], ignore_index=True).groupby(
                ["measure", "epsilon", "class"], sort=False):
            side = {name: group[group["run"].isin(frame["run"])].assign(seed=lambda g: g["run"].map(seeds))
                    .set_index("seed")["value"] for name, frame in (("kd", kd), ("hard", hard))}
            gain = paired_gain(side["kd"], side["hard"])
            rows.append({"dataset": dataset, "model": model, "method": "kd", "temperature": temperature,
                         "soft_weight": soft_weight, "seeds": which, "measure": measure, "epsilon": epsilon,
                         "class": klass, "n": group["n"].max(), "hard_mean": side["hard"].mean(),
                         "kd_mean": side["kd"].mean(), **{f"gain_{k}": gain[k] for k in ("mean", "std", "n", "low",
                                                                                         "high")}})
    table = pd.DataFrame(rows, columns=PER_CLASS_COLUMNS)
    if table.empty:
        return table
    order = table["class"].map(lambda c: (1, 0) if c == "worst" else (0, int(c)))
    return (table.assign(_measure=table["measure"].map({"clean": 0, WORST: 1}), _class=order)
            .sort_values(["dataset", "model", "seeds", "_measure", "epsilon", "_class"], kind="stable")
            .drop(columns=["_measure", "_class"]).reset_index(drop=True))


def per_class_markdown(table: pd.DataFrame) -> str:
    caption = ("Accuracy per class. Per student, the distilled point of Tables II-V (best mean validation accuracy) "
               "against its hard-target baseline, per class: clean accuracy on the whole test set, and under the "
               "headline (the worst case over the headline's attacks) on the evaluation subset at each ε; the last "
               "row, `worst`, is each run's lowest class accuracy. Distilled - hard is paired by seed, with its 95% "
               "interval (Student t) where there are two pairs or more; `sweep`: the sweep's seeds, `fresh`: the "
               "confirmation's. Accuracies in %, gains in points; a class has few test images (its n), so its "
               "accuracy moves in large steps.")
    if table.empty:
        return caption + "\n\nNo student has a distilled run and a baseline with per-class results yet.\n"
    parts = [caption]
    for (dataset, model, which), group in table.groupby(["dataset", "model", "seeds"], sort=False):
        first = group.iloc[0]
        measures = list(dict.fromkeys(zip(group["measure"], group["epsilon"])))
        header = ["class", "test images"] + [
            f"{'clean' if measure == 'clean' else 'headline ε=' + fmt(epsilon)}: {side}"
            for measure, epsilon in measures for side in ("hard", "distilled", "distilled - hard")]
        rows = []
        for klass, cells in group.groupby("class", sort=False):
            row = [klass, "–" if pd.isna(cells["n"].iloc[0]) or klass == "worst" else int(cells["n"].iloc[0])]
            for measure, epsilon in measures:
                cell = cells[(cells["measure"] == measure) & (cells["epsilon"] == epsilon)]
                if cell.empty:
                    row += ["–"] * 3
                    continue
                c = cell.iloc[0]
                gain = "–" if pd.isna(c["gain_mean"]) else f"{c['gain_mean']:+.1f}" + (
                    f" [{c['gain_low']:+.1f}, {c['gain_high']:+.1f}]" if c["gain_n"] > 1 else "") + f" ({int(c['gain_n'])})"
                row += [number_cell(c["hard_mean"]), number_cell(c["kd_mean"]), gain]
            rows.append(row)
        title = (f"{dataset} · {model}, kd at T = {number(first['temperature'])}, w = {number(first['soft_weight'])}, "
                 f"{'the sweep' if which == 'sweep' else 'fresh'} seeds")
        parts.append(render(f"**{title}**", header, rows).rstrip("\n"))
    return "\n\n".join(parts) + "\n"


def number_cell(value) -> str:
    return "–" if pd.isna(value) else f"{value:.1f}"
