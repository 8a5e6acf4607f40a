"""The study as data: every run and pack a config asks for, the confirmation's choices, and the runs
planned so far. Where their files lie is kdsweep.layout; what each job is told on its command line,
kdsweep.commands. Nothing here imports torch: the Snakefile loads this module in every snakemake process.

- `Run`: where a run sits in the study: its role (teacher, baseline, a KD method's sweep, confirm),
  model, seed and, distilled, its method and that method's hyperparameters (kdsweep.methods); its
  folder name, `runs/<role>/<model>[_<method, but kd>]_<hyperparameters>_seed<s>` (kd's
  `runs/kd/<model>_T<T>_soft<w>_seed<s>`, the reference study's).
- `Pack`: the distillation runs one job trains (runtime.pack_size of one student and seed, of any
  methods, sharing the augmented batches and the teacher's forward pass). A pack of one is named
  after its run; a larger one `<student>_seed<s>_pack<i>`. The job writes its record,
  `packs/<pack>.json`, after every point finished: the file Snakemake tracks for them.
- `Teacher`: a teacher of the study (config `teacher`, one entry or a list): its name, architecture, seed and
  where it comes from (trained from scratch, or a checkpoint, fine-tuned or not: docs/models.md). Its run is
  `runs/teacher/<name>_seed<s>` (the name is its model unless given). Every student distils from each
  teacher; the runs of the study's first teacher keep the names above, those of another teacher carry it
  after the student, `<student>_from_<teacher>_...` (`Run.teacher`), so that adding a teacher to a study
  renames nothing that exists.
- `Plan(config)`: every method's grid (after `budget`), the search over it (config `sweep`, a strategy of
  kdsweep.search: which runs it packs and trains, and which the study asks for before and after its
  decisions), the packs (kd's first), the confirmation's choices.
- Teacher-free points (a method's points that use no teacher: kd's w = 0 at every T, dkd's alpha = beta =
  0, lskd's and ctkd's soft_weight 0) are never sweep points. Such a point's loss is the labels'
  cross-entropy alone (Method.teacher_free gives its weight), and a run is a function of its loss and seed:
  the rule is that a teacher-free point at weight 1 IS the hard-target baseline (train.HARD_TARGETS: the same
  loss, initial weights, data order and augmentation; tests/test_methods.py trains both and compares the
  weights), so it is not trained at all; the teacher-free points of one method at another weight (lskd's
  hard_weight h != 1 at soft_weight 0, whatever T) are one run, the first of them in the grid's order,
  trained once per student and seed. `Plan.teacher_free` lists what each method's grid held of them.
- Budgets (config `budget.equal`): every method trains as many distilled points (those that use the teacher)
  per student and seed as the method with the fewest, each keeping those of its grid that come first in a
  seeded order (`subsample`), the same for every student; a shared teacher-free run is no candidate, so it
  is not counted and still trains. A method with no distilled point is refused.
- Confirmation (config `confirm.seeds`, empty = off): after the sweep, each student's point of each
  KD method with the best mean validation accuracy (one that uses the teacher: kd's w > 0; a
  checkpoint, `kdsweep best-point`) is trained again, with its hard-target baseline, on fresh seeds
  the sweep never used. These runs have the role `confirm`: `runs/confirm/<model>_T<T>_soft<w>_seed<s>`
  (distilled; a pack of one, `confirm_<run name>`, trained by the distill rule) and
  `runs/confirm/<model>_seed<s>` (the baseline, trained by the train rule), so that no sweep table
  ever mixes them in.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from . import io
from .attacks.suite import Suite
from .errors import KdsweepError
from .methods import METHODS
from .methods.base import fmt  # noqa: F401 (a number as names spell it; imported from here by the tables)
from .records import point_of
from .search import Undecided, nothing_decided, strategy

# A sweep run's role is its KD method's name (kdsweep.methods: kd, the reference study's, first);
# confirm: a run of the confirmation on fresh seeds, distilled (a method set) or its hard-target
# baseline (none).
ROLES = ("teacher", "baseline", *METHODS, "confirm")


@dataclass(frozen=True)
class Run:
    """Where a run sits in the study: its role, model, seed and, distilled, its KD method and that
    method's hyperparameters (kdsweep.methods)."""

    role: str  # teacher | baseline | a method's name (its sweep: kd, dkd, ...) | confirm
    model: str
    seed: int
    method: str | None = None  # the KD method of a distilled run
    hparams: tuple = ()  # its hyperparameters ((name, value), ...) in the method's order
    # the teacher's name where the folder name carries it: a distilled run's teacher but the study's first
    # (None: the first), a teacher run's own name where it is not its model
    teacher: str | None = None

    def __post_init__(self):
        if self.role not in ROLES and self.role not in METHODS:  # (a method registered since this module loaded)
            raise KdsweepError(f"role '{self.role}' is unknown; use one of {', '.join(ROLES)}")
        if self.role in METHODS and self.method != self.role:
            raise KdsweepError(f"a run of role {self.role} is a {self.role} run: its method is {self.role}")
        if self.teacher is not None and not (self.role == "teacher" or self.method is not None):
            raise KdsweepError(f"a {self.role} run has no teacher")
        if self.method is None:
            if self.role in METHODS or self.hparams:
                raise KdsweepError(f"a {self.role} run takes a KD method and its hyperparameters")
            return
        if self.method not in METHODS:
            raise KdsweepError(f"KD method {self.method!r} is unknown; use one of {', '.join(METHODS)}")
        if self.role not in (self.method, "confirm"):
            raise KdsweepError(f"a distilled run is a {self.method} run or a confirm run, not a {self.role} run")
        method = METHODS[self.method]
        names = tuple(name for name, _ in self.hparams)
        expected = tuple(param.name for param in method.params)
        if names != expected:
            raise KdsweepError(f"a {self.method} run takes the hyperparameters {', '.join(expected)}, "
                               f"not {', '.join(names) or 'none'}")
        for param, (_, value) in zip(method.params, self.hparams):
            if problem := param.problem(value):
                raise KdsweepError(f"{self.method}: {problem}")
        if problem := method.problem(self.params):
            raise KdsweepError(f"{self.method}: {problem}")

    @classmethod
    def distilled_run(cls, role: str, model: str, seed: int, method: str, values: dict, teacher=None) -> "Run":
        """A distilled run of `method` at these hyperparameter values (a dict; each as the method's type)."""
        if method not in METHODS:
            raise KdsweepError(f"KD method {method!r} is unknown; use one of {', '.join(METHODS)}")
        missing = [param.name for param in METHODS[method].params if param.name not in values]
        extra = sorted(set(values) - {param.name for param in METHODS[method].params})
        if missing or extra:
            raise KdsweepError(f"a {method} point takes {', '.join(p.name for p in METHODS[method].params)}"
                               + (f"; {', '.join(missing)} missing" if missing else "")
                               + (f"; {', '.join(extra)} unknown" if extra else ""))
        for param in METHODS[method].params:
            if problem := param.problem(values[param.name]):
                raise KdsweepError(f"{method}: {problem}")
        return cls(role, model, seed, method, METHODS[method].hparams(values), teacher)

    @property
    def distilled(self) -> bool:
        """Trained with a KD method (at any weights, also 0): a sweep run or a distilled confirm run."""
        return self.method is not None

    @property
    def params(self) -> dict:
        """The hyperparameters as a dict."""
        return dict(self.hparams)

    @property
    def temperature(self) -> float | None:
        """The hyperparameter named temperature, where the method has one (kd's T; tables' column)."""
        return self.params.get("temperature")

    @property
    def soft_weight(self) -> float | None:
        """The hyperparameter named soft_weight, where the method has one (kd's w; tables' column)."""
        return self.params.get("soft_weight")

    @property
    def name(self) -> str:
        """<model>[_<method, but kd>]_<spelling><value>..._seed<s>: kd's keeps the reference study's
        <model>_T<T>_soft<w>_seed<s>; a run of a teacher but the study's first has _from_<teacher> after
        <model>; a teacher run is <its name>_seed<s>."""
        if not self.distilled:
            return f"{self.teacher or self.model}_seed{self.seed}"
        return f"{self.slot}{self._values}_seed{self.seed}"

    @property
    def slot(self) -> str:
        """The (teacher, student) pair of a distilled run as names spell it: the student, and _from_<teacher>
        for a teacher but the study's first."""
        return self.model if self.teacher is None else f"{self.model}_from_{self.teacher}"

    @property
    def _values(self) -> str:
        method = METHODS[self.method]
        tag = "" if self.method == "kd" else f"_{self.method}"
        return tag + "".join(f"_{param.spelling}{fmt(value)}" for param, (_, value) in zip(method.params, self.hparams))

    @property
    def folder(self) -> str:
        """The run's folder relative to results/<study>/."""
        return f"runs/{self.role}/{self.name}"

    @property
    def needs_teacher(self) -> bool:
        return self.distilled and METHODS[self.method].needs_teacher(self.params)

    def spec(self) -> str:
        """The point as the distill command's --point takes it: <method>:<name>=<value>,..."""
        # whole numbers as integers (kdsweep.commands.canonical): the config's `4.0` and `4` are one command
        return f"{self.method}:" + ",".join(
            f"{name}={json.dumps(int(value) if isinstance(value, float) and value.is_integer() else value)}"
            for name, value in self.hparams)


