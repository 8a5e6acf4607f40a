# Validation, the study plan, wildcard constraints and input functions.
#
# The study itself (its runs, packs and files, and the config slice each kind of job reads)
# is kdsweep.plan, tested Python; this file wires it to the rules. Each job calls
# `kdsweep <command>`, the Python that runs Snakemake (shell.prefix below). Its params are its
# config slice (commands.JOB_SLICES) in canonical form (commands.canonical), so a changed value
# reruns it and a changed spelling (keys reordered, a default restated, 1.0 for 1) does not. The
# packs trained so far keep their runs (plan.recorded_packs: their records on disk), so a new
# runtime.pack_size renames and reruns nothing. The runtime section reaches
# every job as the file results/<study>/runtime.yaml, an ancient() input: changing it rewrites
# the file and reruns nothing, since it changes no result beyond floating-point noise and a
# stopped run resumes under any runtime section.

import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate
from snakemake_interface_executor_plugins.settings import DeploymentMethod

# (nothing here imports torch: every snakemake, also the one inside each cluster job, parses this)
from kdsweep import chosen as choices
from kdsweep.config import check_finite, coerce_strings
from kdsweep.datasets import download_folder
from kdsweep.imagefolder import arrays_of
from kdsweep.errors import KdsweepError
from kdsweep.identity import measures_run_now, trained_as_configured
from kdsweep.commands import Commands, number
from kdsweep.joblog import ENV as JOB_LOG
from kdsweep.layout import TABLES, Layout
from kdsweep.plan import ROLES, Plan, Run, recorded_packs
from kdsweep.slurm import profile_warnings
from kdsweep.slurm_plugin import plugin_version, work_around_plugin_bugs

# `--config seeds=[0,1]` gives strings; read them as YAML where the schema wants numbers.
config.update(coerce_strings(config))
# Unknown keys and bad values stop the workflow here, before any job starts.
validate(config, "../schemas/config.schema.yaml")
try:
    check_finite(config)
    PLAN = Plan(config, recorded_packs(Path("results", config["study"])))
    LAYOUT = Layout(PLAN)
    COMMANDS = Commands(PLAN, LAYOUT)
    # the checkpoints' records already written, each checked (kdsweep.chosen): a damaged one stops the
    # workflow here, in one sentence, not in an input function's traceback
    choices.check(PLAN, LAYOUT)
except KdsweepError as err:
    raise WorkflowError(str(err))

# Every architecture known and buildable for the study's images (its family's small-image stem), every
# teacher checkpoint fitting its architecture and the study's classes (kdsweep.teachers, reading its keys
# and shapes only): once, in the main process, before any job. This imports torch; a cluster job's own
# snakemake does not repeat it.
if workflow.is_main_process:
    try:
        from kdsweep.teachers import check_config

        check_config(config)
    except KdsweepError as err:
        raise WorkflowError(str(err))

RESULTS = PLAN.results
LOGS = f"{RESULTS}/logs"
STATS = f"{RESULTS}/data/stats.json"
# an imagefolder dataset's: its files streamed, its validation and test images decoded once beside stats.json
IMAGEFOLDER = config["dataset"]["name"] == "imagefolder"
STATS_ARRAYS = [str(path) for path in arrays_of(STATS)] if IMAGEFOLDER else []
# the study's first teacher (the only one of most studies): its folder and its train record, written after
# its model.pt and metrics.json
TEACHER = LAYOUT.run_dir(PLAN.teacher)
(TEACHER_RECORD,) = LAYOUT.finished(PLAN.teacher)
DATASET_DIR = download_folder(config["dataset"]["name"], config["dataset"]["root"])
DATASET_RECORD = f"{RESULTS}/data/dataset.json"

RUNTIME = f"{RESULTS}/runtime.yaml"

