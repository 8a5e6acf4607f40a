"""Tables -> figures (PNG + PDF) under results/<study>/figures/, one fixed file name per figure.

Plots whatever has finished: a figure whose data is missing is still written, with a note saying so.
Error bars and bands are 95% confidence intervals over seeds (absent with one seed).
"""

import io
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from kdsweep.attacks import WORST
from kdsweep.io import write_bytes
from kdsweep.layout import FIGURE_FORMATS, PER_STUDENT_FIGURES, STUDY_FIGURES
from kdsweep.plan import fmt
from kdsweep.tables import read_table, write_tables
from kdsweep.tables.pairs import PAIRS_COLUMNS
from kdsweep.tables.summary import pick_best

_NEEDED = ("runs.csv", "table1.csv", "kd_vs_hard.csv", "grid.csv", "methods.csv", "method_grid.csv", "per_class.csv")
_SIZE = (6.4, 4.4)
_STYLE = {"axes.titlesize": "medium", "savefig.dpi": 150}  # two-line titles fit; readable at 100%
_ACC = "test accuracy (%)"
_W = "soft weight w (weight of the teacher term; α = 1 − w)"


def figure_names(students, methods=()) -> list[str]:
    """File names (under figures/) that write_figures writes for these students and KD methods (kd's own
    figures are the reference study's; every other method gets a heat map per student)."""
    stems = [*STUDY_FIGURES, *(f"{kind}_{student}" for student in students for kind in PER_STUDENT_FIGURES),
             *(method_grid_stem(method, student) for student in students for method in methods if method != "kd")]
    return [f"{stem}.{ext}" for stem in stems for ext in FIGURE_FORMATS]


def method_grid_stem(method, student) -> str:
    return f"grid_{method}_{student}"


def _close(series, value):
    return (series.astype(float) - value).abs() < 1e-9


def _ticks(ax, values):
    values = sorted(set(float(v) for v in values))
    ax.set_xticks(values, [fmt(v) for v in values])


def _axes(figsize=_SIZE):
    """A figure of one plot, laid out to fit its labels."""
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _note(ax, text):
    ax.set(xticks=[], yticks=[])
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", wrap=True,
            bbox={"boxstyle": "round", "facecolor": "0.95", "edgecolor": "0.6"})


def _errorbar(ax, x, frame, prefix, **style):
    ci = frame[f"{prefix}_ci95"].astype(float)
    ax.errorbar(x, frame[f"{prefix}_mean"], yerr=None if ci.isna().all() else ci.fillna(0),
                marker="o", capsize=3, **style)


def _hline(ax, row, prefix, label, color, band=False):
    """A dashed reference line; with band, its 95% CI (several seeds) as thin dotted lines either side."""
    mean, ci = row[f"{prefix}_mean"], row[f"{prefix}_ci95"]
    band = band and pd.notna(ci)
    ax.axhline(mean, linestyle="--", color=color, label=label + (" (dotted: 95% CI)" if band else ""))
    if band:
        for bound in (mean - ci, mean + ci):
            ax.axhline(bound, linestyle=":", linewidth=0.8, color=color)


def _legend(ax, frames, title=None, **kwargs):
    """Legend below the axes (never over the data); its title says what the error bars are when any
    point has several seeds (after `title`, if given)."""
    several = any((frame.filter(regex="_n$") > 1).any(axis=None) for frame in frames)
    lines = [title] if title else []
    lines += ["error bars: 95% CI over seeds"] if several else []
    kwargs = {"ncols": 2, **kwargs}
    ax.figure.legend(loc="outside lower center", fontsize="small", title_fontsize="small",
                     title="\n".join(lines) or None, **kwargs)


def _student_temperature(grid, runs, student, soft_weight):
    """The temperature best_temperature would pick at `soft_weight`, else the best over all kd runs."""
    cells = grid[(grid["model"] == student) & _close(grid["soft_weight"], soft_weight)]
    if len(cells):
        best = pick_best(cells.set_index("temperature")["val_acc_mean"])
        return best, f"best validation accuracy at w = {fmt(soft_weight)}"
    kd = runs[(runs["model"] == student) & (runs["role"] == "kd")]
    if kd.empty:
        return None, None
    best = pick_best(kd.groupby("temperature")["val_acc"].mean())
    return best, f"best mean validation accuracy over all w; none at w = {fmt(soft_weight)}"


