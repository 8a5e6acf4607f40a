"""The study's jobs on a real SLURM cluster through `snakemake --profile slurm`: the profiles, job
arrays, the time-limit resume, the faults a cluster delivers, and the status view beside a sweep.

The tests marked `slurm` submit jobs, and only to a cluster they were told to use: the test
cluster scripts/slurm-cluster.sh starts (one node with two fake GPUs and accounting,
docs/slurm-cluster.md), which it names in a marker file, or, with KDSWEEP_TEST_SLURM=1, the
cluster `sinfo` answers. Each names in its mark what it needs of the cluster (accounting, GPUs,
a node it may fail, ...), checked before it submits anything. Otherwise they skip with the reason,
unless KDSWEEP_REQUIRE_SLURM=1 (CI) says the test cluster is required: then they fail. They
run the workflow in a temporary directory
(`--snakefile` of this checkout, never its results/), as a user would:
`snakemake --profile slurm --configfile config.yaml tests/studies/slurm.yaml`, with the
site profile named slurm that `python -m kdsweep slurm-profile` writes (into a temporary
XDG_CONFIG_HOME) and the workflow profile, profiles/default/, that Snakemake adds.

The study is tests/studies/slurm.yaml, a smaller cut of studies/demo.yaml (400 of its training
images, its settings, one small network, one distillation run, one epsilon): the demo takes
about ten minutes on two cores by itself, and through SLURM's scheduling and
status polling more, while this file has to finish in about ten.

The site profile's account, partition and QoS come from KDSWEEP_SLURM_ACCOUNT, _PARTITION
and _QOS where they are set; the account defaults to `root`, the one scripts/slurm-cluster.sh
registers.
"""

import contextlib
import csv
import fcntl
import functools
import getpass
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import built_once
from conftest import kd_run

from kdsweep.config import load_config
from kdsweep.layout import Layout, attack_file
from kdsweep.plan import Plan


def run_path(*run):
    return kd_run(*run).folder

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_PROFILE = ROOT / "profiles" / "default"  # Snakemake adds it by itself
SITE_PROFILE = ROOT / "profiles" / "slurm"  # the checkout's site profile (KDSWEEP_SLURM_* variables)
STUDY = ROOT / "tests" / "studies" / "slurm.yaml"
CONFIGS = [ROOT / "config.yaml", STUDY]
# The tests that time a run by its epochs (the time limit, the faults) train on all the digits, about
# 3 s an epoch here, not on the study's subset: as a job's override, and as snakemake's --config.
ALL_DIGITS, ALL_DIGITS_CONFIG = "dataset.subset=null", "dataset={subset: null}"
TRAINING_RULES = ("train", "distill")
EVALUATION_RULES = ("attack",)
GPU_RULES = (*TRAINING_RULES, *EVALUATION_RULES)
LOCAL_RULES = ("download", "runtime", "tables", "figures", "best_temperature")
SITE_VARIABLES = ("KDSWEEP_SLURM_ACCOUNT", "KDSWEEP_SLURM_PARTITION", "KDSWEEP_SLURM_QOS")
# Status polling starts 5 s after a submission instead of the site profile's 10 s (a scalar
# option: the command line overrides it without touching the rest of the profiles).
FAST_POLL = ["--slurm-init-seconds-before-status-checks", "5"]


# ---------------------------------------------------------------- the profiles themselves (no cluster)