# `kdsweep` in a rule's shell is the Python that runs Snakemake (also inside SLURM job steps);
# with --use-conda, python in workflow/envs/kdsweep.yaml with the checkout's src/ on PYTHONPATH.
ENV_FILE = Path(workflow.basedir, "workflow", "envs", "kdsweep.yaml")
CONDA_ENV = "../envs/kdsweep.yaml" if ENV_FILE.exists() else None
if (
    CONDA_ENV
    and DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
):
    SRC = shlex.quote(str(Path(workflow.basedir, "src")))
    PYTHON = f"PYTHONPATH={SRC}${{PYTHONPATH:+:$PYTHONPATH}} python"
else:
    PYTHON = shlex.quote(sys.executable)
# Each job appends to its log (`>> {log:q} 2>&1`), which kdsweep keeps across the job's attempts
# (KDSWEEP_JOB_LOG: kdsweep.joblog), so that a retried job's log still holds the stopped attempt's lines.
# (Snakemake formats the prefix as it formats a shell command: its braces are doubled.)
PREFIX = f'set -euo pipefail; kdsweep() {{ {JOB_LOG}=1 {PYTHON} -m kdsweep "$@"; }}; '
shell.prefix(PREFIX.replace("{", "{{").replace("}", "}}"))
# Threads per job: runtime.threads, or 1 when it is 0 (torch's default), so that `--cores N`
# runs N jobs side by side; a profile's set-threads overrides it.
THREADS = config["runtime"]["threads"] or 1


# On a cluster every GPU job asks for its GPUs (the workflow profile's set-resources): `gpu` is
# counted per submission. Locally nothing limits `gpu` (unless --resources gpu=N says so). The
# executor is known only once the DAG is built (not while this file is read), so the input
# functions set it (one_gpu_per_job).
resource_scopes:
    gpu="local",


def one_gpu_per_job():
    if not workflow.local_exec and "gpu" not in workflow.global_resources:
        workflow.register_resource("gpu", 1)


# Six bugs of the slurm executor plugin (kdsweep.slurm_plugin): a job cancelled with scancel waited
# for forever, one node failure failing every later submission, a crash or a hang when --jobs caps
# an array rule while groups are ready, an array under its first task's time limit, an array too long
# for one argument running its first task's job in every task, and one failed sacct call losing every
# watched job.
PLUGIN_WORKED_AROUND = work_around_plugin_bugs()

# A site profile's keys that the workflow profile also sets are dropped by Snakemake, whole (a later
# profile replaces an earlier one's top-level key): say so before any job is submitted.
if workflow.is_main_process:
    try:
        for sentence in profile_warnings(sys.argv[1:], workflow.main_snakefile):
            logger.warning(f"Warning: {sentence}.")
    except KdsweepError as err:
        raise WorkflowError(str(err))
    if not PLUGIN_WORKED_AROUND and plugin_version():
        logger.warning(
            f"Warning: snakemake-executor-plugin-slurm {plugin_version()} lacks the functions of 2.8 that "
            "kdsweep.slurm_plugin wraps, so its workarounds are off; on a cluster, "
            "`pip install snakemake-executor-plugin-slurm==2.8.0`."
        )


wildcard_constraints:
    role="|".join(ROLES),
    trained="teacher|baseline|confirm",
    model="|".join(
        re.escape(name)
        for name in sorted({*(run.teacher or run.model for run in PLAN.teacher_runs()), *PLAN.students})
    ),
    student="|".join(PLAN.students),
    seed=r"\d+",
    run=r"[^/]+",
    pack="|".join(re.escape(pack.name) for pack in PLAN.packs) or "(?!)",
    choice="|".join(PLAN.choice_name(s, m) for s, m in PLAN.choices()) or "(?!)",
    rung="|".join(str(rung) for rung in PLAN.rungs) or "(?!)",


# ------------------------------------------------------------------ input functions


def run_of(wildcards):
    one_gpu_per_job()
    return PLAN.run(wildcards.role, wildcards.run)


