"""The study as data: every run, pack and job file that a config asks for, and what each job reads.

The workflow (workflow/rules/*.smk) wires these to rules; `python -m kdsweep status` compares
them with the files on disk; the training job hashes a run's slice of the config from the same
table. Nothing here imports torch: the Snakefile loads this module in every snakemake process.

- `Run`: where a run sits in the study (role, model, seed, temperature, soft weight) and its
  folder name, `runs/<role>/<model>[_T<T>_soft<w>]_seed<s>`.
- `Pack`: the distillation runs one job trains (runtime.pack_size of one student and seed,
  sharing the augmented batches and the teacher's forward pass). A pack of one is named after
  its run; a larger one `<student>_seed<s>_pack<i>`. The job writes its record,
  `packs/<pack>.json`, after every point finished: the file Snakemake tracks for them.
- `JOB_SLICES`: the config values each kind of job reads: its rerun trigger (a rule's params). A
  training run's identity (kdsweep.identity) holds the same data, training and augmentation values.
  `MACHINE_LOCAL` (where the data lies, the runtime section) is in neither: it changes no result
  beyond floating-point noise, so changing it reruns nothing and a checkpoint resumes under it.
- `Plan(config)`: the runs of the grid or of the staged sweep, the packs, and the files.
- Confirmation (config `confirm.seeds`, empty = off): after the sweep, each student's point with
  the best mean validation accuracy (w > 0; a checkpoint, `kdsweep best-point`) is trained again,
  with its hard-target baseline, on fresh seeds the sweep never used. These runs have the role
  `confirm`: `runs/confirm/<model>_T<T>_soft<w>_seed<s>` (distilled; a pack of one,
  `confirm_<run name>`, trained by the distill rule) and `runs/confirm/<model>_seed<s>` (the
  baseline, trained by the train rule), so that no sweep table ever mixes them in.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from .errors import KdsweepError

# confirm: a run of the confirmation on fresh seeds, distilled (temperature and soft weight set) or
# its hard-target baseline (neither set).
ROLES = ("teacher", "baseline", "kd", "confirm")
# Every table aggregate.write_tables writes (under results/<study>/tables/).
TABLES = ("runs.csv", "robustness.csv", "table1.csv", "table1.md", "kd_vs_hard.csv", "kd_vs_hard.md", "grid.csv",
          "confirmed.csv", "confirmed.md", "sensitivity.csv", "sensitivity.md", "vs_reference.csv",
          "vs_reference.md")
# Every figure plots.write_figures draws (under results/<study>/figures/), in each of FIGURE_FORMATS:
# one of each STUDY_FIGURES, and one of each PER_STUDENT_FIGURES per student.
STUDY_FIGURES = ("temperature", "fidelity")
PER_STUDENT_FIGURES = ("soft_weight", "grid", "robustness")
FIGURE_FORMATS = ("png", "pdf")

# The data a job reads: what it is (kdsweep.identity.DATASET_KEYS), not where it lies.
_DATA = ("dataset.name", "dataset.subset", "dataset.val_fraction", "dataset.split_seed")
# The config values a job of each kind reads (dotted paths; "{attack}" is the attack's name), but the
# machine-local ones (MACHINE_LOCAL).
JOB_SLICES = {
    "stats": _DATA,
    "train": (*_DATA, "training", "augmentation"),
    "attack": (*_DATA, "training.eval_batch_size", "attacks.{attack}"),
    "evaluate": (*_DATA, "training.eval_batch_size", "evaluation"),
}
# What every job reads but no result depends on (beyond floating-point noise): where the data lies and
# the runtime section. The workflow gives them to every job in one file (results/<study>/runtime.yaml),
# an ancient() input: changing them reruns nothing.
MACHINE_LOCAL = ("dataset.root", "runtime")
# Runtime values a job never takes from the config: the threads are what the scheduler granted
# (runtime.threads={threads} on each command line), and pack_size is how the workflow groups runs.
SCHEDULING = ("threads", "pack_size")


def fmt(value) -> str:
    """A number as it appears in names: 4.0 -> '4', 0.9 -> '0.9', 0.01 -> '0.01'."""
    return f"{float(value):g}"


# Where the jobs write, relative to results/<study>/, with the rules' wildcards in braces: the rules
# take these patterns (Plan.pattern) and Plan's methods fill them in for a run (Plan.file), so that
# each name is written once. Runs' own folders are Run.folder.
ATTACK_FILE = "{attack}_eps{eps}.json"
FILES = {
    "train_record": "trained/{trained}/{model}_seed{seed}.json",
    "train_log": "logs/runs/{trained}/{model}_seed{seed}.log",
    "pack_record": "packs/{pack}.json",
    "pack_log": "logs/runs/kd/{pack}.log",
    "staged_choice": "staged/{student}_seed-all.json",
    "staged_log": "logs/staged/{student}_seed-all.log",
    "confirm_record": "confirm/{student}.json",
    "confirm_log": "logs/confirm/{student}.log",
    "evaluation": "evaluation/{role}/{run}.json",
    "evaluation_log": "logs/evaluation/{role}/{run}.log",
    "attack": "attacks/{role}/{run}/" + ATTACK_FILE,
    "attack_log": "logs/attacks/{role}/{run}/" + ATTACK_FILE.removesuffix(".json") + ".log",
}


def attack_file(attack: str, epsilon) -> str:
    return ATTACK_FILE.format(attack=attack, eps=fmt(epsilon))


@dataclass(frozen=True)
class Run:
    """Where a run sits in the study: its role and sweep coordinates."""

    role: str  # teacher | baseline | kd | confirm
    model: str
    seed: int
    temperature: float | None = None
    soft_weight: float | None = None

    def __post_init__(self):
        if self.role not in ROLES:
            raise KdsweepError(f"role '{self.role}' is unknown; use teacher, baseline, kd or confirm")
        if self.role == "confirm" and (self.temperature is None) != (self.soft_weight is None):
            raise KdsweepError("a confirmation run takes both a temperature and a soft weight (distilled) "
                               "or neither (its hard-target baseline)")
        if self.distilled:
            if self.temperature is None or not self.temperature > 0:
                raise KdsweepError(f"temperature {self.temperature} must be a positive number, e.g. --temperature 4")
            if self.soft_weight is None or not 0 <= self.soft_weight <= 1:
                raise KdsweepError(f"soft weight {self.soft_weight} must lie in [0, 1] "
                                   "(0 = hard targets only, 1 = teacher only)")

    @property
    def distilled(self) -> bool:
        """Trained from the teacher's soft targets (at any w, also 0): a kd run or a distilled confirm run."""
        return self.role == "kd" or (self.role == "confirm" and self.temperature is not None)

    @property
    def name(self) -> str:
        if self.distilled:
            return f"{self.model}_T{fmt(self.temperature)}_soft{fmt(self.soft_weight)}_seed{self.seed}"
        return f"{self.model}_seed{self.seed}"

    @property
    def folder(self) -> str:
        """The run's folder relative to results/<study>/."""
        return f"runs/{self.role}/{self.name}"

    @property
    def needs_teacher(self) -> bool:
        return self.distilled and self.soft_weight > 0