def parse_point(spec: str) -> tuple[str, dict]:
    """(method, {name: value}) of a --point <method>:<name>=<value>,...; KdsweepError naming the fix."""
    method, _, rest = spec.partition(":")
    example = "e.g. --point dkd:alpha=1,beta=8,temperature=4,warmup_epochs=20"
    if method not in METHODS:
        raise KdsweepError(f"--point {spec!r} names no KD method ({', '.join(METHODS)}); {example}")
    values = {}
    for item in filter(None, rest.split(",")):
        name, equals, text = item.partition("=")
        try:
            value = io.loads(text) if equals else None
        except ValueError:
            value = None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise KdsweepError(f"--point {spec!r}: {item!r} is not <name>=<number>; {example}")
        if name.strip() in values:
            raise KdsweepError(f"--point {spec!r} gives {name.strip()} twice; give each hyperparameter once, "
                               f"{example}")
        values[name.strip()] = value
    return method, values


@dataclass(frozen=True)
class Pack:
    """Distillation runs of one student and seed trained by one job. Successive halving (sweep: halving)
    trains a pack's points in stages: stage k < len(halving.rungs) to epoch `until` = rungs[k]
    (`<pack>_rung<epochs>`), the last to the end (`<pack>_final`); a stage after the first trains only the
    points the rung before kept (Plan.surviving)."""

    name: str
    runs: tuple[Run, ...]
    stage: int | None = None  # halving: the stage's index
    until: int | None = None  # halving: the epoch it trains its points to (None: to the end)

    @property
    def student(self) -> str:
        return self.runs[0].model

    @property
    def seed(self) -> int:
        return self.runs[0].seed

    @property
    def teacher(self) -> str | None:
        """The tag of the teacher its runs distil from (None: the study's first)."""
        return self.runs[0].teacher

    @property
    def role(self) -> str:
        """The distill command's --role: confirm (a confirmation run), kd (kd's sweep points alone: the
        reference study's command) or sweep (sweep points of any methods)."""
        roles = {run.role for run in self.runs}
        return roles.pop() if roles in ({"confirm"}, {"kd"}) else "sweep"


