"""The Markdown tables' pieces: a table with its caption (`render`), cells of a mean over seeds and of a
paired gain, and the captions' shared notes.
"""

import json

import pandas as pd

from kdsweep.attacks import ATTACKS, WORST, label
from kdsweep.plan import fmt
from kdsweep.tables.collect import TRANSFER, attack_names, attack_rank, binomial_interval
from kdsweep.tables.summary import MEASURES


def mean_cell(mean, ci, n, digits=2):
    """`mean ± ci95 (n)` with several seeds, the mean alone with one, a dash with none."""
    if pd.isna(mean):
        return "–"
    return f"{mean:.{digits}f} ± {ci:.{digits}f} ({int(n)})" if n > 1 else f"{mean:.{digits}f}"


def render(caption, header, rows):
    """A Markdown table under its caption."""
    lines = [caption, "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


SEEDS_NOTE = "with several seeds: mean ± 95% CI half-width (Student t) (n seeds)."
CI_NOTE = "Accuracies in %; " + SEEDS_NOTE


def attack_note(robustness):
    """`Attacks: fgsm; pgd (random_start=true, relative_step_size=0.25, seed=0, steps=10).` from the files, after the
    headline's note (headline_note)."""
    if robustness.empty:
        return ""
    parts = []
    for attack in attack_names(robustness):
        if attack == WORST or str(attack).startswith(TRANSFER):
            continue
        settings = []
        for text in sorted(robustness.loc[robustness["attack"] == attack, "params"].dropna().unique()):
            params = json.loads(text)
            if params:
                settings.append(", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(params.items())))
        parts.append(attack + (f" ({' / '.join(settings)})" if settings else ""))
    return (headline_note(robustness) + "Attacks (L-inf, eps in [0, 1] pixel units; PGD step = relative_step_size x "
            "eps; in float32): " + "; ".join(parts) + ". ")


def headline_note(robustness: pd.DataFrame) -> str:
    """What the headline is and on how many images, from the results: for the captions."""
    worst = robustness[robustness["attack"] == WORST]
    if worst.empty:
        return ""
    attacks = sorted({name for text in worst["params"].dropna() for name in json.loads(text).get("attacks", [])},
                     key=attack_rank)
    sizes = sorted({int(n) for n in worst["n"].dropna()})
    text = (f"Headline: the worst case per test image over {', '.join(map(label, attacks))} (an image counts as "
            f"robust only if every one of them left it correct), on {' / '.join(map(str, sizes))} test images")
    subset = worst["subset_size"].dropna()
    if len(subset):
        half = max(binomial_interval(50 * n // 100, n)[1] - 50 for n in sizes)
        text += (f", a fixed subset the same for every run (a 95% binomial interval of an accuracy on it is up to "
                 f"±{half:.1f} points; robustness.csv gives each row's)")
    return text + ". FGSM is the reference study's attack (its Table IV), reported as it did. "


MASKED_NOTE = ("⚠ k: a gradient-masking check failed for k of the runs averaged there (tables/masking.md says which "
               "and why); such a number may overstate robustness. ")


def flagged_cell(text, row) -> str:
    """A table cell with its masking mark."""
    k = row.get("masking_flagged", 0) if hasattr(row, "get") else 0
    return f"{text} ⚠ {int(k)}" if pd.notna(k) and k else str(text)


LOGIT_NOTE = ("Logit scale: mean over test images of the largest logit and of the logit vector's L2 norm; "
               "an attack gain that comes with a much larger logit scale may be gradient masking. ")


def attack_heading(attack) -> str:
    """An attack's name in a table's heading: the headline and the reference study's FGSM say what they are."""
    if attack == WORST:
        return "worst case (headline)"
    if attack == "fgsm":
        return "FGSM (reference study, Table IV)"
    return label(attack) if attack in ATTACKS else str(attack).upper()


def measure_label(measure, epsilon):
    if measure == "clean":
        return "clean test accuracy (%)", 2
    if measure in MEASURES:
        return MEASURES[measure]
    return f"{attack_heading(measure)} eps={fmt(epsilon)} (%)", 2


def number(value):
    return "–" if pd.isna(value) else fmt(value)


def signed(value, digits=2):
    return "–" if pd.isna(value) else f"{value:+.{digits}f}"


def yes_no(value) -> str:
    """A verdict cell: yes, no, or a dash where there is none (None, NaN). Any truth value counts, numpy's
    bool_ too (`is True` is False for numpy.True_, which pandas hands back from a column of booleans)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "–"
    return "yes" if bool(value) else "no"


def p_cell(value) -> str:
    if pd.isna(value):
        return "–"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def gain_cells(row, prefix="gain", digits=2):
    """[paired mean gain, its raw 95% interval, its adjusted one, pairs, raw p, Holm's p, whether the gain
    differs from 0 after adjustment]; no interval for n < 2."""
    n = int(row[f"{prefix}_n"])

    def bounds(low, high):
        return f"[{row[low]:+.{digits}f}, {row[high]:+.{digits}f}]" if pd.notna(row.get(low)) else "–"

    if n > 1:
        raw, adjusted = bounds(f"{prefix}_low", f"{prefix}_high"), bounds(f"{prefix}_low_adj", f"{prefix}_high_adj")
        p, p_holm = p_cell(row.get(f"{prefix}_p")), p_cell(row.get(f"{prefix}_p_holm"))
        verdict = yes_no(row.get(f"{prefix}_excludes_zero_adj"))
    else:
        raw, adjusted, p, p_holm, verdict = ("none (n = 1)" if n == 1 else "–"), "–", "–", "–", "–"
    return [signed(row[f"{prefix}_mean"], digits), raw, adjusted, str(n), p, p_holm, verdict]


def gain_header(difference="kd - hard"):
    return [difference, "95% CI (raw)", "95% CI (adjusted)", "pairs n", "p (raw)", "p (Holm)",
            "differs from 0 (adjusted)"]


GAIN_HEADER = gain_header()
GAIN_NOTE = ("kd - hard is the gain paired by seed, KD(seed s) - baseline(seed s), averaged over the seeds "
              "that have both (n pairs); its raw 95% interval is mean ± t(0.975, n - 1) · sd / √n (Student t) "
              "and p the paired t-test's, none with one pair. ")


def family_note(table) -> str:
    """The sentence on multiplicity under a table of comparisons: its family, m and the adjustment."""
    if table.empty or "family" not in table.columns:
        return ""
    m = int(table["family_size"].iloc[0])
    return (f"Multiplicity: this table is one family of m = {m} comparisons ({table['family'].iloc[0]}, each "
            "with two pairs or more). p (Holm) is Holm's step-down adjustment over the family, which keeps the "
            "chance of any false \"differs from 0\" in it at 5%; the adjusted interval is Bonferroni's "
            f"simultaneous one, each at level 1 - 0.05 / {m}, so that all {m} hold together with 95% "
            "probability. \"Differs from 0 (adjusted)\" is p (Holm) < 0.05 (docs/statistics.md). ")