def _soft_weight_figure(tables, student, soft_weight, dataset):
    grid, runs, table1 = tables["grid.csv"], tables["runs.csv"], tables["table1.csv"]
    fig, ax = _axes()
    temperature, why = _student_temperature(grid, runs, student, soft_weight)
    title = f"{dataset} · {student}: test accuracy vs soft weight"
    if temperature is None:
        _note(ax, f"no distilled run of {student} has finished yet")
    else:
        title += f"\nT = {fmt(temperature)} ({why})"
        cells = grid[(grid["model"] == student) & _close(grid["temperature"], temperature)]
        cells = cells.sort_values("soft_weight")
        _errorbar(ax, cells["soft_weight"], cells, "test_acc", color="C0",
                  label=f"distilled, T = {fmt(temperature)}")
        hard = cells[_close(cells["soft_weight"], 0)]
        baseline = table1[(table1["role"] == "baseline") & (table1["model"] == student)]
        if len(hard):
            _hline(ax, hard.iloc[0], "test_acc", "w = 0 (hard targets only)", "tab:red")
        elif len(baseline):
            _hline(ax, baseline.iloc[0], "test_acc", "hard-target baseline (w = 0)", "tab:red", band=True)
        soft = cells[_close(cells["soft_weight"], 1)]
        if len(soft):
            _hline(ax, soft.iloc[0], "test_acc", "w = 1 (soft targets only)", "tab:green")
        _ticks(ax, [0.0, 1.0, *cells["soft_weight"]])  # w lies in [0, 1]
        ax.set_xlim(-0.05, 1.05)
        _legend(ax, [cells, baseline])
    ax.set(xlabel=_W, ylabel=_ACC, title=title + _search_line(tables["grid.csv"]))
    return fig


def _temperature_figure(tables, students, soft_weight, dataset):
    grid = tables["grid.csv"]
    fig, ax = _axes()
    at_w = grid[_close(grid["soft_weight"], soft_weight)]
    plotted = False
    for i, student in enumerate(students):
        cells = at_w[at_w["model"] == student].sort_values("temperature")
        if cells.empty:
            continue
        plotted = True
        _errorbar(ax, cells["temperature"], cells, "test_acc", color=f"C{i}", label=student)
        plain = cells[_close(cells["temperature"], 1)]
        if len(plain):
            _hline(ax, plain.iloc[0], "test_acc", f"{student} at T = 1", f"C{i}")
    if plotted:
        _ticks(ax, at_w["temperature"])
        _legend(ax, [at_w[at_w["model"].isin(students)]])
    else:
        _note(ax, f"no distilled run at w = {fmt(soft_weight)} has finished yet")
    ax.set(xlabel="temperature T", ylabel=_ACC,
           title=f"{dataset}: test accuracy vs temperature at w = {fmt(soft_weight)}" + _search_line(tables["grid.csv"]))
    return fig


def _search_line(table) -> str:
    """The search that produced a table (kdsweep.tables.search), for a figure's title."""
    if "search" not in table.columns or table["search"].dropna().empty:
        return ""
    return "\n" + textwrap.fill(f"search: {table['search'].dropna().iloc[0]}", 64)


def _accuracy_cells(ax, table, xs, ys, pruned: bool):
    """A heat map of mean test accuracy over (x, y) cells, each cell labelled with its mean and, over more than
    one seed, its 95% interval; table(column) is that column as a (y, x) array. Returns the image."""
    mean, ci, n = table("test_acc_mean"), table("test_acc_ci95"), table("test_acc_n")
    image = ax.imshow(np.ma.masked_invalid(mean), cmap=matplotlib.colormaps["viridis"].with_extremes(bad="white"),
                      aspect="auto", origin="lower")
    ax.set_xticks(range(len(xs)), [fmt(x) for x in xs])
    ax.set_yticks(range(len(ys)), [fmt(y) for y in ys])
    for i, j in zip(*np.nonzero(np.isfinite(mean))):
        text = f"{mean[i, j]:.2f}" + (f"\n±{ci[i, j]:.2f}" if n[i, j] > 1 else "")
        ax.text(j, i, text, ha="center", va="center", fontsize=8,
                color="black" if image.norm(mean[i, j]) > 0.5 else "white")
    if pruned:
        _pruned_cells(ax, table("pruned_at_epoch"), table("val_acc_mean"))
    return image


