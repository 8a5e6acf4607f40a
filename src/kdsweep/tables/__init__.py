"""Run folders -> tables: whatever has finished so far, as CSV (and Markdown where a reader needs one), under
results/<study>/tables/ (`write_tables`; `python -m kdsweep aggregate`), and those tables read back
(`read_table`: the figures').

Every aggregate over seeds carries `<quantity>_mean`, `_std`, `_n` and `_ci95` (the half-width of a
Student-t 95% confidence interval); with one seed std and ci95 are NaN, never zero.
Accuracies are percent. `soft_weight` is w, the weight of the soft (teacher) term (the reference study's alpha = 1 - w).

A comparison of a distilled student with its baseline (kd_vs_hard, methods, confirmed) also carries the
gain paired by seed, KD(s) - baseline(s) (kdsweep.intervals): `gain_mean, _std, _n` (pairs), `_ci95`,
`_low, _high` (the 95% t-interval), `_excludes_zero` and `_p` (the paired t-test's); with one pair no
interval. Each such table is one family of tests (summary.FAMILIES, its `family` and `family_size`
columns): `gain_p_holm` (Holm), `gain_low_adj, _high_adj` (Bonferroni simultaneous intervals) and
`gain_excludes_zero_adj` (Holm's p < 0.05) beside the raw ones; headline.md states the study's result
from those alone. The confirmation's runs (role confirm, fresh seeds) appear in runs.csv and
robustness.csv and in the confirmed table only, never in a sweep table. A teacher-free point (kd's w = 0,
...) is trained as the baseline (kdsweep.plan): grid.csv and method_grid.csv show it once per student, the
baseline's runs, labelled (`teacher_free`).

The package, by responsibility:
- collect.py    the results -> frames (runs, attacks, evaluations), each bound to the run version it measured
- summary.py    statistics: summarise (intervals from kdsweep.intervals), pick_best, candidates, compare
- reference.py  the reference study's tables: table1, grid, kd_vs_hard (Tables II-V), sensitivity, vs_reference
- method_comparison.py  the KD methods side by side (methods) and every method's grid (method_grid)
- pairs.py      the architecture pairs side by side: each (teacher, student) with parameters and images/s
- confirmed.py  the confirmation on fresh seeds, against the baseline and head to head against kd
- headline.py   the headline in words, from the adjusted results only
- choices.py    the checkpoints' choices: best_temperature, best_point, and collect_choices (read back)
- search.py     which search produced the tables (grid, staged, halving) and the points halving pruned
- robustness.py the gradient-masking checks and transfer attacks (masking), their marks on every table, and
                accuracy per class (per_class)
- markdown.py   the Markdown tables' cells, notes and rendering
"""

import csv
import sys
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import pandas as pd

from kdsweep.errors import KdsweepError
from kdsweep.io import read_text, write_text
from kdsweep.layout import TABLES, not_in_study_sentence
from kdsweep.tables import confirmed, method_comparison, pairs, reference
from kdsweep.tables import robustness as robustness_tables
from kdsweep.tables.choices import collect_choices
from kdsweep.tables.files import StudyFiles, choice_name
from kdsweep.tables.headline import headline
from kdsweep.tables.search import pruned_keys, drop_pruned, study_search
from kdsweep.tables.collect import (RUN_COLUMNS, collect_attacks, collect_runs, planned_teacher_free, results_folder,
                                    warn_unmatched, without_baseline_copies)
from kdsweep.tables.robustness import join_robustness


@dataclass(frozen=True)
class Scope:
    """The study as configured now (results/<study>/study.yaml, the config the workflow last ran with): the run
    folders it asks for, its choices and its current rung records; what else lies on disk is left out."""

    plan: object
    runs: set  # run folders relative to results/<study>/ ("runs/<role>/<run>")
    choices: set  # (student, method) of the confirmation
    decisions: dict  # {(student, stage): RungDecision}
    left_out: list  # Layout.not_in_study


def study_scope(results_dir, config: dict | None = None) -> Scope | None:
    """The Scope of a study folder, as `config` configures it (the workflow's), else as its study.yaml does
    (None without one: everything on disk is tabled)."""
    from kdsweep.layout import Layout
    from kdsweep.plan import Plan, recorded_packs
    from kdsweep.status import load_plan

    if config is not None:
        root = results_dir.resolve().parent.parent
        if (root / "results" / config["study"]).resolve() != results_dir.resolve():
            raise KdsweepError(f"the config is of study {config['study']!r}, whose folder is "
                               f"results/{config['study']}, not {results_dir}")
        plan = Plan(config, recorded_packs(root / "results" / config["study"]))
    elif (results_dir / "study.yaml").is_file():
        plan, root = load_plan(folder=results_dir)
    else:
        return None
    layout = Layout(plan)

    def read(kind, path):
        return kind.read(root / path) if (root / path).is_file() else None

    decisions = layout.current_decisions(root, read)
    runs = layout.asked(read, root)
    return Scope(plan, {run.folder for run in runs}, set(plan.choices()), decisions,
                 layout.not_in_study(root, runs, decisions))


