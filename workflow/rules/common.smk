# Config validation, run naming and the input functions of the DAG.
#
# Every job calls `python -m kdsweep <command>` with the same Python that runs
# Snakemake, the defaults file config.yaml of the workflow, and the study's
# values as `section.key=value` overrides: each value a job uses is on its
# command line, and a change of any of them reruns the job (params trigger).

import json
import os
import re
import shlex
import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake_interface_executor_plugins.settings import DeploymentMethod
from snakemake.utils import update_config, validate

from kdsweep.naming import attack_file, fmt, run_name


def read_config_args_as_yaml():
    """Read `--config key=[...]` and `key={...}` values as YAML, as the kdsweep CLI does.

    Snakemake reads lists and mappings given with --config through YAML's BaseLoader,
    which keeps every item a string (seeds=[0,1] gives ['0', '1']).
    """
    given = workflow.config_settings.config
    for entry in workflow.config_settings.config_args or []:
        key, _, raw = entry.partition("=")
        if isinstance(given.get(key), (list, dict)):
            value = yaml.safe_load(raw)
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                update_config(config[key], value)
            else:
                config[key] = value


read_config_args_as_yaml()
# Unknown keys and bad values stop the workflow here, before any job starts.
validate(config, "../schemas/config.schema.yaml")


# ------------------------------------------------------------------ constants

RESULTS = f"results/{config['study']}"
LOGS = f"{RESULTS}/logs"
STATS = f"{RESULTS}/data/stats.json"

# Every job runs `python -m kdsweep` with the Python that runs Snakemake (also
# inside SLURM job steps), which has the kdsweep package installed. With
# --use-conda, jobs run in the conda environment workflow/envs/kdsweep.yaml (the
# package's dependencies) with the checkout's src/ on PYTHONPATH.
ENV_FILE = Path(workflow.basedir, "workflow", "envs", "kdsweep.yaml")
CONDA_ENV = "../envs/kdsweep.yaml" if ENV_FILE.exists() else None
if (
    CONDA_ENV
    and DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
):
    KDSWEEP = f"PYTHONPATH={shlex.quote(str(Path(workflow.basedir, 'src')))} python -m kdsweep"
else:
    KDSWEEP = f"{shlex.quote(sys.executable)} -m kdsweep"
# The defaults every job starts from; the overrides below replace every value it uses.
DEFAULTS = shlex.quote(str(Path(workflow.basedir, "config.yaml")))


# params functions for the two above. They take `threads`, which makes Snakemake
# count them as derived and leave them out of the params rerun trigger: another
# path to the same interpreter or a moved checkout is no change of the study.
def kdsweep(wildcards, threads):
    return KDSWEEP


def defaults(wildcards, threads):
    return DEFAULTS


TEACHER = config["teacher"]
STUDENTS = list(config["students"])
SEEDS = list(config["seeds"])
STAGED = config["sweep"] == "staged"
STAGED_W = config["staged"]["soft_weight"]

# Threads per training/attack job: runtime.threads, or 1 when it is 0 (torch's
# default), so that `--cores N` runs N jobs side by side. A profile's
# set-threads overrides it; the job is told the number Snakemake granted.
THREADS = config["runtime"]["threads"] or 1

# torchvision's folder of each downloadable dataset (digits is bundled with scikit-learn).
DATASET_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
DATASET_DIR = (
    os.path.join(config["dataset"]["root"], DATASET_FOLDERS[config["dataset"]["name"]])
    if config["dataset"]["name"] in DATASET_FOLDERS
    else None
)


def number_lookup(key, values):
    """Folder-name spelling (naming.fmt) -> the exact config number; refuse two values with one name."""
    table = {}
    for value in values:
        name = fmt(value)
        if name in table and table[name] != value:
            raise WorkflowError(
                f"config {key} hold {table[name]!r} and {value!r}, which share the folder "
                f"name '{name}' (6 significant digits); make them differ within those"
            )
        table[name] = value
    return table


TEMPERATURE = number_lookup("temperatures", config["temperatures"])
SOFT_WEIGHT = number_lookup(
    "soft_weights and staged.soft_weight" if STAGED else "soft_weights",
    [*config["soft_weights"], *([STAGED_W] if STAGED else [])],
)
EPSILON = number_lookup("epsilons", config["epsilons"])


def alternatives(names):
    """A regex matching exactly the given strings (and nothing when there are none)."""
    return "|".join(map(re.escape, sorted(names, key=len, reverse=True))) or "(?!)"