def _pruned_cells(ax, pruned_at, val):
    """Successive halving's pruned points: hatched, with the rung where each stopped and its validation
    accuracy there (it has no test accuracy)."""
    for i, j in zip(*np.nonzero(np.isfinite(pruned_at))):
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.6", linewidth=0))
        ax.text(j, i, f"pruned at epoch {pruned_at[i, j]:g}\nval {val[i, j]:.2f}", ha="center", va="center", fontsize=7,
                color="0.25")


def _trained(grid):
    """A grid table's rows less its teacher-free point, which is the baseline (no cell of the heat map: the
    soft-weight figure draws it as the baseline's line)."""
    return grid[grid["teacher_free"].ne("baseline")] if "teacher_free" in grid.columns else grid


def _grid_figure(tables, student, dataset):
    grid = _trained(tables["grid.csv"])
    temperatures = sorted(grid["temperature"].astype(float).unique())
    weights = sorted(grid["soft_weight"].astype(float).unique())
    cells = grid[grid["model"] == student]
    fig, ax = _axes((1.0 * len(weights) + 3.4, 0.55 * len(temperatures) + 2.2) if len(cells) else _SIZE)
    ax.set(xlabel=_W, ylabel="temperature T",
           title=f"{dataset} · {student}: test accuracy (%)\n(mean over seeds; box: best on validation)"
                 + _search_line(grid))
    if cells.empty:
        _note(ax, f"no distilled run of {student} has finished yet")
        return fig

    def table(column):
        return cells.pivot(index="temperature", columns="soft_weight", values=column).reindex(
            index=temperatures, columns=weights).to_numpy(dtype=float)

    image = _accuracy_cells(ax, table, weights, temperatures, "pruned_at_epoch" in cells.columns)
    chosen = tables["kd_vs_hard.csv"]
    chosen = chosen[(chosen["model"] == student) & chosen["temperature"].notna()]
    if len(chosen):  # the distilled run of kd_vs_hard (best on validation)
        best_t, best_w = chosen.iloc[0][["temperature", "soft_weight"]]
        ax.add_patch(Rectangle((weights.index(best_w) - 0.5, temperatures.index(best_t) - 0.5), 1, 1,
                               fill=False, edgecolor="red", linewidth=2))
    fig.colorbar(image, ax=ax, label=_ACC)
    return fig


def _method_grid_figure(tables, method, student, dataset):
    """A method's heat map over its two main hyperparameters (kdsweep.methods: its `axes`): mean test accuracy
    over seeds; where its other hyperparameters vary, each cell shows the point best on validation."""
    grid = _trained(tables["method_grid.csv"])
    cells = grid[(grid["method"] == method) & (grid["model"] == student)]
    fig, ax = _axes()
    if cells.empty:
        ax.set(title=f"{dataset} · {student} · {method}: test accuracy (%)")
        _note(ax, f"no {method} run of {student} has finished yet")
        return fig
    x_name, y_name = cells["x_name"].iloc[0], cells["y_name"].iloc[0]
    # per cell the point best on validation, a finished one before any that successive halving pruned
    pruned = cells["pruned_at_epoch"].notna() if "pruned_at_epoch" in cells.columns else False
    best = (cells.assign(_pruned=pruned).sort_values(["_pruned", "val_acc_mean"], ascending=[True, False])
            .drop_duplicates(["x", "y"]))
    xs, ys = sorted(best["x"].astype(float).unique()), sorted(best["y"].astype(float).unique())
    fig.set_size_inches(1.0 * len(xs) + 3.4, 0.55 * len(ys) + 2.4)
    ax.set(xlabel=x_name, ylabel=y_name,
           title=f"{dataset} · {student} · {method}: test accuracy (%)\n(mean over seeds; box: best on validation)"
                 + _search_line(grid))

    def table(column):
        return best.pivot(index="y", columns="x", values=column).reindex(index=ys, columns=xs).to_numpy(dtype=float)

    image = _accuracy_cells(ax, table, xs, ys, "pruned_at_epoch" in best.columns)
    chosen = tables["methods.csv"]
    chosen = chosen[(chosen["model"] == student) & (chosen["method"] == method)]
    point = best[best["point"].isin(chosen["point"])]
    if len(point):  # the methods table's point (best on validation)
        x, y = float(point["x"].iloc[0]), float(point["y"].iloc[0])
        ax.add_patch(Rectangle((xs.index(x) - 0.5, ys.index(y) - 0.5), 1, 1, fill=False, edgecolor="red",
                               linewidth=2))
    fig.colorbar(image, ax=ax, label=_ACC)
    return fig