def parse_profile(monkeypatch, folder, **variables):
    """A profile as Snakemake reads it (YTE rendering included), with these environment variables."""
    from snakemake.profiles import ProfileConfigFileParser

    for name in (*SITE_VARIABLES, "KDSWEEP_SLURM_TRAIN_MINUTES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with open(Path(folder) / "config.yaml") as stream:
        return ProfileConfigFileParser().parse(stream)


def _resources(profile):
    resources = {}
    for entry in profile["set-resources"]:
        rule, _, assignment = entry.partition(":")
        name, _, value = assignment.partition("=")
        resources.setdefault(rule, {})[name] = value
    return resources


def test_workflow_profile_gives_every_gpu_rule_one_gpu_one_cpu_and_growing_runtimes(monkeypatch):
    profile = parse_profile(monkeypatch, WORKFLOW_PROFILE)
    assert int(profile["retries"]) >= 1
    resources = _resources(profile)
    threads = dict(entry.split("=") for entry in profile["set-threads"])
    for rule in GPU_RULES:
        assert resources[rule]["gpu"] == "1", f"{rule} asks for one GPU (gpu=, not gpus=: see docs/slurm-cluster.md)"
        assert threads[rule] == "1", f"{rule} asks for one CPU, so that two jobs share a 2-CPU node"
        assert int(resources[rule]["mem_mb"]) > 0
        runtimes = [eval(resources[rule]["runtime"], {"attempt": attempt}) for attempt in (1, 2, 3)]
        assert runtimes[0] < runtimes[1] < runtimes[2], f"{rule}'s runtime grows with the attempt"
    def extra(rule, trained="baseline"):
        return eval(resources[rule]["slurm_extra"], {"wildcards": SimpleNamespace(trained=trained)}).split()

    def nice(options):
        return int(next((o.split("=")[1] for o in options if o.startswith("--nice=")), 0))

    for rule in TRAINING_RULES:
        assert re.fullmatch(r"--signal=URG@\d+", extra(rule)[0]), \
            "training jobs ask for SIGURG before the time limit (SIGUSR1 kills the job's snakemake)"
        assert eval(resources[rule]["runtime"], {"attempt": 1}) == 240
    assert not any("--signal" in option for rule in EVALUATION_RULES for option in extra(rule))
    # SLURM's order among our own pending jobs: the teacher, then the other training, then evaluations
    assert nice(extra("train", "teacher")) < nice(extra("train")) == nice(extra("distill")) < nice(extra("attack"))
    assert "group-components" not in profile  # one attack job per run: nothing to group
    assert profile["slurm-keep-successful-logs"] == "True" and profile["slurm-logdir"]
    # Nothing site-specific: the site profile's keys are not replaced by this one's.
    site_keys = {"executor", "jobs", "default-resources", "slurm-qos", "slurm-partition", "latency-wait",
                 "slurm-status-command", "local-cores"}
    assert not site_keys & set(profile), site_keys & set(profile)


def test_workflow_profile_reads_the_training_time_limit_from_the_environment(monkeypatch):
    profile = parse_profile(monkeypatch, WORKFLOW_PROFILE, KDSWEEP_SLURM_TRAIN_MINUTES="90")
    for rule in TRAINING_RULES:
        assert f"{rule}:runtime=90 * attempt" in profile["set-resources"]


def test_site_profile_is_the_site_alone_and_reads_account_partition_qos_from_the_environment(monkeypatch):
    profile = parse_profile(monkeypatch, SITE_PROFILE)
    assert profile["executor"] == "slurm" and int(profile["jobs"]) > 0
    # what the workflow profile sets, and would replace, is not here
    assert not {"set-resources", "set-threads", "group-components", "retries"} & set(profile)
    # nothing site-specific unless the user sets it
    assert "default-resources" not in profile and "slurm-qos" not in profile
    assert "slurm-status-command" not in profile
    profile = parse_profile(monkeypatch, SITE_PROFILE, KDSWEEP_SLURM_ACCOUNT="proj-42",
                            KDSWEEP_SLURM_PARTITION="all", KDSWEEP_SLURM_QOS="high")
    # quoted, so that a partition named like a Python builtin (`all`) stays a string
    assert "slurm_account='proj-42'" in profile["default-resources"]
    assert "slurm_partition='all'" in profile["default-resources"]
    assert profile["slurm-qos"] == "high"


def _profile_folders(tmp_path):
    """Environment variables that point Snakemake's user and site profile folders into tmp_path."""
    user, site = tmp_path / "user-config", tmp_path / "site-config"
    user.mkdir(parents=True, exist_ok=True)
    site.mkdir(parents=True, exist_ok=True)
    return {"XDG_CONFIG_HOME": str(user), "XDG_CONFIG_DIRS": str(site)}


def _kdsweep(*args, env):
    return subprocess.run([sys.executable, "-m", "kdsweep", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_slurm_profile_command_writes_a_minimal_site_profile_and_never_overwrites_one(monkeypatch, tmp_path):
    folders = _profile_folders(tmp_path)
    written = Path(folders["XDG_CONFIG_HOME"]) / "snakemake" / "slurm" / "config.yaml"
    result = _kdsweep("slurm-profile", "--account", "proj-42", "--partition", "all", "--qos", "high", env=folders)
    assert result.returncode == 0 and f"wrote {written}" in result.stdout, result.stderr
    profile = parse_profile(monkeypatch, written.parent)
    assert profile["executor"] == "slurm" and int(profile["jobs"]) == 100
    assert {"slurm_account='proj-42'", "slurm_partition='all'"} <= set(profile["default-resources"])
    assert profile["slurm-qos"] == "high"
    assert not {"set-resources", "set-threads", "group-components", "retries"} & set(profile)

    # a profile that exists is left as it is: the user's own, or the site's
    written.write_text("executor: slurm\njobs: 7\n")
    result = _kdsweep("slurm-profile", "--account", "other", env=folders)
    assert result.returncode == 0 and "left as it is" in result.stdout
    assert written.read_text() == "executor: slurm\njobs: 7\n"
    written.unlink()
    site = Path(folders["XDG_CONFIG_DIRS"]) / "snakemake" / "slurm" / "profile.yaml"
    site.parent.mkdir(parents=True)
    site.write_text("executor: slurm\n")
    result = _kdsweep("slurm-profile", env=folders)
    assert result.returncode == 0 and str(site) in result.stdout and not written.exists()


# What a site profile may set that the workflow profile sets too (so Snakemake drops it).
SITE_KEYS_THE_WORKFLOW_PROFILE_REPLACES = """
retries: 5
set-resources:
  distill:
    slurm_partition: "'gpu-long'"
    runtime: "240 * attempt"
  train:
    constraint: "'a100'"
"""


def test_what_the_workflow_profile_drops_of_a_site_profile_is_named_by_slurm_profile(tmp_path):
    """dropped_settings: a site profile's entries under a key the workflow profile also sets, less what
    the workflow profile holds too (here distill's runtime); `kdsweep slurm-profile` on an existing
    profile warns the same way, and says nothing of its own minimal profile."""
    from kdsweep.slurm import WORKFLOW_PROFILE as PACKAGE_WORKFLOW_PROFILE, dropped_settings, read_profile

    assert PACKAGE_WORKFLOW_PROFILE == WORKFLOW_PROFILE / "config.yaml"
    folders = _profile_folders(tmp_path)
    written = _kdsweep("slurm-profile", "--account", "root", env=folders)
    site = Path(folders["XDG_CONFIG_HOME"]) / "snakemake" / "slurm" / "config.yaml"
    again = _kdsweep("slurm-profile", env=folders)
    assert written.returncode == again.returncode == 0 and "warning" not in again.stderr, again.stderr
    assert dropped_settings(read_profile(site), read_profile(PACKAGE_WORKFLOW_PROFILE)) == {}

    site.write_text(site.read_text() + SITE_KEYS_THE_WORKFLOW_PROFILE_REPLACES)
    workflow = read_profile(PACKAGE_WORKFLOW_PROFILE)
    assert "distill:runtime=240 * attempt" in workflow["set-resources"]
    assert dropped_settings(read_profile(site), workflow) == {
        "retries": ["5"], "set-resources": ["distill:slurm_partition='gpu-long'", "train:constraint='a100'"]}
    checked = _kdsweep("slurm-profile", env=folders)
    assert checked.returncode == 0 and "left as it is" in checked.stdout
    assert checked.stderr.startswith(f"warning: the site profile {site} sets retries (5); set-resources "
                                     "(distill:slurm_partition='gpu-long', train:constraint='a100')"), checked.stderr
    assert len(checked.stderr.strip().splitlines()) == 1


def test_a_job_cancelled_by_someone_reads_as_cancelled_to_the_plugin():
    """sacct says "CANCELLED by <uid>" for a job someone cancelled; the plugin's status query, wrapped by
    the workflow, gives the plugin "CANCELLED" (one of its failed states), other states unchanged."""
    import asyncio
    import logging

    plugin = pytest.importorskip("snakemake_executor_plugin_slurm")
    from kdsweep.slurm_plugin import work_around_plugin_bugs

    assert work_around_plugin_bugs() and work_around_plugin_bugs()
    sacct_lines = "107|CANCELLED by 0\n108|COMPLETED\n109|RUNNING\n110|CANCELLED\n"
    command = shlex.join(["printf", sacct_lines])
    states, _ = asyncio.run(plugin.query_job_status(command, logging.getLogger("test")))
    assert states == {"107": "CANCELLED", "108": "COMPLETED", "109": "RUNNING", "110": "CANCELLED"}


def test_a_requeued_node_failure_excludes_no_node_from_later_submissions(monkeypatch):
    """After a NODE_FAIL the plugin keeps sacct's node list of the job: the node's name, or "None assigned"
    once SLURM has requeued it, whichever its poll saw. With requeue the wrapped submit command excludes
    only the nodes the user named; without it the failed nodes too, never "None assigned" (sbatch
    refuses it)."""
    from types import SimpleNamespace

    from kdsweep.slurm_plugin import excluded_nodes, node_names, work_around_plugin_bugs

    plugin = pytest.importorskip("snakemake_executor_plugin_slurm")
    assert node_names({"None assigned", "gpu-07", "", "gpu[01-02]"}) == {"gpu-07", "gpu[01-02]"}
    failed = {"None assigned", "gpu-07", "gpu-03"}
    requeue = SimpleNamespace(requeue=True, exclude_failed_nodes="gpu-03, gpu-11")
    no_requeue = SimpleNamespace(requeue=False, exclude_failed_nodes=None)
    assert excluded_nodes(failed, requeue) == {"gpu-03", "gpu-11"}
    assert excluded_nodes({"gpu-07"}, SimpleNamespace(requeue=True, exclude_failed_nodes=None)) == set()
    assert excluded_nodes(failed, no_requeue) == {"gpu-07", "gpu-03"}
    assert excluded_nodes(failed, None) == {"gpu-07", "gpu-03"}
    seen = []

    def submit(job, params, settings=None, failed_nodes=None, array_job=False):
        seen.append(failed_nodes)
        return "sbatch ..."

    async def query(command, logger):
        return {}, 0.0

    # the plugin's functions as a fresh process has them (the workflow wraps them once per process)
    monkeypatch.setattr(plugin, "get_submit_command", submit)
    monkeypatch.setattr(plugin, "query_job_status", query)
    assert work_around_plugin_bugs()
    for settings in (requeue, no_requeue):
        assert plugin.get_submit_command(None, {}, settings=settings, failed_nodes=failed) == "sbatch ..."
    assert seen == [{"gpu-03", "gpu-11"}, {"gpu-07", "gpu-03"}]


def test_a_failed_status_query_is_no_news_until_the_patience_runs_out():
    """The plugin's own status query on a command that fails as sacct does while slurmdbd restarts: an
    empty answer (every watched job stays watched) with a warning that quotes sacct's error, the failures
    counted from the first; an answer resets the count; past the patience, one sentence ends the run."""
    import asyncio
    import logging

    pytest.importorskip("snakemake_executor_plugin_slurm")
    # the plugin's own function, as its module defines it (the workflow's process wraps the plugin's copy)
    from snakemake_executor_plugin_slurm.job_status_query import query_job_status
    from snakemake_interface_common.exceptions import WorkflowError

    from kdsweep.slurm_plugin import StatusQueries

    now = [0.0]
    queries = StatusQueries(patience=600, clock=lambda: now[0])
    failing = shlex.join(["sh", "-c", "echo 'sacct: error: Connection refused' >&2; exit 1"])
    answering = shlex.join(["printf", "107|CANCELLED by 0\\n108|RUNNING\\n"])
    warnings = []

    class Logger(logging.Logger):
        def warning(self, message, *args, **kwargs):
            warnings.append(message)

    logger = Logger("test")

    def query(command):
        return asyncio.run(queries.query(query_job_status, command, logger))

    assert query(failing) == ({}, 0.0)
    now[0] = 300
    assert query(failing) == ({}, 0.0)
    assert [w.split(": ", 1)[0] for w in warnings] == ["the SLURM status command failed (sacct"] * 2
    assert "(sacct: error: Connection refused): 2 failed call(s) in 300 s so far" in warnings[1], warnings[1]
    states, _ = query(answering)
    assert states == {"107": "CANCELLED", "108": "RUNNING"}
    now[0] = 1000
    assert query(failing) == ({}, 0.0)  # counted afresh from here
    now[0] = 1599
    assert query(failing) == ({}, 0.0)
    now[0] = 1600
    with pytest.raises(WorkflowError, match=r"has failed for 10 minutes \(3 calls; last: sacct: error: Connection "
                                            r"refused\); the study's jobs go on in SLURM: once `sh` answers again"):
        query(failing)
    # an answer no retry changes ends the run at once, with the fix
    disabled = shlex.join(["sh", "-c", "echo 'sacct: error: Slurm accounting storage is disabled' >&2; exit 1"])
    with pytest.raises(WorkflowError, match="no retry changes: add `--slurm-status-command squeue`"):
        asyncio.run(StatusQueries().query(query_job_status, disabled, logger))


def test_a_job_sacct_calls_failed_but_slurmctld_runs_again_stays_watched(tmp_path, monkeypatch):
    """Bug 7: after a node failure SLURM requeues the job and runs it again under its id, while sacct may
    still answer the failed run's FAILED. The status query asks slurmctld (squeue) about the jobs sacct
    calls failed: a job it has running or queued again keeps that state; one it no longer holds, or holds
    as finishing, stays failed. Both commands are scripts on PATH that answer in their real formats."""
    import asyncio
    import logging

    pytest.importorskip("snakemake_executor_plugin_slurm")
    from snakemake_executor_plugin_slurm.job_status_query import query_job_status

    from kdsweep.slurm_plugin import StatusQueries

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # sacct -X --format=JobIdRaw,State: a requeued job (623), a job that failed for good (624), an array
    # task (raw id 631 = 630_1) requeued, one finishing (640) and one running (641)
    answers = {"sacct": "623|FAILED\n624|FAILED\n631|NODE_FAIL\n640|FAILED\n641|RUNNING\n",
               # squeue --format=%A|%T --jobs ...: what slurmctld holds of those it was asked about (raw ids)
               "squeue": "623|RUNNING\n631|PENDING\n640|COMPLETING\n"}
    for name, answer in answers.items():
        (bin_dir / name).write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / name}.calls\nprintf '{answer}'\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    states, _ = asyncio.run(StatusQueries().query(query_job_status, "sacct -X --noheader", logging.getLogger("t")))
    assert states == {"623": "RUNNING", "624": "FAILED", "631": "PENDING", "640": "FAILED", "641": "RUNNING"}
    asked = (tmp_path / "squeue.calls").read_text().split()
    assert asked[asked.index("--jobs") + 1].split(",") == ["623", "624", "631", "640"]  # only the failed ones


def test_an_arrays_tasks_are_split_so_that_each_sbatch_call_fits_one_argument():
    """payload_chunks: the plugin passes an array's task commands (compressed) in one sbatch argument, which
    Linux caps at 128 KiB; past it the plugin's fallback runs the first task's job in every task. 300 task
    commands of 6 KB of incompressible text each (~1.8 MB encoded) go out in consecutive chunks, each within
    the bound, every one once, in order."""
    import secrets

    from kdsweep.slurm_plugin import ARRAY_PAYLOAD_BYTES, encoded_size, payload_chunks

    assert ARRAY_PAYLOAD_BYTES <= 96 * 1024 < 128 * 1024
    commands = {i: secrets.token_hex(3000) for i in range(300)}
    chunks = payload_chunks(list(commands), commands.get)
    assert [job for chunk in chunks for job in chunk] == list(commands)
    assert len(chunks) > 10 and all(chunk for chunk in chunks)
    assert all(sum(encoded_size(commands[job]) for job in chunk) <= ARRAY_PAYLOAD_BYTES for chunk in chunks)
    # small commands (the study's, ~1 KB compressed) stay in one array up to the bound
    assert len(payload_chunks(list(range(40)), lambda job: "x" * 2000)) == 1


def test_an_array_holds_jobs_of_one_rule_with_equal_submissions_only():
    """submissions: the plugin builds an array's sbatch call from its first job, so a retried job (attempt
    2: twice the time limit) must not share an array with first attempts. Every job is in one call;
    group jobs and rules without arrays go out alone. (The jobs are stand-ins with the four attributes
    the function reads: a retry next to first attempts of its rule cannot be arranged on the one-node
    cluster in a test's time; the time-limit test shows the real retry of an array.)"""
    from kdsweep.slurm_plugin import submissions

    class Job(SimpleNamespace):
        def is_group(self):
            return self.group

    def job(rule, runtime, group=False):
        return Job(rule=SimpleNamespace(name=rule), resources={"gpu": 1, "runtime": runtime, "mem_mb": 8000},
                   threads=1, group=group)

    first = [job("distill", 240) for _ in range(3)]
    retried = job("distill", 480)
    group, train = job(None, 30, group=True), job("train", 240)
    jobs = [first[0], retried, group, first[1], train, first[2]]
    calls = submissions(jobs, {"distill"})
    assert calls == [[first[0], first[1], first[2]], [retried], [group], [train]]
    assert sorted(map(id, (j for call in calls for j in call))) == sorted(map(id, jobs))
    assert submissions(jobs, set()) == [[j] for j in jobs]
    assert submissions(jobs, {"all"}) == [[first[0], first[1], first[2]], [retried], [group], [train]]


@pytest.mark.workflow
def test_snakemake_profile_slurm_uses_the_site_profile_and_the_workflow_profile(tmp_path):
    """`snakemake --profile slurm` finds the site profile by name and adds profiles/default by itself."""
    folders = _profile_folders(tmp_path)
    command = [sys.executable, "-m", "snakemake", "--dry-run", "--profile", "slurm",
               "--snakefile", str(ROOT / "Snakefile"), "--configfile", *map(str, CONFIGS)]
    missing = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env={**os.environ, **folders})
    assert missing.returncode != 0 and "profile directory given (slurm)" in missing.stderr
    assert _kdsweep("slurm-profile", "--account", "root", env=folders).returncode == 0
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env={**os.environ, **folders})
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Using profiles slurm and workflow specific profile {WORKFLOW_PROFILE}" in result.stderr
    assert re.search(r"resources: .*gpu=1, runtime=240, slurm_extra=--signal=URG@60", result.stdout), \
        "the training jobs get the workflow profile's resources"
    assert "Warning: the site profile" not in result.stdout + result.stderr, "kdsweep's own site profile loses nothing"

    # A site profile with its own per-rule resources and retries: the workflow profile replaces both
    # keys whole, and the user is told which values go, before any job.
    site = Path(folders["XDG_CONFIG_HOME"]) / "snakemake" / "slurm" / "config.yaml"
    site.write_text(site.read_text() + SITE_KEYS_THE_WORKFLOW_PROFILE_REPLACES)
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env={**os.environ, **folders})
    assert result.returncode == 0, result.stderr[-3000:]
    # (Snakemake's logger writes to stdout while it reads the workflow)
    (warning,) = [line for line in result.stdout.splitlines() if "Warning: the site profile" in line]
    assert result.stdout.index(warning) < result.stdout.index("Job stats")
    assert f"the site profile {site} sets retries (5); set-resources (distill:slurm_partition='gpu-long', " \
           "train:constraint='a100')" in warning, warning
    assert "default-resources" in warning and str(WORKFLOW_PROFILE / "config.yaml") in warning, warning