def measured_run(wildcards):
    """rule attack's input function: the tracked files of the run it measures (a distilled run's: its pack
    record), as ancient() where every file the job wrote of the run measured the run's model as it is now
    (identity.measures_run_now: their run hash and model digest; Layout.measurements: every attack result, worst
    case, the evaluation and the masking record): a record written again (its pack gained a point, or its job
    was forced) measures nothing again. A model trained again into other weights, a run whose metrics are
    not there yet, or a job with a file missing or of another version, is measured again once its record is
    newer than its files."""
    run = run_of(wildcards)
    # (and the run is not about to train again: its record, rewritten, would not rerun an ancient() input)
    current = (measures_run_now(LAYOUT.measurements(run), LAYOUT.run_dir(run))
               and trained_as_configured(PLAN, LAYOUT, run))
    return [ancient(path) if current else path for path in LAYOUT.finished(run)]


def run_dir(wildcards):
    return LAYOUT.run_dir(run_of(wildcards))


def source_runs(wildcards):
    """{role: run} of the other runs an attack job loads: the run's teacher (a baseline: the study's first; a
    teacher: none, it is measured against itself), whose fidelity it measures and whose transfer attacks it
    crafts, and a distilled run's own seed's baseline, source of a transfer attack (none without
    robustness.transfer)."""
    run = run_of(wildcards)
    sources = {} if run.role == "teacher" else {"teacher": PLAN.teacher_of(run).run}
    baseline = PLAN.baseline_of(run) if PLAN.suite.transfer is not None else None
    return sources if baseline is None else {**sources, "baseline": baseline}


def source_files(wildcards):
    """The tracked files of those runs (rule attack's input): it waits for them to finish."""
    return LAYOUT.finished_files(source_runs(wildcards).values())


def source_options(wildcards):
    """` --teacher DIR --baseline DIR` of rule attack's command, for the runs it has."""
    return "".join(
        f" --{role} {shlex.quote(LAYOUT.run_dir(run))}"
        for role, run in source_runs(wildcards).items()
    )


def pack_of(wildcards):
    return PLAN.pack(wildcards.pack)


def trained_run(wildcards):
    """The run a train job trains (a teacher, a baseline, a confirmation's baseline)."""
    return PLAN.run(wildcards.trained, f"{wildcards.model}_seed{wildcards.seed}")


def teacher_checkpoint(wildcards):
    """A teacher's checkpoint file, where it is one (rule train's input: a new file trains it again)."""
    run = trained_run(wildcards)
    found = PLAN.teacher_of(run).checkpoint_file if run.role == "teacher" else None
    return [found] if found else []


def teacher_of_pack(wildcards):
    """The teacher run a pack distils from."""
    return PLAN.teacher_of(pack_of(wildcards).runs[0]).run


def decided(checkpoint, read, **wildcards):
    """What a checkpoint of the study's search chose (kdsweep.search.base: a strategy's `decided`): read(its
    record's path), once Snakemake has run it."""
    return chosen(getattr(checkpoints, checkpoint), read, **wildcards)


def kept_before(student, stage):
    """The points a student's packs train at a stage (the search's decision before it; None: all of them)."""
    return PLAN.search.kept(PLAN, student, stage, decided)


def training_pack(wildcards):
    """The pack a distill job trains: at a stage after the first, the points the rung before kept."""
    pack = pack_of(wildcards)
    if not pack.stage:
        return pack
    return PLAN.surviving(pack, kept_before(pack.student, pack.stage))


def rung_before(wildcards):
    """A stage's pack waits for the rung before's decision (rule distill's input), as ancient(): a decision
    written again is the same decision (kdsweep.search.halving), and one that keeps other points changes the
    pack's points, its params."""
    pack = pack_of(wildcards)
    return [ancient(LAYOUT.rung_decision(pack.student, pack.stage - 1))] if pack.stage else []