# The attacks the robustness figure draws (every attack's numbers: tables/kd_vs_hard.csv): the headline, the
# reference study's FGSM and PGD; each its line style and width.
_ATTACK_STYLE = {WORST: ("-", 2.4, "worst case (headline)"), "fgsm": ("--", 1.2, "FGSM (reference study)"),
                 "pgd": (":", 1.2, "PGD")}


def _robustness_figure(tables, student, dataset):
    """Accuracy against epsilon (0 = clean) under the headline, FGSM and PGD: hard targets against the distilled
    run of kd_vs_hard, one line style per attack; the logit scales in the legend title, and a failed masking
    check of a run drawn in the title."""
    rows = tables["kd_vs_hard.csv"]
    rows = rows[rows["model"] == student]
    clean = rows[rows["measure"] == "clean"]
    attacks = [name for name in _ATTACK_STYLE if (rows["measure"] == name).any()]
    fig, ax = _axes()
    plotted = []
    if len(rows):
        first = rows.iloc[0]
        kd_label = (f"distilled (T = {fmt(first['temperature'])}, w = {fmt(first['soft_weight'])})"
                    if pd.notna(first["temperature"]) else "distilled")
        for side, label, color in (("hard", "hard targets", "tab:red"), ("kd", kd_label, "C0")):
            for attack in attacks:
                line = pd.concat([clean, rows[rows["measure"] == attack]]).sort_values("epsilon")
                line = line[line[f"{side}_n"] > 0]
                if (line["measure"] == attack).any():
                    plotted.append(line)
                    style, width, name = _ATTACK_STYLE[attack]
                    _errorbar(ax, line["epsilon"], line, side, color=color, label=f"{label}, {name}",
                              linestyle=style, linewidth=width)
    if plotted:
        _ticks(ax, pd.concat(plotted)["epsilon"])
        scale = rows[rows["measure"] == "max_logit"]
        title = None
        if len(scale):
            values = [f"{name} {scale.iloc[0][f'{side}_mean']:.1f}" for side, name in
                      (("hard", "hard targets"), ("kd", "distilled")) if pd.notna(scale.iloc[0][f"{side}_mean"])]
            title = "mean largest logit: " + ", ".join(values)
        _legend(ax, plotted, title)
    else:
        _note(ax, f"no attack on a finished run of {student} yet")
    flagged = int(rows["masking_flagged"].fillna(0).max()) if "masking_flagged" in rows.columns and len(rows) else 0
    warning = (f"\n⚠ masking suspected in {flagged} of the runs drawn (tables/masking.md)" if flagged else "")
    ax.set(xlabel="attack ε ([0, 1] pixel units; 0 = clean test set)", ylabel="accuracy under attack (%)",
           title=f"{dataset} · {student}: accuracy under attack\n"
                 "(distilled run chosen on validation accuracy)" + warning + _search_line(tables["grid.csv"]))
    return fig


def _per_class_figure(tables, student, dataset):
    """Per class, the distilled point's gain over the hard-target baseline (Tables II-V's point; the fresh seeds of
    the confirmation where it ran, more pairs than the sweep's): clean and under the headline at the largest
    epsilon, the mean gain paired by seed with the seeds' spread (± one standard deviation of the per-seed gains,
    two pairs or more). Not the 95% interval: with two pairs it is 12.7 standard errors wide and would hide every
    bar (per_class.md gives it)."""
    table = tables["per_class.csv"]
    mine = table[table["model"] == student]
    fig, ax = _axes()
    if mine.empty:
        ax.set(title=f"{dataset} · {student}: gain per class over hard targets")
        _note(ax, f"no distilled run and baseline of {student} with per-class results yet")
        return fig
    which = "fresh" if (mine["seeds"] == "fresh").any() else "sweep"
    mine = mine[mine["seeds"] == which]
    largest = mine.loc[mine["measure"] == WORST, "epsilon"].max()
    series = [("clean", 0.0, "clean (whole test set)", "C0")]
    if pd.notna(largest):
        series.append((WORST, largest, f"headline at ε = {fmt(largest)} (evaluation subset)", "C3"))
    classes = list(dict.fromkeys(mine["class"].astype(str)))
    width = 0.8 / len(series)
    for i, (measure, epsilon, label, color) in enumerate(series):
        cells = mine[(mine["measure"] == measure) & np.isclose(mine["epsilon"].astype(float), epsilon)]
        cells = cells.set_index(cells["class"].astype(str)).reindex(classes)
        x = np.arange(len(classes)) + (i - (len(series) - 1) / 2) * width
        spread = cells["gain_std"].to_numpy(dtype=float)
        errors = None if np.isnan(spread).all() else np.nan_to_num(spread)
        ax.bar(x, cells["gain_mean"].to_numpy(dtype=float), width, yerr=errors, capsize=2, color=color, label=label)
    ax.axhline(0, color="0.3", linewidth=0.8)
    ax.set_xticks(range(len(classes)), classes)
    first = mine.iloc[0]
    pairs = int(mine["gain_n"].max())
    ax.set(xlabel="class (worst: each run's lowest class accuracy)", ylabel="distilled − hard (points)",
           title=f"{dataset} · {student}: gain per class, kd T = {fmt(first['temperature'])}, "
                 f"w = {fmt(first['soft_weight'])}\n({'the confirmation' if which == 'fresh' else 'the sweep'}'s "
                 f"seeds, {pairs} pair(s){'; bars: ± SD of the per-seed gains' if pairs > 1 else ''})")
    ax.legend(fontsize="small")
    return fig