wildcard_constraints:
    model=alternatives({TEACHER["model"], *STUDENTS}),
    student=alternatives(STUDENTS),
    seed=r"\d+",
    T=alternatives(TEMPERATURE),
    w=alternatives(SOFT_WEIGHT),
    eps=alternatives(EPSILON),
    role="teacher|baseline|kd",
    run=r"[^/]+",


# ------------------------------------------------------------------ command lines


# Keys of the config that change no result, kept off the jobs' params: the
# threads Snakemake grants are passed on their own, and pack_size only changes
# how many sweep points one job trains (DISTILL_PACKS below).
NOT_RESULTS = {"runtime.threads", "runtime.pack_size"}


def flatten(prefix, value):
    """`prefix.key=value` pairs of a nested mapping, innermost values as JSON (YAML)."""
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from flatten(f"{prefix}.{key}", item)
    elif prefix not in NOT_RESULTS:
        yield f"{prefix}={json.dumps(value)}"


def job_config(*sections):
    """The `section.key=value` overrides (shell-quoted) of the config sections a job reads.

    Given after `--config config.yaml`, they set every value the job uses, and as a
    param of the rule each reruns the job when it changes. A section may be a dotted
    path (attacks.pgd).
    """
    overrides = []
    for section in sections:
        value = config
        for part in section.split("."):
            value = value[part]
        overrides += map(shlex.quote, flatten(section, value))
    return " ".join(overrides)


# Sections each kind of job reads (the rest of the config does not change its result).
DATA_CONFIG = job_config("dataset")
TRAIN_CONFIG = job_config("dataset", "training", "augmentation", "runtime")
EVALUATION_CONFIG = job_config("dataset", "training", "evaluation", "runtime")

# The attacks switched on (attacks.<name> not null), each with its own parameters.
ATTACKS = [name for name, params in config["attacks"].items() if params is not None]


def attack_config(attack):
    if attack not in ATTACKS:  # switched off: its rule makes no job
        return ""
    return job_config("dataset", "training", "runtime", f"attacks.{attack}")


# ------------------------------------------------------------------ runs of the study


def run_dir(role, model, seed, temperature=None, soft_weight=None):
    return (
        f"{RESULTS}/runs/{role}/{run_name(role, model, seed, temperature, soft_weight)}"
    )


TEACHER_DIR = run_dir("teacher", TEACHER["model"], TEACHER["seed"])


def teacher_runs():
    return [("teacher", TEACHER["model"], TEACHER["seed"], None, None)]


def baseline_runs():
    return [("baseline", s, seed, None, None) for s in STUDENTS for seed in SEEDS]


def grid_runs(students=STUDENTS, temperatures=None, soft_weights=None):
    temperatures = config["temperatures"] if temperatures is None else temperatures
    soft_weights = config["soft_weights"] if soft_weights is None else soft_weights
    return [
        ("kd", s, seed, t, w)
        for s in students
        for t in temperatures
        for w in soft_weights
        for seed in SEEDS
    ]


def temperature_sweep(student):
    """Staged sweep, stage 1: every temperature at w = staged.soft_weight."""
    return grid_runs([student], soft_weights=[STAGED_W])


def chosen_temperature(student):
    """Staged sweep: the temperature the best_temperature checkpoint picked (on validation accuracy)."""
    path = checkpoints.best_temperature.get(student=student).output[0]
    with open(path) as handle:
        chosen = json.load(handle)["temperature"]
    if fmt(chosen) not in TEMPERATURE:
        raise WorkflowError(
            f"{path} picks temperature {chosen}, which is not in the config's temperatures; "
            f"delete {path} so that it is chosen again"
        )
    return TEMPERATURE[fmt(chosen)]


def soft_weight_sweep(student):
    """Staged sweep, stage 2: every soft weight at the student's chosen temperature."""
    return grid_runs([student], temperatures=[chosen_temperature(student)])


def fixed_runs():
    """The runs known before any checkpoint: teacher, baselines, and the grid (or stage 1)."""
    runs = teacher_runs() + baseline_runs()
    if STAGED:
        for student in STUDENTS:
            runs += temperature_sweep(student)
    else:
        runs += grid_runs()
    return runs


