"""The Markdown tables' pieces: a table with its caption (`render`), cells of a mean over seeds and of a
paired gain, and the captions' shared notes.
"""

import json

import pandas as pd

from kdsweep.plan import fmt
from kdsweep.tables.collect import attack_names
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
    """`Attacks: fgsm; pgd (random_start=true, relative_step_size=0.25, seed=0, steps=10).` from the files."""
    if robustness.empty:
        return ""
    parts = []
    for attack in attack_names(robustness):
        settings = []
        for text in sorted(robustness.loc[robustness["attack"] == attack, "params"].dropna().unique()):
            params = json.loads(text)
            if params:
                settings.append(", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(params.items())))
        parts.append(attack + (f" ({' / '.join(settings)})" if settings else ""))
    return ("Attacks (L-inf, eps in [0, 1] pixel units; PGD step = relative_step_size x eps): "
            + "; ".join(parts) + ". ")


LOGIT_NOTE = ("Logit scale: mean over test images of the largest logit and of the logit vector's L2 norm; "
               "an attack gain that comes with a much larger logit scale may be gradient masking. ")


def measure_label(measure, epsilon):
    if measure == "clean":
        return "clean test accuracy (%)", 2
    if measure in MEASURES:
        return MEASURES[measure]
    return f"{measure.upper()} eps={fmt(epsilon)} (%)", 2


def number(value):
    return "–" if pd.isna(value) else fmt(value)


def signed(value, digits=2):
    return "–" if pd.isna(value) else f"{value:+.{digits}f}"


def gain_cells(row, prefix="gain", digits=2):
    """[paired mean gain, its 95% interval, pairs, whether the interval excludes 0]; no interval for n < 2."""
    n = int(row[f"{prefix}_n"])
    if n > 1:
        interval_cell = f"[{row[f'{prefix}_low']:+.{digits}f}, {row[f'{prefix}_high']:+.{digits}f}]"
        excludes = "yes" if row[f"{prefix}_excludes_zero"] is True else "no"
    else:
        interval_cell, excludes = ("none (n = 1)" if n == 1 else "–"), "–"
    return [signed(row[f"{prefix}_mean"], digits), interval_cell, str(n), excludes]


GAIN_HEADER = ["kd - hard", "95% CI of the gain", "pairs n", "CI excludes 0"]
GAIN_NOTE = ("kd - hard is the gain paired by seed, KD(seed s) - baseline(seed s), averaged over the seeds "
              "that have both (n pairs); its 95% interval is mean ± t(0.975, n - 1) · sd / √n (Student t), "
              "none with one pair. ")