def rung_records(wildcards):
    """Successive halving: the pack records a student's rung judges, of every pack with points to train
    (rule rung_decision's input)."""
    stage = PLAN.rungs.index(int(wildcards.rung))
    packs = PLAN.rung_packs(wildcards.student, stage, kept_before(wildcards.student, stage))
    return [LAYOUT.pack_record(pack) for pack in packs]


def search_outputs(student):
    """The outputs of a student's distilled runs that its search asks for once it has decided (staged: the
    soft-weight sweep at the chosen temperature; halving: the last rung's survivors, trained to the end)."""

    def outputs(wildcards):
        return LAYOUT.outputs(PLAN.search.outputs(PLAN, student, decided))

    outputs.__name__ = f"{PLAN.search.name}_{student}"
    return outputs


def study_folder(path):
    """results/<study> of a file in its tables/ or figures/ folder."""
    return os.path.dirname(os.path.dirname(path))


def temperature_sweep(wildcards):
    """Staged sweep: the pack records of a student's temperature sweep (best_temperature's input)."""
    return LAYOUT.finished_files(PLAN.temperature_sweep(wildcards.student))


def chosen(checkpoint, read, **wildcards):
    """What a checkpoint chose: read(its record's path), a kdsweep.chosen or kdsweep.search reader (checked)."""
    path = checkpoint.get(**wildcards).output[0]
    try:
        return read(path)
    except KdsweepError as err:
        raise WorkflowError(str(err))


def sweep_of(student, method):
    """The distillation runs a student's point of a method is chosen from, as its search says (staged kd:
    once its temperature is chosen; halving: the last rung's survivors)."""
    return PLAN.search.sweep(PLAN, student, method, decided)


def sweep_finished(wildcards):
    """Confirmation: the tracked files of a choice's sweep (best_point's input)."""
    return LAYOUT.finished_files(sweep_of(*PLAN.choice(wildcards.choice)))


def confirmation(student, method):
    """Confirmation: the outputs of a student's distilled runs of a method on the fresh seeds, at the point
    its checkpoint chose (the baselines on those seeds are fixed runs)."""

    def outputs(wildcards):
        # the points the search lets it pick (successive halving: of the last rung's survivors)
        among = PLAN.search.among(PLAN, student, method, decided)
        hparams = chosen(
            checkpoints.best_point,
            lambda path: choices.point(PLAN, student, method, path, among),
            choice=PLAN.choice_name(student, method),
        )
        return LAYOUT.outputs(PLAN.confirmed(student, method, hparams))

    outputs.__name__ = f"confirmation_{PLAN.choice_name(student, method)}"
    return outputs


# Every run output of the study, as named input functions of rules tables and all. One
# function per student where the search decides (kdsweep.search: staged, halving), so that each student's
# search goes on as soon as its own decision is made, and one per student and method for its confirmation
# (when confirm.seeds is set), which starts as soon as that sweep has finished.
STUDY_OUTPUTS = {"fixed": LAYOUT.outputs(PLAN.fixed_runs())}
if PLAN.search.decides:
    STUDY_OUTPUTS.update({f"{PLAN.search.name}_{s}": search_outputs(s) for s in PLAN.students})
# the decisions' records the tables read (halving: every rung's, for the pruned points' accuracy there)
if decisions := PLAN.search.decision_records(PLAN, LAYOUT):
    STUDY_OUTPUTS[f"{PLAN.search.name}_decisions"] = decisions
if PLAN.confirm_seeds:
    STUDY_OUTPUTS.update(
        {
            f"confirm_{PLAN.choice_name(s, m)}": confirmation(s, m)
            for s, m in PLAN.choices()
        }
    )
    # the choices themselves: tables/confirmed.* names each point's candidates
    STUDY_OUTPUTS["confirm_choices"] = [
        LAYOUT.confirm_record(s, m) for s, m in PLAN.choices()
    ]