_MARKERS = "osD^vPXph<>d"  # one per temperature; baselines are stars


def _fidelity_figure(tables, students, dataset):
    """Test accuracy against top-1 agreement with the teacher: every distilled run a point (colour:
    student, marker: temperature), hard-target baselines as large stars, the teacher's accuracy a line."""
    runs = tables["runs.csv"]
    if "agreement" not in runs.columns:  # tables written before the evaluation columns existed
        runs = runs.assign(agreement=np.nan)
    have = runs[runs["agreement"].notna() & runs["model"].isin(students) & (runs["role"] != "teacher")]
    fig, ax = _axes()
    ax.set(xlabel="top-1 agreement with the teacher (%)", ylabel=_ACC,
           title=f"{dataset}: test accuracy vs agreement with the teacher\n(each point one run; fidelity as in "
                 "Stanton et al. 2021)" + _search_line(tables["grid.csv"]))
    if have.empty:
        _note(ax, "no student run has been evaluated against the teacher yet")
        return fig
    temperatures = sorted(runs.loc[runs["role"] == "kd", "temperature"].dropna().astype(float).unique())
    marker = {t: _MARKERS[i % len(_MARKERS)] for i, t in enumerate(temperatures)}
    handles, shapes = [], []
    for i, student in enumerate(students):
        mine = have[have["model"] == student]
        if mine.empty:
            continue
        color = f"C{i}"
        handles.append(Line2D([], [], color=color, linestyle="", marker="o", label=student))
        kd = mine[mine["role"] == "kd"]
        for temperature, points in kd.groupby("temperature"):
            ax.scatter(points["agreement"], points["test_acc"], marker=marker[float(temperature)], s=28,
                       color=color, alpha=0.8, linewidths=0)
        base = mine[mine["role"] == "baseline"]
        ax.scatter(base["agreement"], base["test_acc"], marker="*", s=220, facecolor=color, edgecolor="black",
                   linewidths=1.0, zorder=3)
    if (have["role"] == "baseline").any():
        handles.append(Line2D([], [], color="0.6", markeredgecolor="black", linestyle="", marker="*",
                              markersize=12, label="hard-target baseline"))
    teacher = runs[runs["role"] == "teacher"]
    if len(teacher):
        ax.axhline(teacher["test_acc"].mean(), color="0.3", linestyle=":")
        handles.append(Line2D([], [], color="0.3", linestyle=":", label="teacher's test accuracy"))
    shapes = [Line2D([], [], color="0.4", linestyle="", marker=marker[t], label=f"T = {fmt(t)}")
              for t in temperatures if (have["temperature"].astype(float) == t).any()]
    style = {"fontsize": "small", "title_fontsize": "small"}
    fig.legend(handles=handles, loc="outside lower left", title="colour: student", **style)
    if shapes:
        fig.legend(handles=shapes, loc="outside lower right", ncols=2 if len(shapes) > 4 else 1,
                   title="distilled runs (all w): marker = temperature", **style)
    return fig


