"""Where a study's files lie, relative to the directory snakemake runs in: the rules' output and log
patterns, each run's folder, its job's record and its evaluations, the checkpoints' records, the tables
and the figures. One home for every name: the rules take `Layout.pattern(kind)`, everything else
`Layout.file(kind, ...)` and the methods below, so that each name is written once. Runs' own folders are
`Run.folder` (kdsweep.plan); what one holds is named here (METRICS, ...). Nothing here imports torch: every
snakemake process loads it.
"""

from __future__ import annotations

from .plan import Pack, Plan, Run, fmt
from .search import Undecided

# What a run folder (Run.folder) holds, named once: the jobs that write them and the torch-free readers (the
# status view, the tables) take these.
METRICS = "metrics.json"  # written last: a run is finished when it exists
MODEL = "model.pt"
HISTORY = "history.csv"
CHECKPOINT = "checkpoint.pt"  # after every epoch, for resuming
BEST = "best.pt"  # best-validation weights so far
PROGRESS = "checkpoint.json"  # checkpoint.pt's RunState as JSON, without the history

# Where the jobs write, relative to results/<study>/, with the rules' wildcards in braces.
ATTACK_FILE = "{attack}_eps{eps}.json"
FILES = {
    "train_record": "trained/{trained}/{model}_seed{seed}.json",
    "train_log": "logs/runs/{trained}/{model}_seed{seed}.log",
    "pack_record": "packs/{pack}.json",
    "pack_log": "logs/packs/{pack}.log",
    "staged_choice": "staged/{student}_seed-all.json",
    "staged_log": "logs/staged/{student}_seed-all.log",
    "rung_decision": "halving/{student}_rung{rung}.json",
    "rung_log": "logs/halving/{student}_rung{rung}.log",
    "confirm_record": "confirm/{choice}.json",
    "confirm_log": "logs/confirm/{choice}.log",
    "evaluation": "evaluation/{role}/{run}.json",
    "attack": "attacks/{role}/{run}/" + ATTACK_FILE,
    "attack_dir": "attacks/{role}/{run}",
    "attack_log": "logs/attacks/{role}/{run}.log",
    "masking": "masking/{role}/{run}.json",
}


# The record each checkpoint of the workflow writes (its rule's output), by the checkpoint's name: what a search
# strategy's `decided` reads (kdsweep.search.base).
CHECKPOINT_FILES = {"best_temperature": "staged_choice", "rung_decision": "rung_decision",
                    "best_point": "confirm_record"}


def attack_file(attack: str, epsilon) -> str:
    return ATTACK_FILE.format(attack=attack, eps=fmt(epsilon))


# Every table tables.write_tables writes (under results/<study>/tables/).
TABLES = ("runs.csv", "robustness.csv", "table1.csv", "table1.md", "kd_vs_hard.csv", "kd_vs_hard.md", "grid.csv",
          "confirmed.csv", "confirmed.md", "sensitivity.csv", "sensitivity.md", "vs_reference.csv",
          "vs_reference.md", "methods.csv", "methods.md", "method_grid.csv", "pairs.csv", "pairs.md", "headline.md",
          "masking.csv", "masking.md", "per_class.csv", "per_class.md")
# Every figure plots.write_figures draws (under results/<study>/figures/), in each of FIGURE_FORMATS:
# one of each STUDY_FIGURES, and one of each PER_STUDENT_FIGURES per student.
STUDY_FIGURES = ("temperature", "fidelity", "pairs")
PER_STUDENT_FIGURES = ("soft_weight", "grid", "robustness", "per_class")
FIGURE_FORMATS = ("png", "pdf")


