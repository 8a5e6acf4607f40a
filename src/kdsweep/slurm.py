"""What kdsweep asks of a SLURM cluster beyond the workflow: a minimal site profile, and the queue.

- `write_site_profile`: `python -m kdsweep slurm-profile` writes a minimal Snakemake site profile
  named `slurm` (executor, job cap, status polling, and the account, partition and QoS given)
  where `snakemake --profile slurm` finds it, unless a profile of that name exists already: it is
  never overwritten. What belongs to the workflow (GPUs, time limits, the warning signal, grouped
  evaluations, retries) is the workflow profile, profiles/default/, which Snakemake adds by itself.
- `dropped_settings`: what of a site profile Snakemake drops because the workflow profile sets the
  same top-level key (Snakemake >= 9.19 replaces a whole key of an earlier profile with a later
  one's): the workflow warns before any job is submitted (`warn_about_dropped_settings`), and
  `kdsweep slurm-profile` checks an existing profile the same way.
- `queue`: the jobs `squeue` lists (the status view counts a study's pending and running jobs).

The workarounds for the slurm executor plugin's bugs are kdsweep.slurm_plugin.

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
    exists there or in the site folder. Returns (the profile's file, whether it was written now);
    dropped_settings tells what of an existing one the workflow profile would drop."""
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


# ---------------------------------------------------------------- what the workflow profile replaces

# The workflow profile of this checkout (Snakemake finds profiles/default next to the Snakefile).
WORKFLOW_PROFILE = Path(__file__).resolve().parents[2] / "profiles" / "default" / "config.yaml"


def read_profile(path) -> dict:
    """A profile file as Snakemake reads it: its YTE rendered, each top-level key's value a string or,
    for mappings such as set-resources, the list of `key=value` entries Snakemake makes of it."""
    from snakemake.profiles import ProfileConfigFileParser

    try:
        with open(path) as stream:
            return dict(ProfileConfigFileParser().parse(stream))
    except OSError as err:
        raise KdsweepError(f"cannot read the profile {path} ({err.strerror})") from err
    except Exception as err:  # configargparse's and YTE's errors
        raise KdsweepError(f"cannot read the profile {path} ({err}); fix its YAML") from err


def dropped_settings(site: dict, workflow: dict) -> dict:
    """{key: the site profile's values that Snakemake drops}: for each top-level key both profiles set,
    the site's entries the workflow profile's value does not also hold (the workflow profile comes
    later and replaces the whole key)."""
    dropped = {}
    for key in site.keys() & workflow.keys():
        ours, theirs = site[key], workflow[key]
        if isinstance(ours, list):
            kept = set(theirs) if isinstance(theirs, list) else {theirs}
            lost = [entry for entry in ours if entry not in kept]
        else:
            lost = [] if ours == theirs else [ours]
        if lost:
            dropped[key] = lost
    return dict(sorted(dropped.items()))


def dropped_sentence(site_path, workflow_path, dropped: dict) -> str:
    """One sentence: which of the site profile's values are dropped, and how to keep them."""
    listed = "; ".join(f"{key} ({', '.join(values)})" for key, values in dropped.items())
    return (f"the site profile {site_path} sets {listed}, which the workflow profile {workflow_path} replaces "
            "whole, so Snakemake drops these values: to keep them, put resources that hold for every rule "
            "under the site profile's default-resources (which the workflow profile leaves alone), and the "
            f"rest into {workflow_path}, or give them on the command line")


def site_profile_files(argv, environ=os.environ) -> list[Path]:
    """The profile files of `--profile` (repeatable; else $SNAKEMAKE_PROFILE), as Snakemake finds them."""
    from snakemake.cli import get_profile_dir

    names = []
    for index, arg in enumerate(argv):
        if arg == "--profile" and index + 1 < len(argv):
            names.append(argv[index + 1])
        elif arg.startswith("--profile="):
            names.append(arg.split("=", 1)[1])
    if not names and environ.get("SNAKEMAKE_PROFILE"):
        names = [environ["SNAKEMAKE_PROFILE"]]
    found = [get_profile_dir(name) for name in names if name != "none"]
    return [Path(entry[1]) for entry in found if entry is not None]


def workflow_profile_file(argv, snakefile) -> Path | None:
    """The workflow profile Snakemake adds (cli.parse_args: `--workflow-profile`, else profiles/default,
    looked for in the working directory, then next to the Snakefile), or None (`--workflow-profile none`)."""
    name = None
    for index, arg in enumerate(argv):
        if arg == "--workflow-profile" and index + 1 < len(argv):
            name = argv[index + 1]
        elif arg.startswith("--workflow-profile="):
            name = arg.split("=", 1)[1]
    if name == "none":
        return None
    name = Path(name or "default")
    for candidate in (name, Path("profiles") / name, Path(snakefile).parent / "profiles" / name):
        if candidate.is_file():
            return candidate
        for file in (candidate / "profile.yaml", candidate / "config.yaml"):
            if candidate.is_dir() and file.is_file():
                return file
    return None


def profile_warnings(argv, snakefile, environ=os.environ) -> list[str]:
    """One sentence per site profile of this snakemake command whose settings the workflow profile drops."""
    workflow_path = workflow_profile_file(argv, snakefile)
    if workflow_path is None:
        return []
    workflow = read_profile(workflow_path)
    sentences = []
    for site_path in site_profile_files(argv, environ):
        if site_path.resolve() == workflow_path.resolve():
            continue
        dropped = dropped_settings(read_profile(site_path), workflow)
        if dropped:
            sentences.append(dropped_sentence(site_path, workflow_path, dropped))
    return sentences


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