def _workflow_local_rules(workdir):
    """{rule: declared local?} of the workflow, loaded through Snakemake's API for a CIFAR-10
    study (which has the download rule). Runs in a subprocess: the API changes directory."""
    script = f"""
import json
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings
with SnakemakeApi(OutputSettings()) as api:
    workflow_api = api.workflow(
        resource_settings=ResourceSettings(),
        config_settings=ConfigSettings(configfiles=[Path(p) for p in {[str(p) for p in CONFIGS]!r}],
                                       config={{"dataset": {{"name": "cifar10", "root": "data"}}}}),
        snakefile=Path({str(ROOT / "Snakefile")!r}), workdir=Path.cwd())
    workflow = workflow_api._workflow
    print(json.dumps({{rule.name: rule.name in workflow._localrules for rule in workflow.rules}}))
"""
    result = subprocess.run([sys.executable, "-c", script], check=False, cwd=workdir, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.workflow
def test_download_aggregation_and_plots_are_local_rules(tmp_path):
    """Under the slurm executor these run on the login node (download: compute nodes
    often have no internet); the GPU rules and stats are submitted."""
    local = _workflow_local_rules(tmp_path)
    submitted = [rule for rule in LOCAL_RULES if not local.get(rule)]
    assert not submitted, f"{submitted} would be submitted to SLURM: list them under `localrules:` in workflow/rules/"
    assert not [rule for rule in (*GPU_RULES, "stats") if local[rule]], local


# ---------------------------------------------------------------- the cluster the tests may use

# The SLURM tests submit jobs, cancel them and fail a node. On a site's login node `sinfo` answers
# too, and there they must do nothing unasked: they use a cluster only when told to, by
# KDSWEEP_TEST_SLURM=1 (the cluster that answers, whichever it is) or by the marker
# scripts/slurm-cluster.sh writes once the cluster it built runs, and only while `scontrol` answers
# for that cluster (its name, its one node, its slurm.conf). Without either they run no SLURM
# command at all. KDSWEEP_TEST_SLURM=0 turns them off with the marker there.
TEST_CLUSTER_MARKER = "/run/slurm/kdsweep-test-cluster"  # scripts/slurm-cluster.sh's MARKER
START = "start the test cluster with `sudo bash scripts/slurm-cluster.sh`"
ACCOUNT = "root"  # the tests' account where KDSWEEP_SLURM_ACCOUNT is unset: the one the script registers


def _marker_path():
    """Where the marker is looked for (KDSWEEP_TEST_CLUSTER_MARKER moves it, e.g. out of the way)."""
    return Path(os.environ.get("KDSWEEP_TEST_CLUSTER_MARKER") or TEST_CLUSTER_MARKER)


def _slurm(*command, timeout=30):
    """(exit status, stdout, what went wrong in one line) of a SLURM command; status None where the
    command is not on PATH or does not answer in time."""
    if shutil.which(command[0]) is None:
        return None, "", f"`{command[0]}` is not on PATH"
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "", f"`{command[0]}` did not answer within {timeout} s"
    lines = result.stderr.strip().splitlines()
    return result.returncode, result.stdout, lines[-1] if lines else f"`{command[0]}` exited {result.returncode}"


@functools.cache
def _slurm_config():
    """`scontrol show config` as {name: value}, or (None, why not)."""
    status, out, error = _slurm("scontrol", "show", "config")
    if status != 0:
        return None, error
    lines = (line.partition(" = ") for line in out.splitlines())
    return {name.strip(): value.strip() for name, equals, value in lines if equals}, None


@functools.cache
def _nodes():
    """sinfo's nodes: [(node, partition, state, gres)]; the default partition ends in '*'."""
    status, out, error = _slurm("sinfo", "-h", "-N", "-o", "%N|%P|%T|%G")
    return [tuple(line.split("|")) for line in out.splitlines() if line.count("|") == 3] if status == 0 else []


class ToldCluster(SimpleNamespace):
    """The cluster the SLURM tests were told to use: name (its ClusterName), own (True where it is the
    test cluster the marker names, the one scripts/slurm-cluster.sh built on this machine)."""


@functools.cache
def _told_cluster():
    """(ToldCluster, None) where the tests may submit to the cluster that answers, else (None, why not)."""
    switch = os.environ.get("KDSWEEP_TEST_SLURM", "")
    if switch not in ("", "0", "1"):
        return None, f"KDSWEEP_TEST_SLURM is {switch!r}: set it to 1 (use the cluster `sinfo` answers) or 0 (no SLURM tests)"
    if switch == "0":
        return None, "the SLURM tests are off (KDSWEEP_TEST_SLURM=0)"
    marker = _marker_path()
    if switch == "" and not marker.is_file():
        return None, (f"SLURM tests run only on a cluster they are told to use: {START} (it leaves {marker}), "
                      "or set KDSWEEP_TEST_SLURM=1 to use the one `sinfo` answers")
    config, error = _slurm_config()
    if config is None:
        return None, f"no SLURM cluster answers ({error}): {START}"
    fields = {}
    if marker.is_file():
        for line in marker.read_text().splitlines():
            key, equals, value = line.partition("=")
            if equals and not line.startswith("#"):
                fields[key.strip()] = value.strip()
    answers = {"cluster": config.get("ClusterName"), "node": ",".join(sorted({node for node, *_ in _nodes()})),
               "conf": config.get("SLURM_CONF")}
    own = bool(fields) and all(fields.get(key) == value for key, value in answers.items())
    if switch == "" and not own:
        said = " ".join(f"{key}={value}" for key, value in answers.items())
        named = " ".join(f"{key}={fields.get(key)}" for key in answers)
        return None, (f"the SLURM cluster that answers ({said}) is not the test cluster {marker} names ({named}): "
                      f"{START}, or set KDSWEEP_TEST_SLURM=1 to use this one")
    return ToldCluster(name=answers["cluster"], own=own), None


# What a SLURM test may need of its cluster beyond answering: each test names these in its `slurm`
# mark (a test marked fails_the_node needs NODE_TO_FAIL), and the slurm_needs fixture checks them
# before anything is submitted. A probe is a read-only SLURM command, once per test session: it gives
# None where the cluster has the feature, else what is missing.
ACCOUNTING = "accounting (sacct)"
ACCOUNT_LIST = "an account list (sacctmgr)"
GPUS = "gres GPUs"
GPU_ACCOUNTING = "GPUs in accounting"
REQUEUE = "requeue"
NODE_TO_FAIL = "a node it may fail"
SUBMITS = (ACCOUNT_LIST, GPUS)  # what every test that submits the study's jobs needs


def _account():
    return os.environ.get("KDSWEEP_SLURM_ACCOUNT") or ACCOUNT


def _partition():
    """The partition the tests' jobs go to: KDSWEEP_SLURM_PARTITION's, or the default one."""
    return os.environ.get("KDSWEEP_SLURM_PARTITION") or next(
        (partition.rstrip("*") for _, partition, *_ in _nodes() if partition.endswith("*")), None)


def _has_accounting():
    # what the tests ask sacct: job records by id and since a time
    status, _, error = _slurm("sacct", "-n", "-X", "-S", "now-1minutes", "-o", "JobID")
    return None if status == 0 else f"`sacct` fails: {error}"


def _has_account_list():
    # the plugin checks the site profile's account with this command before it submits anything
    user = getpass.getuser()
    status, out, error = _slurm("sacctmgr", "-n", "-s", "list", "user", user, "format=account%256")
    if status != 0:
        return f"`sacctmgr` fails: {error}"
    accounts = {line.strip().lower() for line in out.splitlines() if line.strip()}
    if _account().lower() not in accounts:
        return f"user {user} has no account {_account()} (sacctmgr lists {', '.join(sorted(accounts)) or 'none'}): " \
               "set KDSWEEP_SLURM_ACCOUNT"
    return None


def _has_gpus():
    partition = _partition()
    if not any(part.rstrip("*") == partition and "gpu" in gres for _, part, _, gres in _nodes()):
        return f"no node of partition {partition} has gres gpu (`sinfo -N -o '%N %P %G'`)"
    return None


def _has_gpu_accounting():
    # the tests read a job's GPUs from sacct's AllocTRES
    config, error = _slurm_config()
    tres = (config or {}).get("AccountingStorageTRES", "")
    return None if "gres/gpu" in tres.split(",") else f"AccountingStorageTRES lacks gres/gpu ({tres or error})"


def _has_requeue():
    config, error = _slurm_config()
    requeue = (config or {}).get("JobRequeue", error)
    return None if requeue == "1" else f"JobRequeue is {requeue}, not 1"


def _has_node_to_fail():
    # The fault SIGKILLs slurmd on this machine and starts it again with scripts/slurm-cluster.sh:
    # only the test cluster the marker names, its one node being this machine, and as root.
    cluster, _ = _told_cluster()
    if not cluster.own:
        return f"only the test cluster named in {_marker_path()} has one ({START})"
    nodes = {node for node, *_ in _nodes()}
    if len(nodes) != 1:
        return f"it has {len(nodes)} nodes, not one"
    (node,) = nodes
    if node != socket.gethostname().split(".")[0]:
        return f"its node {node} is not this machine ({socket.gethostname()})"
    if subprocess.run(["pgrep", "-x", "slurmd"], capture_output=True).returncode != 0:
        return "no slurmd runs on this machine"
    if os.geteuid() != 0:
        return "restarting the node needs root (scripts/slurm-cluster.sh)"
    return None


FEATURES = {ACCOUNTING: _has_accounting, ACCOUNT_LIST: _has_account_list, GPUS: _has_gpus,
            GPU_ACCOUNTING: _has_gpu_accounting, REQUEUE: _has_requeue, NODE_TO_FAIL: _has_node_to_fail}
FEATURES = {name: functools.cache(probe) for name, probe in FEATURES.items()}


def _unavailable(reason):
    """Skip the test with the reason, or fail it where CI requires the cluster (KDSWEEP_REQUIRE_SLURM=1)."""
    if os.environ.get("KDSWEEP_REQUIRE_SLURM") == "1":
        pytest.fail(f"{reason} (KDSWEEP_REQUIRE_SLURM=1: the SLURM tests must run here)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def slurm_needs(request):
    """The ToldCluster this test may use, with every feature its marks name; skips (or fails) before it
    submits anything otherwise. Fixtures that prepare for a SLURM test (uninterrupted) ask it first."""
    cluster, why = _told_cluster()
    if cluster is None:
        _unavailable(why)
    needs = request.node.get_closest_marker("slurm").args
    if request.node.get_closest_marker("fails_the_node"):
        needs += (NODE_TO_FAIL,)
    unknown = set(needs) - set(FEATURES)
    assert not unknown, f"no probe for {unknown}: name one of {list(FEATURES)}"
    missing = [f"{need}: {problem}" for need in needs if (problem := FEATURES[need]())]
    if missing:
        _unavailable(f"the SLURM cluster {cluster.name} lacks what this test needs: {'; '.join(missing)}")
    return cluster


class Site:
    """The environment of a user's shell on the login node, with the venv active and a site profile
    named slurm written by `python -m kdsweep slurm-profile` into a folder of this test session."""

    def __init__(self, folder, account=None, requeue=True):
        self.folders = _profile_folders(folder)
        options = [] if requeue else ["--no-requeue"]
        for option, value in (("--account", account or _account()),
                              ("--partition", os.environ.get("KDSWEEP_SLURM_PARTITION")),
                              ("--qos", os.environ.get("KDSWEEP_SLURM_QOS"))):
            if value:
                options += [option, value]
        result = _kdsweep("slurm-profile", *options, env=self.folders)
        assert result.returncode == 0 and "wrote" in result.stdout, result.stdout + result.stderr

    def env(self, **variables):
        """No SLURM job variables; no KDSWEEP_SLURM_* but these."""
        env = {name: value for name, value in os.environ.items()
               if not name.startswith(("SLURM_", "SBATCH_", "SRUN_", "KDSWEEP_SLURM_"))}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.update(self.folders)
        env.update(variables)
        return env


@pytest.fixture(scope="module")
def _site(tmp_path_factory):
    return Site(tmp_path_factory.mktemp("site"))


# The SLURM tests run side by side on several xdist workers (pyproject), and their jobs share the
# one-node cluster. A test that fails the node would fail the others' jobs too, so it has the cluster
# to itself: every test that submits holds a shared lock on CLUSTER_LOCK, one that fails the node
# (marked fails_the_node) an exclusive one, also against another test session on this machine. It
# first closes CLUSTER_GATE, which the others pass on their way in: once it waits, tests that come
# later wait behind it instead of keeping it out for as long as their locks overlap.
CLUSTER_LOCK = Path(tempfile.gettempdir()) / "kdsweep-test-cluster.lock"
CLUSTER_GATE = Path(tempfile.gettempdir()) / "kdsweep-test-cluster.gate"


@pytest.fixture
def cluster(slurm_needs, request):
    """The site every SLURM test submits to (a Site), once the cluster is one the test may use
    (slurm_needs) and the test holds its lock; fails where its partition has no GPU node up."""
    alone = request.node.get_closest_marker("fails_the_node") is not None
    with open(CLUSTER_GATE, "a") as gate, open(CLUSTER_LOCK, "a") as handle:
        fcntl.flock(gate, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        fcntl.flock(handle, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        if not alone:
            fcntl.flock(gate, fcntl.LOCK_UN)
        # the node's state now, under the lock (not while a node-failure test has it down)
        _, out, _ = _slurm("sinfo", "-h", "-N", "-o", "%N|%P|%T|%G")
        nodes = [line.split("|") for line in out.splitlines()]
        if not any(part.rstrip("*") == _partition() and "gpu" in gres
                   and re.fullmatch(r"(idle|mixed|allocated|completing)", state) for _, part, state, gres in nodes):
            pytest.fail(f"no GPU node of partition {_partition()} of the SLURM cluster {slurm_needs.name} is up; "
                        f"`sinfo -N -o '%N %P %T %G'` says: {' | '.join(out.splitlines())}"
                        + (". Restart it with `sudo bash scripts/slurm-cluster.sh`" if slurm_needs.own else ""),
                        pytrace=False)
        yield request.getfixturevalue("_site")


# ---------------------------------------------------------------- the gate itself (no cluster needed)

# The SLURM tests' own gate, checked by running them in a pytest of their own (`-m slurm`, a second
# or so: they skip before they do anything) with every SLURM command on PATH replaced by a shim that
# records its call. The shims either pass a call that only reads on to the real command (where there
# is one), or answer as another site's cluster does: the one a fresh clone's `pytest` met, with two
# GPUs declared, partition gpu and no accounting (no slurmdbd: sacct and sacctmgr fail). A call that
# would start or end a job is refused either way: a broken gate fails these tests, and submits nothing.
SLURM_COMMANDS = ("sinfo", "squeue", "sbatch", "srun", "salloc", "scancel", "scontrol", "sacct", "sacctmgr",
                  "sshare", "sstat")
SUBMITTING = {"sbatch", "srun", "salloc", "scancel"}  # what starts, or ends, a job
NO_ACCOUNTING = 'echo "{0}: error: Slurm accounting storage is disabled" >&2; exit 1'
OTHER_CLUSTER = {
    "sinfo": 'echo "gpu-node-1|gpu*|idle|gpu:2"',
    "scontrol": "printf '%s\\n' 'ClusterName             = elsewhere' 'SLURM_CONF              = "
                "/etc/slurm/slurm.conf' 'AccountingStorageType   = accounting_storage/none' "
                "'AccountingStorageTRES   = cpu,mem,energy,node,billing' 'JobRequeue              = 1'",
    "sacct": NO_ACCOUNTING.format("sacct"),
    "sacctmgr": NO_ACCOUNTING.format("sacctmgr"),
    "sshare": NO_ACCOUNTING.format("sshare"),
}
# what OTHER_CLUSTER lacks of what the tests may need
OTHER_CLUSTER_LACKS = {ACCOUNTING, ACCOUNT_LIST, GPU_ACCOUNTING, NODE_TO_FAIL}


def _needs(function):
    """The features a SLURM test's marks name, or None for a test that is not marked slurm."""
    marks = {mark.name: mark for mark in getattr(function, "pytestmark", [])}
    if "slurm" not in marks:
        return None
    return set(marks["slurm"].args) | ({NODE_TO_FAIL} if "fails_the_node" in marks else set())


def _slurm_tests():
    """{name: the features it needs} of this file's SLURM tests."""
    return {name: needs for name, function in list(globals().items())
            if name.startswith("test_") and (needs := _needs(function)) is not None}


def _run_the_slurm_tests(tmp_path, cluster=None, **variables):
    """This file's SLURM tests in a pytest of their own, with SLURM commands that answer as `cluster`
    ({command: shell code}) does, or as the real ones where it is None, and no KDSWEEP_* switch but
    `variables`. Returns ({test: (outcome, message)}, [the SLURM commands called], pytest's output)."""
    import xml.etree.ElementTree as ElementTree

    shims, calls = tmp_path / "bin", tmp_path / "calls"
    shims.mkdir()
    calls.touch()
    for command in SLURM_COMMANDS:
        real, refused = shutil.which(command), f'echo "{command}: refused by the test" >&2; exit 1'
        if cluster is not None or command in SUBMITTING:
            answer = (cluster or {}).get(command, refused)
        else:
            answer = f'exec {shlex.quote(real)} "$@"' if real else f'echo "{command}: not found" >&2; exit 127'
        (shims / command).write_text(f'#!/bin/sh\necho "{command} $*" >> {shlex.quote(str(calls))}\n{answer}\n')
        (shims / command).chmod(0o755)
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("KDSWEEP_TEST_", "KDSWEEP_REQUIRE_", "KDSWEEP_SLURM_", "PYTEST_", "SLURM_"))}
    env.update(variables, PATH=f"{shims}{os.pathsep}{os.environ['PATH']}")
    report = tmp_path / "report.xml"
    command = [sys.executable, "-m", "pytest", "-n", "0", "-q", "-p", "no:cacheprovider", "-m", "slurm",
               f"--basetemp={tmp_path / 'inner'}", f"--junitxml={report}", __file__]
    # its own session: past the timeout, what a broken gate started (snakemake) goes with it
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert report.exists(), output
    outcomes = {}
    for case in ElementTree.parse(report).iter("testcase"):
        # a skip's reason is its message; a failure's message is cut short, its text is whole
        found = [(child.tag, child.get("message", "") if child.tag == "skipped" else child.text or "")
                 for child in case if child.tag in ("skipped", "failure", "error")]
        outcomes[case.get("name")] = found[0] if found else ("passed", "")
    return outcomes, calls.read_text().split("\n")[:-1], output


def test_the_slurm_tests_use_no_cluster_they_were_not_told_to_use(tmp_path):
    """No KDSWEEP_TEST_SLURM and no marker (KDSWEEP_TEST_CLUSTER_MARKER points where none is), on this
    machine as it is: every SLURM test skips with one sentence that says how to start the test cluster,
    and no SLURM command runs at all. Where a cluster answers, neither squeue nor sacct knows a job
    from that pytest's folders."""
    since = _sacct_now()
    outcomes, calls, output = _run_the_slurm_tests(tmp_path, KDSWEEP_TEST_CLUSTER_MARKER=str(tmp_path / "no-marker"))
    assert set(outcomes) == set(_slurm_tests()), output[-3000:]
    assert {outcome for outcome, _ in outcomes.values()} == {"skipped"}, outcomes
    (reason,) = {message for _, message in outcomes.values()}
    assert "\n" not in reason and "sudo bash scripts/slurm-cluster.sh" in reason and "KDSWEEP_TEST_SLURM=1" in reason
    assert calls == [], calls
    inner = tmp_path / "inner"
    if shutil.which("sacct") and subprocess.run(["sacct", "-n", "-X", "-o", "JobID"], capture_output=True).returncode == 0:
        jobs = subprocess.run(["sacct", "-a", "-n", "-X", "-P", "-S", since, "-o", "JobID,WorkDir"], capture_output=True,
                              text=True, check=True).stdout.splitlines()
        assert not [job for job in jobs if str(inner) in job], jobs
    if shutil.which("squeue"):
        queue = subprocess.run(["squeue", "-h", "-o", "%i|%Z"], capture_output=True, text=True).stdout.splitlines()
        assert not [job for job in queue if str(inner) in job], queue


def test_the_slurm_tests_use_no_cluster_but_the_one_their_marker_names(tmp_path):
    """The marker scripts/slurm-cluster.sh leaves names the test cluster (kdsweep, node vm), but the
    cluster that answers is another (OTHER_CLUSTER): the tests skip, naming both, having asked it only
    what it is (scontrol, sinfo)."""
    marker = tmp_path / "marker"
    marker.write_text("# scripts/slurm-cluster.sh\ncluster=kdsweep\nnode=vm\nconf=/etc/slurm/slurm.conf\n")
    outcomes, calls, output = _run_the_slurm_tests(tmp_path, OTHER_CLUSTER, KDSWEEP_TEST_CLUSTER_MARKER=str(marker))
    assert set(outcomes) == set(_slurm_tests()), output[-3000:]
    assert {outcome for outcome, _ in outcomes.values()} == {"skipped"}, outcomes
    (reason,) = {message for _, message in outcomes.values()}
    assert "cluster=elsewhere node=gpu-node-1" in reason and "cluster=kdsweep node=vm" in reason, reason
    assert "sudo bash scripts/slurm-cluster.sh" in reason and "KDSWEEP_TEST_SLURM=1" in reason, reason
    assert {call.split()[0] for call in calls} <= {"scontrol", "sinfo"}, calls


@pytest.mark.parametrize("required", [False, True], ids=["skip", "required"])
def test_on_a_cluster_without_accounting_each_slurm_test_names_what_it_lacks(tmp_path, required):
    """KDSWEEP_TEST_SLURM=1 on OTHER_CLUSTER (no accounting, not the test cluster): each SLURM test skips
    (fails, under KDSWEEP_REQUIRE_SLURM=1) naming every feature of its marks that the cluster lacks and
    none that it has, and nothing is submitted: the probes only read."""
    variables = {"KDSWEEP_TEST_SLURM": "1", "KDSWEEP_TEST_CLUSTER_MARKER": str(tmp_path / "no-marker")}
    if required:
        variables["KDSWEEP_REQUIRE_SLURM"] = "1"
    outcomes, calls, output = _run_the_slurm_tests(tmp_path, OTHER_CLUSTER, **variables)
    assert set(outcomes) == set(_slurm_tests()), output[-3000:]
    for name, (outcome, message) in outcomes.items():
        assert outcome in (("error", "failure") if required else ("skipped",)), (name, outcome, message)
        assert "the SLURM cluster elsewhere lacks what this test needs" in message, (name, message)
        for feature in _slurm_tests()[name]:
            assert (f"{feature}:" in message) == (feature in OTHER_CLUSTER_LACKS), (name, feature, message)
        assert ("KDSWEEP_REQUIRE_SLURM=1" in message) == required, message
    assert not SUBMITTING & {call.split()[0] for call in calls}, calls
    assert any(call.startswith("sacct ") for call in calls), "the accounting probe ran"


def _slurm_logs(workdir):
    return sorted((workdir / "results" / "slurm-logs").rglob("*.log"))


def _cancel_leftovers(workdir):
    """scancel this run's jobs still queued or running (after a timeout or a crash): those
    whose working directory is workdir."""
    queue = subprocess.run(["squeue", "-h", "-o", "%i %Z"], check=False, capture_output=True, text=True).stdout
    ids = [job_id for job_id, _, folder in (line.partition(" ") for line in queue.splitlines())
           if Path(folder.strip()) == Path(workdir)]
    if ids:
        subprocess.run(["scancel", *ids], check=False, capture_output=True)


def snakemake_command(*args):
    """`snakemake --profile slurm TARGETS ...`, as a user types it in the checkout (here: with the
    checkout's Snakefile, from a temporary folder)."""
    return [sys.executable, "-m", "snakemake", *args, "--profile", "slurm", "--snakefile", str(ROOT / "Snakefile"),
            "--configfile", *map(str, CONFIGS), *FAST_POLL]


def run_snakemake(workdir, *args, timeout, env, watch=None, log_name="snakemake.log"):
    """`snakemake --profile slurm TARGETS ...` in workdir; returns (exit status, output).

    env: a Site's environment. watch(workdir) is called every 2 s while it runs. Past the timeout
    snakemake gets SIGTERM (it cancels its SLURM jobs), then SIGKILL, and whatever is still queued
    is cancelled.
    """
    command = snakemake_command(*args)
    log_path = workdir / log_name
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while process.poll() is None:
                if time.monotonic() > deadline:
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(60)
                    except subprocess.TimeoutExpired:
                        os.killpg(process.pid, signal.SIGKILL)
                        process.wait()
                    _cancel_leftovers(workdir)
                    pytest.fail(f"snakemake ran past {timeout} s; its output:\n{_tail(log_path)}")
                if watch:
                    watch(workdir)
                time.sleep(2)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                _cancel_leftovers(workdir)
    return process.returncode, log_path.read_text()


def _tail(path, chars=6000):
    text = Path(path).read_text(errors="replace") if Path(path).exists() else "(none)"
    return text[-chars:]


def _failure_report(workdir, output):
    """Snakemake's output and the SLURM logs, for an assertion message."""
    logs = "".join(f"\n--- {log.relative_to(workdir)}\n{_tail(log, 1500)}" for log in _slurm_logs(workdir))
    return f"snakemake output:\n{output[-6000:]}\nSLURM logs:{logs}"


def sacct(job_ids):
    """{job id: {State, AllocTRES, Timelimit, Elapsed, ...}} from SLURM's accounting."""
    fields = ["JobID", "State", "ExitCode", "AllocTRES", "Timelimit", "Elapsed", "Account", "Partition"]
    result = subprocess.run(["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "-o", ",".join(fields)],
                            capture_output=True, text=True, check=True)
    records = {}
    for line in result.stdout.splitlines():
        record = dict(zip(fields, line.split("|")))
        records[record["JobID"]] = record
    return records


def _seconds(duration):
    """SLURM's [D-]HH:MM:SS as seconds."""
    days, _, clock = duration.rpartition("-")
    hours, minutes, seconds = (int(x) for x in clock.split(":"))
    return int(days or 0) * 86400 + hours * 3600 + minutes * 60 + seconds


def _read_json(path):
    return json.loads(Path(path).read_text())


def _csv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def _assert_one_gpu_job(record, where):
    assert re.fullmatch(r"\d+", record.get("job_id") or ""), f"{where} ran outside SLURM: slurm = {record}"
    assert re.fullmatch(r"\d+", record.get("gpus") or ""), \
        f"{where} did not see exactly one GPU: CUDA_VISIBLE_DEVICES = {record.get('gpus')!r}"


# ---------------------------------------------------------------- the study through SLURM


@pytest.mark.slurm(*SUBMITS, ACCOUNTING, GPU_ACCOUNTING)
def test_study_runs_every_gpu_job_on_slurm_with_one_gpu(cluster, tmp_path):
    config = load_config([str(p) for p in CONFIGS], [])
    results = tmp_path / "results" / config["study"]
    status, output = run_snakemake(tmp_path, timeout=600, env=cluster.env())
    assert status == 0, _failure_report(tmp_path, output)

    teacher = config["teacher"]
    runs = [("teacher", teacher["model"], teacher["seed"], None, None)]
    runs += [("baseline", s, seed, None, None) for s in config["students"] for seed in config["seeds"]]
    runs += [("kd", s, seed, t, w) for s in config["students"] for t in config["temperatures"]
             for w in config["soft_weights"] for seed in config["seeds"]]

    # Every run and every attack: a SLURM job with one GPU, recorded in its JSON.
    training_jobs, attack_jobs = {}, {}
    for run in runs:
        folder = results / run_path(*run)
        metrics = _read_json(folder / "metrics.json")
        _assert_one_gpu_job(metrics["slurm"], folder)
        training_jobs[metrics["slurm"]["job_id"]] = run[0]
        assert not any((folder / scratch).exists() for scratch in ("checkpoint.pt", "best.pt"))
        ids = set()
        evaluations = [results / "attacks" / run[0] / folder.name / attack_file(attack, eps)
                       for attack in [*(a for a, params in config["attacks"].items() if params is not None), "worst"]
                       for eps in config["epsilons"]]
        evaluations.append(results / "evaluation" / run[0] / f"{folder.name}.json")
        for path in evaluations:
            evaluation = _read_json(path)
            _assert_one_gpu_job(evaluation["slurm"], path)
            ids.add(evaluation["slurm"]["job_id"])
        assert len(ids) == 1, f"the evaluations of {folder.name} go out as one SLURM job, not {sorted(ids)}"
        attack_jobs[ids.pop()] = folder.name
    assert len(training_jobs) == len(runs), "each training run is its own SLURM job"
    assert not set(training_jobs) & set(attack_jobs)

    records = sacct([*training_jobs, *attack_jobs])
    for job_id in [*training_jobs, *attack_jobs]:
        record = records[job_id]
        assert record["State"] == "COMPLETED", record
        tres = record["AllocTRES"].split(",")
        assert "gres/gpu=1" in tres and "cpu=1" in tres, f"job {job_id} had {record['AllocTRES']}"
        assert record["Account"] == (os.environ.get("KDSWEEP_SLURM_ACCOUNT") or "root"), record

    # One SLURM log per job, kept after success, where the profile says.
    logs = {log.stem: log.relative_to(tmp_path / "results" / "slurm-logs").parts for log in _slurm_logs(tmp_path)}
    for job_id, role in training_jobs.items():
        rule = "distill" if role == "kd" else "train"
        assert logs.get(job_id, ("?",))[0] == f"rule_{rule}", f"no SLURM log for job {job_id}: {logs}"
    for job_id, run in attack_jobs.items():
        assert logs.get(job_id, ("?",))[0] == "rule_attack", f"no SLURM log for job {job_id}: {logs}"
    # Aggregation and plots ran here, not as SLURM jobs.
    submitted = {"rule_stats", *(f"rule_{rule}" for rule in (*TRAINING_RULES, *EVALUATION_RULES))}
    assert all(parts[0] in submitted for parts in logs.values()), logs
    assert "localrule tables:" in output and "localrule figures:" in output

    # The tables hold every run and every attack.
    tables = results / "tables"
    assert sorted(row["run"] for row in _csv(tables / "runs.csv")) == sorted(run_path(*run) for run in runs)
    robustness = {(row["run"], row["attack"], float(row["epsilon"]))
                  for row in _csv(tables / "robustness.csv") if row["adv_acc"] and not row["attack"].startswith("transfer_")}
    assert robustness == {(run_path(*run), attack, float(eps)) for run in runs for eps in config["epsilons"]
                          for attack in [*(a for a, params in config["attacks"].items() if params is not None), "worst"]}
    grid = {(row["model"], float(row["temperature"]), float(row["soft_weight"])) for row in _csv(tables / "grid.csv")}
    assert grid == {(s, float(t), float(w)) for s in config["students"] for t in config["temperatures"]
                    for w in config["soft_weights"]}
    table1 = _csv(tables / "table1.csv")
    assert sorted((row["role"], row["model"]) for row in table1) == sorted(
        [("teacher", teacher["model"])] + [("baseline", s) for s in config["students"]])
    assert {row["model"] for row in _csv(tables / "kd_vs_hard.csv")} == set(config["students"])
    for name in ("table1.md", "kd_vs_hard.md"):
        assert (tables / name).stat().st_size > 0
    # (snakemake checked that every figure the workflow declares exists)
    figures = results / "figures"
    assert sorted(p.stem for p in figures.glob("*.png")) == sorted(p.stem for p in figures.glob("*.pdf")) != []


@pytest.mark.slurm(*SUBMITS, ACCOUNTING, GPU_ACCOUNTING)
def test_a_pack_of_sweep_points_is_one_slurm_job_with_one_gpu(cluster, tmp_path):
    """runtime.pack_size 2: both distillation points of one student and seed train in one
    SLURM job (rule distill_<student>_seed<s>_pack1) with what the profile gives rule distill."""
    overrides = ["soft_weights=[0.5,0.9]", "runtime={pack_size: 2}"]
    config = load_config([str(p) for p in CONFIGS], overrides)
    student, seed, temperature = config["students"][0], config["seeds"][0], config["temperatures"][0]
    points = [("kd", student, seed, temperature, w) for w in config["soft_weights"]]
    plan = Plan(config)
    (record,) = {Layout(plan).pack_record(plan.pack_of(kd_run(*run))) for run in points}
    status, output = run_snakemake(tmp_path, record, "--config", *overrides, timeout=480, env=cluster.env())
    assert status == 0, _failure_report(tmp_path, output)

    targets = [f"results/{config['study']}/{run_path(*run)}/metrics.json" for run in points]
    jobs = {_read_json(tmp_path / target)["slurm"]["job_id"] for target in targets}
    assert _read_json(tmp_path / record)["slurm"]["job_id"] in jobs
    assert len(jobs) == 1, f"the pack's points ran in {len(jobs)} SLURM jobs"
    job_id = jobs.pop()
    for target in targets:
        _assert_one_gpu_job(_read_json(tmp_path / target)["slurm"], target)
    record = sacct([job_id])[job_id]
    assert record["State"] == "COMPLETED", record
    assert {"gres/gpu=1", "cpu=1"} <= set(record["AllocTRES"].split(",")), record["AllocTRES"]
    # distill's first-attempt limit (the profile's default: _environment leaves KDSWEEP_SLURM_TRAIN_MINUTES unset)
    assert _seconds(record["Timelimit"]) == 240 * 60, record
    logs = {log.stem: log.relative_to(tmp_path / "results" / "slurm-logs").parts for log in _slurm_logs(tmp_path)}
    assert logs[job_id][:2] == ("rule_distill", f"{student}_seed{seed}_pack1"), logs


@pytest.mark.slurm(*SUBMITS, ACCOUNTING, GPU_ACCOUNTING)
def test_a_distillation_job_of_two_gpus_trains_as_two_slurm_tasks(cluster, tmp_path):
    """KDSWEEP_SLURM_DISTILL_GPUS=2 (profiles/default): the distillation job asks SLURM for two GPUs and two
    tasks of one CPU each, and trains as two DDP processes (srun inside the job, kdsweep.distributed): its
    run and its records are those a one-process job writes."""
    config = load_config([str(p) for p in CONFIGS], [])
    (point,) = [kd_run("kd", config["students"][0], config["seeds"][0], config["temperatures"][0], w)
                for w in config["soft_weights"]]
    plan = Plan(config)
    pack = plan.pack_of(point)
    record = Layout(plan).pack_record(pack)
    status, output = run_snakemake(tmp_path, record, timeout=600, env=cluster.env(KDSWEEP_SLURM_DISTILL_GPUS="2"))
    assert status == 0, _failure_report(tmp_path, output)
    results = tmp_path / "results" / config["study"]
    metrics = _read_json(results / point.folder / "metrics.json")
    assert metrics["epochs"] == config["training"]["max_epochs"] and metrics["test_acc"] is not None
    job_id = metrics["slurm"]["job_id"]
    assert _read_json(tmp_path / record)["slurm"]["job_id"] == job_id
    job = sacct([job_id])[job_id]
    assert job["State"] == "COMPLETED", job
    assert {"gres/gpu=2", "cpu=2"} <= set(job["AllocTRES"].split(",")), job["AllocTRES"]
    steps = subprocess.run(["sacct", "-n", "-P", "-j", job_id, "-o", "JobID,NTasks,State"], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    assert any(step.split("|")[1:] == ["2", "COMPLETED"] for step in steps), steps
    log = (results / "logs" / "packs" / f"{pack.name}.log").read_text()
    assert "starting the job's processes: srun --overlap --ntasks=2" in log, log
    assert log.count("  epoch   1") == 1  # the first process alone logs


@pytest.mark.slurm(ACCOUNT_LIST)
def test_an_account_slurm_does_not_know_stops_the_run_at_submission(cluster, tmp_path):
    """The site profile's account reaches the plugin, which checks it with sacctmgr before sbatch."""
    site = Site(tmp_path / "site", account="kdsweep-no-such-account")
    status, output = run_snakemake(tmp_path, timeout=120, env=site.env())
    assert status != 0
    assert "The given account kdsweep-no-such-account appears to be invalid" in output, output[-3000:]
    assert not _slurm_logs(tmp_path), "no job was submitted"


# ---------------------------------------------------------------- the time limit


# Seconds of training the time-limit run is sized to (by one epoch's time, measured first). SLURM
# sends the first attempt's signal 60 s before its 2-minute limit, or up to 60 s earlier: within its
# first minute (measured: after 33 to 55 s). The run is sized to one and a half minutes, so that the
# signal finds it training even when the measured epoch was a third slower than the run's (a run
# the signal missed finishes in its first attempt or is killed at its limit, and the test fails).
# The rest fits the second attempt, whose signal comes after 2 minutes at the earliest.
TRAINING_SECONDS = 90


# After the teacher, two packs of two distillation points each (about 2.3 times the teacher's time per
# epoch: some 200 s): one job array of two tasks, which runs out of its first limit too.
LIMIT_PACKS = ["soft_weights=[0.5,0.9]", "temperatures=[2,4]", "runtime={pack_size: 2}"]


@pytest.mark.slurm(*SUBMITS, ACCOUNTING)
def test_training_over_its_time_limit_is_stopped_retried_with_a_longer_limit_and_resumed(cluster, tmp_path):
    """A teacher run of ~TRAINING_SECONDS (a plain job), then two packs of twice that (an array of two
    tasks), under a 2-minute first time limit (KDSWEEP_SLURM_TRAIN_MINUTES=2).

    SLURM sends the teacher SIGURG 60-120 s before the limit; the run stops with its checkpoint and
    exit status 75, the job fails, Snakemake resubmits it with 4 minutes, and the second attempt
    resumes from the checkpoint (on a busy machine a third attempt, with 6, may be needed). Its
    metrics must equal those of an uninterrupted local run (training on the CPU with one thread is
    deterministic). The array's tasks run out of their 2 minutes too (signal or limit) and are
    resubmitted, together, with 4: every attempt n of every job had a limit of 2n minutes (the
    plugin builds an array's sbatch call from its first task: kdsweep.slurm_plugin keeps attempts
    apart), and every packed run resumed from its checkpoint to its last epoch.
    """
    from kdsweep.checkpoint import CHECKPOINT

    config = load_config([str(p) for p in CONFIGS], LIMIT_PACKS)
    plan = Plan(config)
    packs = [pack for pack in plan.packs if pack.role == "kd"]
    assert len(packs) == 2 and all(len(pack.runs) == 2 for pack in packs)
    teacher = config["teacher"]
    name = run_path("teacher", teacher["model"], teacher["seed"])
    work, reference = tmp_path / "slurm", tmp_path / "local"
    work.mkdir()
    reference.mkdir()
    kdsweep = [sys.executable, "-m", "kdsweep"]
    config_args = [arg for path in CONFIGS for arg in ("--config", str(path))]
    def train(out, *overrides):
        return [*kdsweep, "train", *config_args, "--role", "teacher", "--model", teacher["model"], "--seed",
                str(teacher["seed"]), "--stats", "stats.json", "--out", out, ALL_DIGITS, *overrides,
                "runtime.threads=1"]

    subprocess.run([*kdsweep, "stats", *config_args, "--out", "stats.json", ALL_DIGITS], cwd=reference, check=True,
                   capture_output=True)
    # This machine's speed: three epochs, then as many epochs as fill TRAINING_SECONDS at the fastest of
    # them. The suite starts with this test while the other workers load the cores: one epoch timed then
    # can be twice as slow as the cluster's, and a teacher that ends before SLURM's signal proves nothing.
    subprocess.run(train("calibration", "training.max_epochs=3", "training.early_stopping_patience=3"),
                   cwd=reference, check=True, capture_output=True)
    with open(reference / "calibration" / "history.csv", newline="") as history:
        epoch_seconds = min(float(row["seconds"]) for row in csv.DictReader(history))
    epochs = min(max(math.ceil(TRAINING_SECONDS / epoch_seconds), 12), 200)
    overrides = [f"training.max_epochs={epochs}", f"training.early_stopping_patience={epochs}"]

    # The uninterrupted run, on this machine, while the cluster trains (one CPU each).
    local = subprocess.Popen(train("run", *overrides), cwd=reference,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    results = work / "results" / config["study"]
    run_folder = results / name
    rule_log = results / "logs" / f"{name}.log"
    seen = {"between_attempts": None}

    def watch(workdir):
        attempts = [log for log in _slurm_logs(workdir) if "rule_train" in log.parts]
        if len(attempts) >= 2 and seen["between_attempts"] is None and run_folder.exists():
            seen["between_attempts"] = sorted(p.name for p in run_folder.iterdir())

    try:
        status, output = run_snakemake(
            work, Layout(plan).train_record(plan.teacher), *map(Layout(plan).pack_record, packs),
            "--config", *LIMIT_PACKS, ALL_DIGITS_CONFIG,
            f"training={{max_epochs: {epochs}, early_stopping_patience: {epochs}}}",
            timeout=1260, env=cluster.env(KDSWEEP_SLURM_TRAIN_MINUTES="2"), watch=watch)
        assert status == 0, _failure_report(work, output)
        local_output, _ = local.communicate(timeout=600)
    finally:
        if local.poll() is None:
            local.kill()
            local.wait()
    assert local.returncode == 0, local_output

    # SLURM's side: attempt n had a time limit of 2n minutes; every attempt but the last
    # stopped itself on the signal before its limit (FAILED, exit status 75, not TIMEOUT).
    attempts = sorted((log for log in _slurm_logs(work) if "rule_train" in log.parts), key=lambda p: int(p.stem))
    assert len(attempts) >= 2, f"the first attempt was not stopped: {attempts}\n{output[-4000:]}"
    records = sacct([log.stem for log in attempts])
    for number, log in enumerate(attempts, start=1):
        record = records[log.stem]
        assert _seconds(record["Timelimit"]) == 120 * number, record
        if number < len(attempts):
            assert record["State"] == "FAILED" and _seconds(record["Elapsed"]) < 120 * number, record
            assert "non-zero exit status 75" in log.read_text(errors="replace"), _tail(log)
        else:
            assert record["State"] == "COMPLETED", record

    # The run's side: each stop kept the last finished epoch, and nothing that looks finished
    # was there between the attempts; the next attempt resumed from there.
    # The rule's log keeps every attempt (kdsweep.joblog): each attempt's stop message, keyed by
    # where that attempt started ("" or its "resuming ... after epoch k").
    sections = _attempt_sections(rule_log.read_text(errors="replace"))
    stops = {}
    for section in sections:
        stop = re.search(r"received (SIG\w+)", section)
        if stop:
            start = re.search(r"resuming \S+ after epoch \d+", section)
            stops[start.group(0) if start else ""] = stop.group(1)
    assert list(stops.values()) == ["SIGURG"] * (len(attempts) - 1), f"stops seen in the rule's log: {stops}"
    between = seen["between_attempts"]
    assert between is not None and CHECKPOINT in between, between
    assert not {"metrics.json", "model.pt", "history.csv"} & set(between), between
    resumed_after = [int(e) for e in re.findall(r"resuming \S+ after epoch (\d+)", sections[-1])]
    assert len(resumed_after) == 1 and resumed_after[0] >= 1, _tail(rule_log)
    # each attempt but the first started where the one before it stopped, with progress each time
    starts = sorted(int(start.rsplit(" ", 1)[1]) for start in stops if start) + resumed_after
    assert starts == sorted(set(starts)), f"an attempt made no progress: {stops}"
    metrics = _read_json(run_folder / "metrics.json")
    assert metrics["resumed"] == len(stops) and metrics["slurm"]["job_id"] == attempts[-1].stem
    _assert_one_gpu_job(metrics["slurm"], run_folder)
    assert not (run_folder / CHECKPOINT).exists()

    # The same result as the uninterrupted run: metrics, history and weights.
    import torch

    expected = _read_json(reference / "run" / "metrics.json")
    compared = ["epochs", "best_epoch", "stopped_early", "val_acc", "val_loss", "test_acc", "test_loss", "config_hash"]
    assert {k: metrics[k] for k in compared} == {k: expected[k] for k in compared}
    assert metrics["epochs"] == epochs and expected["resumed"] == 0

    def history(folder):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in _csv(folder / "history.csv")]

    assert history(run_folder) == history(reference / "run")
    weights = torch.load(run_folder / "model.pt", weights_only=True)["state_dict"]
    weights_local = torch.load(reference / "run" / "model.pt", weights_only=True)["state_dict"]
    assert weights.keys() == weights_local.keys()
    assert all(torch.equal(weights[k], weights_local[k]) for k in weights)

    # The array: each task's SLURM log names its pack and attempt (the job step's --attempt), last (an
    # array task's log starts with the array's own command, its first task's).
    tasks = {}
    for log in _slurm_logs(work):
        if "rule_distill" in log.parts:
            text = log.read_text(errors="replace")
            pack, attempt = re.findall(r"wildcards: pack=(\S+)", text)[-1], re.findall(r"--attempt (\d+)", text)[-1]
            tasks[log.stem] = (pack, int(attempt))
    records = sacct(list(tasks))
    # the first attempts: one array of two tasks (a retry goes out as an array, or alone where the two
    # tasks' failures were noticed apart)
    first = [job for job, (_, attempt) in tasks.items() if attempt == 1]
    assert len(first) == 2 and all("_" in job for job in first) and len({job.split("_")[0] for job in first}) == 1, \
        f"the packs' first attempts are not one array of two: {tasks}"
    for pack in packs:
        attempts = sorted((attempt, job) for job, (name, attempt) in tasks.items() if name == pack.name)
        assert [attempt for attempt, _ in attempts] == list(range(1, len(attempts) + 1)) and len(attempts) >= 2, \
            f"{pack.name} ran out of its first limit and was retried: {attempts}"
        for attempt, job in attempts:
            assert _seconds(records[job]["Timelimit"]) == 120 * attempt, (pack.name, attempt, records[job])
            expected_state = "COMPLETED" if attempt == len(attempts) else ("TIMEOUT", "FAILED")
            assert records[job]["State"] in expected_state, (pack.name, attempt, records[job])
        for run in pack.runs:
            packed = _read_json(work / Layout(plan).run_dir(run) / "metrics.json")
            assert packed["epochs"] == epochs and packed["resumed"] >= 1, (run, packed["epochs"], packed["resumed"])
            slurm = packed["slurm"]
            ran_in = f"{slurm['array_job_id']}_{slurm['array_task']}" if slurm["array_job_id"] else slurm["job_id"]
            assert ran_in == attempts[-1][1], (run, slurm, attempts)


# ---------------------------------------------------------------- the faults a cluster delivers

# The faults below hit a teacher run of FAULT_EPOCHS epochs on all the digits (ALL_DIGITS, about 3 s
# each here) after its checkpoint of epoch FAULT_AT: long enough that the fault lands mid-training,
# short enough for a test of a minute or two. (With 8 epochs, on a loaded machine, the killed
# snakemake's old job finished before the restarted snakemake submitted its own.) Each run must end
# equal to an uninterrupted one (`uninterrupted`).
FAULT_EPOCHS = 12
FAULT_AT = 2
FAULT_OVERRIDES = [ALL_DIGITS, f"training.max_epochs={FAULT_EPOCHS}", f"training.early_stopping_patience={FAULT_EPOCHS}"]
FAULT_CONFIG = ["--config", ALL_DIGITS_CONFIG,
                f"training={{max_epochs: {FAULT_EPOCHS}, early_stopping_patience: {FAULT_EPOCHS}}}"]


def _local_train(out, cwd, *overrides):
    """`python -m kdsweep train` of the study's teacher on this machine, as the workflow's job runs it."""
    teacher = load_config([str(p) for p in CONFIGS], [])["teacher"]
    config_args = [arg for path in CONFIGS for arg in ("--config", str(path))]
    return subprocess.run([sys.executable, "-m", "kdsweep", "train", *config_args, "--role", "teacher",
                           "--model", teacher["model"], "--seed", str(teacher["seed"]), "--stats", "stats.json",
                           "--out", out, *overrides, "runtime.threads=1"],
                          cwd=cwd, check=True, capture_output=True, text=True)


def _train_uninterrupted(folder):
    config_args = [arg for path in CONFIGS for arg in ("--config", str(path))]
    subprocess.run([sys.executable, "-m", "kdsweep", "stats", *config_args, "--out", "stats.json",
                    *FAULT_OVERRIDES], cwd=folder, check=True, capture_output=True)
    _local_train("run", folder, *FAULT_OVERRIDES)


@pytest.fixture
def uninterrupted(slurm_needs, tmp_path_factory):
    """The fault tests' teacher run trained without interruption on this machine (one thread), once per
    test run (conftest.built_once), and only for a test that may use the cluster (slurm_needs). The
    fault tests ask for it before `cluster`, so that it is trained before they take the cluster's lock."""
    return built_once(tmp_path_factory, "uninterrupted", _train_uninterrupted) / "run"


def _assert_same_run(run_folder, reference):
    """Metrics, history and weights of run_folder equal those of the uninterrupted reference run
    (training on the CPU with one thread is deterministic, and a resumed run continues exactly)."""
    import torch

    metrics, expected = _read_json(run_folder / "metrics.json"), _read_json(reference / "metrics.json")
    compared = ["epochs", "best_epoch", "stopped_early", "val_acc", "val_loss", "test_acc", "test_loss", "config_hash"]
    assert {k: metrics[k] for k in compared} == {k: expected[k] for k in compared}

    def history(folder):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in _csv(folder / "history.csv")]

    assert history(run_folder) == history(reference)
    weights = torch.load(run_folder / "model.pt", weights_only=True)["state_dict"]
    weights_local = torch.load(reference / "model.pt", weights_only=True)["state_dict"]
    assert weights.keys() == weights_local.keys()
    assert all(torch.equal(weights[k], weights_local[k]) for k in weights)
    for scratch in ("checkpoint.pt", "checkpoint.json", "best.pt", ".lock"):
        assert not (run_folder / scratch).exists(), scratch
    return metrics


def _epochs_done(run_folder):
    progress = run_folder / "checkpoint.json"
    try:
        return json.loads(progress.read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


def _jobs_in(workdir, since):
    """sacct's records of the jobs whose working directory is workdir, submitted since `since`
    (an sacct time): {job id: {JobID, JobIDRaw, State, ExitCode, ...}} in submission order."""
    fields = ["JobID", "JobIDRaw", "State", "ExitCode", "WorkDir", "Start", "End"]
    result = subprocess.run(["sacct", "-X", "-n", "-P", "-S", since, "-o", ",".join(fields)],
                            capture_output=True, text=True, check=True)
    records = [dict(zip(fields, line.split("|"))) for line in result.stdout.splitlines()]
    return {r["JobIDRaw"]: r for r in records if Path(r["WorkDir"]) == Path(workdir)}


def _queued(workdir):
    """{job id: state} of squeue's jobs whose working directory is workdir."""
    out = subprocess.run(["squeue", "-h", "-o", "%A|%T|%Z"], capture_output=True, text=True).stdout
    return {job: state for job, state, folder in (line.split("|") for line in out.splitlines())
            if Path(folder) == Path(workdir)}


def _sacct_now():
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))


def _wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout} s for {what}")
        time.sleep(1)


@pytest.mark.slurm(*SUBMITS, ACCOUNTING)
def test_a_killed_snakemake_is_restarted_and_nothing_is_trained_twice_or_lost(uninterrupted, cluster, tmp_path):
    """The login node's snakemake SIGKILLed (a dropped ssh session) while the teacher trains on SLURM,
    then started again as the README says: `snakemake --unlock`, then the same command (the workflow
    profile has rerun-incomplete). The old job goes on training; the new one finds the run folder
    locked by it, waits, and then finds the run finished: the run is trained once, by the old job,
    and equals an uninterrupted run."""
    plan = Plan(load_config([str(p) for p in CONFIGS], []))
    run_folder = tmp_path / Layout(plan).run_dir(plan.teacher)
    target = Layout(plan).train_record(plan.teacher)
    since = _sacct_now()
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(snakemake_command(target, *FAULT_CONFIG), cwd=tmp_path, stdout=log,
                             stderr=subprocess.STDOUT, env=cluster.env(), start_new_session=True)
    try:
        _wait_for(lambda: _epochs_done(run_folder) >= FAULT_AT or first.poll() is not None, 300,
                  f"the teacher's checkpoint of epoch {FAULT_AT}")
        assert first.poll() is None, _tail(tmp_path / "first.log")
        old_jobs = set(_queued(tmp_path))
        first.kill()  # SIGKILL, the snakemake process alone: its SLURM jobs go on
        first.wait()
    finally:
        log.close()
        if first.poll() is None:
            first.kill()
    assert _queued(tmp_path), "the old job is still running"

    locked = subprocess.run(snakemake_command(target, *FAULT_CONFIG), cwd=tmp_path, capture_output=True, text=True,
                            env=cluster.env())
    assert locked.returncode != 0 and "removed with the --unlock argument" in locked.stdout + locked.stderr
    unlock = subprocess.run(snakemake_command("--unlock", *FAULT_CONFIG), cwd=tmp_path, capture_output=True,
                            text=True, env=cluster.env())
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    status, output = run_snakemake(tmp_path, target, *FAULT_CONFIG, timeout=480, env=cluster.env(),
                                   log_name="second.log")
    assert status == 0, _failure_report(tmp_path, output)

    jobs = _jobs_in(tmp_path, since)
    metrics = _assert_same_run(run_folder, uninterrupted)
    # trained once: by the old job, from epoch 1 to the end, never resumed
    assert metrics["resumed"] == 0 and metrics["slurm"]["job_id"] in old_jobs, (metrics["slurm"], old_jobs)
    # the old job and the new one (which waited for it, or found the run finished) both completed
    assert len(jobs) >= 2 and all(record["State"] == "COMPLETED" for record in jobs.values()), jobs
    # the new job trained nothing: it waited for the old one (or found the run finished)
    # The log keeps both jobs' lines (kdsweep.joblog), the old job's possibly after the new one's header:
    # every epoch is there once, and no attempt resumed.
    rule_log = (tmp_path / Layout(plan).training_log(plan.teacher)).read_text()
    epochs = [int(e) for e in re.findall(r" epoch +(\d+) +lr ", rule_log)]
    assert sorted(epochs) == list(range(1, metrics["epochs"] + 1)) and "resuming" not in rule_log, rule_log
    print(f"new job: {'waited for the old one' if 'waiting for it to finish' in rule_log else 'found the run finished'}")
    record = _read_json(tmp_path / target)
    assert record["points"][0]["config_hash"] == metrics["config_hash"]


@pytest.mark.slurm(*SUBMITS, ACCOUNTING)
def test_a_cancelled_training_job_is_resubmitted_and_resumes_from_its_checkpoint(uninterrupted, cluster, tmp_path):
    """scancel of the running teacher job (as preemption does): the training stops on SIGTERM with the
    checkpoint of its last finished epoch, SLURM records CANCELLED, Snakemake resubmits the job, and
    the new one resumes from that checkpoint to the result of an uninterrupted run."""
    plan = Plan(load_config([str(p) for p in CONFIGS], []))
    run_folder = tmp_path / Layout(plan).run_dir(plan.teacher)
    since = _sacct_now()
    cancelled = {}

    def watch(workdir):
        if not cancelled and _epochs_done(run_folder) >= FAULT_AT:
            for job, state in _queued(workdir).items():
                if state == "RUNNING":
                    subprocess.run(["scancel", job], check=True)
                    cancelled[job] = _epochs_done(run_folder)

    status, output = run_snakemake(tmp_path, Layout(plan).train_record(plan.teacher), *FAULT_CONFIG, timeout=480,
                                   env=cluster.env(), watch=watch)
    assert status == 0, _failure_report(tmp_path, output)
    assert len(cancelled) == 1, "one running job was cancelled"
    (job, epoch), = cancelled.items()
    jobs = _jobs_in(tmp_path, since)
    assert jobs[job]["State"].startswith("CANCELLED"), jobs[job]
    metrics = _assert_same_run(run_folder, uninterrupted)
    assert metrics["resumed"] == 1 and metrics["slurm"]["job_id"] != job
    assert jobs[metrics["slurm"]["job_id"]]["State"] == "COMPLETED"
    last = _attempt_sections((tmp_path / Layout(plan).training_log(plan.teacher)).read_text())[-1]
    resumed_after = re.findall(r"resuming \S+ after epoch (\d+)", last)
    assert len(resumed_after) == 1 and int(resumed_after[0]) >= epoch


def _attempt_sections(text):
    """A rule log's attempts, oldest first (kdsweep.joblog heads each attempt with a line)."""
    from kdsweep import joblog

    sections = re.split(rf"^{re.escape(joblog.HEADER)}.*$", text, flags=re.M)
    return [section for section in sections[1:]] or [text]


def _parents():
    """Every process on this machine: {pid: parent pid}."""
    parents = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError, AttributeError):
            parents[int(status.parent.name)] = int(re.search(r"^PPid:\s+(\d+)", status.read_text(), re.M).group(1))
    return parents


