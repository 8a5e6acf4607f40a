"""The checkpoints' choices: the staged sweep's temperature (`best_temperature`: staged/<student>_seed-all.json)
and the confirmation's point (`best_point`: confirm/<choice>.json), each chosen on mean validation accuracy
and never on test, and the confirmation's choices read back for the tables (`collect_choices`). The records
are kdsweep.records.StagedChoice and BestPoint.
"""

from dataclasses import dataclass
from pathlib import Path

from kdsweep.errors import KdsweepError
from kdsweep.methods import METHODS
from kdsweep.records import BestPoint, Metrics, StagedChoice, point_of
from kdsweep.layout import METRICS
from kdsweep.tables.collect import metrics_frame, results_folder
from kdsweep.tables.files import StudyFiles, choice_name
from kdsweep.tables.summary import method_candidates, pick_best


@dataclass(frozen=True)
class Choice:
    """A confirmation checkpoint's choice as the tables read it: its record and the point it picked."""

    record: BestPoint
    method: str
    point: tuple  # the hyperparameters' values, in the method's order


def collect_choices(results_dir, files: StudyFiles | None = None, pruned=frozenset()) -> dict:
    """The confirmation checkpoint's records, confirm/<choice>.json (best_point): {(student, method): Choice}
    (a record of an earlier version, without its method, is kd's). files: the study's files (strays warned
    about by the caller that gives them); pruned: {(student, method, point)} of the points successive halving
    pruned, which no record may pick."""
    own = files is None
    files = files or StudyFiles(results_folder(results_dir))
    choices = {}
    for path in files.choices:
        record = BestPoint.read(path)
        picked = point_of(record)
        if choice_name(path.name) != (record.student, picked[0]):
            raise KdsweepError(f"{BestPoint.WHAT} {path} is the choice of {record.student}'s {picked[0]} point, "
                               f"which its file name is not; {BestPoint.FIX}")
        point = tuple(value for _, value in picked[1])
        if (record.student, picked[0], tuple(map(float, point))) in pruned:
            raise KdsweepError(f"{BestPoint.WHAT} {path} picks {picked[0]} point {dict(picked[1])}, which successive "
                               f"halving pruned (it is not among the last rung's survivors); {BestPoint.FIX}")
        choices[record.student, picked[0]] = Choice(record, picked[0], point)
    if own:
        files.warn()
    return choices


def _finished(run_dirs, choosing: str) -> list[Metrics]:
    """The metrics.json of each run folder; KdsweepError for one that has not finished."""
    records = []
    for run_dir in run_dirs:
        path = Path(run_dir) / METRICS
        if not path.is_file():
            raise KdsweepError(f"{run_dir} has no metrics.json (the run has not finished): "
                               f"finish its distill job before choosing {choosing}.")
        records.append(Metrics.read(path, needs=Metrics.TABULATED))
    return records


def best_temperature(run_dirs) -> dict:
    """Staged sweep: the temperature whose runs (one student, one soft weight, any seeds) have the
    highest mean validation accuracy; ties go to the lower temperature. The record's JSON object
    (StagedChoice)."""
    records = _finished(run_dirs, "the temperature")
    if not records:
        raise KdsweepError("best-temperature got no run folders: pass the distilled runs of one student.")
    runs = metrics_frame(records)
    if (runs["role"] != "kd").any():
        raise KdsweepError("best-temperature takes distilled (kd) runs only: pass runs/kd/... folders.")
    for key in ("dataset", "model", "soft_weight"):
        if runs[key].nunique(dropna=False) != 1:
            raise KdsweepError(f"best-temperature got runs with different {key} values "
                               f"({sorted(runs[key].unique())}): pass the runs of one student at one soft weight.")
    means = runs.groupby("temperature")["val_acc"].mean()
    best = pick_best(means)
    return StagedChoice(student=runs["model"].iloc[0], temperature=float(best),
                        soft_weight=float(runs["soft_weight"].iloc[0]), val_acc=float(means[best]),
                        candidates={float(t): float(v) for t, v in means.items()}).as_dict()


def best_point(run_dirs) -> dict:
    """Confirmation's checkpoint: among one student's distilled runs of one KD method (any seeds), the point
    with the highest mean validation accuracy over its seeds, among those that use the teacher (kd: w > 0;
    `method_candidates`, `pick_best`: what the methods table and, for kd, kd_vs_hard compare; ties go to the
    lower values in the method's order). The record's JSON object (BestPoint): it names the method, the point
    (`hparams`, and each hyperparameter flat, as kd's T and w always were), every candidate with its mean and
    seeds; test accuracy is never read."""
    records = _finished(run_dirs, "the point to confirm")
    if not records:
        raise KdsweepError("best-point got no run folders: pass the distilled runs of one student's sweep.")
    points = [point_of(record) for record in records]
    runs = metrics_frame(records)
    runs["method"] = [point[0] if point else None for point in points]
    runs["point"] = [tuple(value for _, value in point[1]) if point else None for point in points]
    methods = set(runs["method"])
    if None in methods or (runs["role"] != runs["method"]).any():
        raise KdsweepError("best-point takes the sweep's distilled runs only: pass runs/<method>/... folders.")
    for key in ("dataset", "model", "method"):
        if runs[key].nunique(dropna=False) != 1:
            raise KdsweepError(f"best-point got runs with different {key} values ({sorted(runs[key].unique())}): "
                               "pass the runs of one student and one method.")
    method = runs["method"].iloc[0]
    cells = method_candidates(runs, method)
    if cells.empty:
        raise KdsweepError(f"best-point got no {method} run that uses the teacher (kd: w > 0; w = 0 is hard "
                           "targets only): pass the student's sweep runs.")
    point = pick_best(cells["val_acc_mean"])
    names = [param.name for param in METHODS[method].params]
    seeds = runs.loc[runs["point"].map(lambda p: p == point), "seed"]
    chosen = cells.loc[[point]].iloc[0]
    return BestPoint(
        student=runs["model"].iloc[0], dataset=runs["dataset"].iloc[0], method=method,
        hparams=dict(zip(names, (float(value) for value in point))),
        val_acc=float(chosen["val_acc_mean"]), n=int(chosen["n"]), seeds=sorted(int(s) for s in seeds),
        chosen_on="mean validation accuracy over the sweep's seeds, among the points that use the teacher "
                  "(kd: w > 0); ties to the lower values, in the method's order",
        candidates=[{**dict(zip(names, (float(value) for value in candidate))),
                     "val_acc_mean": float(row["val_acc_mean"]), "n": int(row["n"])}
                    for candidate, row in cells.iterrows()],
        hard_target_runs_left_out=int(len(runs) - sum(cells["n"])),
    ).as_dict()