@dataclass(frozen=True)
class Pack:
    """Distillation runs of one student and seed trained by one job."""

    name: str
    runs: tuple[Run, ...]

    @property
    def student(self) -> str:
        return self.runs[0].model

    @property
    def seed(self) -> int:
        return self.runs[0].seed

    @property
    def role(self) -> str:
        """kd (the sweep) or confirm (a confirmation run: `kdsweep distill --role confirm`)."""
        return self.runs[0].role


# ---------------------------------------------------------------- what a job reads


def _get(config: dict, dotted: str):
    value = config
    for part in dotted.split("."):
        value = value[part]
    return value


def select(config: dict, paths) -> dict:
    """The nested part of `config` at these dotted paths."""
    out: dict = {}
    for path in paths:
        *parents, leaf = path.split(".")
        target = out
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = _get(config, path)
    return out


def job_slice(config: dict, kind: str, attack: str | None = None) -> dict:
    """The nested part of `config` a job of `kind` reads (JOB_SLICES)."""
    return select(config, [path.format(attack=attack) for path in JOB_SLICES[kind]])


def overrides(section: dict, prefix: str = "") -> list[str]:
    """`dotted.key=value` overrides (values as JSON, which YAML reads) that set every value of `section`."""
    out = []
    for key, value in section.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out += overrides(value, f"{path}.")
        else:
            out.append(f"{path}={json.dumps(value)}")
    return out


def command_line(section: dict) -> str:
    """overrides(section), shell-quoted, for a job's command line."""
    return " ".join(map(shlex.quote, overrides(section)))


def machine_local(config: dict) -> dict:
    """The MACHINE_LOCAL values a job takes from the config (the runtime section less SCHEDULING)."""
    local = select(config, MACHINE_LOCAL)
    local["runtime"] = {key: value for key, value in local["runtime"].items() if key not in SCHEDULING}
    return local