def _depth(pid, parents):
    """How many ancestors below init a process has, from _parents()."""
    return 1 + _depth(parents[pid], parents) if parents.get(pid, 0) > 1 else 0


def _job_processes(job, parents):
    """PIDs on this node that belong to SLURM job `job`, from _parents(): its slurmstepd daemons, what runs
    under them, and any process that left their tree (reparented to init) but carries the job's SLURM_JOB_ID."""
    found = {int(pid) for pid in subprocess.run(["pgrep", "-f", rf"slurmstepd: \[{job}\."], capture_output=True,
                                                text=True).stdout.split()}
    for pid in parents:
        with contextlib.suppress(OSError):
            if f"SLURM_JOB_ID={job}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.add(pid)
    while more := {pid for pid, parent in parents.items() if parent in found} - found:
        found |= more
    return found


def _fail_node(jobs):
    """The node dies under running jobs: slurmd and every process of the jobs killed. slurmctld notices
    only when the node stops answering (SlurmdTimeout, 30 s here): then the node is down and its jobs
    NODE_FAIL. The node then comes back (slurmd started again; ReturnToService=2 lets it rejoin).

    A real node takes its processes down at one instant: none sends anything on another's death. An `srun` that
    does ("forcing job termination" when its parent dies first) asks slurmctld to kill its step <job>.0;
    slurmctld cannot reach the dead node and retries, and the request lands about 70 s later on step <job>.0 of
    the requeued job, which reuses the ids, failing it (seen in two CI runs, and made to happen by killing a
    plain `srun sleep` job's processes parents first). Here every process of the jobs is first SIGSTOPped,
    parents before children (none sees a child stop), scan after scan until one finds none left running (a
    stopped process forks no more), then SIGKILLed children before parents: no process dies while one below it
    still could act (a dying parent would orphan its stopped children's process group, and the kernel resumes
    them with SIGHUP)."""
    subprocess.run(["pkill", "-KILL", "-x", "slurmd"], check=False)
    stopped = set()
    for _ in range(50):
        parents = _parents()
        running = {pid for job in jobs for pid in _job_processes(job, parents)} - stopped
        if not running:
            break
        for pid in sorted(running, key=lambda pid: _depth(pid, parents)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        stopped |= running
    else:
        pytest.fail(f"processes of jobs {jobs} kept appearing through 50 rounds of SIGSTOP")
    assert stopped, f"jobs {jobs} have no processes on this node"
    # parents: the last scan's, taken with every process stopped (none can exit or fork since)
    for pid in sorted(stopped, key=lambda pid: _depth(pid, parents), reverse=True):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def node_down():
        state = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True).stdout
        return "down" in state or "*" in state

    _wait_for(node_down, 240, "slurmctld to see the node down")
    subprocess.run(["bash", str(ROOT / "scripts" / "slurm-cluster.sh")], check=True, capture_output=True)


