"""What each job is told on its command line: the slice of the config it reads (its rule's params, so
its rerun trigger), the machine-local values every job reads from one file, and a pack's points. One
home for how a config becomes a job's `key=value` overrides. Nothing here imports torch.

Every value reaches a command line in its canonical form (`canonical`): a study file's spelling is no change,
so that Snakemake's params trigger fires on a change of meaning only. Keys come in config.yaml's order (the
defaults', which every config is merged onto: the order a study file writes them in, or restating a default,
changes nothing), keys config.yaml lacks after them, sorted; a whole number is written as an integer (`1.0` and
`1` are one value, as config.yaml writes its whole numbers). Defaults are in every slice already: each config
is config.yaml's, merged with the study's files.
"""

from __future__ import annotations

import functools
import json
import math
import shlex

from .layout import Layout
from .plan import Pack, Plan, Run

# The data a job reads: what it is (kdsweep.identity.DATASET_KEYS), not where it lies.
_DATA = ("dataset.name", "dataset.subset", "dataset.val_fraction", "dataset.split_seed")
# The config values a job of each kind reads (dotted paths), but the machine-local ones (MACHINE_LOCAL). What
# the model an attack or evaluation measures was trained with is not in its slice: its input is its run's record,
# ancient() where its results on disk measured the run's model as it is now (their run hash and model digest:
# workflow/rules/common.smk, identity.measures_run_now), so that a record written again (another pack sharing
# it, a forced rerun) measures nothing again, and a model trained again is measured again.
JOB_SLICES = {
    "stats": _DATA,
    "train": (*_DATA, "training", "augmentation"),
    "attack": (*_DATA, "training.eval_batch_size", "epsilons", "attacks", "robustness", "evaluation"),
}
# What every job reads but no result depends on (beyond floating-point noise): where the data lies and
# the runtime section. The workflow gives them to every job in one file (results/<study>/runtime.yaml),
# an ancient() input: changing them reruns nothing.
MACHINE_LOCAL = ("dataset.root", "runtime")
# Runtime values a job never takes from the config: the threads are what the scheduler granted
# (runtime.threads={threads} on each command line), and pack_size is how the workflow groups runs.
SCHEDULING = ("threads", "pack_size")


def _get(config: dict, dotted: str):
    value = config
    for part in dotted.split("."):
        value = value[part]
    return value


@functools.cache
def _defaults() -> dict:
    from . import io
    from .config import DEFAULTS_PATH

    return io.read_yaml(DEFAULTS_PATH)


def canonical(value, defaults=None):
    """`value` (a config, a section, a number) in its canonical form (module docstring): the same for any
    spelling of the same meaning. `defaults`: config.yaml's part at the same place (None: the whole)."""
    if defaults is None:
        defaults = _defaults()
    if isinstance(value, dict):
        known = defaults if isinstance(defaults, dict) else {}
        keys = [key for key in known if key in value] + sorted(key for key in value if key not in known)
        return {key: canonical(value[key], known.get(key, {})) for key in keys}
    if isinstance(value, list):
        return [canonical(item, {}) for item in value]
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return int(value)
    return value


def number(value) -> str:
    """A number as a command line spells it (canonical: 1.0 as 1, 0.1 as 0.1)."""
    return json.dumps(canonical(value, {}))


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


def _without(config: dict, paths) -> dict:
    """`config` less the values at these dotted paths."""
    out = dict(config)
    for path in paths:
        head, _, rest = path.partition(".")
        if rest and isinstance(out.get(head), dict):
            out[head] = _without(out[head], [rest])
        else:
            out.pop(head, None)
    return out


# What a job of an imagefolder dataset reads besides (JOB_SLICES): which files, and how they become images.
# Only for it: the other datasets' jobs keep the command lines (their rules' params) they always had.
IMAGEFOLDER_SLICES = {
    "stats": ("dataset.train", "dataset.test", "dataset.skip_damaged", "imagefolder.eval_resize",
              "imagefolder.eval_crop"),
    "train": ("dataset.train", "dataset.test", "dataset.skip_damaged", "imagefolder"),
    "attack": ("dataset.train", "dataset.test", "dataset.skip_damaged", "imagefolder.eval_resize",
               "imagefolder.eval_crop"),
}


