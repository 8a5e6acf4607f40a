"""Statistics of the tables: a quantity over seeds (`summarise`: mean, std, n and the 95% Student-t interval
of kdsweep.intervals), the point a choice picks (`pick_best`, among `candidates` or `method_candidates`), a
distilled student against its hard-target baseline per measure (`compare`: each side over its runs and the
gain paired by seed, kdsweep.intervals.paired_gain), and a table of such comparisons as one family of tests
(`family`: Holm-adjusted p-values and Bonferroni simultaneous intervals beside the raw ones, kdsweep.intervals.adjust;
FAMILIES names each table's).
"""

import pandas as pd

from kdsweep.methods import METHODS
from kdsweep.intervals import ADJUSTED_FIELDS, GAIN_FIELDS, adjust, half_width, interval, paired_gain
from kdsweep.tables.collect import attack_rank

# kd_vs_hard's measures after the clean accuracy and the attacks, and how the Markdown shows them:
# (label, decimals).
MEASURES = {
    "max_logit": ("mean largest logit", 2),
    "logit_norm": ("mean logit L2 norm", 2),
    "agreement": ("top-1 agreement with the teacher (%)", 2),
    "kl_to_teacher": ("KL(teacher ‖ student), T = 1", 3),
    "ece": ("expected calibration error (%)", 2),
    "nll": ("negative log-likelihood", 3),
    "worst_class_acc": ("lowest accuracy of a class (%)", 2),
}
_TIE = 1e-9  # means closer than this count as a tie
SUMMARY = ("mean", "std", "n", "ci95")
GAIN_COLUMNS = [f"gain_{field}" for field in GAIN_FIELDS]
# A comparison of a distilled student with its baseline, per measure and epsilon (compare).
COMPARISON_COLUMNS = ["measure", "epsilon", *(f"{side}_{stat}" for side in ("hard", "kd") for stat in SUMMARY),
                      "boost", *GAIN_COLUMNS]
# What `family` adds to a table of comparisons: the adjusted p-value and interval, the verdict after
# adjustment, and the family's name and size (m, the comparisons with an interval).
ADJUSTED_COLUMNS = [*(f"gain_{field}" for field in ADJUSTED_FIELDS), "family", "family_size"]
# Each table of paired comparisons is one family: every row with an interval (two pairs or more).
FAMILIES = {
    "kd_vs_hard": "every row of kd_vs_hard (students x measures x eps)",
    "methods": "every row of methods (students x KD methods x measures x eps)",
    "confirmed": "every row of confirmed (students x KD methods x {against the baseline, against kd} x measures x eps)",
    "pairs": "every row of pairs (teachers x students x KD methods, clean test accuracy)",
}


def family(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """The table as one family of tests (FAMILIES[name]): kdsweep.intervals.adjust's columns, and `family`."""
    return adjust(table).assign(family=FAMILIES[name])


def summarise(frame, by, value, name=None) -> pd.DataFrame:
    """Per group of `by`: `<name>_mean, _std, _n, _ci95` of column `value` over the group's rows (seeds); ci95
    is the half-width of the 95% Student-t interval (kdsweep.intervals.half_width), NaN with one seed."""
    out = frame.groupby(by, dropna=False, sort=True)[value].agg(["mean", "std", "count"])
    out = out.rename(columns={"count": "n"})
    out["ci95"] = half_width(out["std"], out["n"])
    out.columns = [f"{name or value}_{c}" for c in out.columns]
    return out


def pick_best(means: pd.Series):
    """Index label of the highest value; ties (and near-ties) go to the lowest label."""
    means = means.dropna().sort_index()
    return means.index[means >= means.max() - _TIE][0]


def candidates(kd_runs) -> pd.DataFrame:
    """The distilled points of these kd runs (w > 0: w = 0 is hard targets only), indexed by
    (temperature, soft_weight): `val_acc_mean` over their seeds and `n`, the seeds. The point kd_vs_hard
    compares and the one the confirmation trains again is `pick_best(candidates(...)["val_acc_mean"])`."""
    kd = kd_runs[kd_runs["soft_weight"] > 0]
    return kd.groupby(["temperature", "soft_weight"], sort=True)["val_acc"].agg(val_acc_mean="mean", n="count")


def method_candidates(runs, method: str) -> pd.DataFrame:
    """The points of one method's runs that use the teacher (kd: w > 0), indexed by point (its values in the
    method's order): `val_acc_mean` over their seeds and `n`. For kd the same points, in the same order, as
    `candidates`."""
    mine = runs[(runs["method"] == method) & runs["role"].eq(method)]
    used = mine[[METHODS[method].needs_teacher(dict(zip((p.name for p in METHODS[method].params), point)))
                 for point in mine["point"]]] if len(mine) else mine
    return used.groupby("point", sort=True)["val_acc"].agg(val_acc_mean="mean", n="count")


def measure_rank(measure):
    """Order of kd_vs_hard's rows: clean, the attacks (the headline's worst case, FGSM, the others in the
    registry's order: kdsweep.tables.collect.attack_rank), then MEASURES."""
    if measure == "clean":
        return 0
    if measure in MEASURES:
        return 10 + list(MEASURES).index(measure)
    return 1 + attack_rank(measure)[0] + attack_rank(measure)[1] / 100


def compare(scores, seeds, kd_runs, hard_runs) -> pd.DataFrame:
    """Per (measure, epsilon) of `scores` (long form, long_scores): each side's mean, std, n and ci95 over its
    runs, `boost` (the difference of the two means) and the gain paired by seed (kdsweep.intervals.paired_gain;
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
            row.update({f"{side}_{stat}": summary[stat] for stat in SUMMARY})
        row["boost"] = row["kd_mean"] - row["hard_mean"]
        gain = paired_gain(values["kd"], values["hard"])
        row.update({f"gain_{field}": gain[field] for field in GAIN_FIELDS})
        rows.append(row)
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def in_order(table, keys):
    """Rows by `keys`, then clean, the attacks (FGSM first) by epsilon, then MEASURES in their order."""
    rank = table["measure"].map(measure_rank)
    return (table.assign(_rank=rank).sort_values([*keys, "_rank", "measure", "epsilon"])
            .drop(columns="_rank").reset_index(drop=True))


def counts_as_int(table):
    """Groups absent from one side of a join have n = 0, not NaN."""
    counts = [c for c in table.columns if c.endswith("_n")]
    table[counts] = table[counts].fillna(0).astype(int)
    return table


def hours_unit(devices) -> str:
    """GPU-h where every run trained on CUDA, CPU-h where every one on the CPU, else h (CPU and GPU)."""
    kinds = {"GPU" if str(device).startswith("cuda") else "CPU" for device in devices if pd.notna(device)}
    return f"{kinds.pop()}-h" if len(kinds) == 1 else "h (CPU and GPU)"


def budget_of(runs) -> dict:
    """What these finished runs cost: points (distinct), seeds, runs, epochs (each run's, from metrics.json,
    summed), hours (train_seconds summed) and their unit (hours_unit)."""
    points = runs["point"].map(lambda p: p if isinstance(p, tuple) else None) if "point" in runs else None
    return {"points": int(points.nunique()) if points is not None else 0, "seeds": int(runs["seed"].nunique()),
            "runs": len(runs), "epochs": int(runs["epochs"].sum()), "hours": float(runs["train_seconds"].sum()) / 3600,
            "unit": hours_unit(runs["device"])}