@pytest.mark.slurm(*SUBMITS, ACCOUNTING, REQUEUE)
@pytest.mark.fails_the_node
def test_a_node_failure_mid_job_is_requeued_or_failed_and_either_way_resumes_from_its_checkpoint(
        uninterrupted, cluster, tmp_path):
    """Two studies train their teacher side by side, one under the site profile's default
    `slurm-requeue: true`, one under a site profile with `slurm-no-requeue: true`; then the node fails
    under both jobs at once (slurmd and the jobs' processes SIGKILLed mid-training) and comes back.

    - With requeue SLURM requeues the job itself: the same job id runs again (after SLURM's requeue
      delay, cred_expire + 1 s: 31 s here) and resumes from the checkpoint to the result of an
      uninterrupted run; the teacher's evaluations, submitted after the failure, run too
      (kdsweep.slurm.excluded_nodes).
    - Without requeue the job ends NODE_FAIL and the plugin fails it. It then excludes the failed node
      from later submissions, and on this one-node cluster no node is left, so the retry cannot
      start and snakemake stops; started again, as after any stop, it resumes the run from its
      checkpoint to the uninterrupted result.
    """
    plan = Plan(load_config([str(p) for p in CONFIGS], []))
    no_requeue = Site(tmp_path / "site", requeue=False)
    work = {"requeue": tmp_path / "requeue", "no-requeue": tmp_path / "no-requeue"}
    folders = {name: folder / Layout(plan).run_dir(plan.teacher) for name, folder in work.items()}
    for folder in work.values():
        folder.mkdir()
    failed, guard = {}, threading.Lock()

    def watch(_):
        # called by both snakemake watchers: fail the node once, when both runs are mid-training
        with guard:
            if failed or any(_epochs_done(folder) < FAULT_AT for folder in folders.values()):
                return
            running = {name: [job for job, state in _queued(folder).items() if state == "RUNNING"]
                       for name, folder in work.items()}
            if all(running.values()):
                failed.update({name: (jobs[0], _epochs_done(folders[name])) for name, jobs in running.items()})
                _fail_node([job for job, _ in failed.values()])

    since = _sacct_now()
    teacher = Layout(plan).train_record(plan.teacher)

    def without_requeue():
        """The study without requeue: until snakemake stops, then (while the other still runs) again."""
        stopped = run_snakemake(work["no-requeue"], teacher, *FAULT_CONFIG, timeout=600, env=no_requeue.env(),
                                watch=watch)
        finished_then = (folders["no-requeue"] / "metrics.json").exists(), _epochs_done(folders["no-requeue"])
        again = run_snakemake(work["no-requeue"], teacher, *FAULT_CONFIG, timeout=480, env=no_requeue.env(),
                              log_name="again.log")
        return stopped, finished_then, again

    with ThreadPoolExecutor(2) as pool:
        requeued = pool.submit(run_snakemake, work["requeue"], teacher, *Layout(plan).evaluations(plan.teacher),
                               *FAULT_CONFIG, timeout=600, env=cluster.env(), watch=watch)
        not_requeued = pool.submit(without_requeue)
        (status, output), ((status_without, output_without), finished_then, again) = (
            requeued.result(), not_requeued.result())
    assert set(failed) == set(work), "the node failed under both running jobs"

    # with requeue: the same job id, NODE_FAIL then COMPLETED (sacct -D: every run of the job id)
    job, epoch = failed["requeue"]
    assert status == 0, _failure_report(work["requeue"], output)
    metrics = _assert_same_run(folders["requeue"], uninterrupted)
    assert metrics["resumed"] == 1
    assert metrics["slurm"]["job_id"] == job, metrics["slurm"]
    assert all((work["requeue"] / path).exists() for path in Layout(plan).evaluations(plan.teacher))
    log = (work["requeue"] / Layout(plan).training_log(plan.teacher)).read_text()
    resumed_after = re.findall(r"resuming \S+ after epoch (\d+)", _attempt_sections(log)[-1])
    assert len(resumed_after) == 1 and int(resumed_after[0]) >= epoch
    runs = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-j", job, "-o", "State"], capture_output=True,
                          text=True, check=True).stdout.split()
    assert runs == ["NODE_FAIL", "COMPLETED"], runs

    # without requeue: failed, snakemake stopped, nothing finished; the same command again resumes
    job, epoch = failed["no-requeue"]
    assert status_without != 0 and "NODE_FAIL" in output_without, output_without[-3000:]
    assert _jobs_in(work["no-requeue"], since)[job]["State"] == "NODE_FAIL"
    finished, epochs_done = finished_then
    assert not finished and epochs_done >= epoch
    status, output = again
    assert status == 0, _failure_report(work["no-requeue"], output)
    metrics = _assert_same_run(folders["no-requeue"], uninterrupted)
    assert metrics["resumed"] == 1 and metrics["slurm"]["job_id"] != job


