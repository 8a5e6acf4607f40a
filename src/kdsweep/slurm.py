"""What kdsweep asks of a SLURM cluster beyond the workflow: a minimal site profile, and the queue.

- `write_site_profile`: `python -m kdsweep slurm-profile` writes a minimal Snakemake site profile
  named `slurm` (executor, job cap, status polling, and the account, partition and QoS given)
  where `snakemake --profile slurm` finds it, unless a profile of that name exists already: it is
  never overwritten. What belongs to the workflow (GPUs, time limits, the warning signal, grouped
  evaluations, retries) is the workflow profile, profiles/default/, which Snakemake adds by itself.
- `queue`: the jobs `squeue` lists (the status view counts a study's pending and running jobs).

Nothing here imports torch or snakemake at module level: the status view imports this module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from .errors import KdsweepError

PROFILE_NAME = "slurm"
# Profile file names Snakemake reads in a profile folder (snakemake.cli.get_profile_dir).
_PROFILE_FILES = ("profile.yaml", "config.yaml")


def profile_dirs() -> tuple[Path, Path]:
    """(user, site) folders Snakemake searches for a named profile: ~/.config/snakemake and
    /etc/xdg/snakemake, or what XDG_CONFIG_HOME / XDG_CONFIG_DIRS make of them."""
    from platformdirs import AppDirs  # what snakemake.common.get_appdirs uses

    dirs = AppDirs("snakemake", "snakemake")
    return Path(dirs.user_config_dir), Path(dirs.site_config_dir)


def existing_profile(name: str = PROFILE_NAME) -> Path | None:
    """The profile file `snakemake --profile NAME` would read from the user or site folder, or None."""
    for folder in profile_dirs():
        candidate = folder / name
        if candidate.is_file():
            return candidate
        if candidate.is_dir():
            for path in sorted(candidate.iterdir()):
                if path.name in _PROFILE_FILES or (path.name.startswith(("profile.v", "config.v"))
                                                    and path.name.endswith("+.yaml")):
                    return path
    return None


def _python_literal(value: str) -> str:
    """A resource value Snakemake evaluates as Python, as a YAML string: the string's Python literal
    (unquoted, a partition named `all` or `long` would become a builtin)."""
    return json.dumps(repr(str(value)))


def site_profile(account=None, partition=None, qos=None, jobs: int = 100, requeue: bool = True) -> str:
    """The text of a minimal site profile for these site values (None: SLURM's or the plugin's default)."""
    lines = [
        f"# A minimal SLURM site profile for `snakemake --profile {PROFILE_NAME}`, written by",
        f"# `python -m kdsweep slurm-profile` on {date.today().isoformat()}. Edit it freely: kdsweep never",
        "# overwrites it. It holds what depends on the cluster; what a workflow needs (GPUs, time",
        "# limits, retries) comes from that workflow's own profile (kdsweep: profiles/default/).",
        "executor: slurm",
        "# at most this many jobs submitted (pending or running) at once",
        f"jobs: {int(jobs)}",
        "# seconds to wait for a job's outputs to appear on the shared file system",
        "latency-wait: 60",
        "# rules marked local (downloads, tables, figures) run on the login node, one at a time",
        "local-cores: 1",
        "# first sacct poll this many seconds after a submission or a finished job (plugin default 40)",
        "slurm-init-seconds-before-status-checks: 10",
        "# without SLURM accounting (sacct missing or disabled), poll squeue instead:",
        "# slurm-status-command: squeue",
        "# after a node failure or preemption SLURM requeues the job (sbatch --requeue); with",
        "# slurm-no-requeue the job fails and Snakemake resubmits it",
        "slurm-requeue: true" if requeue else "slurm-no-requeue: true",
    ]
    if qos:
        lines.append(f"slurm-qos: {json.dumps(str(qos))}")
    resources = {"slurm_account": account, "slurm_partition": partition}
    if any(resources.values()):
        lines.append("# every job's account and partition (Python literals: Snakemake evaluates them)")
        lines.append("default-resources:")
        lines += [f"  {key}: {_python_literal(value)}" for key, value in resources.items() if value]
    else:
        lines += ["# every job's account and partition, when SLURM's defaults do not do:",
                  "# default-resources:",
                  "#   slurm_account: \"'myproject'\"",
                  "#   slurm_partition: \"'gpu'\""]
    return "\n".join(lines) + "\n"


def write_site_profile(account=None, partition=None, qos=None, jobs: int = 100,
                       requeue: bool = True) -> tuple[Path, bool]:
    """Write the minimal site profile into the user's Snakemake folder unless a `slurm` profile
    exists there or in the site folder. Returns (the profile's file, whether it was written now)."""
    found = existing_profile()
    if found:
        return found, False
    user, _ = profile_dirs()
    path = user / PROFILE_NAME / "config.yaml"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # "x": never replace a file, even one that appeared since the check above
        with open(path, "x") as handle:
            handle.write(site_profile(account, partition, qos, jobs, requeue))
    except FileExistsError:
        return path, False
    except OSError as err:
        raise KdsweepError(f"cannot write {path} ({err.strerror}); set XDG_CONFIG_HOME to a folder you "
                           "can write, or write the profile by hand") from err
    return path, True


# ---------------------------------------------------------------- the queue


@dataclass(frozen=True)
class QueuedJob:
    job_id: str  # the job's own id (an array task's too): SLURM_JOB_ID inside it
    array_id: str  # what squeue shows: <job id>, or <array job id>_<task> for an array task
    state: str  # PENDING, RUNNING, ...
    workdir: str
    comment: str  # the slurm plugin's rule_<rule>[_wildcards_<values>]


def queue(timeout: float = 10) -> list[QueuedJob] | None:
    """The caller's jobs in SLURM's queue, or None where squeue is not on PATH or does not answer."""
    squeue = shutil.which("squeue")
    if squeue is None:
        return None
    user = os.environ.get("USER") or os.environ.get("LOGNAME")
    command = [squeue, "-h", "-o", "%A|%i|%T|%Z|%k"] + (["-u", user] if user else [])
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    jobs = []
    for line in result.stdout.splitlines():
        parts = line.split("|", 4)
        if len(parts) == 5:
            jobs.append(QueuedJob(*(part.strip() for part in parts)))
    return jobs


# ---------------------------------------------------------------- two bugs of the slurm plugin

# snakemake-executor-plugin-slurm 2.8.0, as this workflow meets them on a real cluster:
#
# 1. sacct writes a job cancelled by someone (scancel, an admin, a preemption that cancels) as
#    "CANCELLED by <uid>". The plugin compares the state with its list of failed states exactly,
#    so it takes such a job for one still running and waits for it forever, instead of failing it
#    and letting Snakemake resubmit it (retries), whose run then resumes from its checkpoint. (The
#    old cookiecutter profile had the same bug: Snakemake-Profiles/slurm#22.)
# 2. After a job ends NODE_FAIL the plugin excludes the job's node from every later submission,
#    reading it from `sacct -o nodelist` whenever its poll sees the state. With requeue (the site
#    profile's default) SLURM has meanwhile put the same job back in its queue, for any node, and
#    what the poll reads depends on the moment: the node's name, or "None assigned" once the job is
#    requeued. "None assigned" makes every later sbatch fail ("Invalid node name specified"); the
#    node's name, on a partition whose nodes have each failed once, leaves no node for any later job
#    although SLURM has them back in service (a failed node is DOWN, and scheduled on by no job, until
#    it returns). Either way one node failure stops the study, at random (seen on the local cluster).
#    So with requeue, node health is SLURM's to judge: later jobs exclude only the nodes the user
#    named (`slurm-exclude-failed-nodes`). Without requeue the plugin fails the job itself and its
#    exclusion of the node for the retry is its documented behaviour: kept, less "None assigned".
_CANCELLED_BY = "CANCELLED by "


def job_state(state: str) -> str:
    """A job state as the plugin's lists spell it: "CANCELLED by 1000" is "CANCELLED"."""
    return "CANCELLED" if state.startswith(_CANCELLED_BY) else state


def node_names(nodes) -> set:
    """The entries of the plugin's failed-node set that are node lists SLURM accepts: not sacct's
    "None assigned" (or anything else with a space, which no node name has)."""
    return {node for node in nodes if node and not any(c.isspace() for c in node)}


def excluded_nodes(failed_nodes, settings) -> set:
    """The nodes a submission excludes, from the plugin's failed-node set and its executor settings:
    with requeue only the nodes the user named (`exclude_failed_nodes`), else the failed ones too."""
    named = {node.strip() for node in (getattr(settings, "exclude_failed_nodes", None) or "").split(",")}
    if getattr(settings, "requeue", False):
        return node_names(named)
    return node_names(set(failed_nodes or ()) | named)


def work_around_plugin_bugs() -> bool:
    """Work around both bugs above in the slurm executor plugin of this process: wrap its status
    query (job_state) and its submit command (excluded_nodes). Called by the workflow
    (workflow/rules/common.smk); does nothing where the plugin is not installed or lacks these
    functions (another version), and nothing twice. Returns whether both are wrapped."""
    try:
        import snakemake_executor_plugin_slurm as plugin
    except ImportError:
        return False
    query, submit = getattr(plugin, "query_job_status", None), getattr(plugin, "get_submit_command", None)
    if query is None or submit is None:
        return False
    if getattr(query, "kdsweep_wrapped", False):
        return True

    async def query_job_status(*args, **kwargs):
        states, duration = await query(*args, **kwargs)
        if states is not None:
            states = {job: job_state(state) for job, state in states.items()}
        return states, duration

    def get_submit_command(job, params, settings=None, failed_nodes=None, **kwargs):
        return submit(job, params, settings=settings, failed_nodes=excluded_nodes(failed_nodes, settings),
                      **kwargs)

    query_job_status.kdsweep_wrapped = get_submit_command.kdsweep_wrapped = True
    plugin.query_job_status, plugin.get_submit_command = query_job_status, get_submit_command
    return True