# A halving stage's pack is its pack's name and the stage (Plan._packs): what it adds to the name.
_STAGE = re.compile(r"_(?:rung\d+|final)$")
# The name of a pack's record (Plan._chunks): a pack of one (its run's name), <student>_seed<s>_pack<i>, or
# <student>_seed<s>_pack<i>_<its first run's point>; a confirmation's pack confirm_<run>; halving adds the stage.
PACK_RECORD = re.compile(r"(?:confirm_)?[A-Za-z0-9][\w.+-]*_seed\d+(?:_pack\d+(?:_[\w.+-]+?)?)?(?:_rung\d+|_final)?\.json")


def recorded_packs(results_dir) -> dict:
    """The sweep's packs trained so far, from their records (results/<study>/packs/<pack>.json): {pack:
    [(role, run name), ...]} in the order each job trained them, a halving pack's stages joined (a pack of the
    confirmation, one run named after it, is left out). Plan keeps each, whatever runtime.pack_size says now."""
    from pathlib import Path

    from .records import JobRecord

    packed: dict = {}
    for path in sorted(Path(results_dir, "packs").glob("*.json")):
        if path.stem.startswith("confirm_") or not PACK_RECORD.fullmatch(path.name):
            continue  # a confirmation's pack (of one run, named after it), or no pack's record (a stray)
        record = JobRecord.read(path, what="pack record", fix="delete it so that its pack is trained again")
        runs = packed.setdefault(_STAGE.sub("", path.stem), [])
        for point in record.points:
            key = tuple(Path(point.run).parts[-2:])
            if key not in runs:
                runs.append(key)
    return packed


def subsample(method: str, points: list, count: int, seed: int) -> list:
    """`count` of a method's points (its grid's hyperparameter tuples), chosen by a seeded order: the points
    whose sha256 of "<seed>:<method>:<point>" comes first, kept in the grid's order. The same on any machine
    and Python, and a point's place depends on its values only, not on the rest of the grid."""
    def key(point):
        return hashlib.sha256(f"{seed}:{method}:{json.dumps(point)}".encode()).hexdigest()

    chosen = set(sorted(points, key=key)[:count])
    return [point for point in points if point in chosen]