# ---------------------------------------------------------------- job arrays

# Four distillation points of one student and seed: four jobs of rule distill.
ARRAY_SWEEP = ["temperatures=[2,4]", "soft_weights=[0.5,0.9]"]


def _submissions(jobs):
    """sbatch calls behind sacct records: an array's tasks (JobID <array job>_<task>) share one."""
    return {record["JobID"].split("_")[0] for record in jobs.values()}


@pytest.mark.slurm(*SUBMITS, ACCOUNTING)
def test_the_distillation_sweep_goes_out_as_one_job_array(cluster, tmp_path):
    """The workflow profile's `slurm-array-jobs: distill`: the teacher is one job, the four
    distillation jobs one `sbatch --array`, and every run records its array task's own job id, its
    array's id and its task number."""
    config = load_config([str(p) for p in CONFIGS], ARRAY_SWEEP)
    plan = Plan(config)
    runs = plan.sweep(config["students"][0])
    assert len(runs) == 4
    records = sorted({Layout(plan).pack_record(plan.pack_of(run)) for run in runs})
    since = _sacct_now()
    status, output = run_snakemake(tmp_path, *records, "--config", *ARRAY_SWEEP, timeout=600, env=cluster.env())
    assert status == 0, _failure_report(tmp_path, output)

    jobs = _jobs_in(tmp_path, since)
    assert all(record["State"] == "COMPLETED" for record in jobs.values()), jobs
    slurm = [_read_json(tmp_path / Layout(plan).run_dir(run) / "metrics.json")["slurm"] for run in runs]
    arrays = {record["array_job_id"] for record in slurm}
    assert len(arrays) == 1 and None not in arrays, slurm
    assert sorted(int(record["array_task"]) for record in slurm) == list(range(1, 5)), slurm
    tasks = {record["JobIDRaw"]: record["JobID"] for record in jobs.values()}
    for record in slurm:
        assert tasks[record["job_id"]] == f"{record['array_job_id']}_{record['array_task']}", (record, tasks)
    # the stats job, the teacher's and the array: three sbatch calls for six jobs (without arrays: six)
    assert len(jobs) == 6 and len(_submissions(jobs)) == 3, jobs
    print(f"{len(jobs)} SLURM jobs from {len(_submissions(jobs))} sbatch calls")


