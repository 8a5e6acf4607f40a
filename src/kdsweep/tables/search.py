"""Which search produced a study's tables (config `sweep`: a strategy of kdsweep.search, whose words the tables
use), and the points successive halving (a strategy that `prunes`) pruned: every table says the search (its
`search` column, a Markdown table's last line), and the grid tables (grid.csv, method_grid.csv) show each
pruned point with the validation accuracy of the rung where it stopped (`pruned_at_epoch`), never a test
accuracy. The pruned points' runs are left out of every other table,
so that a "best" is chosen among the finished points (the last rung's survivors) only.

The search is the workflow's (`kdsweep aggregate --search`), else that of results/<study>/study.yaml (the
config the workflow last ran with), else the default (the grid). A halving study's rungs are those of its
config, and its pruned points those of the decision records those rungs made,
halving/<student>_rung<epochs>.json (kdsweep.search.halving; a record of other rungs or settings is not read).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from kdsweep.errors import KdsweepError
from kdsweep.methods import METHODS
from kdsweep.records import RungDecision
from kdsweep.search import STRATEGIES
from kdsweep.search.halving import read_decision
from kdsweep.tables.files import StudyFiles, decision_name

# the search a folder without one is tabled as
DEFAULT = next(name for name, strategy in STRATEGIES.items() if strategy.default)
# seed_epochs: ((seed, the epochs it trained to the rung), ...) per seed: fewer than the rung where early
# stopping ended it; the rung's where a record of an earlier version does not say; seed None where it does not
# name its seeds
PRUNED_COLUMNS = ["model", "method", "point", "pruned_at_epoch", "val_acc_mean", "val_acc_n", "seed_epochs"]


@dataclass(frozen=True)
class Search:
    kind: str  # a strategy's name (kdsweep.search.STRATEGIES)
    label: str  # what the tables and figures say
    pruned: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PRUNED_COLUMNS))


def _configured(results_dir: Path) -> str | None:
    try:
        sweep = yaml.safe_load((results_dir / "study.yaml").read_text()).get("sweep")
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return None
    return sweep if sweep in STRATEGIES else None


def study_search(results_dir, kind: str | None = None, files: StudyFiles | None = None, plan=None,
                 decisions=None) -> Search:
    """The search of a study's results (kind: the workflow's, else study.yaml's, else the grid). plan and decisions:
    the study as configured now and its current rung records (kdsweep.layout.Layout.current_decisions), of
    which the label and the pruned points are; without a plan (a folder without study.yaml), the rung records
    of the study's files (kdsweep.tables.files; strays warned about by the caller that gives them)."""
    results_dir = Path(results_dir)
    kind = kind or _configured(results_dir) or DEFAULT
    strategy = STRATEGIES[kind]
    if not strategy.prunes:
        return Search(kind, strategy.label)
    if plan is not None and plan.search.prunes:
        decisions = list((decisions or {}).values())
        rungs, halving = plan.rungs, plan.config["halving"]
        keep, min_kept = halving["keep"], halving["min_kept"]
    else:
        own = files is None
        files = files or StudyFiles(results_dir)
        decisions = []
        for path in files.decisions:
            decision = read_decision(path)
            if decision_name(path.name) != (decision.student, decision.rung):
                raise KdsweepError(f"{RungDecision.WHAT} {path} is the decision of {decision.student}'s rung at "
                                   f"epoch {decision.rung}, which its file name is not; {RungDecision.FIX}")
            decisions.append(decision)
        if own:
            files.warn()
        rungs = sorted({decision.rung for decision in decisions})
        keep, min_kept = (decisions[0].keep, decisions[0].min_kept) if decisions else (None, None)
    label = strategy.describe(rungs, keep, min_kept)
    rows, seen = [], set()
    for decision in sorted(decisions, key=lambda d: (d.student, d.stage)):
        for candidate in decision.candidates:
            names = [param.name for param in METHODS[candidate.method].params]
            point = tuple(float(candidate.hparams[name]) for name in names)
            key = (decision.student, candidate.method, point)
            if candidate.kept or key in seen:
                continue
            seen.add(key)
            seeds = decision.seeds or [None] * candidate.n
            # a record of an earlier version gives no seed's epochs (or a point's without them): the rung's
            epochs = [decision.rung if trained is None else int(trained)
                      for trained in (candidate.epochs or [None] * len(seeds))]
            rows.append({"model": decision.student, "method": candidate.method, "point": point,
                         "pruned_at_epoch": decision.rung, "val_acc_mean": candidate.val_acc_mean,
                         "val_acc_n": candidate.n, "seed_epochs": tuple(zip(seeds, epochs))})
    return Search(kind, label, pd.DataFrame(rows, columns=PRUNED_COLUMNS))


def pruned_keys(search: Search) -> set:
    return set(zip(search.pruned["model"], search.pruned["method"], search.pruned["point"]))


def drop_pruned(runs: pd.DataFrame, search: Search) -> pd.DataFrame:
    """The runs less those of pruned points (a point early stopping finished before its rung dropped it too:
    the tables' best is chosen among the last rung's survivors)."""
    if search.pruned.empty:
        return runs
    keys = pruned_keys(search)
    pruned = [(role == method and (model, method, point) in keys)
              for role, model, method, point in zip(runs["role"], runs["model"], runs["method"], runs["point"])]
    return runs[[not p for p in pruned]].reset_index(drop=True)


def pruned_of(search: Search, method: str) -> pd.DataFrame:
    """The pruned points of one KD method."""
    return search.pruned[search.pruned["method"] == method]