class Layout:
    """The files of a study's plan."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.results = plan.results

    def pattern(self, kind: str) -> str:
        """A kind of file (FILES) with the rules' wildcards: a rule's output or log."""
        return f"{self.results}/{FILES[kind]}"

    def file(self, kind: str, **wildcards) -> str:
        return self.pattern(kind).format(**wildcards)

    def run_dir(self, run: Run) -> str:
        return f"{self.results}/{run.folder}"

    def pack_record(self, pack: Pack) -> str:
        return self.file("pack_record", pack=pack.name)

    def train_record(self, run: Run) -> str:
        """A teacher's or baseline's record (rule train's output): written once the run has finished. {model}: the
        run's name less its seed (a teacher named otherwise than its architecture: its name)."""
        return self.file("train_record", trained=run.role, model=run.teacher or run.model, seed=run.seed)

    def finished(self, run: Run) -> list[str]:
        """The file the workflow tracks for a finished run: its job's record (a distilled run's pack
        record, another run's train record), written after the run's own files. A run folder is no
        Snakemake output, so Snakemake never deletes a finished run (workflow/rules/train.smk)."""
        if run.distilled:
            return [self.pack_record(self.plan.pack_of(run))]
        return [self.train_record(run)]

    def finished_files(self, runs) -> list[str]:
        """The tracked files of these runs (duplicates dropped: the runs of a pack share its record)."""
        return list(dict.fromkeys(f for run in runs for f in self.finished(run)))

    def attack_patterns(self) -> list[str]:
        """What a run's attack job writes, with the wildcards role and run: its result under every attack switched
        on and its worst case over the headline's, at every epsilon (in kdsweep.attacks.job.outputs' order), its
        evaluation, then its masking checks (rule attack's outputs)."""
        return [self.pattern("attack").replace("{attack}", name).replace("{eps}", fmt(eps))
                for eps in self.plan.config["epsilons"] for name in self.plan.suite.results()] + [
            self.pattern("evaluation"), self.pattern("masking")]

    def measurements(self, run: Run) -> list[tuple[str, str]]:
        """Every file a run's attack job writes, each with its name here (the record it is:
        kdsweep.identity.RESULT_RECORDS): its attack results, worst cases, evaluation and masking record."""
        *attacks, evaluation, masking = self.attack_patterns()
        return [("attack", pattern.format(role=run.role, run=run.name)) for pattern in attacks] + [
            ("evaluation", evaluation.format(role=run.role, run=run.name)),
            ("masking", masking.format(role=run.role, run=run.name))]

    def evaluations(self, run: Run) -> list[str]:
        """A run's attack job's files: attacks, evaluation and masking."""
        return [path for _, path in self.measurements(run)]

    def outputs(self, runs) -> list[str]:
        """Every file of these runs (duplicates dropped): finished and evaluated."""
        return list(dict.fromkeys(f for run in dict.fromkeys(runs) for f in [*self.finished(run),
                                                                              *self.evaluations(run)]))

    def tables(self) -> list[str]:
        return [f"{self.results}/tables/{name}" for name in TABLES]

    def figures(self, formats=FIGURE_FORMATS) -> list[tuple[str, str, str | None, str]]:
        """(path, kind, student or None, name) of every figure, in each of `formats`: the study's, each
        student's (kd's, the reference study's), and a heat map per student and other KD method (kind
        method_grid, named after its method)."""
        stems = [(kind, kind, None, kind) for kind in STUDY_FIGURES] + [
            (f"{kind}_{student}", kind, student, kind) for student in self.plan.students for kind in PER_STUDENT_FIGURES]
        stems += [(f"grid_{method}_{student}", "method_grid", student, f"{method} grid")
                  for student in self.plan.students for method in self.plan.methods if method != "kd"]
        return [(f"{self.results}/figures/{stem}.{ext}", kind, student, name)
                for stem, kind, student, name in stems for ext in formats]

    def study_record(self) -> str:
        """results/<study>/study.yaml: the whole config the workflow last ran with (rule study)."""
        return f"{self.results}/study.yaml"

    def training_log(self, run: Run) -> str:
        """The log of the job that trains a run: rule train's, or rule distill's of its pack."""
        if run.distilled:
            return self.file("pack_log", pack=self.plan.pack_of(run).name)
        return self.file("train_log", trained=run.role, model=run.teacher or run.model, seed=run.seed)

    def staged_choice(self, student) -> str:
        """Staged sweep: the file checkpoint best_temperature writes for a student."""
        return self.file("staged_choice", student=student)

    def rung_decision(self, student, stage: int) -> str:
        """Successive halving: the file checkpoint rung_decision writes for a student's rung (its index)."""
        return self.file("rung_decision", student=student, rung=self.plan.rungs[stage])

    def rung_decisions(self) -> list[str]:
        """Every rung decision of the study (none unless sweep: halving)."""
        return [self.rung_decision(student, stage) for student in self.plan.students
                for stage in range(len(self.plan.rungs))]

    def confirm_record(self, student, method: str = "kd") -> str:
        """The confirmation checkpoint's record of a student's chosen point of a method (`kdsweep best-point`)."""
        return self.file("confirm_record", choice=self.plan.choice_name(student, method))

    # ---- the study as configured now, against the files on disk (the tables' and the status view's)

    def current_decisions(self, root, read) -> dict:
        """{(student, stage): RungDecision} of the rung records on disk that this config's halving made: the
        student's, its rung at its stage, with this config's keep, min_kept and seeds, judging the points the
        config asks for there (stage 0: every point; later: those the current rung before kept). A record of
        other rungs or settings is not read (it lies on disk until the workflow decides that rung again).
        read(kind, path): the record in root/path, or None."""
        from .search.halving import kept_points
        from .records import RungDecision, point_of

        halving, decided = self.plan.config["halving"], {}
        for student in self.plan.students:
            judged = {(run.method, run.hparams) for pack in self.plan.stage_packs(student, 0) for run in pack.runs}
            for stage, rung in enumerate(self.plan.rungs):
                record = read(RungDecision, self.rung_decision(student, stage))
                if record is None or record.candidates is None:
                    break
                points = {point for point in map(point_of, record.candidates) if point is not None}
                if (record.student, record.rung, record.stage) != (student, rung, stage) \
                        or record.keep != halving["keep"] or record.min_kept != halving["min_kept"] \
                        or sorted(record.seeds or ()) != sorted(self.plan.seeds) \
                        or _names(student, points) != _names(student, judged) \
                        or len(points) != len(record.candidates):
                    break
                decided[student, stage] = record
                judged = kept_points(record)
        return decided

    def decided(self, root):
        """The search's `decided` (kdsweep.search.base) from the checkpoints' records on disk under root: what a
        checkpoint chose, read(its record's path), read checked; Undecided where the record is not written."""
        from pathlib import Path

        def decided(checkpoint, read, **wildcards):
            path = Path(root, self.file(CHECKPOINT_FILES[checkpoint], **wildcards))
            if not path.is_file():
                raise Undecided(f"{path} is not written yet")
            return read(path)

        return decided

    def staged_choices(self) -> list[str]:
        """The staged sweep's records of the study (none unless its search decides a temperature)."""
        decides = "best_temperature" in self.plan.search.decides
        return [self.staged_choice(student) for student in self.plan.students if decides]

    def asked(self, read, root=".") -> list[Run]:
        """The runs this config asks for, given its checkpoints' records on disk under root (read as in
        current_decisions): Plan.planned's (halving: every point, the pruned ones as far as their rung)."""
        from .records import BestPoint

        found = {choice: (read(BestPoint, path), path)
                 for choice, path in ((choice, self.confirm_record(*choice)) for choice in self.plan.choices())}
        confirmed = {choice: (record, path) for choice, (record, path) in found.items() if record is not None}
        return self.plan.planned(self.decided(root), confirmed)[0]

    def not_in_study(self, root, runs, decisions) -> list[str]:
        """The run folders and checkpoint records under results/<study>/ that this config does not ask for
        (runs: `asked`; decisions: `current_decisions`), relative to it: kept on disk, never tabled or chosen."""
        from pathlib import Path

        results = Path(root, self.results)
        wanted = {Path(root, self.run_dir(run)) for run in runs}
        wanted |= {Path(root, self.rung_decision(student, stage)) for student, stage in decisions}
        wanted |= {Path(root, self.confirm_record(*choice)) for choice in self.plan.choices()}
        wanted |= {Path(root, path) for path in self.staged_choices()}
        found = [path for path in sorted(results.glob("runs/*/*")) if path.is_dir()]
        found += [path for kind in ("halving", "confirm", "staged") for path in sorted(results.glob(f"{kind}/*.json"))]
        return [path.relative_to(results).as_posix() for path in found if path not in wanted]


def not_in_study_sentence(paths, limit: int = 3) -> str | None:
    """The one line that says what lies on disk but is not in the study as configured now (Layout.not_in_study)."""
    if not paths:
        return None
    runs = sum(path.startswith("runs/") for path in paths)
    counts = [f"{count} {kind}{'s' if count > 1 else ''}" for count, kind in
              ((runs, "run folder"), (len(paths) - runs, "checkpoint record")) if count]
    shown = ", ".join(paths[:limit]) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")
    return (f"not in this study as configured now (kept on disk, left out of every table and choice): "
            f"{' and '.join(counts)}: {shown}")


def _names(student, points) -> set:
    """The folder names of these (method, hparams) points at seed 0: the spelling the config and records share."""
    return {Run(method, student, 0, method, hparams).name for method, hparams in points}