# ---------------------------------------------------------------- more ready jobs than --jobs admits

# 3 temperatures x 4 soft weights: 12 distillation jobs of one student, ready at once when the teacher
# has finished, under a cap of 4 jobs, while the attack jobs of the runs finished so far are
# ready too: what config.yaml's 112 distillation jobs under a site cap of 100 meet, with tiny jobs.
CAPPED_SWEEP = ["temperatures=[2,4,8]", "soft_weights=[0.3,0.6,0.9,1.0]", "attacks={pgd: null}",
                "robustness={headline: [fgsm]}"]
CAP = 4
# The status query (sacct) fails this many times in a row, from its SACCT_FAILS_FROM-th call on: more
# than the plugin's 5 immediate attempts of one poll, after which the plugin 2.8.0 alone drops every
# job it watches and the run waits forever.
SACCT_FAILS_FROM, SACCT_FAILURES = 4, 5
SACCT_SHIM = """#!/bin/sh
# sacct whose status queries (--name) number {first} to {last} fail, as while slurmdbd restarts
case " $* " in *" --name "*)
  echo x >> {count}
  n=$(wc -l < {count})
  if [ "$n" -ge {first} ] && [ "$n" -le {last} ]; then
    echo "sacct: error: slurm_persist_conn_open_without_init: failed to open persistent connection to host:localhost:6819: Connection refused" >&2
    echo fail >> {failed}
    exit 1
  fi;;
esac
exec {sacct} "$@"
"""