def run_outputs(runs):
    """Per run (duplicates dropped): its metrics.json, its evaluation, and its
    result under every attack switched on at every epsilon."""
    files = []
    for run in dict.fromkeys(runs):
        folder = run_dir(*run)
        role, name = run[0], os.path.basename(folder)
        files.append(f"{folder}/metrics.json")
        files.append(f"{RESULTS}/evaluation/{role}/{name}.json")
        files += [
            f"{RESULTS}/attacks/{role}/{name}/{attack_file(attack, eps)}"
            for attack in ATTACKS
            for eps in config["epsilons"]
        ]
    return files


def fixed_outputs(wildcards):
    return run_outputs(fixed_runs())


def staged_outputs(student):
    """Input function: the soft-weight sweep of one student (resolved by its checkpoint)."""

    def outputs(wildcards):
        return run_outputs(soft_weight_sweep(student))

    outputs.__name__ = f"staged_outputs_{student}"
    return outputs


# Every run output of the study, as named input functions of rules tables and all.
# One function per student in the staged sweep, so that each student's soft-weight
# sweep starts as soon as its own temperature is chosen.
STUDY_OUTPUTS = {"fixed": fixed_outputs}
if STAGED:
    STUDY_OUTPUTS.update({f"staged_{s}": staged_outputs(s) for s in STUDENTS})


# ------------------------------------------------------------------ packed sweep points

PACK_SIZE = config["runtime"]["pack_size"]


def distill_packs():
    """The distillation runs, runtime.pack_size to a job: [(rule name, [run, ...])].

    The points of a pack share student and seed (so their data stream and teacher
    logits). grid: the grid's points. staged: the temperature sweep, and for each
    temperature the soft-weight sweep it would get if chosen (the points not in the
    temperature sweep): only the chosen temperature's packs become jobs. No run is
    in two packs, so each file has one rule. [] when pack_size is 1.
    """
    if PACK_SIZE == 1:
        return []
    packs = []
    for student in STUDENTS:
        if STAGED:
            sweeps = [temperature_sweep(student)] + [
                [run for run in grid_runs([student], [t]) if run[4] != STAGED_W]
                for t in config["temperatures"]
            ]
        else:
            sweeps = [grid_runs([student])]
        for seed in SEEDS:
            points = [[run for run in sweep if run[2] == seed] for sweep in sweeps]
            chunks = [
                sweep[i : i + PACK_SIZE]
                for sweep in points
                for i in range(0, len(sweep), PACK_SIZE)
            ]
            packs += [
                (f"distill_{student}_seed{seed}_pack{number}", chunk)
                for number, chunk in enumerate(chunks, 1)
            ]
    return packs


def point_args(points):
    """The `--temperature T --soft-weight w --out RUN` triples of a distill job.

    A params function of `threads` (so not a rerun trigger, as above): the values are
    in the run folders' names already, and a changed pack_size reruns nothing.
    """
    args = " ".join(
        f"--temperature {json.dumps(t)} --soft-weight {json.dumps(w)}"
        f" --out {shlex.quote(run_dir('kd', student, seed, t, w))}"
        for (_, student, seed, t, w) in points
    )

    def distill_points(wildcards, threads):
        return args

    return distill_points


def one_point(wildcards, threads):
    """point_args of the one-point distill job (runtime.pack_size 1)."""
    run = (
        "kd",
        wildcards.model,
        int(wildcards.seed),
        TEMPERATURE[wildcards.T],
        SOFT_WEIGHT[wildcards.w],
    )
    return point_args([run])(wildcards, threads)


def temperature_sweep_metrics(wildcards):
    return [
        f"{run_dir(*run)}/metrics.json" for run in temperature_sweep(wildcards.student)
    ]


def study_folder(path):
    """results/<study> of a file in its tables/ or figures/ folder."""
    return os.path.dirname(os.path.dirname(path))


def folders(paths):
    return [os.path.dirname(path) for path in paths]


# ------------------------------------------------------------------ tables and figures

TABLES = [
    "runs.csv",
    "robustness.csv",
    "table1.csv",
    "table1.md",
    "kd_vs_hard.csv",
    "kd_vs_hard.md",
    "grid.csv",
]
# (kind, student): one figure per kind and student, and one temperature figure for all.
FIGURES = [("temperature", None), ("fidelity", None)] + [
    (kind, s) for s in STUDENTS for kind in ("soft_weight", "grid", "robustness")
]


def table(name):
    return f"{RESULTS}/tables/{name}"


def figure(kind, student, ext):
    name = kind if student is None else f"{kind}_{student}"
    return f"{RESULTS}/figures/{name}.{ext}"