def job_slice(config: dict, kind: str, attack: str | None = None) -> dict:
    """The nested part of `config` a job of `kind` reads (JOB_SLICES, and IMAGEFOLDER_SLICES for that
    dataset)."""
    paths = [path.format(attack=attack) for path in JOB_SLICES[kind]]
    if config["dataset"]["name"] == "imagefolder":
        paths += IMAGEFOLDER_SLICES[kind]
    return select(config, paths)


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
    """overrides(section) in canonical form, shell-quoted, for a job's command line."""
    return " ".join(map(shlex.quote, overrides(canonical(section))))


def machine_local(config: dict) -> dict:
    """The MACHINE_LOCAL values a job takes from the config (the runtime section less SCHEDULING)."""
    local = select(config, MACHINE_LOCAL)
    local["runtime"] = {key: value for key, value in local["runtime"].items() if key not in SCHEDULING}
    return local


class Commands:
    """The command-line spellings of a study's jobs."""

    def __init__(self, plan: Plan, layout: Layout):
        self.plan, self.layout = plan, layout

    def job_config(self, kind: str, attack: str | None = None) -> str:
        """The command-line overrides of a job's config slice (its rule's params: its rerun trigger)."""
        return command_line(job_slice(self.plan.config, kind, attack))

    def dataset_location(self) -> str:
        """The command-line overrides of the dataset's name and folder (the download's params)."""
        return command_line(select(self.plan.config, ("dataset.name", "dataset.root")))

    def methods_option(self) -> str:
        """The plots command's ` --methods ...` for a study with KD methods beside kd ('' for kd alone: the
        reference study's command, unchanged)."""
        others = [method for method in self.plan.methods if method != "kd"]
        return f" --methods {' '.join(others)}" if others else ""

    def machine_local(self) -> str:
        """The command-line overrides of MACHINE_LOCAL (no rerun trigger: see the module docstring)."""
        return command_line(machine_local(self.plan.config))

    def study_meaning(self) -> str:
        """The config less what no result depends on (MACHINE_LOCAL, SCHEDULING), as command-line overrides:
        the tables' params (a changed value rebuilds them; another device, data folder or pack size does not)."""
        return command_line(_without(self.plan.config, MACHINE_LOCAL))

    def study_config(self) -> str:
        """The whole config as command-line overrides (rule study's params: a changed value rewrites it), but
        SCHEDULING: how the workflow groups its jobs is not what the study is, and changing it plans nothing."""
        return command_line(_without(self.plan.config, [f"runtime.{key}" for key in SCHEDULING]))

    def train_options(self, run: Run) -> str:
        """A train job's options beside its config slice: for a teacher from a checkpoint `--checkpoint SPEC`
        (and `--fine-tune`), for a teacher named otherwise than its architecture `--architecture MODEL`; '' for
        every other run (the reference study's commands, unchanged). Ends with a space where not empty."""
        if run.role != "teacher":
            return ""
        teacher = self.plan.teacher_of(run)
        options = [f"--architecture {teacher.model}"] if run.teacher else []
        if teacher.checkpoint:
            options.append(f"--checkpoint {shlex.quote(teacher.checkpoint)}")
            options += ["--fine-tune"] if teacher.fine_tune else []
        return "".join(f"{option} " for option in options)

    def pack_points(self, pack: Pack) -> str:
        """The points of the pack's distill command: `--point <method>:<name>=<value>,... --out RUN_DIR`
        pairs; a pack of kd points alone `--temperature T --soft-weight w --out RUN_DIR` triples, as the
        reference study's jobs have always had them (their params: the same string reruns nothing), each number
        canonical (`number`: the config's 4.0 is 4). A halving rung's pack adds `--until-epoch <its rung>`."""
        until = f" --until-epoch {pack.until}" if pack.until else ""
        # a teacher but the study's first: its name, which the points' folder names carry
        until += f" --teacher-name {pack.teacher}" if pack.teacher else ""
        if all(run.method == "kd" for run in pack.runs):
            return " ".join(f"--temperature {number(run.temperature)} --soft-weight {number(run.soft_weight)}"
                            f" --out {shlex.quote(self.layout.run_dir(run))}" for run in pack.runs) + until
        return " ".join(f"--point {run.spec()} --out {shlex.quote(self.layout.run_dir(run))}"
                        for run in pack.runs) + until