def _pairs_figure(tables, dataset):
    """Architecture pairs (pairs.csv): each (teacher, student, method)'s best point on validation, its clean test
    accuracy against the student's parameters (colour: teacher, marker: method), the students' hard-target
    baselines as stars."""
    table = tables["pairs.csv"]
    fig, ax = _axes()
    ax.set(xlabel="student parameters (millions, log scale)", ylabel=_ACC,
           title=f"{dataset}: architecture pairs\n(each point a pair's best point on validation accuracy)"
                 + _search_line(tables["grid.csv"]))
    table = table[table["parameters"].notna()] if "parameters" in table.columns else table.iloc[:0]
    if table.empty:
        _note(ax, "no distilled run with a parameter count has finished yet")
        return fig
    methods = list(dict.fromkeys(table["method"]))
    handles = []
    for i, (teacher, mine) in enumerate(table.groupby("teacher", sort=True)):
        color = f"C{i}"
        handles.append(Line2D([], [], color=color, linestyle="", marker="o", label=f"teacher {teacher}"))
        for method, points in mine.groupby("method", sort=False):
            ax.errorbar(points["parameters"] / 1e6, points["kd_mean"], yerr=points["kd_ci95"].fillna(0),
                        marker=_MARKERS[methods.index(method) % len(_MARKERS)], linestyle="", color=color, capsize=3,
                        zorder=4)
    base = table.drop_duplicates("model")
    ax.scatter(base["parameters"] / 1e6, base["hard_mean"], marker="*", s=200, facecolor="0.7", edgecolor="black",
               zorder=3)
    for _, row in base.iterrows():
        ax.annotate(row["model"], (row["parameters"] / 1e6, row["hard_mean"]), fontsize="x-small",
                    xytext=(4, -10), textcoords="offset points")
    ax.set_xscale("log")
    handles.append(Line2D([], [], color="0.7", markeredgecolor="black", linestyle="", marker="*", markersize=12,
                          label="hard-target baseline"))
    handles += [Line2D([], [], color="0.4", linestyle="", marker=_MARKERS[i % len(_MARKERS)], label=method)
                for i, method in enumerate(methods)]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize="small")
    return fig


def _save(fig, folder, stem):
    paths = []
    for ext in FIGURE_FORMATS:
        buffer = io.BytesIO()
        fig.savefig(buffer, format=ext)
        paths.append(write_bytes(folder / f"{stem}.{ext}", buffer.getvalue()))  # temp name + os.replace
    return paths


def write_figures(results_dir, soft_weight, students=None, methods=None) -> list[Path]:
    """Write every figure of figure_names(students, methods) under results_dir/figures/.

    soft_weight: the weight of the temperature sweep (Fig 6) and of the staged temperature choice.
    students, methods: the students and KD methods to draw (default: every one with a finished run); the
    workflow passes the config's lists so that each declared file exists even before any of its runs finish.
    """
    results_dir = Path(results_dir)
    tables_dir = results_dir / "tables"
    if not all((tables_dir / name).is_file() for name in _NEEDED):
        write_tables(results_dir)
    tables = {name: read_table(tables_dir / name) for name in _NEEDED}
    # tables written before the architecture pairs existed have none: an empty pairs figure
    pairs_csv = tables_dir / "pairs.csv"
    tables["pairs.csv"] = read_table(pairs_csv) if pairs_csv.is_file() else pd.DataFrame(columns=PAIRS_COLUMNS)
    runs = tables["runs.csv"]
    if students is None:
        students = sorted(runs.loc[runs["role"] != "teacher", "model"].unique())
    if methods is None:
        methods = sorted(tables["method_grid.csv"]["method"].dropna().unique())
    dataset = ", ".join(sorted(runs["dataset"].dropna().unique())) or "(no finished run)"
    out = results_dir / "figures"
    with matplotlib.rc_context(_STYLE):
        return _draw_all(tables, students, methods, soft_weight, dataset, out)


def _draw_all(tables, students, methods, soft_weight, dataset, out):
    paths = _save(_temperature_figure(tables, students, soft_weight, dataset), out, "temperature")
    paths += _save(_fidelity_figure(tables, students, dataset), out, "fidelity")
    paths += _save(_pairs_figure(tables, dataset), out, "pairs")
    for student in students:
        paths += _save(_soft_weight_figure(tables, student, soft_weight, dataset), out, f"soft_weight_{student}")
        paths += _save(_grid_figure(tables, student, dataset), out, f"grid_{student}")
        paths += _save(_robustness_figure(tables, student, dataset), out, f"robustness_{student}")
        paths += _save(_per_class_figure(tables, student, dataset), out, f"per_class_{student}")
        for method in methods:
            if method != "kd":
                paths += _save(_method_grid_figure(tables, method, student, dataset), out,
                               method_grid_stem(method, student))
    return paths