def number_table(key: str, values) -> dict:
    """Folder-name spelling (fmt) -> the exact config number; KdsweepError for two values with one name."""
    table = {}
    for value in values:
        name = fmt(value)
        if name in table and table[name] != value:
            raise KdsweepError(f"config {key} hold {table[name]!r} and {value!r}, which share the folder "
                               f"name '{name}' (6 significant digits); make them differ within those")
        table[name] = value
    return table


# ---------------------------------------------------------------- the study


class Plan:
    """Every run, pack and file of a validated study config."""

    def __init__(self, config: dict):
        self.config = config
        self.study = config["study"]
        self.results = f"results/{self.study}"
        self.students = list(config["students"])
        self.seeds = list(config["seeds"])
        self.staged = config["sweep"] == "staged"
        self.staged_weight = config["staged"]["soft_weight"]
        self.pack_size = config["runtime"]["pack_size"]
        self.confirm_seeds = list(config["confirm"]["seeds"])
        if reused := sorted(set(self.confirm_seeds) & set(self.seeds)):
            raise KdsweepError(f"confirm.seeds {reused} are seeds of the sweep too (seeds {self.seeds}); confirmation "
                               "needs fresh seeds, so choose confirm.seeds that are not in seeds")
        self.attacks = [name for name, params in config["attacks"].items() if params is not None]
        self.temperatures = number_table("temperatures", config["temperatures"])
        self.soft_weights = number_table(
            "soft_weights and staged.soft_weight" if self.staged else "soft_weights",
            [*config["soft_weights"], *([self.staged_weight] if self.staged else [])])
        self.epsilons = number_table("epsilons", config["epsilons"])
        self.teacher = Run("teacher", config["teacher"]["model"], config["teacher"]["seed"])
        self.packs = self._packs() + self._confirm_packs()
        self._pack_of = {run: pack for pack in self.packs for run in pack.runs}
        self._packs_by_name = {pack.name: pack for pack in self.packs}
        self._runs = {(run.role, run.name): run
                      for run in [self.teacher, *self.baselines(), *self.confirm_baselines(), *self._pack_of]}
        if self.confirm_seeds and (bare := [student for student in self.students if not self.candidates(student)]):
            raise KdsweepError(f"confirm.seeds is set, but {bare[0]}'s sweep has no distilled point (a soft weight "
                               "above 0) for the confirmation to choose; add one to soft_weights (staged: or set "
                               "staged.soft_weight above 0), or set confirm.seeds to []")

    # ---- runs

    def baselines(self) -> list[Run]:
        return [Run("baseline", student, seed) for student in self.students for seed in self.seeds]

    def grid(self, students=None, temperatures=None, soft_weights=None) -> list[Run]:
        """Distillation runs: every student x temperature x soft weight x seed (the config's, by default)."""
        temperatures = self.config["temperatures"] if temperatures is None else temperatures
        soft_weights = self.config["soft_weights"] if soft_weights is None else soft_weights
        return [Run("kd", student, seed, temperature, weight)
                for student in (self.students if students is None else students)
                for temperature in temperatures for weight in soft_weights for seed in self.seeds]

    def temperature_sweep(self, student) -> list[Run]:
        """Staged sweep, stage 1: every temperature at w = staged.soft_weight."""
        return self.grid([student], soft_weights=[self.staged_weight])

    def soft_weight_sweep(self, student, temperature) -> list[Run]:
        """Staged sweep, stage 2: every soft weight at the student's chosen temperature."""
        return self.grid([student], temperatures=[temperature])

    def fixed_runs(self) -> list[Run]:
        """The runs known before any checkpoint: teacher, baselines (also the confirmation's), and the
        grid (or stage 1)."""
        runs = [self.teacher, *self.baselines(), *self.confirm_baselines()]
        if self.staged:
            return runs + [run for student in self.students for run in self.temperature_sweep(student)]
        return runs + self.grid()

    def run(self, role: str, name: str) -> Run:
        """The run of the study (staged: of any stage-2 candidate too; confirmation: of any candidate
        point) with this role and folder name."""
        try:
            return self._runs[(role, name)]
        except KeyError:
            raise KdsweepError(f"{role} run {name!r} is not part of study {self.study!r}") from None

    def chosen_temperature(self, choice: dict, source: str) -> float:
        """The config's number for the temperature a best-temperature record (`choice`) picked."""
        spelling = fmt(choice["temperature"])
        if spelling not in self.temperatures:
            raise KdsweepError(f"{source} picks temperature {choice['temperature']}, which is not in the config's "
                               f"temperatures; delete {source} so that it is chosen again")
        return self.temperatures[spelling]

    # ---- confirmation on fresh seeds

    def sweep(self, student, temperature=None) -> list[Run]:
        """The distillation runs a student's point is chosen from (confirmation's checkpoint): the grid;
        staged, the temperature sweep and the soft-weight sweep at `temperature`, the chosen one."""
        if not self.staged:
            return self.grid([student])
        if temperature is None:
            raise ValueError("a staged sweep's runs depend on the chosen temperature")
        return list(dict.fromkeys([*self.temperature_sweep(student), *self.soft_weight_sweep(student, temperature)]))

    def candidates(self, student) -> list[tuple[float, float]]:
        """Every (T, w) the confirmation's checkpoint can choose for a student: the distilled points
        (w > 0; w = 0 is hard targets only) of its sweep, staged: of any temperature's soft-weight sweep."""
        return list(dict.fromkeys((run.temperature, run.soft_weight) for sweep in self._sweeps(student)
                                  for run in sweep if run.soft_weight > 0))

    def confirm_baselines(self) -> list[Run]:
        """The hard-target baselines of the confirmation: every student on every confirm seed."""
        return [Run("confirm", student, seed) for student in self.students for seed in self.confirm_seeds]

    def confirmed(self, student, temperature, soft_weight) -> list[Run]:
        """The distilled runs that confirm a student's chosen point: one per confirm seed."""
        return [Run("confirm", student, seed, temperature, soft_weight) for seed in self.confirm_seeds]

    def confirm_record(self, student) -> str:
        """The confirmation checkpoint's record of a student's chosen point (`kdsweep best-point`)."""
        return self.file("confirm_record", student=student)

    def chosen_point(self, student, choice: dict, source: str) -> tuple[float, float]:
        """The config's numbers (T, w) of the point a best-point record (`choice`) picked."""
        spelling = (fmt(choice["temperature"]), fmt(choice["soft_weight"]))
        points = {(fmt(t), fmt(w)): (t, w) for t, w in self.candidates(student)}
        if spelling not in points:
            raise KdsweepError(f"{source} picks T={spelling[0]}, w={spelling[1]}, which is not a distilled point of "
                               f"{student}'s sweep in this config; delete {source} so that it is chosen again")
        return points[spelling]

    def _confirm_packs(self) -> list[Pack]:
        """One pack of one run per candidate point and confirm seed (only the chosen points' become jobs)."""
        return [Pack(f"confirm_{run.name}", (run,))
                for student in self.students for seed in self.confirm_seeds
                for run in (Run("confirm", student, seed, t, w) for t, w in self.candidates(student))]

    # ---- packs

    def _sweeps(self, student) -> list[list[Run]]:
        """The distillation runs of a student in the order they are packed. Staged: the temperature
        sweep, then for each temperature the soft-weight sweep it would get if chosen (without the
        point the temperature sweep trained already): only the chosen temperature's packs become jobs."""
        if not self.staged:
            return [self.grid([student])]
        return [self.temperature_sweep(student)] + [
            [run for run in self.soft_weight_sweep(student, t) if run.soft_weight != self.staged_weight]
            for t in self.config["temperatures"]]

    def _packs(self) -> list[Pack]:
        packs = []
        for student in self.students:
            for seed in self.seeds:
                points = [[run for run in sweep if run.seed == seed] for sweep in self._sweeps(student)]
                chunks = [tuple(sweep[i:i + self.pack_size])
                          for sweep in points for i in range(0, len(sweep), self.pack_size)]
                for number, chunk in enumerate(chunks, 1):
                    name = chunk[0].name if self.pack_size == 1 else f"{student}_seed{seed}_pack{number}"
                    packs.append(Pack(name, chunk))
        return packs

    def pack(self, name: str) -> Pack:
        try:
            return self._packs_by_name[name]
        except KeyError:
            raise KdsweepError(f"pack {name!r} is not part of study {self.study!r}") from None

    def pack_of(self, run: Run) -> Pack:
        return self._pack_of[run]

    def pack_points(self, pack: Pack) -> str:
        """The `--temperature T --soft-weight w --out RUN_DIR` triples of the pack's distill command."""
        return " ".join(f"--temperature {json.dumps(run.temperature)} --soft-weight {json.dumps(run.soft_weight)}"
                        f" --out {shlex.quote(self.run_dir(run))}" for run in pack.runs)

    # ---- files (relative to the directory snakemake runs in)

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
        """A teacher's or baseline's record (rule train's output): written once the run has finished."""
        return self.file("train_record", trained=run.role, model=run.model, seed=run.seed)

    def finished(self, run: Run) -> list[str]:
        """The file the workflow tracks for a finished run: its job's record (a distilled run's pack
        record, another run's train record), written after the run's own files. A run folder is no
        Snakemake output, so Snakemake never deletes a finished run (workflow/rules/train.smk)."""
        if run.distilled:
            return [self.pack_record(self.pack_of(run))]
        return [self.train_record(run)]

    def finished_files(self, runs) -> list[str]:
        """The tracked files of these runs (duplicates dropped: the runs of a pack share its record)."""
        return list(dict.fromkeys(f for run in runs for f in self.finished(run)))

    def evaluations(self, run: Run) -> list[str]:
        """A run's evaluation file and its result under every attack switched on at every epsilon."""
        return [self.file("evaluation", role=run.role, run=run.name)] + [
            self.file("attack", role=run.role, run=run.name, attack=attack, eps=fmt(eps))
            for attack in self.attacks for eps in self.config["epsilons"]]

    def outputs(self, runs) -> list[str]:
        """Every file of these runs (duplicates dropped): finished and evaluated."""
        return list(dict.fromkeys(f for run in dict.fromkeys(runs) for f in [*self.finished(run),
                                                                              *self.evaluations(run)]))

    def tables(self) -> list[str]:
        return [f"{self.results}/tables/{name}" for name in TABLES]

    def figures(self, formats=FIGURE_FORMATS) -> list[tuple[str, str | None, str]]:
        """(path, kind, student or None) of every figure, in each of `formats`."""
        stems = [(kind, None) for kind in STUDY_FIGURES] + [
            (kind, student) for student in self.students for kind in PER_STUDENT_FIGURES]
        return [(f"{self.results}/figures/{kind if student is None else f'{kind}_{student}'}.{ext}", kind, student)
                for kind, student in stems for ext in formats]

    # ---- what each job runs with

    def job_config(self, kind: str, attack: str | None = None) -> str:
        """The command-line overrides of a job's config slice (its rule's params: its rerun trigger)."""
        return command_line(job_slice(self.config, kind, attack))

    def dataset_location(self) -> str:
        """The command-line overrides of the dataset's name and folder (the download's params)."""
        return command_line(select(self.config, ("dataset.name", "dataset.root")))

    def machine_local(self) -> str:
        """The command-line overrides of MACHINE_LOCAL (no rerun trigger: see the module docstring)."""
        return command_line(machine_local(self.config))

    # ---- read-only views for `python -m kdsweep status` (the names the rules give these files)

    def study_record(self) -> str:
        """results/<study>/study.yaml: the whole config the workflow last ran with (rule study)."""
        return f"{self.results}/study.yaml"

    def study_config(self) -> str:
        """The whole config as command-line overrides (rule study's params: a changed value rewrites it)."""
        return command_line(self.config)

    def training_log(self, run: Run) -> str:
        """The log of the job that trains a run: rule train's, or rule distill's of its pack."""
        if run.distilled:
            return self.file("pack_log", pack=self.pack_of(run).name)
        return self.file("train_log", trained=run.role, model=run.model, seed=run.seed)

    def staged_choice(self, student) -> str:
        """Staged sweep: the file checkpoint best_temperature writes for a student."""
        return self.file("staged_choice", student=student)

    def planned(self, staged_choices: dict, confirm_choices: dict) -> tuple[list[Run], dict]:
        """The runs snakemake makes, given the checkpoints' choices so far: staged_choices {student: the
        record of staged_choice} for the students whose temperature is chosen, confirm_choices {student:
        the record of confirm_record} for those whose confirmed point is chosen. Returns (runs,
        {(role, student): number of runs still waiting for their student's choice})."""
        runs, waiting = self.fixed_runs(), {}
        known = set(runs)
        if self.staged:
            for student in self.students:
                if student in staged_choices:
                    temperature = self.chosen_temperature(staged_choices[student], self.staged_choice(student))
                    runs += [run for run in self.soft_weight_sweep(student, temperature) if run not in known]
                else:
                    any_temperature = self.config["temperatures"][0]
                    waiting["kd", student] = sum(run not in known
                                                 for run in self.soft_weight_sweep(student, any_temperature))
        for student in self.students if self.confirm_seeds else []:
            if student in confirm_choices:
                point = self.chosen_point(student, confirm_choices[student], self.confirm_record(student))
                runs += self.confirmed(student, *point)
            else:
                waiting["confirm", student] = len(self.confirm_seeds)
        return runs, waiting