def write_tables(results_dir, search: str | None = None, config: dict | None = None) -> list[Path]:
    """Write every table of TABLES under results_dir/tables/ from whatever has finished of the study as
    configured now (`config`, else results_dir/study.yaml: `study_scope`; a run, choice or rung record it
    does not ask for is left out, in one line on stderr); search: the study's (grid, staged, halving;
    kdsweep.tables.search), which every table names."""
    results_dir = results_folder(results_dir)
    unmatched = []
    files = StudyFiles(results_dir)  # the study's files by their names; the rest are strays, said once
    scope = study_scope(results_dir, config)
    if scope is not None:  # a confirmation's record of a choice the config does not ask for is not read
        files.choices = [path for path in files.choices if choice_name(path.name) in scope.choices]
    searched = study_search(results_dir, search, files, *((scope.plan, scope.decisions) if scope else ()))
    collected = without_baseline_copies(collect_runs(results_dir, unmatched, files))
    attacks = collect_attacks(results_dir, unmatched, files)
    masking = robustness_tables.collect_masking(results_dir, unmatched, files)
    if scope is not None:
        collected = collected[collected["run"].isin(scope.runs)].reset_index(drop=True)
        attacks = attacks[attacks["run"].isin(scope.runs)].reset_index(drop=True)
        masking = {name: frame[frame["run"].isin(scope.runs)].reset_index(drop=True)
                   for name, frame in masking.items()}
        unmatched = [path for path in unmatched if _measured(path, results_dir) in scope.runs]
        if sentence := not_in_study_sentence(scope.left_out):
            print(f"kdsweep: warning: {sentence}", file=sys.stderr)
    runs = drop_pruned(collected, searched)
    # the study's teacher-free points as configured now (without a config or study.yaml: none known)
    teacher_free = scope.plan.teacher_free if scope is not None else planned_teacher_free(results_dir)
    if runs.empty:
        files.warn()
        raise KdsweepError(f"{results_dir} holds no finished run (no runs/<role>/<run>/metrics.json): nothing to "
                           "tabulate yet; train some runs first, or pass the study's folder results/<study>")
    robustness = join_robustness(runs, attacks, masking)
    warn_unmatched(unmatched, results_dir)
    pair_table = pairs.pairs(runs, robustness)
    # the reference study's tables (and the methods') are of the study's first teacher: the runs of another
    # teacher (architectures as an axis, docs/models.md) are in pairs.* only
    every, every_attacked = runs, robustness  # runs.csv and robustness.csv: every run
    first = ~(runs["method"].notna() & runs["teacher_tag"].notna())
    runs, robustness = runs[first], robustness[robustness["run"].isin(runs.loc[first, "run"])]
    grid = reference.grid(runs, teacher_free)
    table1 = reference.table1(runs, robustness)
    kd_vs_hard = reference.kd_vs_hard(runs, robustness)
    choices = collect_choices(results_dir, files, pruned_keys(searched))
    files.warn()
    confirmation = confirmed.confirmed(runs, robustness, choices)
    sensitivity = reference.sensitivity(runs, grid)
    vs_reference = reference.vs_reference(runs, results_dir, table1, kd_vs_hard, confirmation, sensitivity)
    # a method's budget: its first teacher's runs, the points successive halving pruned among them too
    budget = method_comparison.budgets(collected[~(collected["method"].notna() & collected["teacher_tag"].notna())],
                                       searched)
    side_by_side = method_comparison.methods(runs, robustness, budget)
    frames = {"runs.csv": every[RUN_COLUMNS], "robustness.csv": every_attacked, "table1.csv": table1,
              "methods.csv": side_by_side,
              "method_grid.csv": method_comparison.method_grid(runs, searched, teacher_free),
              "kd_vs_hard.csv": kd_vs_hard, "grid.csv": reference.with_pruned(grid, runs, searched),
              "confirmed.csv": confirmation, "sensitivity.csv": sensitivity, "vs_reference.csv": vs_reference,
              "pairs.csv": pair_table, "masking.csv": robustness_tables.masking_table(masking["checks"]),
              "per_class.csv": robustness_tables.per_class(results_dir, runs, kd_vs_hard, confirmation, files)}
    texts = {name: frame.assign(search=searched.label).to_csv(index=False, float_format="%.10g")
             for name, frame in frames.items()}
    texts["table1.md"] = reference.table1_markdown(table1, robustness)
    texts["kd_vs_hard.md"] = reference.kd_vs_hard_markdown(kd_vs_hard, robustness)
    texts["confirmed.md"] = confirmed.confirmed_markdown(confirmation, choices, runs)
    texts["headline.md"] = headline(confirmation, side_by_side)
    texts["sensitivity.md"] = reference.sensitivity_markdown(sensitivity)
    texts["vs_reference.md"] = reference.vs_reference_markdown(vs_reference)
    texts["methods.md"] = method_comparison.methods_markdown(side_by_side, robustness)
    texts["pairs.md"] = pairs.pairs_markdown(pair_table)
    texts["masking.md"] = robustness_tables.masking_markdown(masking["checks"], every_attacked)
    texts["per_class.md"] = robustness_tables.per_class_markdown(frames["per_class.csv"])
    for name in [name for name in texts if name.endswith(".md")]:
        texts[name] += f"\nSearch: {searched.label}.\n"
    out = results_dir / "tables"
    return [write_text(out / name, texts[name]) for name in TABLES]


def _measured(path, results_dir) -> str:
    """The run folder (runs/<role>/<run>) a result file measured: evaluation/<role>/<run>.json,
    masking/<role>/<run>.json or attacks/<role>/<run>/<attack>_eps<eps>.json."""
    parts = Path(path).relative_to(results_dir).parts
    return f"runs/{parts[1]}/{parts[2] if parts[0] == 'attacks' else Path(parts[2]).stem}"


def read_table(path) -> pd.DataFrame:
    """A table written by write_tables; KdsweepError if it is missing, cut short or damaged."""
    fix = f"rebuild the tables with `python -m kdsweep aggregate {Path(path).parent.parent}`"
    text = read_text(path, "table", fix)
    rows = list(csv.reader(StringIO(text)))
    if not text.endswith("\n") or not rows or any(len(row) != len(rows[0]) for row in rows):
        raise KdsweepError(f"table {path} is cut short or damaged (its rows do not all have the header's "
                           f"{len(rows[0]) if rows else 0} fields); {fix}")
    return pd.read_csv(StringIO(text))