@pytest.mark.slurm(*SUBMITS, ACCOUNTING)
def test_more_ready_distill_jobs_than_jobs_admits_beside_ready_attack_jobs_and_a_failing_sacct(cluster, tmp_path):
    """12 distillation jobs (an array rule) under `--jobs 4`, beside ready attack jobs, while sacct
    fails five times in a row: every run is trained once and evaluated, the distillation jobs go out in
    several arrays (none lost, none waiting for slots they hold), and the failed status queries are
    warned about and survived."""
    config = load_config([str(p) for p in CONFIGS], CAPPED_SWEEP)
    plan = Plan(config)
    runs = list(plan.fixed_runs())
    distilled = [run for run in runs if run.role == "kd"]
    assert len(distilled) == 12 > CAP

    shim = tmp_path / "shim"
    shim.mkdir()
    count, failed = shim / "calls", shim / "failed"
    count.touch()
    (shim / "sacct").write_text(SACCT_SHIM.format(first=SACCT_FAILS_FROM, last=SACCT_FAILS_FROM + SACCT_FAILURES - 1,
                                                  count=count, failed=failed, sacct=shutil.which("sacct")))
    (shim / "sacct").chmod(0o755)
    env = cluster.env()
    env["PATH"] = f"{shim}{os.pathsep}{env['PATH']}"
    work = tmp_path / "work"
    work.mkdir()
    since = _sacct_now()
    # 29 SLURM jobs, each of them a snakemake process, through a 2-CPU node, and the status outage's
    # dead time (the plugin's poll interval grows by 10 s a poll that brings no news): 9.5 minutes on
    # a loaded machine here, and past 15 under CI's four workers on two cores.
    status, output = run_snakemake(work, "--jobs", str(CAP), "--config", *CAPPED_SWEEP, timeout=1800, env=env)
    assert status == 0, _failure_report(work, output)
    assert "AttributeError" not in output and "Traceback" not in output

    # every run trained and evaluated, each by one SLURM job
    results = work / plan.results
    for run in runs:
        metrics = _read_json(results / run.folder / "metrics.json")
        assert metrics["resumed"] == 0, run
        _assert_one_gpu_job(metrics["slurm"], run.folder)
        for path in Layout(plan).outputs([run]):
            assert (work / path).exists(), path
    jobs = _jobs_in(work, since)
    assert all(record["State"] == "COMPLETED" for record in jobs.values()), jobs
    training = [record for record in jobs.values()
                if record["JobIDRaw"] in {_read_json(results / r.folder / "metrics.json")["slurm"]["job_id"] for r in runs}]
    assert len(training) == len(runs), "each run trained by exactly one SLURM job"
    # the 12 distillation jobs went out in waves under the cap, as arrays where several were ready at once
    arrays = {}
    for run in distilled:
        slurm = _read_json(results / run.folder / "metrics.json")["slurm"]
        arrays.setdefault(slurm["array_job_id"] or slurm["job_id"], []).append(run)
    assert 1 < len(arrays) < len(distilled), f"12 distillation jobs under --jobs {CAP} in {len(arrays)} submissions"
    assert max(len(members) for members in arrays.values()) <= CAP
    # sacct failed five times in a row, and each failure was warned about, not fatal
    assert failed.exists() and len(failed.read_text().split()) == SACCT_FAILURES, "the shim's outage did not happen"
    assert output.count("the SLURM status command failed (sacct: error: slurm_persist_conn_open_without_init") \
        == SACCT_FAILURES, output[-4000:]
    print(f"{len(jobs)} SLURM jobs from {len(_submissions(jobs))} sbatch calls; distillation in "
          f"{len(arrays)} submissions of {sorted(len(m) for m in arrays.values())}")
