"""The study's headline in words (headline.md): per student, whether each KD method's point beats the
hard-target baseline, and each other method kd, on clean test accuracy, from results adjusted for
multiplicity only (kdsweep.intervals.adjust: Holm's p for the verdict, Bonferroni's simultaneous interval for
the size). It reads the confirmation on fresh seeds (confirmed) where it has finished, else the sweep's own
comparison (methods), which it says is optimistic (the winner's curse).
"""

import pandas as pd

from kdsweep.tables.markdown import p_cell

OPENING = {
    "confirmed": ("on the confirmation's fresh seeds (tables/confirmed.md: each method's point chosen on the sweep's "
                  "validation accuracy, trained again)"),
    "methods": ("on the sweep's own seeds (tables/methods.md). No confirmation has finished: each method's point is "
                "the best of its search on these same seeds, so these gains are optimistic (the winner's curse)"),
}


def _verdict(row, other: str) -> str:
    n = int(row["gain_n"])
    gain = row["gain_mean"]
    if n < 2 or pd.isna(row["gain_p_holm"]):
        return (f"cannot be tested against {other} ({n} pair{'' if n == 1 else 's'}; two or more give an "
                f"interval): {gain:+.2f} points" if pd.notna(gain) else f"has no pair with {other} yet")
    p = p_cell(row["gain_p_holm"])
    size = (f"{gain:+.2f} points (adjusted 95% interval [{row['gain_low_adj']:+.2f}, {row['gain_high_adj']:+.2f}], "
            f"Holm p {p if p.startswith('<') else '= ' + p}, n = {n})")
    if row["gain_excludes_zero_adj"]:
        return f"{'beats' if gain > 0 else 'trails'} {other}: {size}"
    return f"does not differ detectably from {other} after adjustment: {size}"


def headline(confirmed: pd.DataFrame, methods: pd.DataFrame) -> str:
    """headline.md's text from the confirmed and methods tables (with their adjusted columns)."""
    source, table = ("confirmed", confirmed) if len(confirmed) else ("methods", methods)
    clean = table[table["measure"] == "clean"] if len(table) else table
    if clean.empty:
        return "Headline: no comparison of a distilled student with its baseline has finished yet.\n"
    m = int(table["family_size"].iloc[0])
    lines = [f"Headline, clean test accuracy {OPENING[source]}. Every verdict is after Holm's adjustment over the "
             f"m = {m} comparisons of {source}.md ({table['family'].iloc[0]}): a gain or a loss is claimed only "
             "where Holm's p < 0.05, which holds the chance of any false claim among them at 5%; the intervals are "
             "Bonferroni's simultaneous 95% ones. The unadjusted intervals in the tables are not used here.", ""]
    against = clean["against"] if "against" in clean.columns else pd.Series("baseline", index=clean.index)
    for (dataset, model), rows in clean.groupby(["dataset", "model"], sort=False):
        parts = []
        for _, row in rows.iterrows():
            other = "the hard-target baseline" if against[row.name] == "baseline" else "kd's confirmed point"
            parts.append(f"{row['method']} ({row['point']}) {_verdict(row, other)}")
        lines.append(f"- {model} ({dataset}): " + "; ".join(parts) + ".")
    return "\n".join(lines) + "\n"