# A torchvision weights name (ResNet50_Weights.IMAGENET1K_V2), as teacher.checkpoint may give it instead of a file.
WEIGHTS_NAME = re.compile(r"^[A-Za-z0-9]+(_[A-Za-z0-9]+)*_Weights\.[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class Teacher:
    """A teacher of the study (an entry of config `teacher`): its name (in folder names), architecture, seed
    and where it comes from: trained from scratch (checkpoint None), or a checkpoint distilled from as it is
    or fine-tuned on the study's data first (kdsweep.teachers)."""

    name: str
    model: str
    seed: int
    checkpoint: str | None = None
    fine_tune: bool = False
    tag: str | None = None  # what its students' folder names carry: None for the study's first teacher

    @property
    def run(self) -> Run:
        return Run("teacher", self.model, self.seed, teacher=None if self.name == self.model else self.name)

    @property
    def checkpoint_file(self) -> str | None:
        """The checkpoint when it is a file (a weights name's file lies in torch's cache: kdsweep.teachers)."""
        return self.checkpoint if self.checkpoint and not WEIGHTS_NAME.match(self.checkpoint) else None


def teachers(config: dict) -> list[Teacher]:
    """The study's teachers (config `teacher`: one entry or a list), the first untagged; KdsweepError for two of
    one name."""
    entries = config["teacher"] if isinstance(config["teacher"], list) else [config["teacher"]]
    found = []
    for i, entry in enumerate(entries):
        name = entry.get("name") or entry["model"]
        if name in [teacher.name for teacher in found]:
            raise KdsweepError(f"two teachers are named {name!r}; give each entry of `teacher` a name of its own "
                               "(teacher: [{name: ..., model: ...}, ...])")
        found.append(Teacher(name, entry["model"], entry.get("seed", 0), entry.get("checkpoint"),
                             bool(entry.get("fine_tune", False)), None if i == 0 else name))
    return found


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

    def __init__(self, config: dict, packed: dict | None = None):
        """packed: the packs trained so far, {pack: [(role, run name), ...]} (`recorded_packs`: the workflow's,
        the status view's), which keep their runs whatever runtime.pack_size says now."""
        self.config = config
        self.study = config["study"]
        self.results = f"results/{self.study}"
        self.students = list(config["students"])
        self.seeds = list(config["seeds"])
        # the search over the grids (kdsweep.search): its rungs, at which every pack pauses for a decision
        self.search = strategy(config["sweep"])
        self.rungs = self.search.rungs(config)
        self.staged_weight = config["staged"]["soft_weight"]
        self.pack_size = config["runtime"]["pack_size"]
        self.confirm_seeds = list(config["confirm"]["seeds"])
        if reused := sorted(set(self.confirm_seeds) & set(self.seeds)):
            raise KdsweepError(f"confirm.seeds {reused} are seeds of the sweep too (seeds {self.seeds}); confirmation "
                               "needs fresh seeds, so choose confirm.seeds that are not in seeds")
        self.suite = Suite.from_config(config)  # the attacks, the headline, the subset (kdsweep.attacks.suite)
        self.attacks = list(self.suite.attacks)
        self.temperatures = number_table("temperatures", config["temperatures"])
        self.soft_weights = number_table(*self.search.soft_weights(config))
        self.epsilons = number_table("epsilons", config["epsilons"])
        sections = config.get("methods") or {}
        # the study's KD methods, in the registry's order (kd first)
        self.methods = [name for name in METHODS if name in sections and sections[name] is not None]
        # {method: {point: what trains it}} of the grid's teacher-free points: "baseline", or the point (its
        # hyperparameters) of the one shared run of its weight
        self.teacher_free: dict[str, dict] = {}
        self.grids = {name: self._points(name) for name in self.methods}
        self.budget = config["budget"]
        self.points = self._budgeted(self.grids)
        self.search.check(self)
        wanted = config["confirm"].get("methods")
        if wanted is not None and (unknown := [name for name in wanted if name not in self.methods]):
            raise KdsweepError(f"confirm.methods names {unknown[0]!r}, which is no KD method of this study "
                               f"({', '.join(self.methods) or 'none'}); name methods of `methods`, or null for all")
        # the KD methods whose best points the confirmation trains again (none without confirm.seeds)
        self.confirm_methods = ([name for name in self.methods if wanted is None or name in wanted]
                                if config["confirm"]["seeds"] else [])
        self.teachers = teachers(config)
        self.teacher = self.teachers[0].run  # the study's first teacher (the only one of most studies)
        if len(self.teachers) > 1 and (not self.search.several_teachers or self.confirm_seeds):
            raise KdsweepError(f"this study has {len(self.teachers)} teachers, and several teachers are swept with "
                               "sweep: grid and no confirmation only; set sweep: grid and confirm.seeds: [], or "
                               "give one teacher")
        if clash := sorted({t.name for t in self.teachers} & set(self.students) - {t.model for t in self.teachers}):
            raise KdsweepError(f"teacher name {clash[0]!r} is a student's architecture; name the teacher otherwise")
        self.packs = self._packs(packed or {}) + self._confirm_packs()
        self._pack_of = {run: pack for pack in self.packs for run in pack.runs}
        self._packs_by_name = {pack.name: pack for pack in self.packs}
        self._runs = {(run.role, run.name): run
                      for run in [*self.teacher_runs(), *self.baselines(), *self.confirm_baselines(), *self._pack_of]}
        bare = [(student, method) for student in self.students for method in self.confirm_methods
                if not self.candidates(student, method)]
        if self.confirm_seeds and bare:
            student, method = bare[0]
            raise KdsweepError(f"confirm.seeds is set, but {student}'s {method} sweep has no distilled point (one "
                               "that uses the teacher: for kd a soft weight above 0) for the confirmation to "
                               "choose; add one to soft_weights (staged: or set staged.soft_weight above 0), or "
                               "leave that method out, or set confirm.seeds to []")
        if self.confirm_seeds and not self.methods:
            raise KdsweepError("confirm.seeds is set, but methods names no KD method to confirm; give one, or set "
                               "confirm.seeds to []")

    # ---- runs

    def teacher_runs(self) -> list[Run]:
        return [teacher.run for teacher in self.teachers]

    def teacher_of(self, run: Run) -> Teacher:
        """The teacher a run is distilled from (a teacher run: itself; a baseline: the study's first, which
        its agreement is measured against)."""
        if run.role == "teacher":
            return next(t for t in self.teachers if t.run == run)
        return next((t for t in self.teachers if t.tag == run.teacher), self.teachers[0]) if run.distilled \
            else self.teachers[0]

    def baselines(self) -> list[Run]:
        return [Run("baseline", student, seed) for student in self.students for seed in self.seeds]

    def _points(self, name) -> list[tuple]:
        """A method's grid in the config that trains: each point's hyperparameters (the method's order and
        types), refused where two points share a folder name; its teacher-free points set aside (module
        docstring: `teacher_free`)."""
        method = METHODS[name]
        points, names = [], {}
        for values in method.grid(self.config):
            run = Run.distilled_run(name, "m", 0, name, values)
            if run.name in names and names[run.name] != run.hparams:
                raise KdsweepError(f"methods.{name} holds two points with the folder name {run.name!r} (6 significant "
                                   "digits per value); make their values differ within those")
            if run.name not in names:
                names[run.name] = run.hparams
                points.append(run.hparams)
        return self._trained(name, points)

    def _trained(self, name, points) -> list[tuple]:
        """The points of a method that train: those that use the teacher, and for each weight of the labels'
        cross-entropy but 1 (the baseline's) the first teacher-free point of that weight; the others are
        recorded in self.teacher_free."""
        method, kept, shared = METHODS[name], [], {}
        for point in points:
            weight = method.teacher_free(dict(point))
            if weight is None:
                kept.append(point)
                continue
            if weight != 1 and weight not in shared:
                shared[weight] = point
                kept.append(point)
            self.teacher_free.setdefault(name, {})[point] = "baseline" if weight == 1 else shared[weight]
        return kept

    def _budgeted(self, grids) -> dict:
        """Each method's points after `budget`: its grid's, or with budget.equal as many distilled points (those
        that use the teacher) as the method with the fewest holds, by the seeded `subsample`. A shared
        teacher-free run is no candidate of the search, so it is not counted and trains beside them."""
        if not self.budget["equal"] or not grids:
            return dict(grids)
        distilled = {name: [point for point in points if METHODS[name].needs_teacher(dict(point))]
                     for name, points in grids.items()}
        # a method with nothing to search would make every method's equal budget 0 points: refused, not
        # silently emptied (and left out, the others' budgets would not be equal to its)
        if bare := [name for name, points in distilled.items() if not points]:
            raise KdsweepError(f"budget.equal gives every method as many distilled points as the method with the "
                               f"fewest, but {bare[0]}'s grid has no point that uses the teacher (teacher-free "
                               f"points, such as kd's w = 0, are the baseline), so every method would train none; "
                               f"give {bare[0]} a point that uses the teacher, or leave it out of methods")
        count = min(len(points) for points in distilled.values())
        chosen = {name: set(subsample(name, points, count, self.budget["seed"])) for name, points in distilled.items()}
        return {name: [point for point in points if point in chosen[name] or point not in distilled[name]]
                for name, points in grids.items()}

    def grid(self, students=None, temperatures=None, soft_weights=None, teacher=None) -> list[Run]:
        """kd's distillation runs: every student x temperature x soft weight x seed (by default the config's
        grid, after `budget`), from the teacher of this tag (None: the study's first), but the teacher-free
        w = 0 (the baseline is it, whatever the teacher)."""
        if temperatures is None and soft_weights is None:
            return self.method_grid("kd", students, teacher)
        temperatures = self.config["temperatures"] if temperatures is None else temperatures
        soft_weights = self.config["soft_weights"] if soft_weights is None else soft_weights
        runs = [Run.distilled_run("kd", student, seed, "kd", {"temperature": temperature, "soft_weight": weight},
                                  teacher)
                for student in (self.students if students is None else students)
                for temperature in temperatures for weight in soft_weights for seed in self.seeds]
        return [run for run in runs if run.needs_teacher]  # kd's w = 0 is the baseline at any T

    def method_grid(self, method: str, students=None, teacher=None) -> list[Run]:
        """A method's distillation runs: every student x point of its grid x seed."""
        return [Run(method, student, seed, method, hparams, teacher)
                for student in (self.students if students is None else students)
                for hparams in self.points[method] for seed in self.seeds]

    def other_methods(self, students=None, teacher=None) -> list[Run]:
        """The runs of every method of the study but kd (which the staged sweep can shape), in order."""
        return [run for method in self.methods if method != "kd"
                for run in self.method_grid(method, students, teacher)]

    def temperature_sweep(self, student) -> list[Run]:
        """Staged sweep, stage 1: every temperature at w = staged.soft_weight."""
        return self.grid([student], soft_weights=[self.staged_weight])

    def soft_weight_sweep(self, student, temperature) -> list[Run]:
        """Staged sweep, stage 2: every soft weight at the student's chosen temperature."""
        return self.grid([student], temperatures=[temperature])

    def fixed_runs(self) -> list[Run]:
        """The runs the study asks for before any checkpoint: teacher, baselines (also the confirmation's) and
        the search's (the grid: every method's grid; staged: stage 1; halving: none, as the runs that finish
        are the last rung's survivors)."""
        return [*self.teacher_runs(), *self.baselines(), *self.confirm_baselines(), *self.search.fixed_runs(self)]

    def baseline_of(self, run: Run) -> Run | None:
        """The hard-target run of a distilled run's own seed (a sweep run's baseline, a confirm run's confirm
        baseline): what its transfer attack crafts images on beside the teacher. None for other runs."""
        if not run.distilled:
            return None
        return Run("confirm" if run.role == "confirm" else "baseline", run.model, run.seed)

    def run(self, role: str, name: str) -> Run:
        """The run of the study (staged: of any stage-2 candidate too; confirmation: of any candidate
        point) with this role and folder name."""
        try:
            return self._runs[(role, name)]
        except KeyError:
            raise KdsweepError(f"{role} run {name!r} is not part of study {self.study!r}") from None

    # ---- confirmation on fresh seeds

    def sweep(self, student, method: str = "kd", decided=None) -> list[Run]:
        """The distillation runs a student's point of one method is chosen from (confirmation's checkpoint),
        as the search says (Strategy.sweep: the grid's, the method's grid). decided: what the search's
        checkpoints chose (kdsweep.search.base; None: nothing yet, Undecided where the runs depend on it)."""
        return self.search.sweep(self, student, method, decided or nothing_decided)

    def candidates(self, student, method: str = "kd") -> list[tuple]:
        """Every point (hyperparameters) of a method the confirmation's checkpoint can choose for a student:
        those of the runs the search packs for it that use the teacher (kd: w > 0; w = 0 is hard targets
        only), whatever its decisions (staged: of any temperature's soft-weight sweep)."""
        runs = [run for sweep in self.search.sweeps(self, student) for run in sweep if run.method == method]
        return list(dict.fromkeys(run.hparams for run in runs if run.needs_teacher))

    def confirm_baselines(self) -> list[Run]:
        """The hard-target baselines of the confirmation: every student on every confirm seed."""
        return [Run("confirm", student, seed) for student in self.students for seed in self.confirm_seeds]

    def confirmed(self, student, method: str, hparams: tuple) -> list[Run]:
        """The distilled runs that confirm a student's chosen point of a method: one per confirm seed."""
        return [Run("confirm", student, seed, method, hparams) for seed in self.confirm_seeds]

    def choices(self) -> list[tuple[str, str]]:
        """(student, method) of every point the confirmation chooses: one per student and confirmed method."""
        return [(student, method) for student in self.students for method in self.confirm_methods]

    @staticmethod
    def choice_name(student: str, method: str) -> str:
        """The name of a (student, method) choice in file names: the student's name for kd (the reference
        study's confirm/<student>.json), <student>_<method> for another method."""
        return student if method == "kd" else f"{student}_{method}"

    def choice(self, name: str) -> tuple[str, str]:
        """(student, method) of a choice_name."""
        for student, method in self.choices():
            if self.choice_name(student, method) == name:
                return student, method
        raise KdsweepError(f"{name!r} names no confirmation choice of study {self.study!r}")

    def chosen_point(self, student, method: str, choice, source: str, among=None) -> tuple:
        """The hyperparameters of the point a best-point record (`choice`, a BestPoint or its JSON object)
        picked, as the config gives them. among: the points it may pick ({hparams}; successive halving: the
        last rung's survivors), where not every candidate may be picked."""
        picked = point_of(choice)
        if picked is None or picked[0] != method:
            raise KdsweepError(f"{source} picks no {method} point; delete {source} so that it is chosen again")
        named = choice.get("student") if isinstance(choice, dict) else choice.student
        if named not in (None, student):
            raise KdsweepError(f"{source} is the choice of student {named}, not of {student}; delete {source} so "
                               "that it is chosen again")
        spelled = Run(method, student, 0, method, picked[1]).name
        for hparams in self.candidates(student, method):
            if Run(method, student, 0, method, hparams).name == spelled:
                if among is not None and hparams not in among:
                    raise KdsweepError(f"{source} picks {method} point {dict(picked[1])}, which successive halving "
                                       f"pruned (it is not among the last rung's survivors); delete {source} so "
                                       "that it is chosen again")
                return hparams
        raise KdsweepError(f"{source} picks {method} point {dict(picked[1])}, which is not a distilled point of "
                           f"{student}'s sweep in this config; delete {source} so that it is chosen again")

    def _confirm_packs(self) -> list[Pack]:
        """One pack of one run per candidate point and confirm seed (only the chosen points' become jobs)."""
        return [Pack(f"confirm_{run.name}", (run,))
                for student in self.students for seed in self.confirm_seeds for method in self.confirm_methods
                for run in (Run("confirm", student, seed, method, hparams)
                            for hparams in self.candidates(student, method))]

    # ---- packs

    def _packs(self, packed: dict) -> list[Pack]:
        """The sweep's packs; with rungs (halving), every stage's, the last stage's last (so that pack_of a run
        is the pack that finishes it). `packed`: the packs on disk (`recorded_packs`), which keep their runs."""
        packs = []
        for teacher, student in [(teacher.tag, student) for teacher in self.teachers for student in self.students]:
            for seed in self.seeds:
                for name, chunk in self._chunks(student, seed, packed, teacher):
                    if not self.rungs:
                        packs.append(Pack(name, chunk))
                        continue
                    packs += [Pack(f"{name}_rung{until}", chunk, stage, until) for stage, until in enumerate(self.rungs)]
                    packs.append(Pack(f"{name}_final", chunk, len(self.rungs)))
        return packs

    def _chunks(self, student, seed, packed: dict, teacher=None) -> list[tuple[str, tuple]]:
        """(name, runs) of the packs of a student and seed, in the order of their first runs. A pack trained
        before (a record on disk, of any runtime.pack_size) keeps its name and those of its runs this config
        still asks for, so that a new pack_size renames and reruns nothing (one known only from a later halving
        stage's record, which holds the survivors, gets back the rest of its pack as this pack_size packs
        it). The other runs are packed pack_size at a time, as a study without records packs them:
        `<slot>_seed<s>_pack<i>` (slot: the student, `_from_<teacher>` added for a teacher but the first; a pack
        of one: its run's name), or, where that name is taken or some of the i-th pack's runs are packed already,
        `<slot>_seed<s>_pack<i>_<its first run's point>`: names that no later record changes."""
        order = {}
        sweeps = [[run for run in sweep if run.seed == seed] for sweep in self.search.sweeps(self, student, teacher)]
        slot = next((sweep[0].slot for sweep in sweeps if sweep), student)  # the student, or its _from_<teacher>
        for sweep in sweeps:
            order.update((run, len(order)) for run in sweep)
        size, standard = self.pack_size, []
        for sweep in sweeps:
            for start in range(0, len(sweep), size):
                chunk = tuple(sweep[start:start + size])
                standard.append((chunk[0].name if size == 1 else f"{slot}_seed{seed}_pack{len(standard) + 1}",
                                 len(standard) + 1, chunk))
        by_name = {(run.role, run.name): run for run in order}
        recorded = {name: tuple(dict.fromkeys(by_name[key] for key in folders if key in by_name))
                    for name, folders in packed.items()}
        claimed = {run for runs in recorded.values() for run in runs}
        chunks, done = [], set()
        for name, runs in recorded.items():
            if not runs or done & set(runs):
                continue
            own = next((chunk for standard_name, _, chunk in standard if standard_name == name), ())
            if set(runs) <= set(own):
                runs = tuple(run for run in own if run in runs or run not in claimed)
            chunks.append((name, runs))
            done.update(runs)
        for name, number, chunk in standard:
            left = tuple(run for run in chunk if run not in done)
            if not left:
                continue
            if left != chunk or name in packed:
                first = left[0].name.removeprefix(f"{slot}_").removesuffix(f"_seed{seed}")
                name = f"{slot}_seed{seed}_pack{number}_{first}"
            chunks.append((name, left))
        return sorted(chunks, key=lambda chunk: order[chunk[1][0]])

    # ---- packs trained in stages (a search with rungs: successive halving, kdsweep.search.halving decides)

    def stage_packs(self, student, stage: int) -> list[Pack]:
        """Every pack of a student's halving stage (of every seed), whatever the rungs before kept."""
        return [pack for pack in self.packs if pack.stage == stage and pack.student == student]

    def surviving(self, pack: Pack, kept: set | None) -> Pack:
        """The pack with the points a rung kept (kept: {(method, hparams)}; None for the first stage, which
        trains them all)."""
        if kept is None:
            return pack
        return Pack(pack.name, tuple(run for run in pack.runs if (run.method, run.hparams) in kept),
                    pack.stage, pack.until)

    def rung_packs(self, student, stage: int, kept: set | None) -> list[Pack]:
        """The packs of a student's halving stage that have points to train, given the rung before's kept
        points (None at the first stage)."""
        packs = [self.surviving(pack, kept) for pack in self.stage_packs(student, stage)]
        return [pack for pack in packs if pack.runs]

    def rung_kept(self, student, stage: int, decision, source: str) -> set[tuple]:
        """The points (method, hparams) a rung decision (a RungDecision) kept, as the config gives them; KdsweepError
        unless it is the decision of this student's rung and judged points of its sweep only."""
        fix = f"delete {source} so that the workflow decides the rung again"
        if (decision.student, decision.rung, decision.stage) != (student, self.rungs[stage], stage):
            raise KdsweepError(f"{source} is the decision of {decision.student}'s rung {decision.stage + 1} (epoch "
                               f"{decision.rung}), not of {student}'s rung {stage + 1} (epoch {self.rungs[stage]}); {fix}")
        points = {Run(method, student, 0, method, hparams).name: (method, hparams)
                  for method in self.methods for hparams in self.points[method]}
        kept = set()
        for candidate in decision.candidates:
            picked = point_of(candidate)
            name = Run(picked[0], student, 0, picked[0], picked[1]).name
            if name not in points:
                raise KdsweepError(f"{source} judged {picked[0]} point {candidate.hparams}, which is not a point of "
                                   f"{student}'s sweep in this config; {fix}")
            if candidate.kept:
                kept.add(points[name])
        return kept

    def finalists(self, student, kept: set, method: str | None = None) -> list[Run]:
        """A student's distilled runs that the last rung kept (of one method, or all): those that finish."""
        return [run for pack in self.rung_packs(student, len(self.rungs), kept) for run in pack.runs
                if method is None or run.method == method]

    def pack(self, name: str) -> Pack:
        try:
            return self._packs_by_name[name]
        except KeyError:
            raise KdsweepError(f"pack {name!r} is not part of study {self.study!r}") from None

    def pack_of(self, run: Run) -> Pack:
        return self._pack_of[run]

    def planned(self, decided, confirm_choices: dict) -> tuple[list[Run], dict]:
        """The runs snakemake makes, given the checkpoints' choices so far: decided, what the search's
        checkpoints chose (kdsweep.search.base; Layout.decided reads their records on disk; None: nothing
        yet), confirm_choices {(student, method): (its best-point record, its path)} for the points chosen
        (kdsweep.layout names the files). Returns (runs, {(role, student): number of runs still waiting
        for their student's choice}): what `python -m kdsweep status` shows (halving: every point, as far as
        it trains)."""
        decided = decided or nothing_decided
        runs = [*self.teacher_runs(), *self.baselines(), *self.confirm_baselines(), *self.search.first_runs(self)]
        waiting, known = {}, set(runs)
        for student in self.students:
            try:
                runs += [run for run in self.search.decided_runs(self, student, decided) if run not in known]
            except Undecided:
                waiting.update(self.search.waiting(self, student, known))
        for student, method in self.choices():
            if (student, method) in confirm_choices:
                hparams = self.chosen_point(student, method, *confirm_choices[student, method])
                runs += self.confirmed(student, method, hparams)
            else:
                waiting["confirm", student] = waiting.get(("confirm", student), 0) + len(self.confirm_seeds)
        return runs, waiting
